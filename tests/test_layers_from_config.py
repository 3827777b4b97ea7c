"""Every layer option the config exposes reaches the layer the candidate tower builds (and defaults keep
the layers' own defaults)."""

from __future__ import annotations

import pytest

from recfuse.config import FUSIONS as CONFIG_FUSIONS
from recfuse.config import RecfuseConfig
from recfuse.errors import ConfigError
from recfuse.layers import fusion
from recfuse.models.candidate_tower import CandidateTower

IMAGE = {"name": "img", "kind": "image", "image_size": 16, "cnn_filters": [4]}
AUDIO = {"name": "audio", "kind": "vector", "dim": 5}


def _tower(model: dict, modalities: list[dict] | None = None) -> CandidateTower:
    cfg = RecfuseConfig.from_dict({"model": {"dim": 8, **model}, "modalities": modalities or [IMAGE, AUDIO]})
    tower = CandidateTower(cfg, {}, item_rows=3)
    tower.build_with_dummy()
    return tower


def test_attention_dropout_reaches_the_attention_fusion() -> None:
    tower = _tower({"fusion": "attention", "attention_dropout": 0.3})
    assert isinstance(tower.fusion, fusion.AttentionFusion)
    assert tower.fusion.dropout == 0.3 and tower.fusion.attn.get_config()["dropout"] == 0.3
    assert tower.fusion.get_config()["dropout"] == 0.3  # and travels with the saved layer
    assert _tower({"fusion": "attention"}).fusion.dropout == 0.0  # the default is the layer's


def test_gated_hidden_reaches_the_gated_fusion() -> None:
    tower = _tower({"fusion": "gated", "gated_hidden": 12})
    assert isinstance(tower.fusion, fusion.GatedFusion)
    assert tower.fusion.hidden == 12 and tower.fusion.score_hidden.kernel.shape == (8, 12)
    assert _tower({"fusion": "gated"}).fusion.hidden == 8  # 0 = dim, as before


def test_alignment_hidden_reaches_the_mlp_projections() -> None:
    tower = _tower({"alignment": "mlp", "alignment_hidden": 6})
    for proj in tower.projections.values():
        assert proj.hidden == 6 and proj.dense_in.kernel.shape[1] == 6
    assert {p.hidden for p in _tower({"alignment": "mlp"}).projections.values()} == {16}  # 0 = 2 * dim


def test_augment_shift_reaches_the_raw_image_cnn() -> None:
    tower = _tower({}, [{**IMAGE, "augment_shift": 0.25}])
    assert tower.encoders["img"].augment and tower.encoders["img"].augment_shift == 0.25
    assert _tower({}, [IMAGE]).encoders["img"].augment_shift == 0.125


def test_text_encoder_ff_dim_and_dropout_reach_each_transformer_block() -> None:
    text = {"name": "text", "kind": "text", "embedding_dim": 6, "max_tokens": 4, "encoder": "transformer"}
    tower = _tower({}, [{**text, "encoder_layers": 2, "encoder_ff_dim": 10, "encoder_dropout": 0.2}])
    enc = tower.encoders["text"]
    assert (enc.ff_dim, enc.dropout) == (10, 0.2) and len(enc.blocks) == 2
    for block in enc.blocks:
        assert (block.ff_dim, block.dropout, block.ff1.units) == (10, 0.2, 10)
    default = _tower({}, [text]).encoders["text"]
    assert (default.ff_dim, default.dropout, default.blocks[0].ff_dim) == (12, 0.0, 12)  # 2 * embedding_dim


@pytest.mark.parametrize(
    ("section", "raw", "match"),
    [
        ("model", {"attention_dropout": 0.95}, r"`model.attention_dropout` must be in \[0.0, 0.9\], got 0.95"),
        ("model", {"attention_dropout": "0.1"}, r"`model.attention_dropout` must be a number, got '0.1' \(str\)"),
        ("model", {"gated_hidden": -1}, r"`model.gated_hidden` must be in \[0, 65536\], got -1"),
        ("model", {"gated_hidden": 1.5}, r"`model.gated_hidden` must be an integer, got 1.5 \(float\)"),
        ("model", {"alignment_hidden": -2}, r"`model.alignment_hidden` must be in \[0, 65536\], got -2"),
        (
            "modality",
            {"name": "t", "kind": "text", "encoder_dropout": 1.0},
            r"`modalities.t.encoder_dropout` must be in \[0.0, 0.9\], got 1.0",
        ),
        (
            "modality",
            {"name": "t", "kind": "text", "encoder_ff_dim": -4},
            r"`modalities.t.encoder_ff_dim` must be in \[0, 65536\], got -4",
        ),
        ("modality", {**IMAGE, "augment_shift": 0.5}, r"`modalities.img.augment_shift` must be in \[0, 0.5\), got 0.5"),
        (
            "modality",
            {**IMAGE, "augment": False, "augment_shift": 0.2},
            r"`modalities.img.augment_shift` applies to the raw-image CNN with `augment` on only.*; remove it",
        ),
        (
            "modality",
            {**AUDIO, "augment_shift": 0.2},
            r"`modalities.audio.augment_shift` applies to the raw-image CNN .*kind 'vector'",
        ),
    ],
)
def test_invalid_layer_options_are_named(section: str, raw: dict, match: str) -> None:
    cfg = {"model": raw} if section == "model" else {"modalities": [raw]}
    with pytest.raises(ConfigError, match=match):
        RecfuseConfig.from_dict(cfg)


def test_the_config_names_every_fusion_layer_once() -> None:
    # one list of names (the config's); the layer registry follows it, in its order
    assert tuple(fusion.FUSIONS) == CONFIG_FUSIONS
    with pytest.raises(ConfigError, match=r"`model.fusion` must be one of \['concat', .*'attention'\], got 'mean'"):
        fusion.make_fusion("mean", 8, 2)
