"""Readers: Parquet / CSV / JSON Lines give the same frames; bad files give clear SchemaErrors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recfuse.config import ModalityConfig
from recfuse.data.readers import iter_record_batches, read_table
from recfuse.data.validate import validate_catalog
from recfuse.errors import SchemaError

ROWS: list[dict[str, Any]] = [
    {"item_id": "a", "title": "Tent, large", "description": "NA", "categories": ["x", "y"], "audio_vec": [0.5, -1.0]},
    {"item_id": "b", "title": "帐篷", "description": None, "categories": [], "audio_vec": [0.25, 2.0]},
    {"item_id": "c", "title": 'Quote "q"', "description": "d", "categories": ["z"], "audio_vec": [1.0, 0.0]},
    {"item_id": "d", "title": "Last", "description": "e", "categories": None, "audio_vec": None},
]


def _write_all(tmp_path: Path) -> dict[str, Path]:
    paths = {s: tmp_path / f"items{s}" for s in (".parquet", ".csv", ".jsonl", ".json")}
    table = pa.table({
        "item_id": pa.array([r["item_id"] for r in ROWS]),
        "title": pa.array([r["title"] for r in ROWS]),
        "description": pa.array([r["description"] for r in ROWS], pa.string()),
        "categories": pa.array([r["categories"] for r in ROWS], pa.list_(pa.string())),
        "audio_vec": pa.array([r["audio_vec"] for r in ROWS], pa.list_(pa.float64())),
    })  # fmt: skip
    pq.write_table(table, paths[".parquet"])
    csv_rows = [
        {k: json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v for k, v in r.items()} for r in ROWS
    ]
    pd.DataFrame(csv_rows).to_csv(paths[".csv"], index=False)
    paths[".jsonl"].write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS) + "\n", encoding="utf-8")
    paths[".json"].write_text(json.dumps(ROWS, ensure_ascii=False), encoding="utf-8")
    return paths


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    def plain(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        return list(v) if isinstance(v, (list, tuple)) else v

    return [{k: plain(v) for k, v in row.items()} for row in df.to_dict("records")]


def test_all_formats_read_to_equal_frames(tmp_path: Path) -> None:
    paths = _write_all(tmp_path)
    frames = {s: read_table(p) for s, p in paths.items()}
    expected = _records(pd.DataFrame(ROWS))
    for suffix, df in frames.items():
        assert list(df.columns) == ["item_id", "title", "description", "categories", "audio_vec"], suffix
        assert _records(df) == expected, suffix
    # "NA" is a title/description, not a missing value, in every format
    assert all(df["description"].iloc[0] == "NA" for df in frames.values())


def test_validated_frames_identical_across_formats(tmp_path: Path) -> None:
    paths = _write_all(tmp_path)
    mods = [ModalityConfig(name="audio", kind="vector", dim=2), ModalityConfig(name="text", kind="text")]
    out = {s: validate_catalog(read_table(p), mods, tmp_path, path=str(p))[0] for s, p in paths.items()}
    ref = out[".parquet"]
    assert ref["audio_vec"].tolist()[3] == [0.0, 0.0] and not ref["has_audio"].iloc[3]
    assert ref["categories"].tolist() == [["x", "y"], [], ["z"], []]
    for suffix, df in out.items():
        pd.testing.assert_frame_equal(df, ref, check_dtype=False, obj=suffix)


def test_column_subset_and_missing_column(tmp_path: Path) -> None:
    paths = _write_all(tmp_path)
    for p in paths.values():
        assert list(read_table(p, columns=["title", "item_id"]).columns) == ["title", "item_id"]
        with pytest.raises(SchemaError, match=r"has no column\(s\) \['nope'\]; found columns"):
            read_table(p, columns=["item_id", "nope"])


def test_iter_record_batches_streams_parquet_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"user_id": [f"u{i}" for i in range(10)], "n": list(range(10))}), path)
    batches = list(iter_record_batches(path, batch_size=3))
    assert [b.num_rows for b in batches] == [3, 3, 3, 1]
    assert [x for b in batches for x in b.column("n").to_pylist()] == list(range(10))
    csv_batches = list(iter_record_batches(_write_all(tmp_path)[".csv"], batch_size=3, columns=["item_id"]))
    assert [b.num_rows for b in csv_batches] == [3, 1]
    with pytest.raises(ValueError, match=r"`batch_size` must be >= 1, got 0"):
        next(iter_record_batches(path, batch_size=0))


def test_unknown_suffix_names_path_and_supported(tmp_path: Path) -> None:
    p = tmp_path / "items.xlsx"
    p.write_bytes(b"x")
    with pytest.raises(SchemaError, match=r"items\.xlsx.*unsupported suffix '\.xlsx'.*\['\.parquet', '\.csv'"):
        read_table(p)
    with pytest.raises(SchemaError, match=r"unsupported suffix '\(none\)'"):
        list(iter_record_batches(tmp_path / "noext"))


def test_missing_file(tmp_path: Path) -> None:
    for name in ("a.parquet", "a.csv", "a.jsonl"):
        with pytest.raises(SchemaError, match=rf"{name}' does not exist; check the path"):
            read_table(tmp_path / name)


def test_bad_contents(tmp_path: Path) -> None:
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text('item_id,audio_vec\na,"[0.1, 0.2]"\nb,"[0.1, oops]"\n', encoding="utf-8")
    with pytest.raises(SchemaError, match=r"column 'audio_vec' row 1 holds '\[0.1, oops\]', which is not valid JSON"):
        read_table(bad_csv)
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"item_id": "a"}\n{"item_id": \n', encoding="utf-8")
    with pytest.raises(SchemaError, match=r"bad\.jsonl' line 2 is not valid JSON"):
        read_table(bad_jsonl)
    not_obj = tmp_path / "list.jsonl"
    not_obj.write_text('{"item_id": "a"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(SchemaError, match=r"line 2 is list, expected a JSON object per row"):
        read_table(not_obj)
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"empty\.csv' is empty; a CSV file needs a header row"):
        read_table(empty)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(SchemaError, match=r"garbage\.parquet' is not a readable Parquet file"):
        read_table(garbage)


def test_streaming_a_mixed_type_column_is_a_schema_error(tmp_path: Path) -> None:
    p = tmp_path / "mixed.jsonl"
    p.write_text('{"item_id": 1}\n{"item_id": "a"}\n', encoding="utf-8")
    assert read_table(p)["item_id"].tolist() == [1, "a"]
    with pytest.raises(SchemaError, match=r"mixed\.jsonl': a column mixes value types and cannot be streamed"):
        list(iter_record_batches(p))
