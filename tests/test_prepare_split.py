"""`recfuse prepare` with a split: the streamed, bucket-by-bucket split equals `split_interactions`'."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfuse.data.prepare import load_manifest, prepare_interactions
from recfuse.data.splits import split_interactions
from recfuse.errors import ConfigError, DataError, SchemaError

SAMPLE = Path(__file__).resolve().parents[1] / "data_samples"
KEY = ["user_id", "item_id", "timestamp"]


def _rows(df: pd.DataFrame) -> list[tuple[str, str, int]]:
    return sorted(zip(df["user_id"].astype(str), df["item_id"].astype(str), df["timestamp"].astype(int), strict=True))


def _streamed_parts(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    m = load_manifest(folder)
    train = pd.concat([pd.read_parquet(folder / s["file"]) for s in m["shards"]], ignore_index=True)
    return train, pd.read_parquet(folder / "val.parquet"), pd.read_parquet(folder / "test.parquet")


def _ties() -> pd.DataFrame:
    """Users with many equal timestamps (temporal ties break by input row order) and repeated pairs."""
    rng = np.random.default_rng(4)
    n = 3000
    df = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in rng.integers(0, 120, n)],
            "item_id": [f"i{i}" for i in rng.integers(0, 300, n)],
            "timestamp": rng.integers(0, 4, n).astype(np.int64),  # four distinct times: ties everywhere
        }
    )
    df["split"] = np.where(rng.random(n) < 0.8, "train", np.where(rng.random(n) < 0.5, "valid", "test"))
    return df


def _check_equal(df: pd.DataFrame, src: Path, tmp: Path, kind: str, seed: int, buckets: int) -> None:
    ref = split_interactions(df, kind, seed, cold_item_fraction=0.2)
    m = prepare_interactions(src, tmp, buckets=buckets, rows_per_shard=700, split=kind, seed=seed,
                             cold_item_fraction=0.2)  # fmt: skip
    train, val, test = _streamed_parts(tmp)
    assert _rows(train) == _rows(ref.train) and _rows(val) == _rows(ref.val) and _rows(test) == _rows(ref.test)
    record = {k: v for k, v in m["split"].items() if k != "cold_item_fraction"}
    assert record == ref.record(), (record, ref.record())
    assert m["rows"] == len(ref.train) and m["users"] == ref.train["user_id"].nunique()
    assert set(pd.read_parquet(tmp / "item_counts.parquet")["item_id"]) == set(ref.train["item_id"])


@pytest.mark.parametrize("kind", ["random", "temporal", "cold_start", "column"])
def test_streamed_split_equals_the_in_memory_split_with_timestamp_ties(tmp_path: Path, kind: str) -> None:
    df = _ties()
    # several input files: the input row number runs on across them
    (tmp_path / "in").mkdir()
    for k, start in enumerate(range(0, len(df), 1000)):
        df.iloc[start : start + 1000].to_parquet(tmp_path / "in" / f"part-{k}.parquet")
    _check_equal(df, tmp_path / "in", tmp_path / "p", kind, seed=11, buckets=5)


@pytest.mark.parametrize("kind", ["random", "temporal", "cold_start"])
def test_streamed_split_equals_the_in_memory_split_on_the_sample(tmp_path: Path, kind: str) -> None:
    df = pd.read_parquet(SAMPLE / "interactions.parquet")
    _check_equal(df, SAMPLE / "interactions.parquet", tmp_path / "p", kind, seed=42, buckets=3)


def test_random_split_is_independent_of_row_order_and_buckets(tmp_path: Path) -> None:
    df = _ties().drop(columns="split")
    shuffled = df.sample(frac=1.0, random_state=2)
    shuffled.to_parquet(tmp_path / "shuffled.parquet")
    a = prepare_interactions(tmp_path / "shuffled.parquet", tmp_path / "a", buckets=2, split="random", seed=9)
    b = split_interactions(df, "random", 9)
    assert a["split"]["fingerprint"] == b.fingerprint()


def test_user_table_holds_distinct_training_items(tmp_path: Path) -> None:
    df = pd.DataFrame({"user_id": ["a", "a", "a", "b"], "item_id": ["x", "x", "y", "z"], "timestamp": [1, 2, 3, 4]})
    df.to_parquet(tmp_path / "i.parquet")
    prepare_interactions(tmp_path / "i.parquet", tmp_path / "p")
    users = pd.read_parquet(tmp_path / "p" / "users.parquet")
    assert dict(zip(users["user_id"], users["items"], strict=True)) == {"a": 2, "b": 1}


def test_prepare_split_errors(tmp_path: Path) -> None:
    df = _ties()
    df.drop(columns="split").to_parquet(tmp_path / "nosplit.parquet")
    with pytest.raises(SchemaError, match=r"lacks column\(s\) \['split'\].*'column' needs a 'split' column"):
        prepare_interactions(tmp_path / "nosplit.parquet", tmp_path / "p", split="column")
    bad = df.assign(split=df["split"].where(df.index > 2, "holdout"))
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(SchemaError, match=r"3 row\(s\) have a value other than.*'holdout' \(3 rows\)"):
        prepare_interactions(tmp_path / "bad.parquet", tmp_path / "p", split="column")
    df.assign(split="test").to_parquet(tmp_path / "notrain.parquet")
    with pytest.raises(SchemaError, match="names no 'train' row"):
        prepare_interactions(tmp_path / "notrain.parquet", tmp_path / "p", split="column")
    with pytest.raises(ConfigError, match=r"split kind must be one of .*got 'rnd'"):
        prepare_interactions(tmp_path / "nosplit.parquet", tmp_path / "p", split="rnd")
    with pytest.raises(ConfigError, match=r"`cold_item_fraction` must be in \[0, 0.9\], got 0.95"):
        prepare_interactions(tmp_path / "nosplit.parquet", tmp_path / "p", split="cold_start", cold_item_fraction=0.95)
    with pytest.raises(ValueError, match="`on_bad_rows` must be 'quarantine' or 'fail', got 'drop'"):
        prepare_interactions(tmp_path / "nosplit.parquet", tmp_path / "p", on_bad_rows="drop")
    empty = pd.DataFrame({"user_id": pd.Series([None], dtype="string"), "item_id": ["x"], "timestamp": [1]})
    empty.to_parquet(tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="cannot split an empty interactions table"):
        prepare_interactions(tmp_path / "empty.parquet", tmp_path / "p", split="random")
    assert not (tmp_path / "p").exists()  # nothing written by a failed run


def test_unknown_items_are_left_out_or_fail(tmp_path: Path) -> None:
    df = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "gone", "y"], "timestamp": [1, 2, 3]})
    df.to_parquet(tmp_path / "i.parquet")
    m = prepare_interactions(tmp_path / "i.parquet", tmp_path / "p", item_ids={"x", "y"})
    assert m["rows"] == 2 and m["unusable_rows"]["unknown_item"] == 1
    with pytest.raises(SchemaError, match=r"unusable rows \(1 unknown_item\) and `data.on_bad_rows` is 'fail'"):
        prepare_interactions(tmp_path / "i.parquet", tmp_path / "q", item_ids={"x", "y"}, on_bad_rows="fail")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("kind", ["random", "temporal"])
def test_prepare_with_a_config_leaves_out_the_rows_validate_rejects(tmp_path: Path, kind: str) -> None:
    from recfuse.cli.main import main
    from recfuse.config import RecfuseConfig
    from recfuse.data.splits import split_for
    from recfuse.data.synthetic import generate
    from recfuse.data.validate import load_dataset

    generate(tmp_path, n_items=80, n_users=40, seed=5)
    inter = pd.read_parquet(tmp_path / "interactions.parquet")
    inter["weight"] = 1.0
    inter.loc[[3, 30], "timestamp"] = -5  # negative seconds
    inter.loc[[7, 70, 71], "weight"] = -1.0
    inter.loc[[9, 90], "item_id"] = "no-such-item"
    inter.to_parquet(tmp_path / "interactions.parquet")
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        f'modalities = []\n[data]\nitems = "{tmp_path / "items.parquet"}"\n'
        f'interactions = "{tmp_path / "interactions.parquet"}"\nsplit = "{kind}"\non_bad_rows = "quarantine"\n',
        encoding="utf-8",
    )
    conf = RecfuseConfig.from_toml(cfg)
    ds = load_dataset(conf.data, conf.modalities)
    ref = split_for(ds.interactions, conf.data)
    assert main(["prepare", "--config", str(cfg), "--out", str(tmp_path / "p")]) == 0
    m = load_manifest(tmp_path / "p")
    assert m["unusable_rows"] == {"null_user_id": 0, "null_item_id": 0, "bad_timestamp": 2, "bad_weight": 3,
                                  "unknown_item": 2}  # fmt: skip
    assert {k: v for k, v in m["split"].items() if k != "cold_item_fraction"} == ref.record()
    # with on_bad_rows = "fail" the same rows stop prepare, as they stop validate
    fail = ["--set", 'data.on_bad_rows="fail"']
    assert main(["prepare", "--config", str(cfg), "--out", str(tmp_path / "q"), *fail]) == 4
    assert not (tmp_path / "q").exists()


def test_load_prepared_split_checks_the_config(tmp_path: Path) -> None:
    from recfuse.config import DataConfig
    from recfuse.data.prepare import input_files
    from recfuse.data.prepared_split import load_prepared_split

    df = _ties().drop(columns="split")
    df.to_parquet(tmp_path / "i.parquet")
    prepare_interactions(tmp_path / "i.parquet", tmp_path / "cold", split="cold_start", seed=3, cold_item_fraction=0.2)
    split = load_prepared_split(tmp_path / "cold", DataConfig(split="cold_start", split_seed=3, cold_item_fraction=0.2))
    ref = split_interactions(df, "cold_start", 3, cold_item_fraction=0.2)
    assert split is not None and split.record() == ref.record() and split.fingerprint() == ref.fingerprint()
    assert len(split.train) == len(ref.train) and _rows(split.val) == _rows(ref.val)
    assert split.train.median_user_items() == ref.train.groupby("user_id")["item_id"].nunique().median()
    with pytest.raises(ConfigError, match=r"data.cold_item_fraction = 0.2 but the config asks for .*"
                       r"data.cold_item_fraction = 0.1; re-run `recfuse prepare --config`"):  # fmt: skip
        load_prepared_split(tmp_path / "cold", DataConfig(split="cold_start", split_seed=3))
    with pytest.raises(ConfigError, match=r"was split with data.split = 'cold_start', data.split_seed = 3 but the "
                       r"config asks for data.split = 'random', data.split_seed = 42"):  # fmt: skip
        load_prepared_split(tmp_path / "cold", DataConfig())
    with pytest.raises(ConfigError, match=r"--prepared '.*nowhere': .*is not a prepared folder"):
        load_prepared_split(tmp_path / "nowhere", DataConfig())
    prepare_interactions(tmp_path / "i.parquet", tmp_path / "plain")
    assert load_prepared_split(tmp_path / "plain", DataConfig()) is None  # no split recorded: the older path
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"is not a Parquet file; `recfuse prepare` streams Parquet only"):
        input_files(tmp_path / "i.csv")
