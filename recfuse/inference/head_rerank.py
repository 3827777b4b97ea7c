"""The item-item head as served: a re-rank of the index's candidates and the history's neighbours.

A bundle with an active item-item head (:mod:`recfuse.itemitem`, ``LoadedBundle.item_head``) ranks
every model query by the score :func:`recfuse.evaluation.fullrank.evaluate_model` ranks by:

    score(j) = q . v_j * factor_j + beta * sum_{i in hist} W[i, j]

where ``hist`` is the query's history rows as the query tower reads them (``QueryPlan.hist``: the
request history in front of the stored one, cut to ``max_history``) and ``v_j * factor_j`` the
index's (ranked) vector. Scoring the whole catalog per request would cost a Flat search, so
:class:`HeadRerank` scores a candidate set exactly:

1. the index's top ``k + candidates`` items under the query's filters (one batched search);
2. union the head's nonzero columns for ``hist`` (:meth:`ItemHead.row_scores`), filtered the same way;
3. every candidate scored as above; the best ``k`` returned, ties by ascending row.

Head weights are >= 0, so an item outside the set has a head score of 0 and a model score below the
index's ``k + candidates``-th: with an exact index the served top ``k`` is the full ranking's. The
scores returned are the blended scores. The blend is an inner product whatever the index metric
(an ``l2`` index only supplies the candidates).

Example:
    >>> rerank = HeadRerank(bundle.item_head, bundle.ranked_vectors, 200, searcher)   # doctest: +SKIP
    >>> (res,) = rerank.search(query_vectors, [plan])                                 # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from recfuse.bundle import LoadedBundle
from recfuse.index import SearchResult
from recfuse.inference.plan import QueryPlan
from recfuse.inference.search import FilteredSearch, Found
from recfuse.itemitem import ItemHead
from recfuse.types import FloatArray, Int64Array


class HeadRerank:
    """Top-k of the blended score ``q . v_j + beta * head(hist, j)`` over index + head candidates.

    Args:
        head: the bundle's active item-item head (``head.active``), rows = the catalog's rows.
        vectors: ``[n, d]`` the index's vectors (plain vectors × the popularity factor).
        candidates: index candidates beyond ``k`` each query scores exactly.
        searcher: the Recommender's filtered index search.
    """

    def __init__(self, head: ItemHead, vectors: FloatArray, candidates: int, searcher: FilteredSearch) -> None:
        if head.n_items != len(vectors):
            raise ValueError(f"`head` covers {head.n_items} items but `vectors` has {len(vectors)} rows")
        if candidates < 1:
            raise ValueError(f"`candidates` must be >= 1, got {candidates!r}")
        self.head = head
        self.beta = np.float32(head.beta)
        self.vectors = vectors
        self.candidates = int(candidates)
        self.searcher = searcher

    @classmethod
    def for_bundle(cls, bundle: LoadedBundle, vectors: FloatArray, searcher: FilteredSearch) -> HeadRerank | None:
        """The re-rank of a bundle's active item-item head, None when it has none (or an inactive one)."""
        head = bundle.item_head
        if head is None or not head.active:
            return None
        return cls(head, vectors, bundle.item_head_candidates, searcher)

    def search(self, queries: FloatArray, plans: Sequence[QueryPlan]) -> list[Found]:
        """One ``SearchResult(blended scores [m], rows [m])`` per plan, best first, ``m <= plan.k``,
        every row passing the plan's exclusions and allow-list."""
        n = self.searcher.n_items
        wide = [p._replace(k=min(p.k + self.candidates, n)) for p in plans]
        found = self.searcher.search(queries, wide)
        return [self.rescore(queries[j], p, np.asarray(found[j].ids, np.int64)) for j, p in enumerate(plans)]

    def rescore(self, query: FloatArray, plan: QueryPlan, index_rows: Int64Array) -> SearchResult:
        """The best ``plan.k`` of ``index_rows`` ∪ the head's columns for ``plan.hist`` (filtered), by
        the blended score of the query vector ``query [d]``."""
        cols, vals = self.head.row_scores(plan.hist)  # columns ascending
        if len(cols) and plan.allow is not None:
            keep = _member(plan.allow, cols)
            cols, vals = cols[keep], vals[keep]
        elif len(cols) and len(plan.exclude):
            keep = ~_member(plan.exclude, cols)
            cols, vals = cols[keep], vals[keep]
        if len(cols):
            # the head's columns first, then the index's rows they do not hold (no sort of the union)
            rows = np.concatenate([cols, index_rows[~_member(cols, index_rows)]])
        else:
            rows = np.asarray(index_rows, np.int64)
        if not len(rows):
            return SearchResult(np.zeros(0, np.float32), np.zeros(0, np.int64))
        scores = np.take(self.vectors, rows, axis=0) @ query
        scores[: len(cols)] += self.beta * vals
        return _best(rows, scores, plan.k)


def _member(sorted_set: Int64Array, x: Int64Array) -> npt.NDArray[np.bool_]:
    """Which of ``x`` are in ``sorted_set`` (ascending, unique): a binary search, no hashing or sort."""
    if not len(sorted_set):
        return np.zeros(len(x), bool)
    pos = np.searchsorted(sorted_set, x).clip(max=len(sorted_set) - 1)
    return sorted_set[pos] == x


def _best(rows: Int64Array, scores: FloatArray, k: int) -> SearchResult:
    """The ``k`` best ``rows`` (unique, any order) by ``scores``, ties by ascending row."""
    neg = -scores
    if len(rows) > k:
        kth = np.partition(neg, k - 1)[k - 1]
        sel = np.flatnonzero(neg <= kth)  # every item at least as good as the k-th, ties included
        neg, rows, scores = neg[sel], rows[sel], scores[sel]
    order = np.lexsort((rows, neg))[:k]
    return SearchResult(scores[order].astype(np.float32, copy=False), rows[order].astype(np.int64, copy=False))
