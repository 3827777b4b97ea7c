"""The terms of the item-item head and what fitting them shares (numpy + scipy).

:func:`weight_grid` builds the interaction weights for each value of a method's grid (EASE, with
content in its Gram matrix or without; item-kNN; sequential rules) from :func:`train_matrix`, and
:func:`narrow` cuts a config to one grid value; :func:`content_vectors` and :func:`choose_content`
give the content term (each item's nearest items by a vector modality's cosine) and its weight,
and :func:`fold_content` folds it into the head's one matrix; :func:`score_scale` is the ratio of
the model's score spread to a term's that every blend weight is relative to. The workflows that
choose and refit a head are in :mod:`recfuse.evaluation.item_head`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recfuse.config import ItemHeadConfig, ModalityConfig
from recfuse.data.item_features import vector_column
from recfuse.evaluation.fullrank import SplitLike
from recfuse.item_weights import (
    content_weights,
    cut_rows,
    ease_weights,
    neighbour_matrix,
    sequential_weights,
    top_neighbours,
)
from recfuse.types import FloatArray

logger = logging.getLogger("recfuse.evaluation.item_head")

__all__ = [
    "check_content",
    "choose_content",
    "content_vectors",
    "fold_content",
    "narrow",
    "score_scale",
    "sequences",
    "train_matrix",
    "weight_grid",
]


def content_vectors(items: pd.DataFrame, modality: ModalityConfig, item_ids: Sequence[str]) -> FloatArray:
    """``[n, dim]`` float32 rows of ``modality``'s vector column for ``item_ids`` (a model's catalog
    order): zeros for an item the table lacks or whose vector is null (it gets no content neighbours).

    Raises:
        SchemaError: a vector of the wrong width or with a non-finite value (names the item and column).
    """
    vec, mask = vector_column(items, modality)
    pos = pd.Index(items["item_id"].astype(str)).get_indexer(pd.Index([str(i) for i in item_ids]))
    out = np.zeros((len(item_ids), modality.dim), np.float32)
    found = pos >= 0
    out[found] = vec[pos[found]] * mask[pos[found], None]
    return out


def check_content(cfg: ItemHeadConfig, content: FloatArray | None, n_items: int) -> None:
    """Raise ValueError unless a content term (``cfg.content_modality``) has its ``[n_items, dim]``
    vectors and the catalog is within ``cfg.content_max_items``; nothing to check without one."""
    if not cfg.content_modality:
        return
    if content is None:
        raise ValueError(
            f"`item_head.content_modality` = {cfg.content_modality!r} but no content vectors were passed: "
            "pass content_vectors(items, modality, model.item_ids)"
        )
    if content.ndim != 2 or content.shape[0] != n_items:
        raise ValueError(f"content vectors must be [{n_items}, dim] (one row per catalog item), got {content.shape}")
    if n_items > cfg.content_max_items:
        raise ValueError(
            f"the content term's exact neighbour search over {n_items} items exceeds "
            f"`item_head.content_max_items` = {cfg.content_max_items} (it costs n^2 * dim multiply-adds): "
            "raise the limit, or set content_modality = ''"
        )


def choose_content(
    cfg: ItemHeadConfig,
    content: FloatArray,
    queries: FloatArray,
    vectors: FloatArray,
    profiles: sp.csr_matrix,
    weights: sp.csr_matrix,
    beta: float,
    params: dict[str, float | int],
    metric: Any,
    selection: list[dict[str, Any]],
    block_size: int,
) -> tuple[sp.csr_matrix, float, dict[str, float | int]]:
    """Step 4 of :mod:`recfuse.evaluation.item_head`: the content term's weight chosen with ``beta`` fixed
    (0 always tried), then folded (:func:`fold_content`)."""
    t = time.perf_counter()
    c_weights = content_weights(content, cfg.content_neighbors, block_size)
    scale = score_scale(queries, vectors, profiles, c_weights, block_size)
    best_m, best_score = 0.0, -1.0
    for m in [0.0] + (list(cfg.content_betas) if scale > 0 else []):

        def blended(s: int, e: int, m: float = m) -> FloatArray:
            out = queries[s:e] @ vectors.T
            if beta:
                out += np.float32(beta) * (profiles[s:e] @ weights).toarray().astype(np.float32)
            if m:
                out += np.float32(scale * m) * (profiles[s:e] @ c_weights).toarray().astype(np.float32)
            return out

        score = metric(blended)
        selection.append({"stage": "content", "modality": cfg.content_modality, "neighbors": cfg.content_neighbors,
                          "content_beta": scale * m, "multiplier": m, cfg.select_metric: score,
                          "seconds": round(time.perf_counter() - t, 3)})  # fmt: skip
        logger.info("item head content %s x%g: %s %.5f", cfg.content_modality, m, cfg.select_metric, score)
        if score > best_score:
            best_m, best_score = m, score
        t = time.perf_counter()
    if scale > 0 and best_m == max(cfg.content_betas) and len(cfg.content_betas) > 1:
        logger.warning("item head: the best content multiplier is the largest, %s; widen `item_head.content_betas`",
                       best_m)  # fmt: skip
    return fold_content(weights, beta, c_weights, scale * best_m, cfg.content_neighbors, best_m, params)


def fold_content(
    weights: sp.csr_matrix,
    beta: float,
    c_weights: sp.csr_matrix,
    c_beta: float,
    neighbors: int,
    multiplier: float,
    params: dict[str, float | int],
) -> tuple[sp.csr_matrix, float, dict[str, float | int]]:
    """``(W + (c_beta / beta) C, beta)``, or ``(C, c_beta)`` where ``beta`` is 0, and the params that say so."""
    params = {**params, "content_neighbors": int(neighbors), "content_multiplier": float(multiplier),
              "content_beta": float(c_beta)}  # fmt: skip
    if c_beta <= 0:
        return weights, beta, params
    if beta <= 0:
        return c_weights, c_beta, {**params, "content_only": 1}
    folded = sp.csr_matrix(weights + c_weights.multiply(np.float32(c_beta / beta)), dtype=np.float32)
    folded.sort_indices()
    return folded, beta, params


def train_matrix(split: SplitLike, index: dict[str, int]) -> sp.csr_matrix:
    """0/1 ``[users, n]`` of the training rows (rows whose item the catalog lacks are left out)."""
    train = split.train
    rows = train["item_id"].astype(str).map(index)
    known = rows.notna().to_numpy()
    users = np.unique(train["user_id"].astype(str).to_numpy()[known], return_inverse=True)[1]
    cols = rows[known].astype(np.int64).to_numpy()
    x = sp.csr_matrix(
        (np.ones(len(cols), np.float32), (users, cols)), shape=(int(users.max(initial=-1)) + 1, len(index))
    )
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def weight_grid(
    cfg: ItemHeadConfig,
    split: SplitLike,
    index: dict[str, int],
    block_size: int,
    content: FloatArray | None = None,
) -> Iterator[tuple[sp.csr_matrix, dict[str, float | int]]]:
    """The head's weights for each grid value of ``cfg.method`` and the params that name them; what
    the values share (the training matrix, one similarity pass at the largest K, the sorted
    sequences) is built once. EASE tries each lambda with each ``ease_content_alphas`` value, whose
    side information is ``content`` (catalog order; needed where a value is above 0).

    Raises:
        ValueError: an ``ease_content_alphas`` value is above 0 and ``content`` is None.
    """
    keep = cfg.keep
    if cfg.method == "sequential":
        users, items = sequences(split, index)
        for window in cfg.seq_windows:
            yield sequential_weights(users, items, len(index), int(window), keep), {"window": int(window), "keep": keep}
        return
    x = train_matrix(split, index)
    if cfg.method == "ease":
        if content is None and max(cfg.ease_content_alphas) > 0:
            raise ValueError(
                f"`item_head.ease_content_alphas` = {cfg.ease_content_alphas} adds content to EASE's Gram "
                "matrix, but no content vectors were passed: pass content_vectors(items, modality, item_ids)"
            )
        for lam in cfg.ease_lambdas:
            for alpha in cfg.ease_content_alphas:
                params: dict[str, float | int] = {"lambda": float(lam), "keep": keep}
                params.update({"content_alpha": float(alpha)} if alpha > 0 else {})
                w = ease_weights(x, float(lam), keep, block_size, cfg.ease_max_items, content, float(alpha))
                yield w, params
        return
    k_max = min(max(cfg.knn_neighbors), max(len(index) - 1, 1))
    nb_idx, nb_val = top_neighbours(x, k_max, 0.0, block_size)  # smaller K are prefixes of the largest
    for k in cfg.knn_neighbors:
        w = cut_rows(neighbour_matrix(nb_idx[:, :k], nb_val[:, :k]), keep)
        yield w, {"neighbors": int(k), "keep": keep}


def narrow(cfg: ItemHeadConfig, method: str, value: float, keep: int, decay: float, alpha: float) -> ItemHeadConfig:
    """``cfg`` narrowed to one weights setting (of ``method``'s grid; EASE's with its ``alpha``) and one decay."""
    cfg = dataclasses.replace(cfg, method=method, keep=keep, history_decays=(float(decay),))
    if method == "ease":
        return dataclasses.replace(cfg, ease_lambdas=(float(value),), ease_content_alphas=(float(alpha),))
    if method == "itemknn":
        return dataclasses.replace(cfg, knn_neighbors=(int(value),))
    return dataclasses.replace(cfg, seq_windows=(int(value),))


def sequences(split: SplitLike, index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """The training rows as (user code, catalog row), sorted by user then time (ties in file order)."""
    train = split.train
    rows = train["item_id"].astype(str).map(index)
    known = train.loc[rows.notna().to_numpy()].assign(_row=rows[rows.notna()].astype(np.int64))
    order = known.sort_values(["user_id", "timestamp"], kind="stable") if "timestamp" in known else known
    users = pd.factorize(order["user_id"].astype(str))[0]
    return users, order["_row"].to_numpy(np.int64)


def score_scale(
    queries: FloatArray, vectors: FloatArray, profiles: sp.csr_matrix, weights: sp.csr_matrix, block_size: int
) -> float:
    """Median over users of std(model scores) / std(head scores); 0 when the head scores nobody."""
    ratios = []
    for s in range(0, len(queries), block_size):
        e = min(s + block_size, len(queries))
        m = (queries[s:e] @ vectors.T).std(axis=1)
        h = np.asarray((profiles[s:e] @ weights).toarray()).std(axis=1)
        ok = h > 0
        ratios.append(m[ok] / h[ok])
    r = np.concatenate(ratios) if ratios else np.zeros(0)
    return float(np.median(r)) if len(r) else 0.0
