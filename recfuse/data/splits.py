"""Train/validation/test splits of interactions, deterministic for a seed.

The unit of splitting is the (user, item) pair: repeated interactions of a user with one item all go
to the same part, so no pair leaks from train into val/test.

- ``random``: per user, pairs shuffled and split 8:1:1 (val and test get ``max(1, round(0.1 n))``
  each). Users with fewer than 3 pairs stay entirely in train (counted in ``train_only_users``).
- ``temporal``: the standard leave-one-out protocol. Per user, by the pair's latest timestamp: the
  last pair -> test, the one before -> val, the rest -> train (users with < 3 pairs: all train).
  Pairs with equal timestamps are ordered as their rows are in the file: the later row is the
  more recent one.
- ``cold_start``: a ``cold_item_fraction`` share of the interacted items, drawn with the seed, is
  held out: ALL their interactions go to test; the remaining interactions are split ``random``.
- ``column``: the split the data gives. The interactions carry a ``split`` column with values
  ``train`` / ``valid`` / ``test`` (``valid`` optional); any other value is a :class:`SchemaError`
  naming it and its row count.

:meth:`Split.fingerprint` hashes which (user, item, timestamp) rows went to which part, so a model
records the split it was trained on and evaluation can refuse a split that differs.

Example:
    >>> split = split_interactions(ds.interactions, "random", seed=42)  # doctest: +SKIP
    >>> split.summary()["train"]  # doctest: +SKIP
    19873
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from recfuse.config import SPLITS, DataConfig
from recfuse.errors import ConfigError, DataError, SchemaError

logger = logging.getLogger(__name__)

MIN_PAIRS_TO_SPLIT = 3
SPLIT_COLUMN = "split"
COLUMN_PARTS = {"train": 0, "valid": 1, "test": 2}


@dataclass(frozen=True)
class Split:
    """Interactions divided into train/val/test.

    Attributes:
        train, val, test: row subsets of the input (same columns, index reset).
        cold_items: ids held out entirely for test (``cold_start`` only; empty otherwise).
        kind: ``random`` | ``temporal`` | ``cold_start``.
        seed: the seed used.
        train_only_users: users kept entirely in train because they had fewer than 3 distinct items.
    """

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    cold_items: frozenset[str]
    kind: str
    seed: int = 0
    train_only_users: int = 0

    def summary(self) -> dict[str, Any]:
        """Sizes: interactions per part, users per part, cold items, users kept in train only."""
        return {
            "kind": self.kind,
            "seed": self.seed,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "train_users": int(self.train["user_id"].nunique()),
            "val_users": int(self.val["user_id"].nunique()),
            "test_users": int(self.test["user_id"].nunique()),
            "cold_items": len(self.cold_items),
            "train_only_users": self.train_only_users,
        }

    def fingerprint(self) -> str:
        """sha256 of which (user, item, timestamp) rows are in train, val and test (row order ignored).

        Two splits with the same fingerprint hold the same interactions in the same parts; a model
        directory stores it so that evaluation can check it scores the split the model was trained on.
        """
        digest = hashlib.sha256()
        for part, df in (("train", self.train), ("valid", self.val), ("test", self.test)):
            cols = ["user_id", "item_id"] + (["timestamp"] if "timestamp" in df.columns else [])
            frame = df.loc[:, cols].astype(str).sort_values(cols, kind="stable").reset_index(drop=True)
            digest.update(f"{part}:{len(frame)}:".encode())
            if len(frame):
                digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        return digest.hexdigest()

    def record(self) -> dict[str, Any]:
        """What a model directory stores about its split: kind, seed, sizes and :meth:`fingerprint`."""
        return {**self.summary(), "fingerprint": self.fingerprint()}


def _pairs(df: pd.DataFrame) -> tuple[pd.DataFrame, npt.NDArray[np.intp]]:
    """Distinct (user, item) pairs sorted by user then item, and each row's pair number ``[n]``."""
    keys = df[["user_id", "item_id"]].astype(str)
    last_ts = df["timestamp"].to_numpy(dtype=np.int64) if "timestamp" in df.columns else np.zeros(len(df), np.int64)
    frame = pd.DataFrame(
        {
            "user_id": keys["user_id"].to_numpy(),
            "item_id": keys["item_id"].to_numpy(),
            "ts": last_ts,
            "row": np.arange(len(df), dtype=np.int64),
        }
    )
    pairs = pd.DataFrame(frame.groupby(["user_id", "item_id"], sort=True, as_index=False)[["ts", "row"]].max())
    pairs = pairs.reset_index(drop=True)
    pair_no = pd.MultiIndex.from_frame(pairs.loc[:, ["user_id", "item_id"]]).get_indexer(
        pd.MultiIndex.from_frame(frame[["user_id", "item_id"]])
    )
    return pairs, pair_no


def _assign(pairs: pd.DataFrame, order_key: np.ndarray, leave_one_out: bool) -> tuple[np.ndarray, int]:
    """Part per pair (0 train, 1 val, 2 test) from a within-user order (lowest key -> test).

    Val and test get one pair each (``leave_one_out``) or ``max(1, round(0.1 n))`` each.

    Returns:
        ``(part [n_pairs] int8, users kept in train only)``.
    """
    user_codes = pd.factorize(pairs["user_id"], sort=True)[0]
    order = np.lexsort((order_key, user_codes))
    sorted_users = user_codes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    sizes = np.diff(np.r_[starts, len(order)])
    group_start = np.repeat(starts, sizes)
    group_size = np.repeat(sizes, sizes)
    rank = np.arange(len(order)) - group_start
    per_part = np.ones(len(order)) if leave_one_out else np.maximum(1, np.rint(0.1 * group_size))
    n_hold = np.where(group_size >= MIN_PAIRS_TO_SPLIT, per_part, 0).astype(np.int64)
    part_sorted = np.where(rank < n_hold, 2, np.where(rank < 2 * n_hold, 1, 0)).astype(np.int8)
    part = np.empty(len(order), dtype=np.int8)
    part[order] = part_sorted
    return part, int((sizes < MIN_PAIRS_TO_SPLIT).sum())


def split_interactions(
    interactions: pd.DataFrame, kind: str, seed: int, cold_item_fraction: float = 0.1
) -> Split:
    """Split interactions per user.

    Args:
        interactions: ``[n]`` rows with user_id, item_id and timestamp (validated: ids are str);
            with a ``split`` column for ``kind="column"``.
        kind: ``random``, ``temporal``, ``cold_start`` or ``column``.
        seed: random seed; the same input (in any row order) and seed give the same split.
        cold_item_fraction: share of interacted items held out for ``cold_start``.

    Returns:
        :class:`Split`.

    Raises:
        ConfigError: unknown ``kind`` or a fraction outside [0, 0.9].
        DataError: no interactions.
        SchemaError: ``column`` without a ``split`` column, or with values other than train/valid/test.
    """
    if kind not in SPLITS:
        raise ConfigError(f"split kind must be one of {list(SPLITS)}, got {kind!r}")
    if not 0.0 <= cold_item_fraction <= 0.9:
        raise ConfigError(f"`cold_item_fraction` must be in [0, 0.9], got {cold_item_fraction!r}")
    if len(interactions) == 0:
        raise DataError("cannot split an empty interactions table; check the interactions file")
    df = interactions.reset_index(drop=True)
    if kind == "column":
        return _column_split(df, seed)
    rng = np.random.default_rng(seed)
    row_part = np.zeros(len(df), dtype=np.int8)
    cold: frozenset[str] = frozenset()
    if kind == "cold_start":
        all_items = np.array(sorted(df["item_id"].astype(str).unique()), dtype=object)
        n_cold = int(round(cold_item_fraction * len(all_items)))
        cold = frozenset(str(x) for x in rng.choice(all_items, size=n_cold, replace=False)) if n_cold else cold
    is_cold = df["item_id"].astype(str).isin(cold).to_numpy()
    warm = df.loc[~is_cold]
    pairs, pair_no = _pairs(warm)
    if kind == "temporal":
        # Most recent first (lowest key): newest pair -> test, next -> val. Equal timestamps: the
        # pair whose last row comes later in the file is the more recent one.
        by_recency = np.lexsort((-pairs["row"].to_numpy(dtype=np.int64), -pairs["ts"].to_numpy(dtype=np.int64)))
        key = np.empty(len(pairs), dtype=np.float64)
        key[by_recency] = np.arange(len(pairs), dtype=np.float64)
    else:
        key = rng.random(len(pairs))
    part, train_only = _assign(pairs, key, leave_one_out=kind == "temporal")
    row_part[~is_cold] = part[pair_no]
    row_part[is_cold] = 2
    split = Split(
        train=df.loc[row_part == 0].reset_index(drop=True),
        val=df.loc[row_part == 1].reset_index(drop=True),
        test=df.loc[row_part == 2].reset_index(drop=True),
        cold_items=cold,
        kind=kind,
        seed=seed,
        train_only_users=train_only,
    )
    logger.info("split %s: %s", kind, split.summary())
    return split


def _column_split(df: pd.DataFrame, seed: int) -> Split:
    """The split named by each row's ``split`` column (``train`` / ``valid`` / ``test``)."""
    if SPLIT_COLUMN not in df.columns:
        raise SchemaError(
            f"`data.split` = 'column' needs a {SPLIT_COLUMN!r} column in the interactions (values train / valid / "
            f"test), got columns {sorted(map(str, df.columns))}; add the column or choose another split kind "
            f"({[k for k in SPLITS if k != 'column']})"
        )
    values = df[SPLIT_COLUMN]
    text = values.astype("string").str.strip().str.lower()
    bad = text.isna() | ~text.isin(list(COLUMN_PARTS))
    if bad.any():
        shown = values[bad].astype(object).where(values[bad].notna(), None)
        counts = shown.value_counts(dropna=False).head(5)
        detail = ", ".join(f"{v!r} ({n} row{'s' if n != 1 else ''})" for v, n in counts.items())
        raise SchemaError(
            f"interactions column {SPLIT_COLUMN!r}: {int(bad.sum())} row(s) have a value other than "
            f"{list(COLUMN_PARTS)}: {detail}; fix those rows (valid is optional) or choose another split kind"
        )
    part = text.map(COLUMN_PARTS).to_numpy(dtype=np.int8)
    if not (part == 0).any():
        raise SchemaError(f"interactions column {SPLIT_COLUMN!r} names no 'train' row; nothing to train on")
    out = df.drop(columns=[SPLIT_COLUMN])
    split = Split(
        train=out.loc[part == 0].reset_index(drop=True),
        val=out.loc[part == 1].reset_index(drop=True),
        test=out.loc[part == 2].reset_index(drop=True),
        cold_items=frozenset(),
        kind="column",
        seed=seed,
        train_only_users=int(len(set(out.loc[part == 0, "user_id"]) - set(out.loc[part != 0, "user_id"]))),
    )
    logger.info("split column: %s", split.summary())
    return split


def check_same_split(split: Split, record: dict[str, Any] | None, where: str) -> None:
    """Raise :class:`DataError` unless ``split`` is the one ``record`` (:meth:`Split.record`) describes.

    Args:
        split: the split recomputed from the data now.
        record: what the model stored at training time (``None``: an older model without one,
            accepted with a warning).
        where: the artifact's name for messages (e.g. the model directory).
    """
    if not record:
        logger.warning("%s records no split; cannot check that evaluation uses the training split", where)
        return
    fingerprint = split.fingerprint()
    if record.get("fingerprint") == fingerprint:
        return
    now = split.summary()
    sizes = ", ".join(f"{p} {record.get(p)} -> {now[p]}" for p in ("train", "val", "test"))
    raise DataError(
        f"{where} was trained on a {record.get('kind')!r} split (seed {record.get('seed')}, fingerprint "
        f"{str(record.get('fingerprint'))[:12]}) but the data now gives a different one ({split.kind!r}, seed "
        f"{split.seed}, fingerprint {fingerprint[:12]}; rows {sizes}): scoring it would mix training rows into "
        "the test set. Evaluate with the data the model was trained on, or retrain on the current data"
    )


def split_for(interactions: pd.DataFrame, data: DataConfig) -> Split:
    """The split a config asks for: ``data.split``, ``data.split_seed``, ``data.cold_item_fraction``."""
    return split_interactions(interactions, data.split, data.split_seed, data.cold_item_fraction)
