"""Full-ranking top-k over a whole catalog with per-query exclusions (numpy only).

Shared by validation during training, offline evaluation and benchmarks: scores every item for
every query in row blocks (bounded memory), masks each query's excluded items (e.g. the user's
training items) to ``-inf`` and takes the top ``k`` with ``argpartition``.

Example:
    >>> import numpy as np
    >>> q = np.eye(2, dtype=np.float32); items = np.eye(2, dtype=np.float32)
    >>> top = masked_topk(q, items, k=1, exclude=[np.array([0]), np.array([], np.int64)])
    >>> top.rows.tolist(), top.scores.tolist()
    ([[1], [1]], [[0.0], [1.0]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from recfuse.types import FloatArray, Int64Array


class TopK(NamedTuple):
    """A full ranking's top ``k``, best first: ``rows`` and ``scores`` of equal shape ``[q, k]``.

    ``rows`` are row positions in the ``items`` (or score-block columns) that were ranked, not item
    ids: a caller that ranked a subset maps them back itself. Read the fields by name; the order
    (rows first) differs from an index search's ``SearchResult(scores, ids)``
    (:mod:`recfuse.index.result`), and both fields can have the same shape, so a positional
    unpack in the wrong order would swap them silently.

    Attributes:
        rows: int64 row positions.
        scores: float32 scores, descending per row; ``-inf`` marks an excluded item, present only
            when fewer than ``k`` items remain.
    """

    rows: Int64Array
    scores: FloatArray


def popularity_scale(counts: npt.ArrayLike, prior: float, new_item_scale: float = 1.0) -> FloatArray:
    """Per-item factor ``1 + prior * log(1 + count)`` of the popularity prior (``model.popularity_prior``).

    Item vectors are ranked multiplied by it (training counts), so a score is ``q . v * factor``: the
    prior lifts items in proportion to how well they already match, instead of adding popularity to
    every score. An item never trained on (count 0: a cold item, or one added later) gets
    ``new_item_scale`` (``model.new_item_scale``; 1 by default): its vector comes from content alone
    and scores lower than warm items' content + id vectors, so ranked among all items new items can
    need a lift to reach anyone's top k (bench/README.md, "Cold start on real data").
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.size and (not np.isfinite(c).all() or c.min() < 0):
        raise ValueError(
            f"popularity counts must be finite and >= 0 (training interactions per item), got min {float(c.min())!r}"
        )
    if not (np.isfinite(new_item_scale) and new_item_scale > 0):
        raise ValueError(f"new_item_scale must be a finite number > 0, got {new_item_scale!r}")
    return np.where(c > 0, 1.0 + float(prior) * np.log1p(c), float(new_item_scale)).astype(np.float32)


def masked_topk(
    queries: FloatArray,
    items: FloatArray,
    k: int,
    exclude: Sequence[npt.ArrayLike] | None = None,
    block_size: int = 1024,
) -> TopK:
    """Top-``k`` items by inner product for each query, excluded items removed.

    Args:
        queries: ``[q, d]`` query vectors.
        items: ``[n, d]`` item vectors (row index = item index).
        k: number of items to return per query (clipped to ``n``).
        exclude: per-query arrays of item row indices that must not be returned (len ``q``).
        block_size: queries scored per block; bounds memory at ``block_size * n`` floats.

    Returns:
        :class:`TopK` ``(rows [q, k] int64, scores [q, k] float32)`` sorted by descending score.
        Excluded items get score ``-inf`` and only appear when fewer than ``k`` items remain
        (callers drop them).
    """
    queries = np.asarray(queries, dtype=np.float32)
    items = np.asarray(items, dtype=np.float32)
    if queries.ndim != 2 or items.ndim != 2 or queries.shape[1] != items.shape[1]:
        raise ValueError(
            f"`queries` [q, d] and `items` [n, d] must be rank 2 with equal d, got {queries.shape} and {items.shape}"
        )
    if exclude is not None and len(exclude) != len(queries):
        raise ValueError(f"`exclude` must have one entry per query ({len(queries)}), got {len(exclude)}")
    if k < 1:
        raise ValueError(f"`k` must be >= 1, got {k}")
    n = items.shape[0]
    k = min(k, n)
    out_idx = np.empty((len(queries), k), dtype=np.int64)
    out_scores = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), block_size):
        stop = min(start + block_size, len(queries))
        block = None if exclude is None else exclude[start:stop]
        top = topk_of_scores(queries[start:stop] @ items.T, k, block)
        out_idx[start:stop], out_scores[start:stop] = top.rows, top.scores
    return TopK(out_idx, out_scores)


def topk_of_scores(scores: FloatArray, k: int, exclude: Sequence[npt.ArrayLike] | None = None) -> TopK:
    """Top-``k`` columns of a score block ``[b, n]`` per row, excluded columns removed.

    The block is modified in place (excluded entries set to ``-inf``). Used by :func:`masked_topk`
    and by rankers whose scores are not inner products (evaluation baselines such as EASE).

    Args:
        scores: ``[b, n]`` float32 scores, one row per query.
        k: list length (clipped to ``n``).
        exclude: per-row arrays of column indices that must not be returned (len ``b``).

    Returns:
        :class:`TopK` ``(rows [b, k] int64, scores [b, k] float32)`` (rows are column positions)
        sorted by descending score; excluded items get ``-inf`` and only appear when fewer than
        ``k`` items remain.
    """
    if scores.ndim != 2:
        raise ValueError(f"`scores` must be rank 2 [b, n], got shape {scores.shape}")
    if k < 1:
        raise ValueError(f"`k` must be >= 1, got {k}")
    b, n = scores.shape
    mask_excluded(scores, exclude)
    k = min(k, n)
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n), (b, n)).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    rows = np.take_along_axis(part, order, axis=1)
    return TopK(rows, np.take_along_axis(part_scores, order, axis=1).astype(np.float32))


def mask_excluded(scores: FloatArray, exclude: Sequence[npt.ArrayLike] | None) -> None:
    """Set each row's excluded columns of a score block ``[b, n]`` to ``-inf``, in place.

    Args:
        scores: ``[b, n]`` float32 scores.
        exclude: per-row arrays of column indices (len ``b``), or None for no exclusions.
    """
    if exclude is None:
        return
    if len(exclude) != scores.shape[0]:
        raise ValueError(f"`exclude` must have one entry per row ({scores.shape[0]}), got {len(exclude)}")
    rows, cols = [], []
    for r, ex in enumerate(exclude):
        ex_arr = np.asarray(ex, dtype=np.int64).reshape(-1)
        rows.append(np.full(len(ex_arr), r, dtype=np.int64))
        cols.append(ex_arr)
    if rows:
        scores[np.concatenate(rows), np.concatenate(cols)] = -np.inf
