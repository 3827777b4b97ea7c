"""Build an :class:`ItemIndex` from item vectors and measure its ANN recall against exact search.

Example:
    >>> import numpy as np
    >>> from recfuse.config import IndexConfig
    >>> rng = np.random.default_rng(0)
    >>> vecs = rng.standard_normal((1000, 16)).astype(np.float32)
    >>> index = build_index(vecs, np.arange(1000), IndexConfig(factory="HNSW32"))
    >>> index.recall > 0.9
    True
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faiss
import numpy as np

from recfuse.config import IndexConfig
from recfuse.errors import ConfigError, SchemaError
from recfuse.index import mips
from recfuse.index.factory import faiss_metric, inner_index, resolve_factory
from recfuse.index.item_index import ItemIndex
from recfuse.index.served import item_query_rows, served_recall
from recfuse.index.validate import check_ids, check_vectors
from recfuse.types import FloatArray

logger = logging.getLogger(__name__)

#: a refined index (``...,RFlat``) re-ranks ``REFINE_K_FACTOR * k`` approximate hits with the exact vectors
REFINE_K_FACTOR = 8


def build_index(vectors: Any, ids: Any, cfg: IndexConfig | None = None) -> ItemIndex:
    """Build an index over ``vectors [n, d]`` keyed by int64 ``ids [n]``.

    The index type is ``cfg.factory`` (``auto``: see :mod:`recfuse.index.factory`), wrapped in ``IDMap2``;
    an inner-product one is built as L2 over augmented vectors where ``cfg.mips`` says so
    (:mod:`recfuse.index.mips`).
    IVF/PQ indexes are trained on ``cfg.train_sample`` sampled vectors. Afterwards ANN Recall@10 vs
    exact search is measured on ``cfg.recall_queries`` sampled item vectors (0 skips it) and compared
    with ``cfg.recall_floor``.

    Args:
        vectors: ``[n, d]`` float item vectors (normalise them yourself for cosine with ``ip``).
        ids: ``[n]`` unique non-negative integer catalog ids.
        cfg: index configuration (defaults to ``IndexConfig()``).

    Returns:
        The built :class:`ItemIndex` with ``recall`` set (or None when not measured).

    Raises:
        SchemaError: empty input, bad shapes/dtypes, NaN/inf rows, duplicate or negative ids.
        ConfigError: an invalid factory string, too few vectors to train it, or (``on_low_recall=raise``)
            recall below ``recall_floor``.
    """
    cfg = cfg or IndexConfig()
    x = check_vectors(vectors)
    n, dim = x.shape
    if n == 0:
        raise SchemaError("`vectors` must not be empty (got 0 rows); an index needs at least one item")
    id_arr = check_ids(ids, n)
    factory = resolve_factory(cfg.factory, n, dim, cfg.exact_max_items)
    start = time.perf_counter()
    norm = mips.wanted(cfg.mips, cfg.metric, factory, x)
    if norm is not None:
        x = mips.augment(x, norm)
    width = x.shape[1]
    try:
        index = faiss.index_factory(width, f"IDMap2,{factory}", faiss_metric("l2" if norm else cfg.metric))
    except RuntimeError as err:
        why = f" ({dim} + 1: index.mips augments inner-product vectors; set it to 'off')" if norm else ""
        raise ConfigError(
            f"`index.factory` {factory!r} is not a valid faiss factory string for dim {width}{why}: "
            f"{_faiss_msg(err)}; try 'Flat', 'HNSW32' or 'IVF1024,PQ{max(1, dim // 2)}'"
        ) from None
    inner = inner_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efConstruction = cfg.ef_construction
    if isinstance(inner, faiss.IndexRefine):  # re-rank more than k approximate hits exactly (stored in the file)
        inner.k_factor = REFINE_K_FACTOR
    if not index.is_trained:
        rng = np.random.default_rng(cfg.seed)
        sample = x if n <= cfg.train_sample else x[np.sort(rng.choice(n, cfg.train_sample, replace=False))]
        try:
            index.train(sample)
        except RuntimeError as err:
            raise ConfigError(
                f"`index.factory` {factory!r} cannot be trained on {len(sample)} vectors: {_faiss_msg(err)}; "
                "use fewer IVF lists / PQ bits or 'Flat' for small catalogs"
            ) from None
    index.add_with_ids(x, id_arr)
    item_index = ItemIndex(index, factory, cfg, mips_norm=norm)
    how = f" (L2 over augmented vectors, norm {norm:.4g})" if norm else ""
    logger.info("built %s index over %d x %d in %.2fs%s", factory, n, dim, time.perf_counter() - start, how)
    if cfg.recall_queries > 0:
        x = x[:, :dim] if norm else x
        item_index.recall = measure_recall(item_index, x, id_arr, cfg.recall_queries, k=10, seed=cfg.seed)
        check_recall(item_index.recall, factory, cfg)
    return item_index


def measure_recall(
    index: ItemIndex, vectors: FloatArray, ids: Any, n_queries: int, k: int = 10, seed: int = 0
) -> float:
    """ANN Recall@k of ``index`` vs exact search over ``vectors``, on sampled item vectors as queries.

    Args:
        index: the index under test (holds ``vectors`` under ``ids``).
        vectors: ``[n, d]`` the indexed vectors (exact ground truth is computed over them).
        ids: ``[n]`` their ids.
        n_queries: queries sampled (without replacement) from ``vectors``.
        k: cut-off (clipped to ``n``).
        seed: sampling seed.

    Returns:
        Mean over queries of ``|ANN top-k ∩ exact top-k| / k`` in ``[0, 1]``.
    """
    x = check_vectors(vectors)
    id_arr = np.asarray(ids, dtype=np.int64)
    n = len(x)
    k = min(k, n)
    rows = item_query_rows(n, n_queries, seed)
    return served_recall(index, x, x[rows], k, ids=id_arr)


def check_recall(recall: float, factory: str, cfg: IndexConfig) -> None:
    """Log ``recall`` against ``cfg.recall_floor``; below it warn, or raise (``on_low_recall = "raise"``).

    Raises:
        ConfigError: recall below the floor with ``on_low_recall = "raise"``.
    """
    if recall >= cfg.recall_floor:
        logger.info("index %s recall@10 vs exact %.3f (floor %.2f)", factory, recall, cfg.recall_floor)
        return
    msg = (
        f"index {factory!r} recall@10 vs exact search is {recall:.3f}, below `index.recall_floor` "
        f"{cfg.recall_floor}; raise index.ef_search/index.nprobe, pick a larger factory or lower the floor"
    )
    if cfg.on_low_recall == "raise":
        raise ConfigError(msg)
    logger.warning("%s", msg)


def _faiss_msg(err: Exception) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else repr(err))[:240]
