"""Splits: sizes, no (user, item) leakage, cold items only in test, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recfuse.data.splits import split_interactions
from recfuse.errors import ConfigError, DataError


def _interactions(n_users: int = 60, seed: int = 0) -> pd.DataFrame:
    """Users with 1..60 distinct items, some items repeated (same pair twice at another time)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = 1 + (u * 7) % 60
        items = rng.choice(200, size=n, replace=False)
        for k, i in enumerate(items):
            rows.append((f"u{u}", f"i{i}", 1_000 * u + 10 * k))
        if n >= 4:  # a repeat of the first pair, latest in time
            rows.append((f"u{u}", f"i{items[0]}", 1_000 * u + 999))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def _pairs(df: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(df["user_id"], df["item_id"]))


def test_random_split_sizes_and_no_leakage() -> None:
    df = _interactions()
    s = split_interactions(df, "random", seed=3)
    assert len(s.train) + len(s.val) + len(s.test) == len(df)
    n_pairs = len(_pairs(df))
    assert 0.75 < len(_pairs(s.train)) / n_pairs < 0.85
    assert 0.07 < len(_pairs(s.test)) / n_pairs < 0.13 and 0.07 < len(_pairs(s.val)) / n_pairs < 0.13
    assert not _pairs(s.train) & _pairs(s.test) and not _pairs(s.train) & _pairs(s.val)
    assert not _pairs(s.val) & _pairs(s.test)
    assert set(s.test["user_id"]) <= set(s.train["user_id"]) and set(s.val["user_id"]) <= set(s.train["user_id"])
    # users with fewer than 3 distinct items stay whole in train, and are counted
    sizes = df.groupby("user_id")["item_id"].nunique()
    small = set(sizes[sizes < 3].index)
    assert s.train_only_users == len(small) > 0
    assert not small & (set(s.val["user_id"]) | set(s.test["user_id"]))
    # every user with >= 3 items has exactly max(1, round(0.1 n)) test pairs
    per_user_test = s.test.groupby("user_id")["item_id"].nunique()
    for user, n in sizes[sizes >= 3].items():
        assert per_user_test[user] == max(1, round(0.1 * n))
    assert s.summary() == {
        "kind": "random", "seed": 3, "train": len(s.train), "val": len(s.val), "test": len(s.test),
        "train_users": 60, "val_users": len(sizes) - len(small), "test_users": len(sizes) - len(small),
        "cold_items": 0, "train_only_users": len(small),
    }  # fmt: skip


def test_random_split_is_deterministic_and_order_independent() -> None:
    df = _interactions()
    a = split_interactions(df, "random", seed=5)
    b = split_interactions(df.sample(frac=1.0, random_state=1), "random", seed=5)
    c = split_interactions(df, "random", seed=6)
    assert _pairs(a.test) == _pairs(b.test) and _pairs(a.val) == _pairs(b.val)
    assert _pairs(a.test) != _pairs(c.test)


def test_temporal_leave_last_out() -> None:
    df = pd.DataFrame(
        {
            "user_id": ["u1"] * 5 + ["u2"] * 2,
            "item_id": ["a", "b", "c", "d", "b", "a", "b"],
            "timestamp": [10, 20, 30, 40, 50, 5, 6],
        }
    )
    s = split_interactions(df, "temporal", seed=0)
    # u1's latest pair is (u1, b) at t=50, so both b rows go to test; d (t=40) is second-to-last -> val
    assert sorted(zip(s.test["item_id"], s.test["timestamp"])) == [("b", 20), ("b", 50)]
    assert s.val["item_id"].tolist() == ["d"]
    assert sorted(s.train["item_id"]) == ["a", "a", "b", "c"]
    assert s.train_only_users == 1 and set(s.train[s.train["user_id"] == "u2"]["item_id"]) == {"a", "b"}


def test_temporal_on_larger_data() -> None:
    df = _interactions()
    s = split_interactions(df, "temporal", seed=0)
    last = df.groupby(["user_id", "item_id"])["timestamp"].max().reset_index()
    for user, g in last.groupby("user_id"):
        if len(g) < 3:
            continue
        order = g.sort_values("timestamp", ascending=False)["item_id"].tolist()
        assert set(s.test[s.test["user_id"] == user]["item_id"]) == {order[0]}
        assert set(s.val[s.val["user_id"] == user]["item_id"]) == {order[1]}


def test_cold_start_items_only_in_test() -> None:
    df = _interactions()
    s = split_interactions(df, "cold_start", seed=11, cold_item_fraction=0.2)
    n_items = df["item_id"].nunique()
    assert len(s.cold_items) == round(0.2 * n_items)
    assert not set(s.train["item_id"]) & s.cold_items and not set(s.val["item_id"]) & s.cold_items
    cold_rows = df[df["item_id"].isin(s.cold_items)]
    assert len(s.test[s.test["item_id"].isin(s.cold_items)]) == len(cold_rows)
    assert not _pairs(s.train) & _pairs(s.test)
    again = split_interactions(df, "cold_start", seed=11, cold_item_fraction=0.2)
    assert again.cold_items == s.cold_items and _pairs(again.test) == _pairs(s.test)
    assert split_interactions(df, "cold_start", seed=12, cold_item_fraction=0.2).cold_items != s.cold_items
    assert s.summary()["cold_items"] == len(s.cold_items)


def test_split_errors() -> None:
    df = _interactions(5)
    with pytest.raises(
        ConfigError, match=r"split kind must be one of \['random', 'temporal', 'cold_start', 'column'\], got 'rnd'"
    ):
        split_interactions(df, "rnd", seed=0)
    with pytest.raises(ConfigError, match=r"`cold_item_fraction` must be in \[0, 0.9\], got 1.5"):
        split_interactions(df, "cold_start", seed=0, cold_item_fraction=1.5)
    with pytest.raises(DataError, match=r"cannot split an empty interactions table"):
        split_interactions(df.iloc[:0], "random", seed=0)


def test_temporal_ties_follow_file_order() -> None:
    # equal timestamps: the later row in the file is the more recent one (test), then the one before (val)
    df = pd.DataFrame({"user_id": ["u"] * 4, "item_id": ["x", "y", "z", "w"], "timestamp": [7, 7, 7, 7]})
    s = split_interactions(df, "temporal", seed=0)
    assert s.test["item_id"].tolist() == ["w"] and s.val["item_id"].tolist() == ["z"]
    back = split_interactions(df.iloc[::-1], "temporal", seed=0)
    assert back.test["item_id"].tolist() == ["x"] and back.val["item_id"].tolist() == ["y"]


def _column_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["u1"] * 4 + ["u2"] * 3,
            "item_id": ["a", "b", "c", "d", "a", "b", "c"],
            "timestamp": [1, 2, 3, 4, 1, 2, 3],
            "split": ["train", "train", "valid", "test", "train", " Train", "test"],
        }
    )


def test_column_split_uses_the_given_parts() -> None:
    s = split_interactions(_column_frame(), "column", seed=3)
    assert sorted(zip(s.train["user_id"], s.train["item_id"])) == [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")]
    assert list(zip(s.val["user_id"], s.val["item_id"])) == [("u1", "c")]
    assert sorted(zip(s.test["user_id"], s.test["item_id"])) == [("u1", "d"), ("u2", "c")]
    assert "split" not in s.train.columns and s.kind == "column" and s.cold_items == frozenset()
    # the fingerprint ignores row order and changes when one row changes part
    again = split_interactions(_column_frame().sample(frac=1.0, random_state=0), "column", seed=3)
    assert again.fingerprint() == s.fingerprint() and len(s.fingerprint()) == 64
    moved = _column_frame()
    moved.loc[1, "split"] = "valid"
    assert split_interactions(moved, "column", seed=3).fingerprint() != s.fingerprint()
    assert s.record()["fingerprint"] == s.fingerprint() and s.record()["kind"] == "column"


def test_column_split_without_valid_rows() -> None:
    df = _column_frame()
    df["split"] = df["split"].replace({"valid": "train"})
    s = split_interactions(df, "column", seed=0)
    assert len(s.val) == 0 and len(s.train) == 5


def test_column_split_errors() -> None:
    from recfuse.errors import SchemaError

    no_column = r"needs a 'split' column .* got columns \['item_id', 'timestamp', 'user_id'\]"
    with pytest.raises(SchemaError, match=no_column):
        split_interactions(_column_frame().drop(columns=["split"]), "column", seed=0)
    bad = _column_frame()
    bad.loc[[0, 1], "split"] = "val"
    bad.loc[2, "split"] = None
    bad_values = r"3 row\(s\) have a value other than \['train', 'valid', 'test'\]: 'val' \(2 rows\), None \(1 row\)"
    with pytest.raises(SchemaError, match=bad_values):
        split_interactions(bad, "column", seed=0)
    none_train = _column_frame().assign(split="test")
    with pytest.raises(SchemaError, match=r"names no 'train' row"):
        split_interactions(none_train, "column", seed=0)
