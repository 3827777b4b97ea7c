"""Build an IVF index from embedding shards without holding every vector in memory.

The input is a finished ``recfuse embed`` output directory or a list of shard files (checked by
:func:`recfuse.index.shard_scan.scan_shards`). The shards are read one record batch at a time, in
three passes:

1. **scan**: schemas, one width ``d``, unique item ids, usable vectors (see :mod:`~recfuse.index.shard_scan`);
2. **sample**: the rows that train the coarse quantizer (and the PQ/SQ codebooks) and the recall
   queries, gathered from the shards. They are the rows :func:`recfuse.index.build_index` draws
   (``IndexConfig.seed`` over row positions, ``IndexConfig.train_sample`` of them);
3. **add**: each batch is added under its row position as the int64 id (row ``i`` of the shards,
   in order, is FAISS id ``i``: a bundle's id space), while the exact top-10 of the recall queries
   is kept in a running heap, so ANN recall against exact search is measured without the matrix.

With the same factory and seed the result equals ``build_index`` over the concatenated vectors
(the tests compare the serialized indexes byte for byte). Memory in use is the index plus the
training sample and one batch, where the in-memory build holds the index plus every vector.

Only IVF factories are accepted (``IVF1024,Flat``, ``IVF4096,PQ32``, ``IVF1024,SQ8``,
``OPQ16,IVF1024,PQ16``…): Flat and HNSW store every vector uncompressed in the index and need no
training sample, so streaming their input saves no memory; build those with ``build_index``.
``auto`` resolves to :func:`recfuse.index.factory.auto_factory` when that is IVF (above 2M items),
else to ``IVF{nlist},Flat`` (``nlist`` near ``4 * sqrt(n)``, at least 39 training rows per list).

The inverted lists are built in memory. On-disk lists (``faiss.contrib.ondisk.merge_ondisk``: one
index file per shard, merged into a memory-mapped ``.ivfdata`` file) are not offered: they lower
anonymous memory but not the peak resident set, since the mapped shard files and the merged file
count as resident while merging, they write twice the index to disk, and the result references an
external ``.ivfdata`` path that a bundle (one checksummed ``index.faiss``, read into memory by the
loader) cannot carry.

Example:
    >>> from recfuse.config import IndexConfig
    >>> built = build_index_from_shards("out/emb", IndexConfig(factory="IVF1024,Flat"))  # doctest: +SKIP
    >>> built.index.ntotal, built.factory, built.item_ids[0].as_py()                   # doctest: +SKIP
    (2000000, 'IVF1024,Flat', 'i0')
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from recfuse.config import IndexConfig
from recfuse.errors import ConfigError, SchemaError
from recfuse.index import mips
from recfuse.index.build import _faiss_msg, check_recall
from recfuse.index.factory import auto_factory, faiss_metric, ivf_of, resolve_factory
from recfuse.index.item_index import ItemIndex
from recfuse.index.recall import knn_recall
from recfuse.index.shard_scan import (
    Progress,
    ShardProgress,
    ShardScan,
    iter_usable,
    read_shard_vectors,
    scan_shards,
)
from recfuse.types import FloatArray

logger = logging.getLogger(__name__)

#: cut-off of the recall measured at build (as ``build_index``)
RECALL_K = 10
SUPPORTED = "IVF factories (e.g. 'IVF1024,Flat', 'IVF4096,PQ32', 'IVF1024,SQ8', 'OPQ16,IVF1024,PQ16')"

__all__ = ["ShardIndex", "ShardProgress", "ShardScan", "build_index_from_shards", "read_shard_vectors", "scan_shards"]


@dataclass
class ShardIndex:
    """A built index and the row order it was built in.

    Attributes:
        index: the IDMap2-wrapped index; id ``i`` is ``scan.item_ids[i]``; ``index.recall`` is its
            Recall@10 against exact search on ``IndexConfig.recall_queries`` item vectors (or None).
        scan: the scan it was built from (ids, shards, rejects).
        factory: the resolved faiss factory string.
        train_rows: rows the quantizer was trained on.
        seconds: wall time per stage (``scan``, ``sample``, ``train``, ``add``).
    """

    index: ItemIndex
    scan: ShardScan
    factory: str
    train_rows: int
    seconds: dict[str, float]

    @property
    def item_ids(self) -> pa.Array:
        """``[n]`` item ids in FAISS id order."""
        return self.scan.item_ids


def _sharded_factory(cfg: IndexConfig, n: int, dim: int) -> str:
    if cfg.factory.strip() == "auto":
        factory = auto_factory(n, dim, cfg.exact_max_items)
        if factory.startswith("IVF"):
            return factory
        lists = min(4 * math.sqrt(n), max(1, n // 39))
        return f"IVF{2 ** max(0, math.floor(math.log2(lists)))},Flat"
    return resolve_factory(cfg.factory, n, dim, cfg.exact_max_items)


def _new_index(factory: str, dim: int, metric: str) -> Any:
    try:
        index = faiss.index_factory(dim, f"IDMap2,{factory}", faiss_metric(metric))
    except RuntimeError as err:
        raise ConfigError(
            f"`index.factory` {factory!r} is not a valid faiss factory string for dim {dim}: {_faiss_msg(err)}; "
            f"building from shards takes {SUPPORTED}"
        ) from None
    if ivf_of(index) is None:
        raise ConfigError(
            f"`index.factory` {factory!r} is not an IVF index; building from shards takes {SUPPORTED}. "
            "An IVF index is trained on a sample and filled batch by batch, so the vectors never have to be "
            "in memory at once; Flat and HNSW store every raw vector in the index anyway (no memory saved): "
            "build those with `recfuse export` / build_index"
        )
    return index


def _gather(
    scan: ShardScan, rows: np.ndarray, scale: np.ndarray | None, progress: Progress | None
) -> tuple[FloatArray, float, float]:
    """``[len(rows), d]`` the usable rows ``rows`` (sorted, unique), times their ``scale``, and the
    smallest and largest norm of every usable row (times its scale)."""
    out = np.empty((len(rows), scan.dim), np.float32)
    lo_sq, hi_sq = np.inf, 0.0
    for start, x in iter_usable(scan, "sample", progress):
        lo, hi = np.searchsorted(rows, [start, start + len(x)])
        out[lo:hi] = x[rows[lo:hi] - start]
        if len(x):
            scaled = x if scale is None else x * scale[start : start + len(x), None]
            sq = (scaled.astype(np.float64) ** 2).sum(axis=1)
            lo_sq, hi_sq = min(lo_sq, float(sq.min())), max(hi_sq, float(sq.max()))
    return (out if scale is None else out * scale[rows][:, None]), float(np.sqrt(lo_sq)), float(np.sqrt(hi_sq))


def build_index_from_shards(
    source: str | Path | Sequence[str | Path] | ShardScan,
    cfg: IndexConfig | None = None,
    *,
    scale: Any = None,
    on_bad_vectors: str = "fail",
    progress: Progress | None = None,
) -> ShardIndex:
    """Build an IDMap2-wrapped IVF index over the usable rows of embedding shards, streaming them.

    Args:
        source: a finished ``recfuse embed`` directory, shard files, or the :class:`ShardScan` of them.
        cfg: index configuration (``factory``, ``metric``, ``seed``, ``train_sample``, ``recall_queries``…).
        scale: optional ``[n]`` positive factor per usable row; the index holds ``vector × scale``
            (a bundle's ``rank_scale``).
        on_bad_vectors: ``fail`` or ``skip`` (see :func:`scan_shards`; ignored for a ShardScan).
        progress: called after every batch of every pass.

    Returns:
        :class:`ShardIndex`; FAISS id ``i`` is the ``i``-th usable row (``item_ids[i]``).

    Raises:
        SchemaError: bad shards (see :func:`scan_shards`) or a ``scale`` of the wrong shape or sign.
        ConfigError: a factory that is not IVF or cannot be trained on the sample, or (with
            ``on_low_recall="raise"``) recall below ``recall_floor``.
    """
    cfg = cfg or IndexConfig()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    scan = source if isinstance(source, ShardScan) else scan_shards(source, on_bad_vectors, progress)
    seconds["scan"] = time.perf_counter() - t0
    n, dim = scan.n, scan.dim
    if n == 0:
        raise SchemaError(f"the shards {[p.name for p in scan.shards]} hold no usable vectors; an index needs one")
    factors = None if scale is None else np.asarray(scale, dtype=np.float32)
    if factors is not None and (factors.shape != (n,) or not (np.isfinite(factors) & (factors > 0)).all()):
        raise SchemaError(
            f"`scale` must hold one positive finite factor per usable row ({n}), got shape {factors.shape}"
        )
    factory = _sharded_factory(cfg, n, dim)
    _new_index(factory, dim, cfg.metric)  # a bad factory fails before the sample pass

    t0 = time.perf_counter()
    train_rows = np.arange(n) if n <= cfg.train_sample else np.sort(
        np.random.default_rng(cfg.seed).choice(n, cfg.train_sample, replace=False))  # fmt: skip
    query_rows = np.random.default_rng(cfg.seed).choice(n, min(cfg.recall_queries, n), replace=False)
    wanted = np.union1d(train_rows, query_rows)
    gathered, smallest, largest = _gather(scan, wanted, factors, progress)
    sample = gathered[np.searchsorted(wanted, train_rows)]
    queries = np.ascontiguousarray(gathered[np.searchsorted(wanted, query_rows)])
    del gathered
    seconds["sample"] = time.perf_counter() - t0
    # as build_index: inner product over unequal norms as L2 over augmented vectors (recfuse.index.mips)
    norm = largest if mips.wanted_for_norms(cfg.mips, cfg.metric, factory, smallest, largest) else None
    index = _new_index(factory, dim + 1, "l2") if norm else _new_index(factory, dim, cfg.metric)
    if norm:
        sample = mips.augment(sample, norm)

    t0 = time.perf_counter()
    if progress is not None:
        progress(ShardProgress("train", 0, len(sample)))
    try:
        index.train(sample)
    except RuntimeError as err:
        raise ConfigError(
            f"`index.factory` {factory!r} cannot be trained on {len(sample)} vectors: {_faiss_msg(err)}; "
            "use fewer IVF lists / PQ bits, or a larger `index.train_sample`"
        ) from None
    del sample
    seconds["train"] = time.perf_counter() - t0
    if progress is not None:
        progress(ShardProgress("train", len(train_rows), len(train_rows)))

    t0 = time.perf_counter()
    k = min(RECALL_K, n)
    heap = faiss.ResultHeap(len(queries), k, keep_max=cfg.metric == "ip") if len(queries) else None
    for start, x in iter_usable(scan, "add", progress):
        if factors is not None:
            x = np.ascontiguousarray(x * factors[start : start + len(x), None])
        index.add_with_ids(mips.augment(x, norm) if norm else x, np.arange(start, start + len(x), dtype=np.int64))
        if heap is not None and len(x):
            scores, rows = faiss.knn(queries, x, min(k, len(x)), metric=faiss_metric(cfg.metric))
            heap.add_result(scores, np.where(rows >= 0, rows + start, -1))
    seconds["add"] = time.perf_counter() - t0

    item_index = ItemIndex(index, factory, cfg, mips_norm=norm)
    if heap is not None:
        heap.finalize()
        item_index.recall = _recall(item_index, queries, heap.I, k)
        check_recall(item_index.recall, factory, cfg)
    logger.info("built %s index over %d x %d from %d shards in %.2fs", factory, n, dim, len(scan.shards),
                sum(seconds.values()))  # fmt: skip
    return ShardIndex(item_index, scan, factory, len(train_rows), seconds)


def _recall(index: ItemIndex, queries: FloatArray, exact: np.ndarray, k: int) -> float:
    """Mean ``|ANN top-k ∩ exact top-k| / k`` (:func:`recfuse.index.recall.knn_recall`, as in ``served_recall``)."""
    return knn_recall(index.search(queries, k).ids, exact)
