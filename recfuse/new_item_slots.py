"""New-item slots: a share of every ranking's positions held for items the model never trained on (numpy only).

New items (cold items, items added with ``add-items``: no training interactions) are embedded
from content alone and score below warm items, whose vectors carry a trained id as well; ranked
among all items they rarely reach a top k. ``model.new_item_share`` = ``s`` (0: off) reserves
``floor(p * s)`` of the first ``p`` positions of every ranking for the best-scoring new items that
pass the query's filters, for every ``p``: with ``s = 0.1`` a new item sits at position 10, 20, … at
the latest (1-based). New items that rank high enough on their own count towards the quota. The
list is the merge of two score-ordered streams, the warm items' and the new items', which takes the
higher score at each position unless the new items are behind their quota, and then the next new
item. So a shorter list is a prefix of a longer one (one ``k = 50`` ranking holds the lists for
``k = 10`` and ``k = 20``), and with ``s = 0`` the ranking is the plain one.

One implementation for every path that ranks: :func:`topk_with_new_slots` over a full score block
(evaluation, :mod:`recfuse.evaluation.fullrank`) and :func:`merge_new_items` over two candidate
lists (the Recommender, :mod:`recfuse.inference.new_items`, whose new stream is an exact scoring
of the new items). Why a share and why the last position of each block: docs/decisions.md.

Example:
    >>> import numpy as np
    >>> scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.1]], np.float32)   # item 4 is new
    >>> is_new = np.array([False, False, False, False, True])
    >>> topk_with_new_slots(scores, 4, is_new, share=0.25).rows.tolist()
    [[0, 1, 2, 4]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from recfuse.ranking import TopK, mask_excluded, topk_of_scores
from recfuse.types import FloatArray, Int64Array

#: guards ``floor(p * share)`` against float error (0.29 * 100 = 28.999…)
_EPS = 1e-9


def check_share(share: float) -> float:
    """``share`` as a float in [0, 1); raises ``ValueError`` naming the value otherwise."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not (math.isfinite(share) and 0 <= share < 1):
        raise ValueError(
            f"`new_item_share` must be a number in [0, 1) (the share of ranking positions held for new items; "
            f"0 turns it off), got {share!r}"
        )
    return float(share)


def quota(k: int, share: float, offset: float = 0.0) -> Int64Array:
    """``[k]`` new items required among the first ``p`` positions, ``p = 1..k``: ``floor(p * share + offset)``.

    ``offset`` 0 (what every ranking path uses) holds the last position of each ``1 / share`` block;
    0.5 would hold its middle (the placement compared in docs/decisions.md).

    Example:
        >>> quota(10, 0.2).tolist()
        [0, 0, 0, 0, 1, 1, 1, 1, 1, 2]
    """
    share = check_share(share)
    if not 0 <= offset < 1:
        raise ValueError(f"`offset` must be in [0, 1), got {offset!r}")
    return np.floor(np.arange(1, int(k) + 1) * share + offset + _EPS).astype(np.int64)


def merge_new_items(
    warm_idx: Int64Array,
    warm_scores: FloatArray,
    new_idx: Int64Array,
    new_scores: FloatArray,
    k: int,
    share: float,
    offset: float = 0.0,
) -> tuple[Int64Array, FloatArray]:
    """Merge per-query warm and new candidate lists into top-``k`` lists that meet the new-item quota.

    Args:
        warm_idx, warm_scores: ``[b, w]`` warm items by descending score (``-inf`` scores are empty
            slots, e.g. masked items, and are never taken).
        new_idx, new_scores: ``[b, m]`` new items by descending score, same convention.
        k: list length.
        share: ``model.new_item_share``; offset: where in each block the held slot is (:func:`quota`).

    Returns:
        ``(indices [b, k] int64, scores [b, k] float32)``; positions left when both streams run dry
        hold index ``-1`` and score ``-inf``. At each position the better head of the two streams is
        taken (ties: the smaller index), or the new stream's head while the new items so far are
        fewer than the quota.
    """
    warm_idx, new_idx = np.asarray(warm_idx, np.int64), np.asarray(new_idx, np.int64)
    warm_scores, new_scores = np.asarray(warm_scores, np.float32), np.asarray(new_scores, np.float32)
    if warm_idx.shape != warm_scores.shape or new_idx.shape != new_scores.shape or warm_idx.ndim != 2:
        raise ValueError(
            f"warm and new lists must be [b, n] index/score pairs of equal shape, got {warm_idx.shape}/"
            f"{warm_scores.shape} and {new_idx.shape}/{new_scores.shape}"
        )
    if len(warm_idx) != len(new_idx):
        raise ValueError(f"warm and new lists need the same number of queries, got {len(warm_idx)} and {len(new_idx)}")
    b = len(warm_idx)
    need = quota(k, share, offset)
    # one -inf sentinel column so a pointer past the end reads "empty"
    w_idx = np.concatenate([warm_idx, np.full((b, 1), -1, np.int64)], axis=1)
    w_sc = np.concatenate([warm_scores, np.full((b, 1), -np.inf, np.float32)], axis=1)
    n_idx = np.concatenate([new_idx, np.full((b, 1), -1, np.int64)], axis=1)
    n_sc = np.concatenate([new_scores, np.full((b, 1), -np.inf, np.float32)], axis=1)
    w_last, n_last = w_idx.shape[1] - 1, n_idx.shape[1] - 1
    out_idx = np.full((b, k), -1, np.int64)
    out_sc = np.full((b, k), -np.inf, np.float32)
    rows = np.arange(b)
    wp = np.zeros(b, np.int64)
    npos = np.zeros(b, np.int64)
    taken_new = np.zeros(b, np.int64)
    for p in range(k):
        ws, ns = w_sc[rows, wp], n_sc[rows, npos]
        wi, ni = w_idx[rows, wp], n_idx[rows, npos]
        new_ok = np.isfinite(ns)
        better = (ns > ws) | ((ns == ws) & (ni < wi))
        take_new = new_ok & ((taken_new < need[p]) | better | ~np.isfinite(ws))
        take_warm = ~take_new & np.isfinite(ws)
        out_idx[:, p] = np.where(take_new, ni, np.where(take_warm, wi, -1))
        out_sc[:, p] = np.where(take_new, ns, np.where(take_warm, ws, -np.inf))
        taken_new += take_new
        npos = np.minimum(npos + take_new, n_last)
        wp = np.minimum(wp + take_warm, w_last)
    return out_idx, out_sc


def topk_with_new_slots(
    scores: FloatArray,
    k: int,
    is_new: npt.NDArray[np.bool_],
    share: float,
    exclude: Sequence[npt.ArrayLike] | None = None,
    offset: float = 0.0,
) -> TopK:
    """:func:`recfuse.ranking.topk_of_scores` with new-item slots: the top ``k`` of a score block ``[b, n]``.

    ``is_new [n]`` marks the new items. With ``share`` 0 (or no new item) this is ``topk_of_scores``.
    The block is modified in place (excluded entries set to ``-inf``).

    Returns:
        :class:`recfuse.ranking.TopK` ``(rows [b, k] int64, scores [b, k] float32)`` (rows are column
        positions), best first as merged; where fewer than ``k`` items remain the last positions hold
        row ``-1`` and score ``-inf``. Read the fields by name, as with ``topk_of_scores``.
    """
    share = check_share(share)
    new = np.asarray(is_new, dtype=bool)
    if scores.ndim != 2 or new.shape != (scores.shape[1],):
        raise ValueError(f"`is_new` must have one flag per score column ({scores.shape[-1]}), got shape {new.shape}")
    if share == 0 or not new.any() or new.all():
        return topk_of_scores(scores, k, exclude)
    mask_excluded(scores, exclude)
    k = min(int(k), scores.shape[1])
    warm_cols, new_cols = np.flatnonzero(~new), np.flatnonzero(new)
    warm = topk_of_scores(scores[:, warm_cols], min(k, len(warm_cols)))
    fresh = topk_of_scores(scores[:, new_cols], min(k, len(new_cols)))
    rows, merged = merge_new_items(
        warm_cols[warm.rows], warm.scores, new_cols[fresh.rows], fresh.scores, k, share, offset
    )
    return TopK(rows, merged)
