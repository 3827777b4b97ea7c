"""`recfuse prepare` (user-sorted shards in bounded memory) and the streamed example source built on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recfuse.cli.main import main
from recfuse.data import prepare as prep
from recfuse.data.prepare import load_manifest, prepare_interactions
from recfuse.data.vocab import IdVocab
from recfuse.errors import ArtifactError, InvalidRequestError, SchemaError, exit_code_for
from recfuse.training.examples import build_examples
from recfuse.training.stream import StreamedExamples, prepared_item_counts, prepared_user_ids

SAMPLE = Path(__file__).resolve().parents[1] / "data_samples"


@pytest.fixture(scope="module")
def sample() -> tuple[pd.DataFrame, IdVocab, IdVocab]:
    df = pd.read_parquet(SAMPLE / "interactions.parquet")
    items = IdVocab.build(pd.read_parquet(SAMPLE / "items.parquet")["item_id"].tolist(), num_oov=0)
    users = IdVocab.build(sorted(set(map(str, df["user_id"]))), num_oov=2)
    return df, items, users


def _rows(d: dict[str, np.ndarray]) -> list[tuple[int, tuple[int, ...], int]]:
    return sorted(zip(d["user_idx"].tolist(), map(tuple, d["hist_idx"].tolist()), d["item_idx"].tolist(), strict=True))


def _concat(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.mark.parametrize(("history", "targets"), [("previous", "last"), ("previous", "all_positions"),
                                                  ("profile", "last")])  # fmt: skip
def test_streamed_examples_equal_the_in_memory_ones_on_the_sample(
    sample, tmp_path: Path, history: str, targets: str
) -> None:
    df, items, users = sample
    m = prepare_interactions(SAMPLE / "interactions.parquet", tmp_path / "p", buckets=4, rows_per_shard=3000)
    assert len(m["shards"]) > 4 and m["rows"] == len(df) == 23504 and m["users"] == 800
    # the vocabulary and the popularity come from the prepared folder and equal the in-memory ones
    assert IdVocab.build(prepared_user_ids(tmp_path / "p"), num_oov=2).ids == users.ids
    ref = build_examples(df, items, users, max_history=20, history=history, targets=targets)
    assert prepared_item_counts(tmp_path / "p", items).tolist() == ref.item_counts.tolist()  # type: ignore[union-attr]
    src = StreamedExamples(tmp_path / "p", items, users, max_history=20, history=history, targets=targets)
    got = _concat(list(src.batches(batch_size=256, seed=3, shuffle_buffer=5000)))
    assert len(got["item_idx"]) == len(ref) and _rows(got) == _rows(ref.as_dict())
    assert got["hist_pos"].dtype == np.float32 and got["hist_pos"][0].tolist() == list(map(float, range(20)))


def test_shards_hold_whole_users_in_time_order_and_respect_the_row_cap(tmp_path: Path) -> None:
    # user "big" has 7 rows > rows_per_shard: it gets a shard of its own; ties keep input order
    users = ["big"] * 7 + ["a", "b", "a", "c", "b", "c"]
    df = pd.DataFrame({"user_id": users, "item_id": [f"i{k}" for k in range(13)],
                       "timestamp": [5, 4, 3, 3, 2, 1, 0, 9, 1, 8, 2, 2, 2]})  # fmt: skip
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "in.parquet")
    m = prepare_interactions(tmp_path / "in.parquet", tmp_path / "p", buckets=1, rows_per_shard=3)
    shards = [pd.read_parquet(tmp_path / "p" / s["file"]) for s in m["shards"]]
    assert [len(s) for s in shards] == [s["rows"] for s in m["shards"]] and all(
        len(s) <= 3 or s.user_id.nunique() == 1 for s in shards
    )
    assert sum(s["users"] for s in m["shards"]) == 4 == m["users"]
    owners = [set(s.user_id) for s in shards]
    assert all(not (x & y) for i, x in enumerate(owners) for y in owners[i + 1 :])  # no user in two shards
    big = next(s for s in shards if set(s.user_id) == {"big"})
    assert big.item_id.tolist() == ["i6", "i5", "i4", "i2", "i3", "i1", "i0"]  # by time; the tie at 3 in file order
    c = next(s for s in shards if "c" in set(s.user_id))
    assert c[c.user_id == "c"].item_id.tolist() == ["i10", "i12"]


def test_unusable_rows_are_counted_and_integer_ids_become_strings(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pa.table({"user_id": pa.array([1, 1, None, 2], pa.int64()), "item_id": pa.array([10, 11, 12, 13]),
                             "timestamp": pa.array([1.0, float("nan"), 3.0, 4.5])}), src / "a.parquet")  # fmt: skip
    pq.write_table(pa.table({"user_id": ["1", "3"], "item_id": [None, "10"], "timestamp": [7, 8]}), src / "b.parquet")
    m = prepare_interactions(src, tmp_path / "p")
    # null user (row 3 of a), NaN and 4.5 timestamps (rows 2 and 4 of a), null item (row 1 of b)
    assert m["unusable_rows"] == {"null_user_id": 1, "null_item_id": 1, "bad_timestamp": 2, "bad_weight": 0,
                                  "unknown_item": 0}  # fmt: skip
    assert m["input_rows"] == 6 and m["rows"] == 2 and m["users"] == 2
    got = pd.concat([pd.read_parquet(tmp_path / "p" / s["file"]) for s in m["shards"]]).sort_values("user_id")
    assert got.to_dict("list") == {"user_id": ["1", "3"], "item_id": ["10", "10"], "timestamp": [1, 8]}
    counts = pq.read_table(tmp_path / "p" / "item_counts.parquet").to_pydict()
    assert counts == {"item_id": ["10"], "count": [2]}


def test_bad_input_is_rejected_with_the_field_and_the_fix(tmp_path: Path) -> None:
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["i"]}), tmp_path / "no_ts.parquet")
    with pytest.raises(SchemaError, match=r"lacks column\(s\) \['timestamp'\]"):
        prepare_interactions(tmp_path / "no_ts.parquet", tmp_path / "p")
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["i"], "timestamp": ["2024-01-01"]}), tmp_path / "s.parquet")
    with pytest.raises(SchemaError, match=r"`timestamp` in .* has type string; expected int64 unix seconds"):
        prepare_interactions(tmp_path / "s.parquet", tmp_path / "p")
    pq.write_table(pa.table({"user_id": [1.5], "item_id": ["i"], "timestamp": [1]}), tmp_path / "f.parquet")
    with pytest.raises(SchemaError, match=r"`user_id` in .* has type double; ids must be strings or integers"):
        prepare_interactions(tmp_path / "f.parquet", tmp_path / "p")
    with pytest.raises(SchemaError, match=r"`interactions` .*nope.* does not exist"):
        prepare_interactions(tmp_path / "nope", tmp_path / "p")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SchemaError, match=r"holds no \*\.parquet file"):
        prepare_interactions(tmp_path / "empty", tmp_path / "p")
    with pytest.raises(ValueError, match=r"`rows_per_shard` must be >= 1, got 0"):
        prepare_interactions(tmp_path / "s.parquet", tmp_path / "p", rows_per_shard=0)
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob(".p.tmp-*"))


def test_a_crash_mid_write_keeps_the_previous_folder_and_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    first = prepare_interactions(SAMPLE / "interactions.parquet", tmp_path / "p", buckets=2, rows_per_shard=20000)
    real = prep.pq.write_table
    calls = {"n": 0}

    def failing(table: pa.Table, where: object, **kw: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real(table, where, **kw)

    monkeypatch.setattr(prep.pq, "write_table", failing)
    with pytest.raises(OSError, match="disk full"):
        prepare_interactions(SAMPLE / "interactions.parquet", tmp_path / "p", buckets=3, rows_per_shard=5000)
    assert load_manifest(tmp_path / "p") == first  # untouched, every sha256 still matches
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    monkeypatch.setattr(prep.pq, "write_table", real)
    again = prepare_interactions(SAMPLE / "interactions.parquet", tmp_path / "p", buckets=3, rows_per_shard=5000)
    assert again["buckets"] == 3 and len(again["shards"]) == len(list((tmp_path / "p").glob("shard-*.parquet"))) > 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # the replaced folder is gone


def test_a_changed_or_missing_prepared_file_is_an_artifact_error(sample, tmp_path: Path) -> None:
    _, items, users = sample
    m = prepare_interactions(SAMPLE / "interactions.parquet", tmp_path / "p", buckets=2)
    with pytest.raises(ArtifactError, match=r"is not a prepared folder \(no manifest.json\); run `recfuse prepare`"):
        StreamedExamples(tmp_path, items, users, 5)
    shard = tmp_path / "p" / m["shards"][0]["file"]
    pq.write_table(pq.read_table(shard).slice(1), shard)
    with pytest.raises(ArtifactError, match=r"does not match its sha256 in the manifest"):
        StreamedExamples(tmp_path / "p", items, users, 5)
    shard.unlink()
    with pytest.raises(ArtifactError, match=r"shard-00000.parquet' is missing"):
        load_manifest(tmp_path / "p", verify=False)
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    (tmp_path / "p" / "manifest.json").write_text(json.dumps({**manifest, "format": "other/9"}))
    with pytest.raises(ArtifactError, match=r"has format 'other/9', expected 'recfuse.prepared/1'"):
        load_manifest(tmp_path / "p")


def test_batches_are_seeded_per_epoch_and_parts_split_the_shards(sample, tmp_path: Path) -> None:
    df, items, users = sample
    prepare_interactions(SAMPLE / "interactions.parquet", tmp_path / "p", buckets=4, rows_per_shard=2000)
    src = StreamedExamples(tmp_path / "p", items, users, max_history=6)
    e0 = list(src.batches(100, seed=1, epoch=0, shuffle_buffer=300))
    assert [b["item_idx"].tolist() for b in e0] == [b["item_idx"].tolist() for b in src.batches(100, 1, 0, 300)]
    e1 = _concat(list(src.batches(100, seed=1, epoch=1, shuffle_buffer=300)))
    assert not np.array_equal(_concat(e0)["item_idx"], e1["item_idx"]) and _rows(_concat(e0)) == _rows(e1)
    assert all(len(b["item_idx"]) == 100 for b in e0[:-1]) and 0 < len(e0[-1]["item_idx"]) <= 100
    halves = [StreamedExamples(tmp_path / "p", items, users, 6, part=(i, 2), verify=False) for i in range(2)]
    assert sum(h.rows for h in halves) == len(df) and min(h.rows for h in halves) > 0
    both = _concat([b for h in halves for b in h.batches(512, seed=1)])
    assert _rows(both) == _rows(_concat(e0))
    with pytest.raises(ValueError, match=r"`part` must be \(index, count\) with 0 <= index < count, got \(2, 2\)"):
        StreamedExamples(tmp_path / "p", items, users, 6, part=(2, 2))
    with pytest.raises(ValueError, match=r"`history` must be 'previous' or 'profile', got 'all'"):
        StreamedExamples(tmp_path / "p", items, users, 6, history="all")


def test_streamed_input_refuses_fewer_shards_than_workers(sample, tmp_path: Path) -> None:
    from recfuse.errors import ConfigError
    from recfuse.training.stream import streamed_input

    df, items, users = sample
    m = prepare_interactions(SAMPLE / "interactions.parquet", tmp_path / "p", buckets=2)
    n = len(m["shards"])
    src, _, _ = streamed_input(tmp_path / "p", len(df), items, users, 5, part=(n - 1, n))  # one shard each: fine
    assert src.rows > 0
    with pytest.raises(ConfigError, match=rf"has {n} shard\(s\) for {n + 1} workers; .*--buckets {n + 1} or more"):
        streamed_input(tmp_path / "p", len(df), items, users, 5, part=(0, n + 1))


def test_stream_dataset_yields_the_examples_with_oov_rows(sample, tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from recfuse.training.pipeline import oov_rows
    from recfuse.training.stream import make_stream_dataset

    df, items, users = sample
    prepare_interactions(SAMPLE / "interactions.parquet", tmp_path / "p", buckets=3)
    src = StreamedExamples(tmp_path / "p", items, users, max_history=5)
    ds = make_stream_dataset(src, users, batch_size=1000, seed=4, cache_dir=tmp_path / "c")
    epochs = [[{k: v.numpy() for k, v in b.items()} for b in ds] for _ in range(2)]
    got = _concat(epochs[0])
    assert _rows(got) == _rows(build_examples(df, items, users, 5).as_dict())
    assert got["user_oov"].tolist() == oov_rows(got["user_idx"], users).tolist()
    assert not np.array_equal(got["item_idx"], _concat(epochs[1])["item_idx"])  # reshuffled each epoch


def test_prepare_command_writes_the_folder_and_reports(tmp_path: Path, capsys) -> None:
    out = tmp_path / "p"
    args = ["prepare", "--interactions", str(SAMPLE / "interactions.parquet"), "--out", str(out)]
    assert main([*args, "--rows-per-shard", "10000"]) == 0
    assert "prepared 23504 interactions of 800 users and 1435 items into" in capsys.readouterr().out
    assert load_manifest(out)["rows_per_shard"] == 10000
    assert main([*args, "--json"]) == 0 and json.loads(capsys.readouterr().out)["rows"] == 23504
    assert main([*args, "--rows-per-shard", "0"]) == exit_code_for(InvalidRequestError("x"))
    assert "`--rows-per-shard` must be >= 1, got 0" in capsys.readouterr().err
    assert main(["prepare", "--interactions", str(tmp_path / "nope"), "--out", str(out)]) == exit_code_for(
        SchemaError("x")
    )


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory):
    from recfuse.config import RecfuseConfig
    from recfuse.data.splits import split_interactions
    from recfuse.data.synthetic import generate
    from recfuse.data.validate import load_dataset

    root = tmp_path_factory.mktemp("syn")
    generate(root, n_items=150, n_users=80, seed=1)
    cfg = RecfuseConfig.from_dict({
        "data": {"items": str(root / "items.parquet"), "interactions": str(root / "interactions.parquet"),
                 "max_history": 8},
        "modalities": [{"name": "text", "kind": "text", "columns": ["title"], "vocab_size": 300, "max_tokens": 8,
                        "embedding_dim": 8}],
        "model": {"dim": 16, "fusion": "concat", "query_hidden": [16], "fusion_hidden": [16]},
        "train": {"epochs": 3, "batch_size": 128, "learning_rate": 0.01, "seed": 3, "early_stopping_patience": 0},
    })  # fmt: skip
    ds = load_dataset(cfg.data, cfg.modalities)
    split = split_interactions(ds.interactions, "random", 42)
    split.train.to_parquet(root / "train.parquet")
    prepare_interactions(root / "train.parquet", root / "prepared", buckets=3, rows_per_shard=400)
    return root, cfg, ds, split


@pytest.mark.slow
def test_training_streams_the_prepared_examples(small, tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from recfuse.training.trainer import train

    root, cfg, ds, split = small
    streamed = train(cfg, ds, split, tmp_path / "s", progress=False, prepared=root / "prepared")
    memory = train(cfg, ds, split, tmp_path / "m", progress=False)
    assert len(load_manifest(root / "prepared")["shards"]) > 3
    assert streamed.examples == memory.examples == len(split.train) - memory.skipped_interactions
    assert streamed.skipped_interactions == memory.skipped_interactions
    assert streamed.epochs_run == 3 and streamed.history[2]["loss"] < streamed.history[0]["loss"]
    assert np.isfinite(streamed.examples_per_second) and streamed.examples_per_second > 0
    # the same examples in another order: the model learns as much
    assert streamed.best_metric is not None and memory.best_metric is not None
    assert abs(streamed.best_metric - memory.best_metric) < 0.05 and streamed.best_metric > 0.2
    # the same popularity counts reach the model directory
    pop = [pd.read_parquet(d / "popularity.parquet") for d in (tmp_path / "s", tmp_path / "m")]
    assert pop[0].equals(pop[1])


@pytest.mark.slow
def test_training_rejects_a_prepared_folder_of_other_data(small, tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from recfuse.errors import ConfigError
    from recfuse.training.trainer import train

    root, cfg, ds, split = small
    prepare_interactions(root / "interactions.parquet", tmp_path / "all")
    with pytest.raises(ConfigError, match=rf"holds {len(ds.interactions)} usable interactions but the training split"):
        train(cfg, ds, split, tmp_path / "x", progress=False, prepared=tmp_path / "all")


def test_each_worker_needs_a_shard_of_its_own(sample, tmp_path: Path) -> None:
    from recfuse.errors import ConfigError
    from recfuse.training.stream import streamed_input

    df, items, users = sample
    prepare_interactions(SAMPLE / "interactions.parquet", tmp_path / "p", buckets=3)
    shards = len(load_manifest(tmp_path / "p")["shards"])
    src, _, _ = streamed_input(tmp_path / "p", len(df), items, users, 5, part=(1, shards))
    assert len(src.shards) == 1
    with pytest.raises(
        ConfigError, match=rf"has {shards} shard\(s\) for {shards + 1} workers; .*--buckets {shards + 1}"
    ):
        streamed_input(tmp_path / "p", len(df), items, users, 5, part=(0, shards + 1))
