"""Train/validation/test splits of interactions, deterministic for a seed.

The unit of splitting is the (user, item) pair: repeated interactions of a user with one item all go
to the same part, so no pair leaks from train into val/test.

- ``random``: per user, pairs ordered by a seeded hash of (seed, user_id, item_id) and split 8:1:1
  (val and test get ``max(1, round(0.1 n))`` each). Users with fewer than 3 pairs stay entirely in
  train (counted in ``train_only_users``). The key of a pair depends on nothing else, so the split of
  a user is the same whether the table is split whole here or bucket by bucket by
  ``recfuse prepare`` (:mod:`recfuse.data.prepare`).
- ``temporal``: the standard leave-one-out protocol. Per user, by the pair's latest timestamp: the
  last pair -> test, the one before -> val, the rest -> train (users with < 3 pairs: all train).
  Pairs with equal timestamps are ordered as their rows are in the file: the later row is the
  more recent one (``recfuse prepare`` tracks each row's input row number for that).
- ``cold_start``: a ``cold_item_fraction`` share of the interacted items, drawn with the seed, is
  held out: ALL their interactions go to test; the remaining interactions are split ``random``.
- ``column``: the split the data gives. The interactions carry a ``split`` column with values
  ``train`` / ``valid`` / ``test`` (``valid`` optional); any other value is a :class:`SchemaError`
  naming it and its row count.

:meth:`Split.fingerprint` hashes which (user, item, timestamp) rows went to which part, so a model
records the split it was trained on and evaluation can refuse a split that differs. It is a sum of
per-row hashes (:class:`SplitFingerprint`), so a split written bucket by bucket gets the same one.

:func:`split_parts` is the per-row assignment both paths share: it needs every row of a user
(any subset of whole users works), the global cold-item set (:func:`cold_item_set`) and, for
``temporal``, each row's position in the input.

Example:
    >>> split = split_interactions(ds.interactions, "random", seed=42)  # doctest: +SKIP
    >>> split.summary()["train"]  # doctest: +SKIP
    18768
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
        fp = SplitFingerprint()
        for part, df in ((0, self.train), (1, self.val), (2, self.test)):
            fp.add(part, df)
        return fp.hexdigest()

    def record(self) -> dict[str, Any]:
        """What a model directory stores about its split: kind, seed, sizes and :meth:`fingerprint`."""
        return {**self.summary(), "fingerprint": self.fingerprint()}


_MASK64 = (1 << 64) - 1


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on ``[n]`` uint64 (wrapping arithmetic): a well-spread 64-bit hash."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _hash_ids(values: Any, key: str) -> np.ndarray:
    """``[n]`` uint64 hashes of id strings (pandas' siphash of the values, independent of dtype)."""
    arr = np.asarray(pd.Series(values, dtype=object).astype(str), dtype=object)
    return pd.util.hash_array(arr, hash_key=key, categorize=False)


def _row_hash(user_ids: Any, item_ids: Any, key: str, timestamps: Any = None) -> np.ndarray:
    h = _mix64(_hash_ids(user_ids, key) * np.uint64(0x9E3779B97F4A7C15) + _hash_ids(item_ids, key))
    if timestamps is not None:
        ts = np.asarray(timestamps, dtype=np.int64).view(np.uint64)
        h = _mix64(h * np.uint64(0x9E3779B97F4A7C15) + ts)
    return h


def pair_uniform(user_ids: Any, item_ids: Any, seed: int) -> npt.NDArray[np.float64]:
    """``[n]`` keys in [0, 1), a deterministic function of ``(seed, user_id, item_id)`` alone.

    The ``random`` split orders each user's pairs by it: any subset of the rows holding whole users
    (a ``recfuse prepare`` bucket) gets the same order as the whole table.
    """
    key = hashlib.sha256(f"recfuse.split:{int(seed)}".encode()).hexdigest()[:16]
    h = _row_hash(user_ids, item_ids, key)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


class SplitFingerprint:
    """Order-independent digest of which (user, item, timestamp) rows are in which part.

    Per part: the row count and two sums (mod 2**64) of independent 64-bit row hashes, so rows can
    be added in any order and in any number of calls (``recfuse prepare`` adds one bucket at a time).

    Example:
        >>> fp = SplitFingerprint()
        >>> fp.add(0, pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "timestamp": [1]}))
        >>> len(fp.hexdigest())
        64
    """

    def __init__(self) -> None:
        self._parts = {p: [0, 0, 0] for p in range(3)}

    def add(self, part: int, df: pd.DataFrame) -> None:
        """Add ``df``'s rows (user_id, item_id, timestamp if present) to ``part`` (0 train, 1 val, 2 test)."""
        if not len(df):
            return
        ts = df["timestamp"].to_numpy(dtype=np.int64) if "timestamp" in df.columns else None
        h = _row_hash(df["user_id"], df["item_id"], "recfuse.split.fp", ts)
        acc = self._parts[part]
        acc[0] += len(df)
        acc[1] = (acc[1] + int(h.sum(dtype=np.uint64))) & _MASK64
        acc[2] = (acc[2] + int(_mix64(h ^ np.uint64(0x5851F42D4C957F2D)).sum(dtype=np.uint64))) & _MASK64

    def hexdigest(self) -> str:
        digest = hashlib.sha256()
        for part, name in enumerate(("train", "valid", "test")):
            n, s1, s2 = self._parts[part]
            digest.update(f"{name}:{n}:{s1:016x}:{s2:016x};".encode())
        return digest.hexdigest()


def cold_item_set(items: Any, fraction: float, seed: int) -> frozenset[str]:
    """The ``cold_start`` split's held-out items: a ``fraction`` of the distinct ``items``, drawn with ``seed``."""
    all_items = np.array(sorted({str(x) for x in items}), dtype=object)
    n_cold = int(round(fraction * len(all_items)))
    if not n_cold:
        return frozenset()
    rng = np.random.default_rng(seed)
    return frozenset(str(x) for x in rng.choice(all_items, size=n_cold, replace=False))


def split_parts(
    df: pd.DataFrame, kind: str, seed: int, cold: frozenset[str] = frozenset(), rows: np.ndarray | None = None
) -> tuple[npt.NDArray[np.int8], int]:
    """Part of each row (0 train, 1 val, 2 test) for the ``random``, ``temporal`` and ``cold_start`` kinds.

    Args:
        df: ``[n]`` rows (user_id, item_id, timestamp) holding every row of each of its users.
        kind: ``random``, ``temporal`` or ``cold_start``.
        seed: the split seed.
        cold: the held-out items (:func:`cold_item_set`; ``cold_start`` only).
        rows: ``[n]`` each row's position in the whole input (ties of ``temporal``; default ``0..n-1``).

    Returns:
        ``(part [n] int8, users kept in train only)``.
    """
    row_part = np.zeros(len(df), dtype=np.int8)
    rows = np.arange(len(df), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    is_cold = df["item_id"].astype(str).isin(cold).to_numpy() if cold else np.zeros(len(df), dtype=bool)
    warm = df.loc[~is_cold]
    pairs, pair_no = _pairs(warm, rows[~is_cold])
    if kind == "temporal":
        # Most recent first (lowest key): newest pair -> test, next -> val. Equal timestamps: the
        # pair whose last row comes later in the input is the more recent one.
        by_recency = np.lexsort((-pairs["row"].to_numpy(dtype=np.int64), -pairs["ts"].to_numpy(dtype=np.int64)))
        key = np.empty(len(pairs), dtype=np.float64)
        key[by_recency] = np.arange(len(pairs), dtype=np.float64)
    else:
        key = pair_uniform(pairs["user_id"], pairs["item_id"], seed)
    part, train_only = _assign(pairs, key, leave_one_out=kind == "temporal")
    row_part[~is_cold] = part[pair_no]
    row_part[is_cold] = 2
    return row_part, train_only


def column_parts(values: pd.Series) -> npt.NDArray[np.int8]:
    """Part of each row named by a ``split`` column (train / valid / test, any case, spaces stripped).

    Raises:
        SchemaError: a value other than train / valid / test (or null), naming it and its row count.
    """
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
    return np.asarray(text.map(COLUMN_PARTS).to_numpy(), dtype=np.int8)


def _pairs(df: pd.DataFrame, rows: np.ndarray | None = None) -> tuple[pd.DataFrame, npt.NDArray[np.intp]]:
    """Distinct (user, item) pairs sorted by user then item, and each row's pair number ``[n]``."""
    keys = df[["user_id", "item_id"]].astype(str)
    last_ts = df["timestamp"].to_numpy(dtype=np.int64) if "timestamp" in df.columns else np.zeros(len(df), np.int64)
    frame = pd.DataFrame(
        {
            "user_id": keys["user_id"].to_numpy(),
            "item_id": keys["item_id"].to_numpy(),
            "ts": last_ts,
            "row": np.arange(len(df), dtype=np.int64) if rows is None else rows,
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


def split_interactions(interactions: pd.DataFrame, kind: str, seed: int, cold_item_fraction: float = 0.1) -> Split:
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
    cold: frozenset[str] = frozenset()
    if kind == "cold_start":
        cold = cold_item_set(df["item_id"].astype(str).unique(), cold_item_fraction, seed)
    row_part, train_only = split_parts(df, kind, seed, cold)
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
    part = column_parts(df[SPLIT_COLUMN])
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
