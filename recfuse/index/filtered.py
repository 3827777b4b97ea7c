"""Filtered search for one query: exclusions and allow-lists that still return exactly ``k`` results.

Two paths, chosen by ``IndexConfig.filter_mode``:

* **selector**: faiss ``IDSelectorBatch`` (allow) / ``IDSelectorNot(IDSelectorBatch)`` (exclude) passed
  through ``SearchParameters``; the index skips filtered ids while searching. Honoured by IDMap2-wrapped
  Flat, HNSW and IVF indexes (see :func:`recfuse.index.factory.supports_selector`).
* **refill**: search without a filter for ``k' > k`` results, drop filtered ids, and grow ``k'``
  geometrically (x4) until ``k`` survive or the index has nothing more to give. Works on every index type.

When either path comes back short although enough candidates exist (an ANN index that did not reach
them: small nprobe, a sparse allow-list in a graph), it searches once more exhaustively (every inverted
list / efSearch >= 1024) and, for allow-lists, finally scores the allowed items' stored vectors
directly. Fewer than ``k`` results happen only when fewer than ``k`` candidates exist; rows are padded
with id -1. Every function here returns a :class:`~recfuse.index.result.SearchResult` ``(scores, ids)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss
import numpy as np

from recfuse.index.factory import search_parameters, supports_selector
from recfuse.index.result import SearchResult
from recfuse.types import FloatArray, Int64Array

logger = logging.getLogger(__name__)

GROWTH = 4


@dataclass(frozen=True)
class Filter:
    """One query's filter over external ids: ``allow`` (None = everything) minus ``exclude``."""

    exclude: Int64Array  # sorted unique ids present in the index
    allow: Int64Array | None  # sorted unique ids present in the index, exclusions already removed

    def candidates(self, ntotal: int) -> int:
        return len(self.allow) if self.allow is not None else ntotal - len(self.exclude)

    def keep(self, ids: Int64Array) -> np.ndarray:
        """Boolean mask of ``ids`` that pass the filter (-1 never passes)."""
        mask = ids >= 0
        if self.allow is not None:
            mask &= np.isin(ids, self.allow)
        elif len(self.exclude):
            mask &= ~np.isin(ids, self.exclude)
        return mask


def _search(index: faiss.Index, q: FloatArray, k: int, params: faiss.SearchParameters | None):
    if params is None:
        return index.search(q, k)
    return index.search(q, k, params=params)


def selector_search(index: faiss.Index, q: FloatArray, k: int, flt: Filter, widen: bool = False) -> SearchResult:
    """``(scores, ids)`` of up to ``k`` filtered results using a faiss ID selector (``q`` is ``[1, d]``)."""
    if flt.allow is not None:
        batch = faiss.IDSelectorBatch(flt.allow)
        selector: faiss.IDSelector = batch
    else:
        batch = faiss.IDSelectorBatch(flt.exclude)
        selector = faiss.IDSelectorNot(batch)
    params = search_parameters(index, selector, widen=widen)
    scores, ids = _search(index, q, k, params)
    del batch, selector  # the SWIG params do not own the selectors: keep them alive until here
    mask = ids[0] >= 0
    return SearchResult(scores[0][mask], ids[0][mask])


def refill_search(index: faiss.Index, q: FloatArray, k: int, flt: Filter, widen: bool = False) -> SearchResult:
    """``(scores, ids)`` of up to ``k`` filtered results by over-fetching and dropping filtered ids."""
    ntotal = int(index.ntotal)
    want = min(k, flt.candidates(ntotal))
    fetch = k + len(flt.exclude) if flt.allow is None else k * GROWTH
    params = search_parameters(index, None, widen=True) if widen and supports_selector(index) else None
    while True:
        fetch = min(fetch, ntotal)
        scores, ids = _search(index, q, fetch, params)
        returned = int((ids[0] >= 0).sum())
        mask = flt.keep(ids[0])
        if int(mask.sum()) >= want or fetch >= ntotal or returned < fetch:
            return SearchResult(scores[0][mask][:k], ids[0][mask][:k])
        fetch *= GROWTH


def exact_allowed(index: faiss.Index, q: FloatArray, k: int, allow: Int64Array, metric: str) -> SearchResult:
    """Score the allowed items' stored vectors directly (last resort for sparse allow-lists)."""
    vecs = np.vstack([index.reconstruct(int(i)) for i in allow]).astype(np.float32)
    if metric == "ip":
        scores = vecs @ q[0]
        order = np.argsort(-scores, kind="stable")[:k]
    else:
        scores = ((vecs - q[0]) ** 2).sum(axis=1)
        order = np.argsort(scores, kind="stable")[:k]
    return SearchResult(scores[order].astype(np.float32), allow[order])


def filtered_search(index: faiss.Index, q: FloatArray, k: int, flt: Filter, mode: str, metric: str) -> SearchResult:
    """Up to ``k`` results for one query ``[1, d]`` honouring ``flt`` (exactly ``k`` when enough candidates).

    Args:
        index: IDMap2-wrapped faiss index.
        q: ``[1, d]`` float32 query.
        k: results wanted.
        flt: the query's filter (ids already intersected with the index's ids).
        mode: ``selector`` or ``refill`` (``auto`` resolved by the caller).
        metric: ``ip`` or ``l2`` (ordering of the exact fallback).

    Returns:
        ``SearchResult(scores [m] float32, ids [m] int64)`` with ``m <= k``, best first.
    """
    want = min(k, flt.candidates(int(index.ntotal)))
    if want <= 0:
        return SearchResult(np.empty(0, np.float32), np.empty(0, np.int64))
    path = selector_search if mode == "selector" else refill_search
    res = path(index, q, k, flt)
    if len(res.ids) < want and supports_selector(index):
        logger.debug("filtered %s search returned %d < %d; widening", mode, len(res.ids), want)
        res = path(index, q, k, flt, widen=True)
    if len(res.ids) < want and flt.allow is not None:
        logger.debug(
            "widened search still short (%d < %d); scoring %d allowed items", len(res.ids), want, len(flt.allow)
        )
        res = exact_allowed(index, q, k, flt.allow, metric)
    return res
