"""One validated query resolved to catalog rows: the history the query tower reads and the filters.

A request names items by id; the Recommender works on catalog rows. :func:`history_rows` merges the
request history in front of a known user's stored history (unknown ids skipped and counted,
duplicates at their most recent position) and cuts it to the model's ``max_history``;
:func:`filter_rows` turns explicit exclusions, ``exclude_seen`` and category filters into one row
set to exclude or one allow-list. :class:`QueryPlan` holds the result for the search.

Example:
    >>> hist, merged, user_idx, skipped = history_rows(tables, vocab, 20, "u42", ["i3", "ghost"])  # doctest: +SKIP
    >>> exclude, allow, skipped_excl = filter_rows(tables, query, merged)                         # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from recfuse.data.vocab import IdVocab
from recfuse.index.result import SearchResult
from recfuse.inference.catalog import CatalogTables
from recfuse.inference.types import RecommendQuery
from recfuse.types import Int64Array

EMPTY_ROWS = np.zeros(0, np.int64)
EMPTY_ROWS.flags.writeable = False
EMPTY_SCORES = np.zeros(0, np.float32)
EMPTY_SCORES.flags.writeable = False
EMPTY_RESULT = SearchResult(EMPTY_SCORES, EMPTY_ROWS)


class QueryPlan(NamedTuple):
    """One validated query resolved to rows (:meth:`Recommender.plan`); a tuple: built once per request."""

    k: int  # at most the catalog's size (clipped by the plan, trusted by the search)
    user_idx: int
    hist: Int64Array  # rows, most recent first, <= max_history
    use_model: bool
    exclude: Int64Array  # rows never to return
    allow: Int64Array | None  # rows allowed (None: all)
    skipped_history: int
    skipped_exclusions: int
    vector_row: int = -1  # row of Recommender.user_vectors holding this query's vector (-1: encode it)


def history_rows(
    tables: CatalogTables, user_vocab: IdVocab, max_history: int, user_id: str | None, history: Sequence[str]
) -> tuple[Int64Array, Int64Array, int, int]:
    """``(hist, merged, user_idx, skipped)``: the request history (unknown ids skipped, counted) in
    front of the user's stored one, duplicates at their most recent position (``hist`` is it cut to
    ``max_history``), and the user's vocabulary index (-1: anonymous)."""
    if history:
        req_rows, skipped = tables.rows_of(history)
    else:
        req_rows, skipped = EMPTY_ROWS, 0
    user_idx = -1
    stored = EMPTY_ROWS
    if user_id is not None:
        stored = tables.user_rows.get(user_id, EMPTY_ROWS)
        user_idx = user_vocab.lookup_one(user_id)
    if len(req_rows) and len(stored):
        merged = np.concatenate([req_rows, stored])
    else:
        merged = req_rows if len(req_rows) else stored
    if len(merged) > 1:
        # Duplicates keep their first (most recent) position; dicts keep insertion order.
        uniq = dict.fromkeys(merged.tolist())
        if len(uniq) < len(merged):
            merged = np.fromiter(uniq, dtype=np.int64, count=len(uniq))
    return merged[:max_history], merged, int(user_idx), skipped


def filter_rows(
    tables: CatalogTables, q: RecommendQuery, merged: Int64Array
) -> tuple[Int64Array, Int64Array | None, int]:
    """``(exclude, allow, skipped)``: the rows a query may never return, the rows it may only return
    (``None``: all) and the number of unknown ids in ``exclude_item_ids``.

    ``merged`` is the query's full history (:func:`history_rows`), excluded with ``exclude_seen``.
    At most one of the two row sets is non-empty: an allow-list absorbs the exclusions, and a query
    excluding most of the catalog gets the (smaller) complement as its allow-list.
    """
    if not (q.exclude_item_ids or q.exclude_seen or q.include_categories or q.exclude_categories):
        return EMPTY_ROWS, None, 0
    t = tables
    allow: Int64Array | None = None
    exclude = EMPTY_ROWS
    excl_rows, skipped_excl = t.rows_of(q.exclude_item_ids)
    parts = [excl_rows]
    if q.exclude_seen:
        parts.append(merged)
    excl_cats = t.rows_in_categories(q.exclude_categories) if q.exclude_categories else None
    if q.include_categories:
        allow = t.rows_in_categories(q.include_categories)
        if excl_cats is not None:
            allow = np.setdiff1d(allow, excl_cats, assume_unique=True)
    elif excl_cats is not None:
        parts.append(excl_cats)
    if any(len(p) for p in parts):
        exclude = np.unique(np.concatenate(parts)).astype(np.int64)
    if allow is None and len(exclude) > t.n // 2:
        # Mostly excluded (e.g. broad excluded categories): the complement is the smaller filter.
        allow = np.setdiff1d(np.arange(t.n, dtype=np.int64), exclude, assume_unique=True)
    if allow is not None and len(exclude):
        allow = np.setdiff1d(allow, exclude, assume_unique=True)
        exclude = EMPTY_ROWS
    return exclude, allow, skipped_excl
