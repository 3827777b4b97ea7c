"""Validation queries: the compact per-user item sets, and the streamed queries equal to the in-memory ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfuse.config import DataConfig, TrainConfig
from recfuse.data.prepare import prepare_interactions
from recfuse.data.prepared_split import load_prepared_split
from recfuse.data.splits import split_interactions
from recfuse.data.vocab import IdVocab
from recfuse.errors import ConfigError
from recfuse.training import validation
from recfuse.training.stream import prepared_user_ids
from recfuse.training.stream_users import stream_val_queries
from recfuse.training.validation import Ragged, ValQueries, build_val_queries, capped, recall_at_k

SAMPLE = Path(__file__).resolve().parents[1] / "data_samples"


def test_ragged_rows_take_and_concat() -> None:
    r = Ragged.from_rows([np.array([5, 7]), np.array([], np.int64), np.array([1, 2, 3])])
    assert r.values.dtype == np.int32 and r.offsets.tolist() == [0, 2, 2, 5] and len(r) == 3
    assert [x.tolist() for x in r.rows(0, 3)] == [[5, 7], [], [1, 2, 3]]
    t = r.take([2, 0, 2])
    assert t.offsets.tolist() == [0, 3, 5, 8] and t.values.tolist() == [1, 2, 3, 5, 7, 1, 2, 3]
    c = Ragged.concat([r, Ragged.from_rows([np.array([9])])])
    assert [c[i].tolist() for i in range(len(c))] == [[5, 7], [], [1, 2, 3], [9]]
    assert len(Ragged.concat([])) == 0 and len(Ragged.from_rows([])) == 0


def test_recall_at_k_by_hand_with_masked_training_items() -> None:
    items = np.eye(4, dtype=np.float32)  # item i scores query[i]
    queries = np.array([[4, 3, 2, 1], [1, 2, 3, 4]], np.float32)
    vq = ValQueries(["a", "b"], np.array([0, 1]), np.full((2, 2), -1), np.zeros((2, 2), np.float32),
                    Ragged.from_rows([[1, 3], [2]]), Ragged.from_rows([[0], [3]]))  # fmt: skip
    # a: item 0 masked, top-2 = {1, 2}: 1 of its 2 held-out items; b: item 3 masked, top-2 = {2, 1}: 1 of 1
    assert recall_at_k(queries, items, vq, 2) == pytest.approx((0.5 + 1.0) / 2)
    # blocks of the queries give the same per-user figures
    first, second = vq.block(0, 1), vq.block(1, 5)
    assert first.user_ids == ["a"] and second.user_ids == ["b"] and second.exclude[0].tolist() == [3]
    assert recall_at_k(queries[:1], items, first, 2) == 0.5 and recall_at_k(queries[1:], items, second, 2) == 1.0


def test_validation_users_above_the_cap_are_a_seeded_sample_in_order(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 50
    vq = ValQueries([f"u{i}" for i in range(n)], np.arange(n), np.arange(n * 2).reshape(n, 2),
                    np.zeros((n, 2), np.float32), Ragged.from_rows([[i] for i in range(n)]),
                    Ragged.from_rows([[i, i + 1] for i in range(n)]))  # fmt: skip
    assert capped(vq, 0, 100, 1) is vq and capped(vq, 50, 100, 1) is vq  # 0 = all; not above the cap
    # unset: the score budget decides, never below MIN_VAL_USERS
    assert capped(vq, None, 10**9, 1) is vq  # 50 users are below the 2,000 floor
    with caplog.at_level("INFO", logger="recfuse.training.validation"):
        a, b = capped(vq, 10, 100, 1), capped(vq, 10, 100, 1)
    assert "sample of 10 of 50 users (train.val_max_users)" in caplog.text
    assert len(a) == 10 and a.user_ids == b.user_ids and a.user_ids != capped(vq, 10, 100, 2).user_ids  # seeded
    rows = [int(u[1:]) for u in a.user_ids]
    assert rows == sorted(rows) and a.user_idx.tolist() == rows  # every field keeps its row
    assert [a.relevant[i].tolist() for i in range(10)] == [[r] for r in rows]
    assert [a.exclude[i].tolist() for i in range(10)] == [[r, r + 1] for r in rows]
    assert (a.hist_idx == vq.hist_idx[rows]).all()
    with pytest.raises(ConfigError, match=r"`train.val_max_users` must be in \[0, 1000000000\], got -1"):
        TrainConfig(val_max_users=-1)
    monkeypatch.setattr(validation, "VAL_SCORE_BUDGET", 1_000)
    monkeypatch.setattr(validation, "MIN_VAL_USERS", 5)
    # 1,000 scores over 100 items: 10 users; over 1,000 items: the floor of 5
    assert len(capped(vq, None, 100, 1)) == 10 and len(capped(vq, None, 1_000, 1)) == 5


def test_streamed_val_queries_equal_the_in_memory_ones_and_test_rows_stay_on_disk(tmp_path: Path) -> None:
    df = pd.read_parquet(SAMPLE / "interactions.parquet")
    ref = split_interactions(df, "random", 42)
    prepare_interactions(SAMPLE / "interactions.parquet", tmp_path / "p", buckets=3, rows_per_shard=5000,
                         split="random", seed=42)  # fmt: skip
    split = load_prepared_split(tmp_path / "p", DataConfig())
    assert split is not None
    # the test rows are read when asked for, never held; their count comes from the manifest
    assert "test" not in vars(split) and split.test_rows == len(ref.test) == len(split.test)
    key = ["user_id", "item_id", "timestamp"]
    rows = [sorted(map(tuple, t[key].astype(str).to_numpy())) for t in (split.test, ref.test)]
    assert rows[0] == rows[1]
    items = IdVocab.build(pd.read_parquet(SAMPLE / "items.parquet")["item_id"].tolist(), num_oov=0)
    users = IdVocab.build(prepared_user_ids(tmp_path / "p"), num_oov=1)
    a = build_val_queries(ref.train, ref.val, items, users, 8)
    b = stream_val_queries(tmp_path / "p", split.val, items, users, 8)
    assert len(a) == len(b) > 100 and a.user_ids == b.user_ids
    for key in ("user_idx", "hist_idx", "hist_pos"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    for key in ("relevant", "exclude"):
        np.testing.assert_array_equal(getattr(a, key).offsets, getattr(b, key).offsets)
        np.testing.assert_array_equal(getattr(a, key).values, getattr(b, key).values)
    assert all(len(a.relevant[i]) for i in range(len(a)))  # only users with a held-out catalog item
