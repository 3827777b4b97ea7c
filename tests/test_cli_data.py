"""`recfuse sample-data` and `recfuse validate` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recfuse.cli.main import main


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "sample"
    assert main(["sample-data", "--out", str(out), "--items", "200", "--users", "100", "--seed", "5"]) == 0
    return out


def test_sample_data_writes_files(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("items.parquet", "interactions.parquet", "README.md", "recfuse.toml"):
        assert (sample / name).is_file(), name
    assert len(list((sample / "images").glob("*.png"))) == pd.read_parquet(sample / "items.parquet")["image"].count()
    capsys.readouterr()


def test_validate_prints_summary_and_split(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--config", str(sample / "recfuse.toml")]) == 0
    out = capsys.readouterr().out
    n_inter = len(pd.read_parquet(sample / "interactions.parquet"))
    assert "items: 200 read, 200 ok, 0 rejected" in out
    assert f"interactions: {n_inter} read, {n_inter} ok, 0 rejected" in out
    assert "users: 100" in out and "modality coverage: image" in out and "audio 100.0%" in out
    assert "split random (seed 42): train " in out and "cold items 0" in out


def test_validate_cold_start_and_json(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--config", str(sample / "recfuse.toml"), "--split", "cold_start"]) == 0
    out = capsys.readouterr().out
    n_items_interacted = pd.read_parquet(sample / "interactions.parquet")["item_id"].nunique()
    assert f"cold items {round(0.1 * n_items_interacted)};" in out
    assert main(["validate", "--config", str(sample / "recfuse.toml"), "--split", "temporal", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"]["kind"] == "temporal" and report["split"]["test"] == report["split"]["test_users"] == 100
    assert report["report"]["items"]["ok"] == 200


def test_validate_table_error_exits_4(sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = pq.read_table(sample / "items.parquet").drop_columns(["audio_vec"])
    pq.write_table(items, tmp_path / "items.parquet")
    rc = main(["validate", "--config", str(sample / "recfuse.toml"), "--items", str(tmp_path / "items.parquet")])
    assert rc == 4
    assert "missing column 'audio_vec' (declared by modality 'audio')" in capsys.readouterr().err


def test_validate_bad_rows_fail_then_quarantine(
    sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inter = pq.read_table(sample / "interactions.parquet").to_pydict()
    inter["item_id"][0] = "no-such-item"
    inter["timestamp"][1] = -5
    bad = tmp_path / "inter.parquet"
    pq.write_table(pa.Table.from_pydict(inter), bad)
    args = ["validate", "--config", str(sample / "recfuse.toml"), "--interactions", str(bad)]
    assert main(args) == 4
    err = capsys.readouterr().err
    assert "2 row(s) cannot be used (bad_timestamp: 1, unknown_item: 1); first: row 0" in err
    assert main([*args, "--quarantine", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert "rejected unknown_item: 1" in out and "rejected bad_timestamp: 1" in out
    rejected = pd.read_parquet(tmp_path / "q" / "rejected_interactions.parquet")
    assert sorted(rejected["reject_reason"]) == ["bad_timestamp", "unknown_item"]


def test_validate_missing_config_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--config", str(tmp_path / "nope.toml")]) == 3
    assert "nope.toml' does not exist" in capsys.readouterr().err


def test_sample_data_rejects_tiny_catalog(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sample-data", "--out", str(tmp_path), "--items", "5"]) == 3
    assert "`n_items` must be >= 50" in capsys.readouterr().err
