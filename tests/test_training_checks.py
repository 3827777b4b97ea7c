"""Pre-flight checks that say what a config will not do on a catalog (no training, fast)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from recfuse.config import RecfuseConfig
from recfuse.training.checks import check_training_inputs, modality_warnings

ROOT = Path(__file__).resolve().parents[1]


def _items(n: int = 4) -> pd.DataFrame:
    # as the validator leaves them: one has_<modality> flag per declared modality
    return pd.DataFrame({
        "item_id": [f"i{i}" for i in range(n)],
        "title": ["a b", "c", "d e", "f"][:n],
        "image": [None] * n,
        "categories": [[] for _ in range(n)],
        "has_text": [True] * n,
        "has_image": [False] * n,
        "has_categories": [False] * n,
    })  # fmt: skip


def test_zero_coverage_modalities_are_named() -> None:
    cfg = RecfuseConfig.from_dict({"modalities": [
        {"name": "text", "kind": "text", "columns": ["title"]},
        {"name": "image", "kind": "image"},
        {"name": "categories", "kind": "categorical"},
    ]})  # fmt: skip
    notes = modality_warnings(cfg, _items())
    assert len(notes) == 2
    assert notes[0].startswith("modality 'image' (image, columns ['image']) has a value for 0% of the 4 catalog items")
    assert "modality 'categories' (categorical, columns ['categories'])" in notes[1]


def test_a_model_with_no_content_left_is_not_called_attention(caplog: pytest.LogCaptureFixture) -> None:
    cfg = RecfuseConfig.from_dict({"modalities": [{"name": "image", "kind": "image"}]})
    train = pd.DataFrame({"user_id": ["u"], "item_id": ["i0"], "timestamp": [1]})
    with caplog.at_level(logging.WARNING, logger="recfuse.training.checks"):
        check_training_inputs(cfg, _items(), train)
    assert "no content modality has data: the item tower is the item-id embedding alone, so " in caplog.text
    assert "`model.fusion = 'attention'` fuses nothing" in caplog.text
    # asked for on purpose (no modalities): nothing to warn about, whatever the variant is called
    assert modality_warnings(RecfuseConfig.from_dict({"modalities": []}), _items()) == []
    named = RecfuseConfig.from_dict({"modalities": [], "bundle": {"variant": "attention"}})
    assert modality_warnings(named, _items()) == []


def test_the_shipped_sample_covers_every_modality() -> None:
    from recfuse.data.validate import load_dataset

    cfg = RecfuseConfig.from_toml(ROOT / "data_samples" / "recfuse.toml")
    raw = cfg.to_dict()
    raw["data"]["items"] = str(ROOT / "data_samples" / "items.parquet")
    raw["data"]["interactions"] = str(ROOT / "data_samples" / "interactions.parquet")
    cfg = RecfuseConfig.from_dict(raw)
    assert modality_warnings(cfg, load_dataset(cfg.data, cfg.modalities).items) == []


def test_sparse_users_with_a_user_id_embedding_are_warned_about() -> None:
    from recfuse.training.checks import sparsity_warnings

    # four users with 3, 4, 4 and 12 distinct items (a repeat of one item counts once): median 4
    rows = [("a", f"i{i}") for i in range(3)] + [("b", f"i{i}") for i in (0, 1, 2, 3, 3)]
    rows += [("c", f"i{i}") for i in range(4)] + [("d", f"i{i}") for i in range(12)]
    train = pd.DataFrame(rows, columns=["user_id", "item_id"])
    on = RecfuseConfig.from_dict({"modalities": [], "model": {"user_id_embedding": True}})
    notes = sparsity_warnings(on, train)
    assert len(notes) == 1 and notes[0].startswith("users have a median of 4 distinct training items (< 10)")
    assert "consider `model.user_id_embedding = false`" in notes[0]
    off = RecfuseConfig.from_dict({"modalities": [], "model": {"user_id_embedding": False}})
    assert sparsity_warnings(off, train) == []
    dense = pd.DataFrame([(u, f"i{i}") for u in "ab" for i in range(10)], columns=["user_id", "item_id"])
    assert sparsity_warnings(on, dense) == []
    # the default "auto" decides by the same threshold instead of warning
    assert sparsity_warnings(RecfuseConfig.from_dict({"modalities": []}), train) == []


def test_auto_user_id_embedding_is_decided_by_the_median_user(caplog: pytest.LogCaptureFixture) -> None:
    from recfuse.training.checks import resolve_auto_settings

    auto = RecfuseConfig.from_dict({"modalities": []})
    assert auto.model.user_id_embedding == "auto"
    # median 9 distinct items: off; median 10: on (the threshold is inclusive)
    sparse = pd.DataFrame([(u, f"i{i}") for u in "abc" for i in range(9)], columns=["user_id", "item_id"])
    dense = pd.DataFrame([(u, f"i{i}") for u in "abc" for i in range(10)], columns=["user_id", "item_id"])
    with caplog.at_level(logging.INFO, logger="recfuse.training.checks"):
        off = resolve_auto_settings(auto, sparse)
    assert off.model.user_id_embedding is False
    assert "median 9 distinct training items per user" in caplog.text
    assert resolve_auto_settings(auto, dense).model.user_id_embedding is True
    # everything else is kept, and an explicit value is never overridden
    assert off.model.dim == auto.model.dim and off.train == auto.train
    explicit = RecfuseConfig.from_dict({"modalities": [], "model": {"user_id_embedding": True}})
    assert resolve_auto_settings(explicit, sparse).model.user_id_embedding is True
    # the resolved config round-trips through the model directory's config.json
    assert RecfuseConfig.from_dict(off.to_dict()).model.user_id_embedding is False


@pytest.mark.parametrize("value", ["yes", 1, 0, None])
def test_user_id_embedding_accepts_only_true_false_or_auto(value: object) -> None:
    from recfuse.errors import ConfigError

    with pytest.raises(ConfigError, match=r"`model.user_id_embedding` must be true, false or \"auto\", got"):
        RecfuseConfig.from_dict({"modalities": [], "model": {"user_id_embedding": value}})
