"""What a search returns: ``(scores, ids)``, the order of ``faiss.Index.search`` and TFRS's top-k layers.

Both fields can have the same shape, so a positional unpack in the wrong order would swap them
silently; read them by name (``res.ids``, ``res.scores``) where the code is not hot, and unpack
``scores, ids = res`` (faiss's order) where it is.

Example:
    >>> import numpy as np
    >>> res = SearchResult(np.array([[0.75, 0.5]], np.float32), np.array([[11, 12]], np.int64))
    >>> res.ids.tolist(), res.scores.tolist()
    ([[11, 12]], [[0.75, 0.5]])
    >>> scores, ids = res
"""

from __future__ import annotations

from typing import NamedTuple

from recfuse.types import FloatArray, Int64Array


class SearchResult(NamedTuple):
    """Top-k results, best first: ``scores`` and ``ids`` of equal shape (``[b, k]`` for a batch, ``[m]``
    for one query's filtered results).

    Attributes:
        scores: float32 scores (``ip``: higher is better; ``l2``: squared distance, lower is better).
        ids: int64 item ids (an :class:`~recfuse.index.ItemIndex`'s ids; catalog rows in a bundle).
    """

    scores: FloatArray
    ids: Int64Array


class SearchResultList(NamedTuple):
    """One query's top-k as Python lists, best first (:meth:`~recfuse.index.ItemIndex.search_one`)."""

    scores: list[float]
    ids: list[int]
