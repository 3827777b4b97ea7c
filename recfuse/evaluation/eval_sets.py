"""Who an evaluation ranks and how: test users, their queries' histories, masks and relevant items.

:func:`build_eval_sets` resolves one protocol (:class:`recfuse.config.EvalConfig`) over a split for a
catalog order; :mod:`recfuse.evaluation.fullrank` ranks and scores the result.

Example:
    >>> sets = build_eval_sets(split, model.item_ids, EvalConfig(mask="train"))   # doctest: +SKIP
    >>> len(sets.users) == len(sets.histories) == len(sets.exclude)               # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

from recfuse.config import EvalConfig
from recfuse.types import Int64Array

logger = logging.getLogger(__name__)


class SplitLike(Protocol):
    """What evaluation needs from a split (``recfuse.data.splits.Split`` fits)."""

    @property
    def train(self) -> pd.DataFrame: ...

    @property
    def val(self) -> pd.DataFrame: ...

    @property
    def test(self) -> pd.DataFrame: ...

    @property
    def cold_items(self) -> frozenset[str]: ...


def _items_by_user(df: pd.DataFrame, index: Mapping[str, int]) -> tuple[dict[str, list[int]], int]:
    """user -> item indices of the rows of ``df``; also the number of rows whose item is unknown."""
    if df is None or df.empty:
        return {}, 0
    rows = df["item_id"].astype(str).map(index)
    unknown = int(rows.isna().sum())
    known = df.loc[rows.notna(), "user_id"].astype(str)
    grouped = pd.Series(rows[rows.notna()].astype(np.int64).to_numpy(), index=known.to_numpy()).groupby(level=0)
    return {str(u): list(v) for u, v in grouped}, unknown


def _histories(df: pd.DataFrame) -> dict[str, list[str]]:
    """``user -> [item_id, ...]`` most recent first (ordered by timestamp, ties in file order)."""
    if df is None or df.empty:
        return {}
    order = df.sort_values(["user_id", "timestamp"], kind="stable") if "timestamp" in df.columns else df
    out: dict[str, list[str]] = {}
    for user, group in order.groupby(order["user_id"].astype(str), sort=False):
        out[str(user)] = group["item_id"].astype(str).tolist()[::-1]
    return out


@dataclass(frozen=True)
class EvalSets:
    """Who is evaluated and how, under one protocol (:class:`recfuse.config.EvalConfig`).

    Attributes:
        users: test users with at least one rankable test item, sorted.
        histories: per user, the item ids the query reads (most recent first).
        exclude: per user, item indices removed from the ranking.
        test: per user, held-out item indices.
        item_counts: ``[n]`` training interactions per item.
        cold_mask: ``[n]`` True for the split's cold items, or None without cold items.
        counts: bookkeeping copied into the result.
        info: ``protocol`` and ``split`` descriptions for reports.
    """

    users: list[str]
    histories: list[list[str]]
    exclude: list[list[int]]
    test: list[list[int]]
    item_counts: Int64Array
    cold_mask: npt.NDArray[np.bool_] | None
    counts: dict[str, int]
    info: dict[str, Any]


def build_eval_sets(
    split: SplitLike,
    item_ids: Sequence[str],
    protocol: EvalConfig | None = None,
    cold_items: frozenset[str] | None = None,
) -> EvalSets:
    """Build the test users, their queries' histories and masks for ``protocol`` (default: ``EvalConfig()``).

    The split's kind (``split.kind`` when it has one) resolves ``protocol.history = "auto"``.
    """
    protocol = protocol or EvalConfig()
    kind = str(getattr(split, "kind", "random"))
    history = protocol.resolved_history(kind)
    index = {str(item): i for i, item in enumerate(item_ids)}
    test_by_user, unknown_test = _items_by_user(split.test, index)
    train_by_user = _items_by_user(split.train, index)[0]
    val_by_user = _items_by_user(split.val, index)[0]
    test_users = set(split.test["user_id"].astype(str)) if not split.test.empty else set()
    users = sorted(test_by_user)
    if unknown_test:
        logger.warning("%d test row(s) name items the model cannot rank; left out of the relevant sets", unknown_test)
    read = pd.concat([split.train, split.val], ignore_index=True) if history == "train+valid" else split.train
    by_user = _histories(read)
    histories = [by_user.get(u, []) for u in users]
    with_valid = protocol.mask == "train+valid"
    exclude = [train_by_user.get(u, []) + (val_by_user.get(u, []) if with_valid else []) for u in users]
    cold = frozenset(getattr(split, "cold_items", frozenset())) if cold_items is None else cold_items
    cold_mask = np.array([str(i) in cold for i in item_ids], dtype=bool) if cold else None
    train_idx = split.train["item_id"].astype(str).map(index).dropna().astype(np.int64).to_numpy()
    counts = {
        "test_rows": len(split.test),
        "unknown_test_rows": unknown_test,
        "users_only_unknown_test_items": len(test_users) - len(users),
        "users_without_history": sum(1 for h in histories if not h),
        "train_users_without_test_rows": len(set(split.train["user_id"].astype(str)) - test_users),
    }
    record = split.record() if hasattr(split, "record") else {}
    info = {"protocol": protocol.describe(kind), "mask": protocol.mask, "history": history, "split": record}
    return EvalSets(
        users=users,
        histories=histories,
        exclude=exclude,
        test=[test_by_user[u] for u in users],
        item_counts=np.bincount(train_idx, minlength=len(item_ids)).astype(np.int64),
        cold_mask=cold_mask,
        counts=counts,
        info=info,
    )
