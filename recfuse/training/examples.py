"""Training examples and validation queries as integer arrays (vectorised numpy/pandas, no row loops).

One example per training interaction ``(u, i, t)``: ``user_idx``, the user's previous training items
before ``t`` (most recent first, at most ``L``) as ``hist_idx`` (``-1`` padding) with ``hist_pos``
``0..L-1``, and ``item_idx`` of the positive item. A user's full training history (most recent first)
is the query of validation, evaluation and serving.

Example:
    >>> ex = build_examples(train_df, item_vocab, user_vocab, max_history=20)   # doctest: +SKIP
    >>> ex.hist_idx.shape                                                       # doctest: +SKIP
    (24000, 20)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recfuse.data.vocab import IdVocab
from recfuse.models.history import history_arrays
from recfuse.types import FloatArray, Int64Array

__all__ = ["Examples", "build_examples", "history_arrays", "sort_interactions", "user_histories"]


@dataclass(frozen=True)
class Examples:
    """Aligned example arrays (``n`` rows).

    Attributes:
        user_idx: ``[n]`` user vocabulary indices.
        hist_idx: ``[n, L]`` item indices, most recent first, ``-1`` padding.
        hist_pos: ``[n, L]`` float32 positions ``0..L-1``.
        item_idx: ``[n]`` positive item indices.
        interactions: training interactions they were built from (items in the vocabulary).
        targets: next-item targets per epoch: ``n``, or with ``all_positions`` one per history
            position of every window.
        item_counts: ``[num_items]`` training interactions per item (all of them, whatever the
            examples keep): the popularity the loss corrects for and what makes an item warm.
    """

    user_idx: Int64Array
    hist_idx: Int64Array
    hist_pos: FloatArray
    item_idx: Int64Array
    interactions: int = -1
    targets: int = -1
    item_counts: Int64Array | None = None
    per_position: bool = False

    def __post_init__(self) -> None:
        n = int(len(self.item_idx))
        if self.interactions < 0:
            object.__setattr__(self, "interactions", n)
        if self.targets < 0:
            object.__setattr__(self, "targets", n)

    def __len__(self) -> int:
        return int(len(self.item_idx))

    def take(self, rows: np.ndarray) -> Examples:
        """The examples at ``rows`` (one worker's shard); ``interactions`` and ``item_counts`` stay global."""
        hist = self.hist_idx[rows]
        return Examples(
            self.user_idx[rows],
            hist,
            self.hist_pos[rows],
            self.item_idx[rows],
            interactions=self.interactions,
            targets=int((hist >= 0).sum()) if self.per_position else len(rows),
            item_counts=self.item_counts,
            per_position=self.per_position,
        )

    def as_dict(self) -> dict[str, np.ndarray]:
        return {
            "user_idx": self.user_idx,
            "hist_idx": self.hist_idx,
            "hist_pos": self.hist_pos,
            "item_idx": self.item_idx,
        }


def sort_interactions(interactions: pd.DataFrame) -> pd.DataFrame:
    """Interactions ordered by user then time (stable, so ties keep file order)."""
    return interactions.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def build_examples(
    interactions: pd.DataFrame,
    item_vocab: IdVocab,
    user_vocab: IdVocab,
    max_history: int,
    history: str = "previous",
    targets: str = "last",
) -> Examples:
    """One example per interaction whose item is in ``item_vocab`` (others are the caller's to count).

    With ``targets = "all_positions"`` (``train.targets``) only one example per window of
    ``max_history`` interactions is kept: each user's last interaction, the one ``max_history``
    before it, and so on, none without a history. The model reads every position of such an
    example's history as a query for the item after it, so each interaction but a user's first is
    a target exactly once per epoch.

    Args:
        history: what an example's history holds (``train.example_history``): ``previous`` (the
            user's interactions before this one: next-item prediction) or ``profile`` (all the
            user's other training interactions, most recent first: the held-out item is predicted
            from the rest of the profile, as a random per-user split queries it).
    """
    if history not in ("previous", "profile"):
        raise ValueError(f"`history` must be 'previous' or 'profile', got {history!r}")
    if targets not in ("last", "all_positions"):
        raise ValueError(f"`targets` must be 'last' or 'all_positions', got {targets!r}")
    if targets == "all_positions" and history != "previous":
        raise ValueError("`targets` = 'all_positions' needs `history` = 'previous' (the ordered sequence)")
    df = sort_interactions(interactions)
    items = item_vocab.lookup(df["item_id"].tolist())
    users = user_vocab.lookup(df["user_id"].tolist())
    keep = items >= 0
    df, items, users = df[keep].reset_index(drop=True), items[keep], users[keep]
    n = len(df)
    # position of each row inside its user's (time-ordered) block
    codes = pd.factorize(df["user_id"])[0]
    starts = np.r_[0, np.flatnonzero(np.diff(codes)) + 1] if n else np.zeros(0, np.int64)
    block_start = np.repeat(starts, np.diff(np.r_[starts, n])) if n else np.zeros(0, np.int64)
    pos_in_block = np.arange(n) - block_start
    if history == "profile":
        # k-th most recent of the user's OTHER interactions: block positions size-1, size-2, ...
        # skipping the example's own position
        block_size = np.repeat(np.diff(np.r_[starts, n]), np.diff(np.r_[starts, n])) if n else np.zeros(0, np.int64)
        j = (block_size - 1)[:, None] - np.arange(max_history)[None, :]
        j = np.where(j <= pos_in_block[:, None], j - 1, j)
        valid = j >= 0
        src = block_start[:, None] + j
    else:
        offsets = np.arange(1, max_history + 1)  # k-th previous interaction
        src = np.arange(n)[:, None] - offsets[None, :]
        valid = offsets[None, :] <= pos_in_block[:, None]
    hist = np.where(valid, items[np.clip(src, 0, None)] if n else src, -1).astype(np.int64)
    users, items = users.astype(np.int64), items.astype(np.int64)
    item_counts = np.bincount(items, minlength=len(item_vocab)).astype(np.int64)
    if targets == "all_positions":
        block_size = np.repeat(np.diff(np.r_[starts, n]), np.diff(np.r_[starts, n])) if n else np.zeros(0, np.int64)
        from_end = block_size - 1 - pos_in_block
        window = (from_end % max_history == 0) & (pos_in_block > 0)
        hist, users, items = hist[window], users[window], items[window]
        # position j of a window's history predicts the item just newer than it: one target per position
        n_targets = int((hist >= 0).sum())
    else:
        n_targets = len(items)
    pos = np.broadcast_to(np.arange(max_history, dtype=np.float32), (len(items), max_history)).copy()
    return Examples(
        users,
        hist,
        pos,
        items,
        interactions=n,
        targets=n_targets,
        item_counts=item_counts,
        per_position=targets == "all_positions",
    )


def user_histories(interactions: pd.DataFrame) -> dict[str, list[str]]:
    """``user_id -> [item_id, ...]`` most recent first (all interactions, duplicates kept)."""
    df = sort_interactions(interactions)
    out: dict[str, list[str]] = {}
    for user, group in df.groupby("user_id", sort=False):
        out[str(user)] = group["item_id"].astype(str).tolist()[::-1]
    return out
