"""Ranking metrics per user (pure numpy), so two variants can be compared pair-wise user by user.

All accuracy metrics take a ranked top-K list per user and the user's held-out relevant items:

- ``hits [u, K]`` — ``hits[i, r]`` is True when the item at rank ``r`` of user ``i`` is relevant.
- Recall@k = hits in the top k / number of relevant items (the plain definition; with more than k
  relevant items it cannot reach 1).
- Precision@k = hits in the top k / k.
- HitRate@k = 1 if any relevant item is in the top k.
- NDCG@k = Σ_r hits[r] / log2(r + 2) over the top k, divided by the ideal DCG of min(|rel|, k) hits.
- MRR@k = 1 / (rank of the first relevant item), 0 when none is in the top k.
- Novelty@k = mean self-information −log2 p(item) of the recommended items, with
  p(item) = (train count + 1) / (train interactions + catalog size) (add-one smoothing, so cold items
  with no training interactions get a finite, high novelty).

Aggregate (not per user): catalog coverage@k (share of catalog items recommended to anyone) and
popularity bias as the Gini coefficient of how often each catalog item is recommended (0: every
item equally often, → 1: a few items take all slots).

Ranked lists may contain ``-1`` (no item: fewer candidates than k after masking); it never counts
as a hit, is skipped by novelty/coverage/Gini, and still occupies its rank slot.

Ties: these functions score the list exactly as ranked; :mod:`recfuse.evaluation.fullrank` orders
items of equal score by ascending item index, so the same inputs always give the same numbers.

Example:
    >>> import numpy as np
    >>> hits = hit_matrix(np.array([[3, 1, 2]]), [np.array([1])])
    >>> float(recall_at_k(hits, np.array([1]), 1)[0]), float(mrr_at_k(hits, 3)[0])
    (0.0, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
BoolMatrix = npt.NDArray[np.bool_]


def _check_k(hits: BoolMatrix, k: int) -> None:
    if not 1 <= k <= hits.shape[1]:
        raise ValueError(f"`k` must be in [1, {hits.shape[1]}] (the ranked list length), got {k}")


def relevant_pairs(relevant: Sequence[npt.ArrayLike]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Flatten per-user relevant item arrays into ``(user_rows, items)`` pairs (duplicates kept)."""
    arrays = [np.asarray(r, dtype=np.int64).reshape(-1) for r in relevant]
    lengths = np.fromiter((len(r) for r in arrays), dtype=np.int64, count=len(arrays))
    users = np.repeat(np.arange(len(arrays), dtype=np.int64), lengths)
    items = np.concatenate(arrays) if arrays else np.empty(0, np.int64)
    return users, items


def hits_from_pairs(
    topk: npt.ArrayLike, rel_users: npt.ArrayLike, rel_items: npt.ArrayLike
) -> tuple[BoolMatrix, npt.NDArray[np.int64]]:
    """Hit matrix ``[u, K]`` and distinct relevant items per user ``[u]`` from ``(user_row, item)`` pairs.

    Vectorised: (user, item) pairs become one int64 key each and membership is one sorted search,
    so cost does not grow with a Python loop over users.
    """
    top = np.asarray(topk, dtype=np.int64)
    if top.ndim != 2:
        raise ValueError(f"`topk` must be rank 2 [users, K], got shape {top.shape}")
    ru = np.asarray(rel_users, dtype=np.int64).reshape(-1)
    ri = np.asarray(rel_items, dtype=np.int64).reshape(-1)
    width = int(max(top.max(initial=0), ri.max(initial=0))) + 2
    keys = np.unique(ru * width + ri)
    n_rel = np.bincount(keys // width, minlength=top.shape[0]).astype(np.int64)
    top_keys = np.arange(top.shape[0], dtype=np.int64)[:, None] * width + top
    pos = np.searchsorted(keys, top_keys)
    found = keys[np.minimum(pos, max(len(keys) - 1, 0))] == top_keys if len(keys) else np.zeros(top.shape, bool)
    return np.asarray(found & (top >= 0), dtype=bool), n_rel


def hit_matrix(topk: npt.ArrayLike, relevant: Sequence[npt.ArrayLike]) -> BoolMatrix:
    """Which ranked items are relevant.

    Args:
        topk: ``[u, K]`` item indices per user, best first (``-1`` = empty slot).
        relevant: per user, an array of relevant item indices (len ``u``).

    Returns:
        ``[u, K]`` bool.
    """
    top = np.asarray(topk, dtype=np.int64)
    if top.ndim != 2:
        raise ValueError(f"`topk` must be rank 2 [users, K], got shape {top.shape}")
    if len(relevant) != top.shape[0]:
        raise ValueError(f"`relevant` must have one entry per user ({top.shape[0]}), got {len(relevant)}")
    return hits_from_pairs(top, *relevant_pairs(relevant))[0]


def recall_at_k(hits: BoolMatrix, n_relevant: npt.ArrayLike, k: int) -> F64:
    """Recall@k per user ``[u]``: hits in top k / number of relevant items (users need ≥ 1)."""
    _check_k(hits, k)
    n = np.asarray(n_relevant, dtype=np.float64)
    if np.any(n <= 0):
        raise ValueError("`n_relevant` must be >= 1 for every user; drop users with no test items first")
    return np.asarray(hits[:, :k].sum(axis=1) / n, dtype=np.float64)


def precision_at_k(hits: BoolMatrix, k: int) -> F64:
    """Precision@k per user ``[u]``: hits in top k / k."""
    _check_k(hits, k)
    return np.asarray(hits[:, :k].sum(axis=1) / k, dtype=np.float64)


def hit_rate_at_k(hits: BoolMatrix, k: int) -> F64:
    """HitRate@k per user ``[u]``: 1.0 when any relevant item is in the top k."""
    _check_k(hits, k)
    return np.asarray(hits[:, :k].any(axis=1), dtype=np.float64)


def ndcg_at_k(hits: BoolMatrix, n_relevant: npt.ArrayLike, k: int) -> F64:
    """NDCG@k per user ``[u]`` with binary relevance and the log2(rank + 1) discount (rank from 1)."""
    _check_k(hits, k)
    n = np.asarray(n_relevant, dtype=np.int64)
    if np.any(n <= 0):
        raise ValueError("`n_relevant` must be >= 1 for every user; drop users with no test items first")
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))  # [k]
    dcg = hits[:, :k] @ discounts
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(n, k)]
    return np.asarray(dcg / ideal, dtype=np.float64)


def mrr_at_k(hits: BoolMatrix, k: int) -> F64:
    """Reciprocal rank of the first relevant item within the top k per user ``[u]`` (0 if none)."""
    _check_k(hits, k)
    h = hits[:, :k]
    first = np.argmax(h, axis=1)
    return np.where(h.any(axis=1), 1.0 / (first + 1.0), 0.0).astype(np.float64)


def self_information(item_counts: npt.ArrayLike) -> F64:
    """−log2 p(item) per catalog item ``[n]`` with add-one smoothing of the training counts."""
    c = np.asarray(item_counts, dtype=np.float64)
    if c.ndim != 1 or np.any(c < 0):
        raise ValueError(f"`item_counts` must be a 1-d array of non-negative counts, got shape {c.shape}")
    return np.asarray(-np.log2((c + 1.0) / (c.sum() + len(c))), dtype=np.float64)


def novelty_at_k(topk: npt.ArrayLike, item_counts: npt.ArrayLike, k: int) -> F64:
    """Mean self-information of each user's top-k items ``[u]`` (empty slots skipped; 0 if all empty)."""
    top = np.asarray(topk, dtype=np.int64)[:, :k]
    info = self_information(item_counts)
    valid = top >= 0
    vals = np.where(valid, info[np.where(valid, top, 0)], 0.0)
    n = valid.sum(axis=1)
    return np.asarray(np.where(n > 0, vals.sum(axis=1) / np.maximum(n, 1), 0.0), dtype=np.float64)


def recommendation_counts(topk: npt.ArrayLike, n_items: int, k: int) -> npt.NDArray[np.int64]:
    """How many users got each catalog item in their top k ``[n_items]``."""
    top = np.asarray(topk, dtype=np.int64)[:, :k].reshape(-1)
    return np.bincount(top[top >= 0], minlength=n_items).astype(np.int64)


def coverage_at_k(topk: npt.ArrayLike, n_items: int, k: int) -> float:
    """Share of the ``n_items`` catalog items that appear in at least one user's top k."""
    if n_items < 1:
        raise ValueError(f"`n_items` must be >= 1, got {n_items}")
    return float((recommendation_counts(topk, n_items, k) > 0).sum() / n_items)


def gini(counts: npt.ArrayLike) -> float:
    """Gini coefficient of non-negative counts (0 equal, (n−1)/n when one entry holds everything).

    Example:
        >>> gini([1, 1, 1, 1]), gini([0, 0, 0, 4])
        (0.0, 0.75)
    """
    x = np.sort(np.asarray(counts, dtype=np.float64).reshape(-1))
    if len(x) == 0 or np.any(x < 0):
        raise ValueError("`counts` must be a non-empty array of non-negative numbers")
    total = x.sum()
    if total == 0:
        return 0.0
    n = len(x)
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * (ranks @ x) / (n * total) - (n + 1.0) / n)


def gini_at_k(topk: npt.ArrayLike, n_items: int, k: int) -> float:
    """Popularity bias: Gini of recommendation counts over all catalog items at cut-off k."""
    return gini(recommendation_counts(topk, n_items, k))


def per_user_metrics(
    topk: npt.ArrayLike,
    relevant: Sequence[npt.ArrayLike],
    ks: Sequence[int],
    item_counts: npt.ArrayLike | None = None,
) -> dict[str, F64]:
    """All per-user metrics for every k in ``ks``.

    Args:
        topk: ``[u, K]`` ranked item indices (K ≥ max(ks)).
        relevant: per user, the relevant (held-out) item indices; every user needs at least one.
        ks: cut-offs.
        item_counts: ``[n_items]`` training interaction counts (enables ``novelty@k``).

    Returns:
        ``{"recall@10": [u], "ndcg@10": [u], "hit@10": [u], "precision@10": [u], "mrr@10": [u],
        "novelty@10": [u], ...}`` float64 arrays in user order.
    """
    top = np.asarray(topk, dtype=np.int64)
    if len(relevant) != len(top):
        raise ValueError(f"`relevant` must have one entry per user ({len(top)}), got {len(relevant)}")
    return per_user_metrics_from_pairs(top, *relevant_pairs(relevant), ks=ks, item_counts=item_counts)


def per_user_metrics_from_pairs(
    topk: npt.ArrayLike,
    rel_users: npt.ArrayLike,
    rel_items: npt.ArrayLike,
    ks: Sequence[int],
    item_counts: npt.ArrayLike | None = None,
) -> dict[str, F64]:
    """:func:`per_user_metrics` with relevant items given as ``(user_row, item)`` pairs."""
    hits, n_rel = hits_from_pairs(topk, rel_users, rel_items)
    out: dict[str, F64] = {}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(hits, n_rel, k)
        out[f"ndcg@{k}"] = ndcg_at_k(hits, n_rel, k)
        out[f"hit@{k}"] = hit_rate_at_k(hits, k)
        out[f"precision@{k}"] = precision_at_k(hits, k)
        out[f"mrr@{k}"] = mrr_at_k(hits, k)
        if item_counts is not None:
            out[f"novelty@{k}"] = novelty_at_k(topk, item_counts, k)
    return out


def aggregate_metrics(topk: npt.ArrayLike, n_items: int, ks: Sequence[int]) -> dict[str, float]:
    """Catalog-level metrics: ``coverage@k`` and ``gini@k`` for every k."""
    out: dict[str, float] = {}
    for k in ks:
        counts = recommendation_counts(topk, n_items, k)
        out[f"coverage@{k}"] = float((counts > 0).sum() / n_items)
        out[f"gini@{k}"] = gini(counts)
    return out
