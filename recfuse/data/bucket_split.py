"""Pass 2 of ``recfuse prepare`` with a split: each hash bucket of users split on its own.

A bucket holds every row of its users (with each row's input row number), so
:func:`recfuse.data.splits.split_parts` gives its rows the parts :func:`split_interactions` gives
them in the whole table; :class:`BucketSplit` writes the held-out rows to ``val.parquet`` /
``test.parquet``, hands the training rows back to be sorted and sharded, and sums the split's
record (sizes, users per part, :class:`~recfuse.data.splits.SplitFingerprint`) bucket by bucket.

Example:
    >>> bs = BucketSplit(tmp, "random", 42, 0.1, all_items)  # doctest: +SKIP
    >>> train_rows = bs.apply(bucket_table)                   # doctest: +SKIP
    >>> record = bs.close()                                   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recfuse.data.splits import SPLIT_COLUMN, SplitFingerprint, cold_item_set, split_parts
from recfuse.errors import SchemaError

__all__ = ["COLUMNS", "SCHEMA", "BucketSplit"]

COLUMNS = ("user_id", "item_id", "timestamp")
SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64())])


class BucketSplit:
    """Pass 2's split of each bucket: train rows back, val/test rows written, the split's record summed."""

    def __init__(self, tmp: Path, kind: str, seed: int, cold_item_fraction: float, all_items: list[str]) -> None:
        self.kind, self.seed, self.fraction = kind, int(seed), float(cold_item_fraction)
        self.cold = cold_item_set(all_items, cold_item_fraction, seed) if kind == "cold_start" else frozenset()
        self.writers = {p: pq.ParquetWriter(tmp / f"{name}.parquet", SCHEMA) for p, name in ((1, "val"), (2, "test"))}
        self.fingerprint = SplitFingerprint()
        self.rows = [0, 0, 0]
        self.users = [0, 0, 0]
        self.train_only = 0

    def apply(self, table: pa.Table) -> pa.Table:
        """The training rows of a bucket (every row of its users, in input order)."""
        df = table.select(list(COLUMNS)).to_pandas()
        if self.kind == "column":
            part = table.column("part").to_numpy().astype(np.int8)
            users = df["user_id"].to_numpy()
            self.train_only += len(set(users[part == 0]) - set(users[part != 0]))
        else:
            part, train_only = split_parts(df, self.kind, self.seed, self.cold, table.column("row").to_numpy())
            self.train_only += train_only
        for p in range(3):
            rows = df.loc[part == p]
            self.fingerprint.add(p, rows)
            self.rows[p] += len(rows)
            self.users[p] += int(rows["user_id"].nunique())
            if p in self.writers and len(rows):
                self.writers[p].write_table(table.select(list(COLUMNS)).filter(pa.array(part == p)))
        return table.select(list(COLUMNS)).filter(pa.array(part == 0))

    def close(self) -> dict[str, Any]:
        """The split's record (the keys of ``Split.record()``) plus ``cold_item_fraction``."""
        for w in self.writers.values():
            w.close()
        if self.kind == "column" and not self.rows[0]:
            raise SchemaError(f"interactions column {SPLIT_COLUMN!r} names no 'train' row; nothing to train on")
        return {
            "kind": self.kind,
            "seed": self.seed,
            "train": self.rows[0],
            "val": self.rows[1],
            "test": self.rows[2],
            "train_users": self.users[0],
            "val_users": self.users[1],
            "test_users": self.users[2],
            "cold_items": len(self.cold),
            "train_only_users": self.train_only,
            "fingerprint": self.fingerprint.hexdigest(),
            "cold_item_fraction": self.fraction,
        }
