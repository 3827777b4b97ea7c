"""Read-only lookup tables built once per bundle: id ↔ row, titles, categories, popularity, histories.

Everything the request path needs besides the tower and the index, precomputed so that a request
does dictionary lookups and small numpy operations only (category filters are resolved to row sets
through a category → rows index, not by scanning the catalog).

Example:
    >>> cat = CatalogTables.from_bundle(bundle)    # doctest: +SKIP
    >>> cat.rows_in_categories(["shoes"])           # doctest: +SKIP
    array([3, 17, 42])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recfuse.bundle import LoadedBundle
from recfuse.types import FloatArray, Int64Array

logger = logging.getLogger(__name__)

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class CatalogTables:
    """Lookup tables of one bundle (immutable; safe to share between threads).

    Attributes:
        item_ids: ``[n]`` object array of item ids (row -> id).
        row_of: id -> row.
        titles: ``[n]`` titles.
        category_rows: category -> sorted int64 rows of its items.
        popular_rows: ``[n]`` rows in popularity-file order (count desc, then id), unlisted items last.
        popular_counts: ``[n]`` float32 count of each row.
        popular_rank: ``[n]`` position of each row in ``popular_rows``.
        user_rows: user id -> int64 rows of the stored history, most recent first (unknown ids dropped).
    """

    item_ids: np.ndarray
    row_of: dict[str, int]
    titles: list[str]
    category_rows: dict[str, Int64Array]
    popular_rows: Int64Array
    popular_counts: FloatArray
    popular_rank: Int64Array
    user_rows: dict[str, Int64Array]

    @property
    def n(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_bundle(cls, bundle: LoadedBundle) -> CatalogTables:
        ids = np.asarray(bundle.item_ids, dtype=object)
        id_index = pd.Index(bundle.item_ids)
        row_of = {iid: i for i, iid in enumerate(bundle.item_ids)}

        cats = bundle.items["categories"]
        lens = np.fromiter((len(c) for c in cats), dtype=np.int64, count=len(cats))
        category_rows: dict[str, Int64Array] = {}
        if lens.sum():
            flat = pd.Series(np.concatenate([np.asarray(c, dtype=object) for c in cats if len(c)]))
            rows = np.repeat(np.arange(len(cats), dtype=np.int64), lens)
            for cat, grp in pd.Series(rows).groupby(flat.to_numpy(), sort=False):
                category_rows[str(cat)] = np.unique(grp.to_numpy(np.int64))

        counts = np.zeros(len(ids), dtype=np.float32)
        pop = bundle.popularity
        pos = id_index.get_indexer(pd.Index(pop["item_id"].astype(str)))
        known = pos >= 0
        if (~known).any():
            logger.warning("popularity table: %d item id(s) not in the catalog ignored", int((~known).sum()))
        counts[pos[known]] = pop["count"].to_numpy(np.float32)[known]
        # The popularity file's order (count desc, then id) first; items it does not list follow by row.
        listed = pos[known].astype(np.int64)
        listed = listed[np.sort(np.unique(listed, return_index=True)[1])]
        unlisted = np.setdiff1d(np.arange(len(ids), dtype=np.int64), listed, assume_unique=True)
        popular_rows = np.concatenate([listed, unlisted])
        popular_rank = np.empty(len(ids), dtype=np.int64)
        popular_rank[popular_rows] = np.arange(len(ids), dtype=np.int64)

        return cls(
            item_ids=ids,
            row_of=row_of,
            titles=bundle.items["title"].astype(str).tolist(),
            category_rows=category_rows,
            popular_rows=popular_rows,
            popular_counts=counts,
            popular_rank=popular_rank,
            user_rows=_history_rows(bundle.user_history, id_index),
        )

    def rows_of(self, item_ids: Sequence[str]) -> tuple[Int64Array, int]:
        """Rows of the known ids, in order, and the number of unknown ids skipped."""
        rows = [self.row_of.get(i, -1) for i in item_ids]
        arr = np.asarray(rows, dtype=np.int64)
        known = arr[arr >= 0]
        return known, len(arr) - len(known)

    def rows_in_categories(self, categories: Sequence[str]) -> Int64Array:
        """Sorted rows of items in any of ``categories`` (unknown categories match nothing)."""
        parts = [self.category_rows[c] for c in categories if c in self.category_rows]
        if not parts:
            return _EMPTY
        return parts[0] if len(parts) == 1 else np.unique(np.concatenate(parts))


def _history_rows(frame: pd.DataFrame, id_index: pd.Index) -> dict[str, Int64Array]:
    """Vectorised: flatten every history, map ids to rows once, split back per user."""
    if frame.empty:
        return {}
    lists = frame["items"].tolist()
    lens = np.fromiter((0 if x is None else len(x) for x in lists), dtype=np.int64, count=len(lists))
    rows = _EMPTY
    if lens.sum():
        flat = np.concatenate([np.asarray(x, dtype=object) for x in lists if x is not None and len(x)])
        rows = id_index.get_indexer(pd.Index(flat, dtype=object)).astype(np.int64)
    unknown = int((rows < 0).sum())
    if unknown:
        logger.warning("user histories: %d item id(s) not in the catalog skipped", unknown)
    out: dict[str, Int64Array] = {}
    for uid, part in zip(frame["user_id"].astype(str), np.split(rows, np.cumsum(lens)[:-1])):
        out[uid] = part[part >= 0]
    return out
