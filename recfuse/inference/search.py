"""The Recommender's ranking step: index search with per-query filters, and the popularity fallback.

:class:`FilteredSearch` answers a batch of query vectors, each with its :class:`QueryPlan`'s
exclusions and allow-list, and picks each query's strategy: the index's plain search (no filter),
its filtered search, or an exact ranking of a small allow-list over its own vectors.
:func:`popular_rows` ranks by popularity under the same filters, for queries without a user signal.
Every answer is a :class:`~recfuse.index.SearchResult` ``(scores, ids)`` whose
ids are catalog rows (a bundle's index holds row ``i`` under id ``i``).

Example:
    >>> search = FilteredSearch(bundle.index, bundle.ranked_vectors, n_items, exact_filters=True)  # doctest: +SKIP
    >>> (res,) = search.search(query_vectors, [plan])                                              # doctest: +SKIP
    >>> res.ids[:3], res.scores[:3]      # catalog rows and their scores, best first             # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

from recfuse.index import ItemIndex, SearchResult, SearchResultList
from recfuse.inference.catalog import CatalogTables
from recfuse.inference.plan import EMPTY_RESULT, QueryPlan
from recfuse.ranking import masked_topk
from recfuse.types import FloatArray, Int64Array

#: one query's ranking: scores and catalog rows, best first, as arrays or (a single plain query) lists
Found = SearchResult | SearchResultList


class FilteredSearch:
    """Top-k catalog rows for query vectors, each query with its own exclusions and allow-list.

    Args:
        index: the bundle's index.
        vectors: ``[n_items, d]`` the vectors the index ranks (exact filtered searches use them).
        n_items: catalog rows.
        search_threads: faiss OpenMP threads for the searches (``None``: left alone); applied in
            every calling thread, since OpenMP keeps the setting per thread.
        exact_filter_max: allow-lists up to this many items are ranked exactly.
        exact_filters: whether exact ranking is allowed at all (inner-product bundles).
    """

    def __init__(
        self,
        index: ItemIndex,
        vectors: FloatArray,
        n_items: int,
        search_threads: int | None = 1,
        exact_filter_max: int = 20_000,
        exact_filters: bool = True,
    ) -> None:
        self.index = index
        self.vectors = vectors
        self.n_items = int(n_items)
        self.search_threads = search_threads
        self.exact_filter_max = int(exact_filter_max)
        self.exact_filters = exact_filters

    def apply_search_threads(self) -> None:
        """``search_threads`` for the calling thread (OpenMP keeps it per thread)."""
        if self.search_threads is not None and faiss.omp_get_max_threads() != self.search_threads:
            faiss.omp_set_num_threads(self.search_threads)

    def search(self, queries: FloatArray, plans: Sequence[QueryPlan]) -> list[Found]:
        """Search with per-query exclusions and allow-lists (``None``: unrestricted): one
        ``SearchResult(scores [m], ids [m])`` per plan, ids being catalog rows, ``m <= plan.k`` (a
        :class:`~recfuse.index.SearchResultList` of lists for a single plain query).

        Each query's strategy is picked here:

        * an allow-list of ``<= exact_filter_max`` items (inner-product bundles) is ranked exactly
          over just those items with :func:`recfuse.ranking.masked_topk` — a sparse allow-list is the
          worst case of a graph index (it must wander far to find k allowed items), while scoring a
          few thousand vectors directly takes microseconds; an empty one allows nothing;
        * every other query goes to the index in one batched call: its plain search when no query
          of the call has a filter (a single query: ``ItemIndex.search_one``, the common serving
          call), else its filtered search.

        ``plan.k`` is trusted to be at most the catalog's size (:meth:`Recommender.plan` clips it).
        """
        self.apply_search_threads()
        if len(plans) == 1 and plans[0].allow is None and not len(plans[0].exclude):
            # One plain query (the common serving call): the index's unchecked single-query search
            # (the vectors are the Recommender's own), as lists, missing slots dropped.
            return [self.index.search_one(queries, plans[0].k)]
        out: list[Found] = [EMPTY_RESULT] * len(plans)
        rest = []
        for j, p in enumerate(plans):
            allow = p.allow
            if allow is None:
                rest.append(j)
            elif not len(allow):
                continue  # nothing may be returned
            elif self.exact_filters and len(allow) <= self.exact_filter_max:
                # masked_topk returns (positions in p.allow, scores)
                pos, scores = masked_topk(queries[j : j + 1], self.vectors[allow], p.k)
                out[j] = SearchResult(scores[0], allow[pos[0]])
            else:
                rest.append(j)
        if not rest:
            return out
        k = max(plans[j].k for j in rest)
        q = queries if len(rest) == len(plans) else queries[rest]
        if any(plans[j].allow is not None or len(plans[j].exclude) for j in rest):
            # Lists, not arrays: ItemIndex tests emptiness with `not ids` (ambiguous for numpy arrays).
            excl = [plans[j].exclude.tolist() for j in rest]
            allow_lists = [None if plans[j].allow is None else plans[j].allow.tolist() for j in rest]  # type: ignore[union-attr]
            scores, ids = self.index.search(
                q,
                k,
                exclude=excl if any(excl) else None,
                allow=allow_lists if any(a is not None for a in allow_lists) else None,
            )
        else:
            scores, ids = self.index.search(q, k)
        for r, j in enumerate(rest):
            out[j] = _found(scores[r], ids[r], plans[j].k)
        return out


def _found(scores: FloatArray, ids: Int64Array, k: int) -> SearchResult:
    """One query's first ``k`` slots that hold an item (the index marks missing slots with id -1)."""
    if len(ids) == k and ids[k - 1] >= 0:  # full: faiss puts missing slots last
        return SearchResult(scores, ids)
    keep = ids >= 0
    return SearchResult(scores[keep][:k], ids[keep][:k])


def popular_rows(tables: CatalogTables, p: QueryPlan) -> SearchResult:
    """Popularity order with the same filters as the model path: ``SearchResult(counts, rows)``."""
    t = tables
    if p.allow is None:
        # At most len(exclude) of the first k + len(exclude) popular rows can be excluded.
        cand = t.popular_rows[: p.k + len(p.exclude)]
        rows = cand[~np.isin(cand, p.exclude)][: p.k] if len(p.exclude) else cand
    else:
        allowed = np.setdiff1d(p.allow, p.exclude, assume_unique=True) if len(p.exclude) else p.allow
        rank = t.popular_rank[allowed]
        take = np.argsort(rank, kind="stable")[: p.k]
        rows = allowed[take]
    return SearchResult(t.popular_counts[rows], rows.astype(np.int64))
