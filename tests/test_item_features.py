"""The per-item feature table: keys, dtypes, masks, warm/cold ids, and bad-input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from recfuse.config import RecfuseConfig
from recfuse.data.item_features import build_item_features, category_strings
from recfuse.data.vocab import IdVocab
from recfuse.errors import ConfigError, SchemaError


def _catalog(tmp_path: Path) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for i in range(3):
        Image.fromarray((rng.random((40, 30, 3)) * 255).astype("uint8")).save(tmp_path / "img" / f"{i}.png")
    return pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d"],
            "title": ["Red Shoe", "无线耳机", "", "Hat"],
            "description": ["fast", "", "", None],
            "image": ["img/0.png", "img/1.png", "img/2.png", None],
            "categories": [["shoes", "red"], [], None, ["hats|caps"]],
            "brand": ["x", None, "y", "x"],
            "audio_vec": [[0.1, 0.2], None, [1.0, 2.0], [0.0, 0.5]],
        }
    )


def _cfg(**extra: object) -> RecfuseConfig:
    return RecfuseConfig.from_dict(
        {
            "modalities": [
                {"name": "image", "kind": "image", "image_size": 16},
                {"name": "text", "kind": "text"},
                {"name": "cats", "kind": "categorical", "columns": ["categories", "brand"]},
                {"name": "audio", "kind": "vector", "dim": 2},
            ],
            **extra,
        }
    )


def test_table_keys_shapes_and_masks(tmp_path: Path) -> None:
    items = _catalog(tmp_path)
    vocab = IdVocab.build(["a", "b", "c"], num_oov=0)
    t = build_item_features(items, _cfg(), tmp_path, vocab, warm_items={"a", "c"})
    assert set(t) == {"item_idx", "item_id_mask", "image", "image_mask", "text", "text_mask", "cats", "cats_mask",
                      "audio", "audio_mask"}  # fmt: skip
    assert t["item_idx"].dtype == np.int64 and t["item_idx"].tolist() == [0, 1, 2, -1]
    assert t["item_id_mask"].tolist() == [1.0, 0.0, 1.0, 0.0]  # b is cold, d unknown
    assert t["image"].shape == (4, 16, 16, 3) and t["image"].dtype == np.float32
    assert 0.0 <= t["image"].min() and t["image"].max() <= 1.0
    expected = np.asarray(Image.open(tmp_path / "img" / "1.png").convert("RGB").resize((16, 16), Image.BILINEAR))
    np.testing.assert_allclose(t["image"][1], expected / 255.0, atol=1e-6)
    assert t["image_mask"].tolist() == [1, 1, 1, 0] and not t["image"][3].any()
    assert t["text"].tolist() == ["red shoe fast", "无 线 耳 机 无线 线耳 耳机", "", "hat"]
    assert t["text_mask"].tolist() == [1, 1, 0, 1]
    assert t["cats"].tolist() == [
        "categories=shoes|categories=red|brand=x",
        "",
        "brand=y",
        "categories=hats/caps|brand=x",
    ]
    assert t["cats_mask"].tolist() == [1, 0, 1, 1]
    np.testing.assert_allclose(t["audio"], [[0.1, 0.2], [0, 0], [1, 2], [0, 0.5]], rtol=1e-6)
    assert t["audio_mask"].tolist() == [1, 0, 1, 1]
    for k, v in t.items():
        if k.endswith("_mask"):
            assert v.dtype == np.float32, k


def test_warm_items_default_is_every_known_id(tmp_path: Path) -> None:
    vocab = IdVocab.build(["a", "b", "c", "d"], num_oov=0)
    t = build_item_features(_catalog(tmp_path), _cfg(), tmp_path, vocab)
    assert t["item_id_mask"].tolist() == [1, 1, 1, 1]


def test_many_images_decode_in_parallel_identically(tmp_path: Path) -> None:
    items = _catalog(tmp_path)
    big = pd.concat([items] * 20, ignore_index=True)
    big["item_id"] = [f"i{i}" for i in range(len(big))]
    vocab = IdVocab.build(big["item_id"], num_oov=0)
    cfg = _cfg()
    par = build_item_features(big, cfg, tmp_path, vocab, num_threads=4)
    seq = build_item_features(big, cfg, tmp_path, vocab, num_threads=1)
    np.testing.assert_array_equal(par["image"], seq["image"])
    np.testing.assert_array_equal(par["image_mask"], np.tile([1, 1, 1, 0], 20))


def test_single_category_column_has_no_prefix(tmp_path: Path) -> None:
    cfg = RecfuseConfig.from_dict({"modalities": [{"name": "c", "kind": "categorical"}]})
    assert category_strings(_catalog(tmp_path), cfg.modalities[0]).tolist() == ["shoes|red", "", "", "hats/caps"]


def test_missing_column_is_a_schema_error(tmp_path: Path) -> None:
    items = _catalog(tmp_path).drop(columns=["audio_vec"])
    with pytest.raises(
        SchemaError, match=r"modality 'audio' reads column\(s\) \['audio_vec'\].*modalities.audio.columns"
    ):
        build_item_features(items, _cfg(), tmp_path, IdVocab.build(items["item_id"], 0))


def test_wrong_vector_width_names_item_and_column(tmp_path: Path) -> None:
    items = _catalog(tmp_path)
    items.at[2, "audio_vec"] = [1.0, 2.0, 3.0]
    with pytest.raises(SchemaError, match=r"item 'c': column 'audio_vec' has width 3, expected 2"):
        build_item_features(items, _cfg(), tmp_path, IdVocab.build(items["item_id"], 0))


def test_nan_in_vector_is_rejected(tmp_path: Path) -> None:
    items = _catalog(tmp_path)
    items.at[3, "audio_vec"] = [0.0, float("nan")]
    with pytest.raises(SchemaError, match=r"item 'd': column 'audio_vec' contains NaN"):
        build_item_features(items, _cfg(), tmp_path, IdVocab.build(items["item_id"], 0))


def test_non_numeric_vector_is_rejected(tmp_path: Path) -> None:
    items = _catalog(tmp_path)
    items.at[0, "audio_vec"] = ["x", "y"]
    with pytest.raises(SchemaError, match=r"item 'a': column 'audio_vec' must be a list of 2 floats"):
        build_item_features(items, _cfg(), tmp_path, IdVocab.build(items["item_id"], 0))


def test_unreadable_image_names_the_item(tmp_path: Path) -> None:
    items = _catalog(tmp_path)
    (tmp_path / "img" / "bad.png").write_bytes(b"not an image")
    items.at[1, "image"] = "img/bad.png"
    with pytest.raises(SchemaError, match=r"item 'b'.*bad.png"):
        build_item_features(items, _cfg(), tmp_path, IdVocab.build(items["item_id"], 0))


def test_reserved_modality_name(tmp_path: Path) -> None:
    cfg = RecfuseConfig.from_dict({"modalities": [{"name": "item_id", "kind": "vector", "dim": 2}]})
    with pytest.raises(ConfigError, match="'item_id' is reserved"):
        build_item_features(_catalog(tmp_path), cfg, tmp_path, IdVocab.build(["a"], 0))


def test_catalog_without_item_id(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="no `item_id` column"):
        build_item_features(_catalog(tmp_path).drop(columns=["item_id"]), _cfg(), tmp_path, IdVocab.build(["a"], 0))
