"""Validation: every table-level error, every row-level reason, fail vs quarantine, normalisation."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from recfuse.config import DataConfig, ModalityConfig
from recfuse.data.images import load_image, load_images
from recfuse.data.validate import load_dataset
from recfuse.errors import DataError, SchemaError

MODS = (
    ModalityConfig(name="image", kind="image"),
    ModalityConfig(name="text", kind="text"),
    ModalityConfig(name="categories", kind="categorical"),
    ModalityConfig(name="audio", kind="vector", columns=("audio_vec",), dim=3),
)


def _png(colour: tuple[int, int, int] = (200, 10, 10), size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def _items(**overrides: list[Any]) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {
        "item_id": ["a", "b", "c", "d"],
        "title": ["Tent", "Guitar", "", "Whisk"],
        "description": ["green tent", None, None, "steel"],
        "image": ["img/a.png", None, "img/c.png", "img/d.png"],
        "categories": [["dept:x"], [], ["dept:y", "price:low"], None],
        "audio_vec": [[0.1, 0.2, 0.3], [1.0, 2.0, 3.0], None, [0.0, 0.5, 1.0]],
    }
    cols.update(overrides)
    return cols


def _inter(**overrides: list[Any]) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {
        "user_id": ["u1", "u1", "u2", "u2", "u3"],
        "item_id": ["a", "b", "a", "d", "c"],
        "timestamp": [1_700_000_000, 1_700_000_100, 1_700_000_200, 1_700_000_300, 1_700_000_400],
        "event": ["view", "click", None, "view", "purchase"],
        "weight": [1.0, 2.0, 1.0, 1.0, 3.0],
    }
    cols.update(overrides)
    return cols


def _write(tmp_path: Path, items: dict[str, list[Any]], inter: dict[str, list[Any]], **cfg: Any) -> DataConfig:
    (tmp_path / "img").mkdir(exist_ok=True)
    for name in ("a", "c", "d"):
        (tmp_path / "img" / f"{name}.png").write_bytes(_png())
    pq.write_table(pa.Table.from_pydict(items), tmp_path / "items.parquet")
    pq.write_table(pa.Table.from_pydict(inter), tmp_path / "inter.parquet")
    return DataConfig(items=str(tmp_path / "items.parquet"), interactions=str(tmp_path / "inter.parquet"), **cfg)


def test_clean_data_is_normalised(tmp_path: Path) -> None:
    ds = load_dataset(_write(tmp_path, _items(), _inter()), MODS)
    items, inter = ds.items, ds.interactions
    assert items["item_id"].tolist() == ["a", "b", "c", "d"]
    assert items["description"].tolist() == ["green tent", "", "", "steel"]
    assert items["categories"].tolist() == [["dept:x"], [], ["dept:y", "price:low"], []]
    assert items["audio_vec"].tolist()[2] == [0.0, 0.0, 0.0]
    assert items["has_audio"].tolist() == [True, True, False, True]
    assert items["has_image"].tolist() == [True, False, True, True]
    assert items["has_text"].tolist() == [True, True, False, True]
    assert items["image"].tolist()[1] is None
    assert ds.images_dir == tmp_path
    assert inter["timestamp"].dtype == np.int64 and inter["weight"].dtype == np.float64
    assert inter["event"].tolist() == ["view", "click", "", "view", "purchase"]
    assert ds.report.items.ok == 4 and ds.report.interactions.ok == 5 and ds.report.users == 3
    assert ds.report.coverage == {"image": 0.75, "text": 0.75, "categories": 0.5, "audio": 0.75}
    text = ds.report.to_text()
    assert "items: 4 read, 4 ok, 0 rejected" in text and "modality coverage: image 75.0%" in text


def test_integer_ids_and_missing_optional_columns(tmp_path: Path) -> None:
    items = {"item_id": [7, 8, 9], "title": ["x", "y", "z"]}
    inter = {"user_id": [1, 1, 2], "item_id": [7, 9, 8], "timestamp": [10, 20, 30]}
    ds = load_dataset(_write(tmp_path, items, inter), [ModalityConfig(name="text", kind="text")])
    assert ds.items["item_id"].tolist() == ["7", "8", "9"]
    assert ds.items["description"].tolist() == ["", "", ""] and ds.items["categories"].tolist() == [[], [], []]
    assert ds.interactions["user_id"].tolist() == ["1", "1", "2"]
    assert ds.interactions["weight"].tolist() == [1.0, 1.0, 1.0]
    assert ds.interactions["event"].tolist() == ["", "", ""]


def test_image_bytes_and_images_dir(tmp_path: Path) -> None:
    items = _items(image=[_png(), None, b"garbage", _png((0, 0, 255))])
    cfg = _write(tmp_path, items, _inter(), on_bad_rows="quarantine", quarantine_dir=str(tmp_path / "q"))
    ds = load_dataset(cfg, MODS)
    assert ds.items["item_id"].tolist() == ["a", "b", "d"]
    assert ds.report.items.reasons == {"image_unreadable": 1}
    px = load_image(ds.items["image"].iloc[2], ds.images_dir, 4, item_id="d")
    np.testing.assert_allclose(px[0, 0], [0.0, 0.0, 1.0])
    other = tmp_path / "elsewhere"
    other.mkdir()
    cfg2 = _write(tmp_path, _items(), _inter(), images_dir=str(other))
    with pytest.raises(SchemaError, match=r"image file '.*elsewhere/img/a\.png' does not exist"):
        load_dataset(cfg2, MODS)


# ---- table-level errors ------------------------------------------------------------------------


def test_missing_required_column(tmp_path: Path) -> None:
    items = _items()
    del items["title"]
    with pytest.raises(SchemaError, match=r"missing column 'title'.*expected type string; found columns \['item_id'"):
        load_dataset(_write(tmp_path, items, _inter()), MODS)
    inter = _inter()
    del inter["timestamp"]
    with pytest.raises(SchemaError, match=r"interactions file .* missing column 'timestamp'.*int64 unix seconds"):
        load_dataset(_write(tmp_path, _items(), inter), MODS)


def test_declared_modality_column_missing(tmp_path: Path) -> None:
    items = _items()
    del items["audio_vec"]
    with pytest.raises(SchemaError, match=r"missing column 'audio_vec' \(declared by modality 'audio'\)"):
        load_dataset(_write(tmp_path, items, _inter()), MODS)
    del items["image"]
    with pytest.raises(SchemaError, match=r"missing column 'image' \(declared by modality 'image'\)"):
        load_dataset(_write(tmp_path, items, _inter()), MODS[:1])


def test_mistyped_columns(tmp_path: Path) -> None:
    ts = ["2024-01-01", "2024-01-02", "x", "y", "z"]
    with pytest.raises(
        SchemaError, match=r"column 'timestamp' has the wrong type: expected int64 unix seconds, found str"
    ):
        load_dataset(_write(tmp_path, _items(), _inter(timestamp=ts)), MODS)
    cats = ["dept:x", None, "dept:y", "dept:z"]
    with pytest.raises(
        SchemaError, match=r"column 'categories' has the wrong type: expected list of strings, found str"
    ):
        load_dataset(_write(tmp_path, _items(categories=cats), _inter()), MODS)
    with pytest.raises(SchemaError, match=r"column 'title' has the wrong type: expected string, found int"):
        load_dataset(_write(tmp_path, _items(title=[1, 2, 3, 4]), _inter()), MODS)
    with pytest.raises(
        SchemaError, match=r"column 'audio_vec' has the wrong type: expected list of floats, found float"
    ):
        load_dataset(_write(tmp_path, _items(audio_vec=[0.1, 0.2, 0.3, 0.4]), _inter()), MODS)
    with pytest.raises(SchemaError, match=r"column 'weight' has the wrong type: expected float, found str"):
        load_dataset(_write(tmp_path, _items(), _inter(weight=["a", "b", "c", "d", "e"])), MODS)


def test_vector_column_of_wrong_width(tmp_path: Path) -> None:
    vecs = [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], None]
    with pytest.raises(
        SchemaError,
        match=r"vector column 'audio_vec' \(modality 'audio'\) has width 2 in 3 of 3 rows \(e\.g\. row 0, item 'a'\), "
        r"expected dim 3; set dim = 2",
    ):
        load_dataset(_write(tmp_path, _items(audio_vec=vecs), _inter()), MODS)


def test_duplicate_item_ids(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=r"1 item id\(s\) appear more than once \('a' x2\); item_id must be unique"):
        load_dataset(_write(tmp_path, _items(item_id=["a", "b", "a", "d"]), _inter()), MODS)
    # 7 and "7" are the same id once canonicalised
    items = {"item_id": [7, 7], "title": ["x", "y"]}
    with pytest.raises(SchemaError, match=r"appear more than once \('7' x2\)"):
        load_dataset(_write(tmp_path, items, _inter()), [])


# ---- row-level problems: fail names the first row and the count ------------------------------------

ROW_CASES = [
    (
        "image_missing",
        {"image": ["img/a.png", None, "img/nope.png", "img/d.png"]},
        {},
        r"row 2 \(id 'c'\) field 'image'",
    ),
    ("image_unreadable", {"image": ["img/a.png", None, "img/c.png", "img/bad.png"]}, {}, r"row 3 \(id 'd'\).*decode"),
    ("vector_width", {"audio_vec": [[0.1, 0.2, 0.3], [1.0], None, [0.0, 0.5, 1.0]]}, {}, r"row 1 .*1 values"),
    ("vector_nan", {"audio_vec": [[0.1, float("nan"), 0.3], [1.0, 2.0, 3.0], None, [0, 1, 2]]}, {}, r"row 0 "),
    ("null_item_id", {"item_id": ["a", "b", None, "d"]}, {}, r"row 2 \(id ''\) field 'item_id'"),
    ("unknown_item", {}, {"item_id": ["a", "b", "zz", "d", "c"]}, r"row 2 \(id 'u2 -> zz'\).*not in the catalog"),
    ("null_user_id", {}, {"user_id": ["u1", None, "u2", "u2", "u3"]}, r"row 1 \(id 'None -> b'\) field 'user_id'"),
    ("bad_timestamp", {}, {"timestamp": [1, 2, 1_700_000_000_000, 4, 5]}, r"row 2 .*value '1700000000000'.*millisec"),
    ("bad_weight", {}, {"weight": [1.0, -1.0, 1.0, 1.0, 1.0]}, r"row 1 .*weight must be a finite number"),
]


@pytest.mark.parametrize(("reason", "item_over", "inter_over", "where"), ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_row_problem_fails_with_row_and_count(
    tmp_path: Path, reason: str, item_over: dict[str, list[Any]], inter_over: dict[str, list[Any]], where: str
) -> None:
    cfg = _write(tmp_path, _items(**item_over), _inter(**inter_over))
    (tmp_path / "img" / "bad.png").write_bytes(b"not an image")
    table = "items" if item_over else "interactions"
    with pytest.raises(
        SchemaError, match=rf"{table} file .*: 1 row\(s\) cannot be used \({reason}: 1\); first: {where}"
    ):
        load_dataset(cfg, MODS)


@pytest.mark.parametrize(("reason", "item_over", "inter_over", "where"), ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_row_problem_quarantined_and_counted(
    tmp_path: Path, reason: str, item_over: dict[str, list[Any]], inter_over: dict[str, list[Any]], where: str
) -> None:
    del where
    qdir = tmp_path / "q"
    cfg = _write(
        tmp_path, _items(**item_over), _inter(**inter_over), on_bad_rows="quarantine", quarantine_dir=str(qdir)
    )
    (tmp_path / "img" / "bad.png").write_bytes(b"not an image")
    ds = load_dataset(cfg, MODS)
    table, report, frame, n = (
        ("items", ds.report.items, ds.items, 4)
        if item_over
        else ("interactions", ds.report.interactions, ds.interactions, 5)
    )
    assert report.reasons == {reason: 1} and report.read == n and report.ok == n - 1 and report.rejected == 1
    assert len(frame) == n - 1
    rejected = pd.read_parquet(qdir / f"rejected_{table}.parquet")
    assert rejected["reject_reason"].tolist() == [reason]
    assert report.quarantine_file == str(qdir / f"rejected_{table}.parquet")
    assert report.problems[0].row == int(rejected["row"].iloc[0])
    assert f"rejected {reason}: 1" in ds.report.to_text()
    assert ds.report.to_dict()[table]["reasons"] == {reason: 1}


def test_interactions_of_rejected_items_are_reported_as_such(tmp_path: Path) -> None:
    cfg = _write(
        tmp_path, _items(image=["img/a.png", None, "img/c.png", "img/missing.png"]), _inter(),
        on_bad_rows="quarantine", quarantine_dir=str(tmp_path / "q"),
    )  # fmt: skip
    ds = load_dataset(cfg, MODS)
    assert ds.report.items.reasons == {"image_missing": 1}
    assert ds.report.interactions.reasons == {"item_rejected": 1}
    assert "d" not in set(ds.interactions["item_id"])
    rejected = pd.read_parquet(tmp_path / "q" / "rejected_interactions.parquet")
    assert rejected[["user_id", "item_id", "row"]].values.tolist() == [["u2", "d", 3]]


def test_report_keeps_first_n_problems_but_counts_all(tmp_path: Path) -> None:
    n = 30
    items = {"item_id": ["a"], "title": ["x"]}
    inter = {"user_id": [f"u{i}" for i in range(n)], "item_id": ["zz"] * (n - 1) + ["a"], "timestamp": list(range(n))}
    cfg = _write(tmp_path, items, inter, on_bad_rows="quarantine", quarantine_dir=str(tmp_path / "q"))
    ds = load_dataset(cfg, [], max_problems=5)
    assert ds.report.interactions.rejected == n - 1 and len(ds.report.interactions.problems) == 5
    assert len(pd.read_parquet(tmp_path / "q" / "rejected_interactions.parquet")) == n - 1


def test_nothing_usable_is_a_data_error(tmp_path: Path) -> None:
    inter = _inter(item_id=["x1", "x2", "x3", "x4", "x5"])
    cfg = _write(tmp_path, _items(), inter, on_bad_rows="quarantine", quarantine_dir=str(tmp_path / "q"))
    with pytest.raises(DataError, match=r"no usable interactions \(5 rejected\)"):
        load_dataset(cfg, MODS)


# ---- images ----------------------------------------------------------------------------------------


def test_load_image_resizes_and_scales(tmp_path: Path) -> None:
    (tmp_path / "p.png").write_bytes(_png((255, 0, 51), size=10))
    px = load_image("p.png", tmp_path, 16, item_id="i1")
    assert px.shape == (16, 16, 3) and px.dtype == np.float32
    np.testing.assert_allclose(px[5, 5], [1.0, 0.0, 0.2], atol=1e-6)
    arr, mask = load_images(["p.png", None, _png()], tmp_path, 8, ["i1", "i2", "i3"])
    assert arr.shape == (3, 8, 8, 3) and mask.tolist() == [1.0, 0.0, 1.0] and float(arr[1].max()) == 0.0


def test_load_image_errors_name_item_and_path(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=r"item 'i9': image file '.*nope\.png' does not exist"):
        load_image("nope.png", tmp_path, 8, item_id="i9")
    (tmp_path / "bad.png").write_bytes(b"xx")
    with pytest.raises(SchemaError, match=r"item 'i8': image '.*bad\.png' does not decode"):
        load_image("bad.png", tmp_path, 8, item_id="i8")
    with pytest.raises(SchemaError, match=r"item 'i7' has no image \(null\)"):
        load_image(None, tmp_path, 8, item_id="i7")
    with pytest.raises(SchemaError, match=r"item 'i6': image '<2 encoded bytes>' does not decode"):
        load_image(b"xx", tmp_path, 8, item_id="i6")


def test_custom_text_columns_drive_has_text(tmp_path: Path) -> None:
    items = {"item_id": ["a", "b", "c"], "title": ["", "", "t"], "name": ["x", " ", None]}
    inter = {"user_id": ["u"], "item_id": ["a"], "timestamp": [1]}
    mods = [ModalityConfig(name="words", kind="text", columns=("name",))]
    ds = load_dataset(_write(tmp_path, items, inter), mods)
    assert ds.items["name"].tolist() == ["x", " ", ""]
    assert ds.items["has_words"].tolist() == [True, False, False]
    assert ds.items["has_text"].tolist() == [True, False, False]
    with pytest.raises(SchemaError, match=r"missing column 'name' \(declared by modality 'words'\)"):
        load_dataset(_write(tmp_path, {"item_id": ["a"], "title": ["t"]}, inter), mods)
