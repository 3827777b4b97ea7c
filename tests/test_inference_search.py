"""FilteredSearch and popular_rows return ``SearchResult(scores, ids)`` with catalog rows as ids, on every path.

Scores and rows have the same shape, so a swapped unpack would go unnoticed by shape checks; a tiny
catalog with known vectors pins both fields by value and dtype (see tests/test_index_result.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from recfuse.config import IndexConfig
from recfuse.index import SearchResult, SearchResultList, build_index
from recfuse.inference.catalog import CatalogTables
from recfuse.inference.plan import EMPTY_RESULT, EMPTY_ROWS, QueryPlan
from recfuse.inference.search import FilteredSearch, popular_rows

VECS = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [2.0, 0.0]], np.float32)
QUERY = np.array([[1.0, 0.25]], np.float32)  # QUERY . VECS = [1, 0.25, 0.625, 2]


def plan(k: int, exclude: tuple[int, ...] = (), allow: tuple[int, ...] | None = None) -> QueryPlan:
    return QueryPlan(
        k, 0, EMPTY_ROWS, True, np.array(exclude, np.int64), None if allow is None else np.array(allow, np.int64), 0, 0
    )


def check(res: SearchResult, scores: list[float], rows: list[int]) -> None:
    assert isinstance(res, SearchResult)
    assert res.scores.dtype == np.float32 and res.ids.dtype == np.int64
    assert res.scores.tolist() == scores and res.ids.tolist() == rows


@pytest.mark.parametrize("exact_filter_max", [0, 20_000])  # allow-lists through the index / ranked exactly
def test_filtered_search_returns_scores_then_rows(exact_filter_max: int) -> None:
    index = build_index(VECS, np.arange(4), IndexConfig(factory="Flat", recall_queries=0))
    search = FilteredSearch(index, VECS, 4, exact_filter_max=exact_filter_max)
    (plain,) = search.search(QUERY, [plan(3)])  # one plain query: the index's single-query search, as lists
    assert isinstance(plain, SearchResultList) and plain.scores == [2.0, 1.0, 0.625] and plain.ids == [3, 0, 2]
    both = np.vstack([QUERY, QUERY, QUERY])
    excluded, allowed, nothing = search.search(both, [plan(2, exclude=(3,)), plan(2, allow=(1, 2)), plan(2, allow=())])
    check(excluded, [1.0, 0.625], [0, 2])
    check(allowed, [0.625, 0.25], [2, 1])
    assert nothing is EMPTY_RESULT and nothing.ids.dtype == np.int64 and nothing.scores.dtype == np.float32
    plain_pair = search.search(both[:2], [plan(2), plan(3)])  # plain queries in one batch: arrays
    check(plain_pair[0], [2.0, 1.0], [3, 0])
    check(plain_pair[1], [2.0, 1.0, 0.625], [3, 0, 2])
    mixed = search.search(both, [plan(1), plan(2, exclude=(3, 0)), plan(1, allow=(1,))])
    check(mixed[0], [2.0], [3])
    check(mixed[1], [0.625, 0.25], [2, 1])
    check(mixed[2], [0.25], [1])


def test_popular_rows_returns_counts_then_rows() -> None:
    order = np.array([2, 0, 3, 1], np.int64)
    rank = np.empty(4, np.int64)
    rank[order] = np.arange(4)
    tables = CatalogTables(
        item_ids=np.array(["a", "b", "c", "d"], dtype=object),
        row_of={"a": 0, "b": 1, "c": 2, "d": 3},
        titles=["A", "B", "C", "D"],
        category_rows={},
        popular_rows=order,
        popular_counts=np.array([7.0, 1.0, 9.0, 4.0], np.float32),
        popular_rank=rank,
        user_rows={},
    )
    check(popular_rows(tables, plan(3)), [9.0, 7.0, 4.0], [2, 0, 3])
    check(popular_rows(tables, plan(2, exclude=(0,))), [9.0, 4.0], [2, 3])
    check(popular_rows(tables, plan(2, allow=(1, 3))), [4.0, 1.0], [3, 1])
