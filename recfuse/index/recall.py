"""Recall@k of approximate search against exact search: the one formula every index check uses.

:func:`knn_recall` is ``faiss.contrib.evaluation.knn_intersection_measure`` (the mean over queries
of ``|ANN top-k ∩ exact top-k| / k``) with two guards around it: a shape mismatch raises
``ValueError`` instead of an ``assert``, and the ``-1`` ids that fill a short result (fewer than
``k`` hits, e.g. an IVF search that probed too few lists) never count as a hit, even when both
tables hold one.

Example:
    >>> import numpy as np
    >>> knn_recall(np.array([[3, 1, -1]]), np.array([[1, 2, 3]]))
    0.6666666666666666
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from faiss.contrib.evaluation import knn_intersection_measure


def knn_recall(ann_ids: npt.ArrayLike, exact_ids: npt.ArrayLike) -> float:
    """Mean over queries of ``|ann top-k ∩ exact top-k| / k``.

    Args:
        ann_ids: ``[m, k]`` ids returned by the approximate search (``-1``: no result).
        exact_ids: ``[m, k]`` ids of the exact top ``k`` of the same queries.

    Returns:
        Recall@k in ``[0, 1]``; ``nan`` when there are no queries or ``k`` is 0.
    """
    ann = np.asarray(ann_ids, dtype=np.int64)
    exact = np.asarray(exact_ids, dtype=np.int64)
    if ann.ndim != 2 or ann.shape != exact.shape:
        raise ValueError(
            f"`ann_ids` and `exact_ids` must both be [queries, k] with the same shape, got {ann.shape} and "
            f"{exact.shape}; search both at the same k"
        )
    if ann.size == 0:
        return float("nan")
    # -1 (no result) becomes -1 in one table and -2 in the other, so it never intersects
    return float(knn_intersection_measure(np.where(ann >= 0, ann, -1), np.where(exact >= 0, exact, -2)))
