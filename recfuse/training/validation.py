"""Validation Recall@K by full ranking over the catalog, the user's training items masked.

The query of a user is built from their whole training history (most recent first) and user id,
exactly as at serving time, and scored against every catalog item with
:func:`recfuse.ranking.masked_topk`. Recall@K of a user = |top-K ∩ held-out items| / |held-out items|,
averaged over users with at least one held-out item in the catalog.

Example:
    >>> vq = build_val_queries(split.train, split.val, item_vocab, user_vocab, max_history=20)  # doctest: +SKIP
    >>> recall_at_k(query_vectors, item_vectors, vq, k=10)                                      # doctest: +SKIP
    0.21
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recfuse.data.vocab import IdVocab
from recfuse.models.history import history_arrays
from recfuse.ranking import masked_topk
from recfuse.training.examples import user_histories
from recfuse.types import FloatArray, Int64Array


@dataclass(frozen=True)
class ValQueries:
    """Held-out queries: one row per user with at least one held-out catalog item.

    Attributes:
        user_ids: ``[q]`` user ids.
        user_idx: ``[q]`` user vocabulary indices.
        hist_idx: ``[q, L]`` training history (most recent first, ``-1`` padding).
        hist_pos: ``[q, L]`` positions.
        relevant: per user, the held-out item indices.
        exclude: per user, the training item indices (masked from the ranking).
    """

    user_ids: list[str]
    user_idx: Int64Array
    hist_idx: Int64Array
    hist_pos: FloatArray
    relevant: list[Int64Array]
    exclude: list[Int64Array]

    def __len__(self) -> int:
        return len(self.user_ids)


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
    return ValQueries(users, user_vocab.lookup(users), hist_idx, hist_pos, relevant, exclude)


def recall_at_k(queries: FloatArray, items: FloatArray, vq: ValQueries, k: int) -> float:
    """Mean Recall@K over the queries (0.0 when there are none)."""
    if len(vq) == 0:
        return 0.0
    top, _ = masked_topk(queries, items, k, exclude=vq.exclude)
    recalls = [np.isin(rel, top[r]).sum() / len(rel) for r, rel in enumerate(vq.relevant)]
    return float(np.mean(recalls))
