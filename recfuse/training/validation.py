"""Validation Recall@K by full ranking over the catalog, the user's training items masked.

The query of a user is built from their whole training history (most recent first) and user id,
exactly as at serving time, and scored against every catalog item with
:func:`recfuse.ranking.masked_topk`. Recall@K of a user = |top-K ∩ held-out items| / |held-out items|,
averaged over users with at least one held-out item in the catalog.

The per-user item sets (held-out items, training items to mask) are held as one flat int32 array
and ``[q + 1]`` offsets each (:class:`Ragged`), not as one numpy array per user: at 200k validation
users with ~80 training items each, a list of int64 arrays held ~180 MB (~112 B of object header
per array besides the data); the flat form holds ~70 MB.

Example:
    >>> vq = build_val_queries(split.train, split.val, item_vocab, user_vocab, max_history=20)  # doctest: +SKIP
    >>> recall_at_k(query_vectors, item_vectors, vq, k=10)                                      # doctest: +SKIP
    0.21
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from recfuse.data.vocab import IdVocab
from recfuse.models.history import history_arrays
from recfuse.ranking import masked_topk
from recfuse.training.examples import user_histories
from recfuse.types import FloatArray, Int32Array, Int64Array

logger = logging.getLogger(__name__)

#: scores (validation users x catalog items) an epoch's Recall@K may cost when train.val_max_users is unset
VAL_SCORE_BUDGET = 2_000_000_000
#: the fewest validation users that budget leaves
MIN_VAL_USERS = 2_000


@dataclass(frozen=True)
class Ragged:
    """Rows of item indices of different lengths: row ``i`` is ``values[offsets[i]:offsets[i + 1]]``.

    Attributes:
        values: ``[total]`` int32 item indices, row after row.
        offsets: ``[rows + 1]`` int64 row starts (``offsets[0] == 0``, ``offsets[-1] == total``).
    """

    values: Int32Array
    offsets: Int64Array

    @classmethod
    def from_rows(cls, rows: Sequence[npt.ArrayLike]) -> Ragged:
        """From one array of item indices per row."""
        arrays = [np.asarray(r).reshape(-1) for r in rows]
        lengths = np.fromiter((len(a) for a in arrays), np.int64, len(arrays))
        values = np.concatenate(arrays).astype(np.int32) if arrays else np.zeros(0, np.int32)
        return cls(values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))

    @classmethod
    def concat(cls, parts: Sequence[Ragged]) -> Ragged:
        """The rows of ``parts``, one after the other."""
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(1, np.int64))
        starts = np.cumsum([0] + [len(p.values) for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, starts, strict=True)])
        return cls(np.concatenate([p.values for p in parts]).astype(np.int32), offsets.astype(np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Int32Array:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def take(self, rows: npt.ArrayLike) -> Ragged:
        """Rows ``rows`` (``[r]`` positions, any order) as a new :class:`Ragged`."""
        rows = np.asarray(rows, np.int64)
        lengths = (self.offsets[1:] - self.offsets[:-1])[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # position j of the output row r reads values[offsets_in[rows[r]] + j]
        src = np.repeat(self.offsets[:-1][rows] - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return Ragged(self.values[src], offsets)

    def rows(self, start: int, stop: int) -> list[Int32Array]:
        """Rows ``start..stop-1`` as views (what :func:`recfuse.ranking.masked_topk` takes as ``exclude``)."""
        return [self.values[a:b] for a, b in zip(self.offsets[start:stop], self.offsets[start + 1 : stop + 1])]


@dataclass(frozen=True)
class ValQueries:
    """Held-out queries: one row per user with at least one held-out catalog item.

    Attributes:
        user_ids: ``[q]`` user ids.
        user_idx: ``[q]`` user vocabulary indices.
        hist_idx: ``[q, L]`` training history (most recent first, ``-1`` padding).
        hist_pos: ``[q, L]`` positions.
        relevant: per user, the held-out item indices (sorted, distinct).
        exclude: per user, the training item indices (sorted, distinct; masked from the ranking).
    """

    user_ids: list[str]
    user_idx: Int64Array
    hist_idx: Int64Array
    hist_pos: FloatArray
    relevant: Ragged
    exclude: Ragged

    def __len__(self) -> int:
        return len(self.user_ids)

    def block(self, start: int, stop: int) -> ValQueries:
        """Queries ``start..stop-1`` (their item sets copied, the arrays sliced)."""
        rows = np.arange(start, min(stop, len(self)))
        return self.take(rows)

    def take(self, rows: npt.ArrayLike) -> ValQueries:
        """Queries ``rows`` (``[r]`` positions, any order)."""
        rows = np.asarray(rows, np.int64)
        return ValQueries([self.user_ids[i] for i in rows], self.user_idx[rows], self.hist_idx[rows],
                          self.hist_pos[rows], self.relevant.take(rows), self.exclude.take(rows))  # fmt: skip


def capped(vq: ValQueries, max_users: int | None, n_items: int, seed: int) -> ValQueries:
    """``vq``, or a seeded sample of ``max_users`` of its queries (in their order) when it has more
    (``0``: all; ``None``: as many as keep users x ``n_items`` within :data:`VAL_SCORE_BUDGET`, at
    least :data:`MIN_VAL_USERS`); logs the sample's size."""
    cap = max(MIN_VAL_USERS, VAL_SCORE_BUDGET // max(n_items, 1)) if max_users is None else max_users
    if cap <= 0 or len(vq) <= cap:
        return vq
    rows = np.sort(np.random.default_rng(seed).choice(len(vq), cap, replace=False))
    logger.info("validation Recall@K on a sample of %d of %d users (train.val_max_users)", cap, len(vq))
    return vq.take(rows)


def build_val_queries(
    train: pd.DataFrame, heldout: pd.DataFrame, item_vocab: IdVocab, user_vocab: IdVocab, max_history: int
) -> ValQueries:
    """Queries for the users of ``heldout`` (val or test) from their ``train`` interactions."""
    hist = user_histories(train)
    held = heldout.assign(_idx=item_vocab.lookup(heldout["item_id"].tolist()))
    held = held[held["_idx"] >= 0]
    users: list[str] = []
    relevant: list[Int64Array] = []
    exclude: list[Int64Array] = []
    for user, group in held.groupby("user_id", sort=True):
        users.append(str(user))
        relevant.append(np.unique(group["_idx"].to_numpy(np.int64)))
        seen = item_vocab.lookup(hist.get(str(user), []))
        exclude.append(np.unique(seen[seen >= 0]))
    hist_idx, hist_pos = history_arrays([hist.get(u, []) for u in users], item_vocab, max_history)
    return ValQueries(users, user_vocab.lookup(users), hist_idx, hist_pos, Ragged.from_rows(relevant),
                      Ragged.from_rows(exclude))  # fmt: skip


def recall_at_k(queries: FloatArray, items: FloatArray, vq: ValQueries, k: int) -> float:
    """Mean Recall@K over the queries (0.0 when there are none)."""
    if len(vq) == 0:
        return 0.0
    top = masked_topk(queries, items, k, exclude=vq.exclude.rows(0, len(vq))).rows
    recalls = [np.isin(vq.relevant[r], top[r]).sum() / len(vq.relevant[r]) for r in range(len(vq))]
    return float(np.mean(recalls))
