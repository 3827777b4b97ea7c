"""CandidateTower: fusion variants end to end, masking, cold items, contrastive loss, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from recfuse.config import RecfuseConfig
from recfuse.data.item_features import build_item_features
from recfuse.data.vocab import IdVocab
from recfuse.errors import ConfigError, SchemaError
from recfuse.models.candidate_tower import CandidateTower, build_candidate_tower

FUSIONS = ["concat", "weighted", "max", "gated", "attention"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    root = tmp_path_factory.mktemp("catalog")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")).save(root / f"{i}.png")
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(6)],
            "title": ["red shoe", "无线耳机", "blue hat", "", "ソニー イヤホン", "red hat"],
            "description": ["", "降噪", "", "", "", ""],
            "image": [f"{i}.png" for i in range(5)] + [None],
            "categories": [["shoes"], ["audio"], ["hats"], [], ["audio"], ["hats"]],
            "audio_vec": [rng.random(5).tolist() for _ in range(5)] + [None],
        }
    )
    return items, root


def _cfg(fusion: str = "attention", **model: object) -> RecfuseConfig:
    return RecfuseConfig.from_dict(
        {
            "model": {"fusion": fusion, "dim": 8, "fusion_hidden": [16], "modality_dropout": 0.2, **model},
            "modalities": [
                {"name": "image", "kind": "image", "image_size": 32, "cnn_filters": [4, 8]},
                {"name": "text", "kind": "text", "embedding_dim": 8, "max_tokens": 8, "encoder": "transformer"},
                {"name": "categories", "kind": "categorical", "embedding_dim": 4},
                {"name": "audio", "kind": "vector", "dim": 5},
            ],
        }
    )


def _features(table: dict[str, np.ndarray]) -> dict[str, tf.Tensor]:
    return {k: tf.constant(v) for k, v in table.items()}


def _setup(catalog: tuple[pd.DataFrame, Path], cfg: RecfuseConfig) -> tuple[CandidateTower, dict[str, np.ndarray]]:
    items, root = catalog
    vocab = IdVocab.build(items["item_id"], num_oov=0)
    table = build_item_features(items, cfg, root, vocab, warm_items={"i0", "i1", "i2"})
    return build_candidate_tower(cfg, items, vocab), table


@pytest.mark.parametrize(
    ("fusion", "extra"),
    [(f, {}) for f in FUSIONS] + [("attention", {"attention_layers": 1})],
    ids=[*FUSIONS, "attention-encoder"],
)
def test_each_fusion_gives_unit_vectors_and_ignores_missing_modalities(catalog, fusion: str, extra: dict) -> None:
    tower, table = _setup(catalog, _cfg(fusion, **extra))
    assert getattr(tower.fusion, "encoder_layers", 0) == extra.get("attention_layers", 0)
    out = tower(_features(table)).numpy()
    assert out.shape == (6, 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert len({tuple(np.round(r, 5)) for r in out}) == 6
    # item i5 has no image and no audio: changing those inputs must not move it
    changed = dict(table)
    changed["image"] = table["image"].copy()
    changed["image"][5] = 1.0
    changed["audio"] = table["audio"].copy()
    changed["audio"][5] = 50.0
    np.testing.assert_allclose(tower(_features(changed)).numpy()[5], out[5], atol=1e-6)
    # cold item i4 (item_id_mask 0): its id embedding is not used
    cold = dict(table)
    cold["item_idx"] = table["item_idx"].copy()
    cold["item_idx"][4] = 0
    np.testing.assert_allclose(tower(_features(cold)).numpy()[4], out[4], atol=1e-6)
    tokens, mask = tower.modality_tokens(_features(table))
    assert tokens.shape == (6, 5, 8) and tower.token_names[-1] == "item_id"
    np.testing.assert_array_equal(mask.numpy()[:, -1], [1, 1, 1, 0, 0, 0])


def test_unnormalised_output_and_no_id_embedding(catalog) -> None:
    cfg = _cfg("gated", normalize=False, item_id_embedding=False)
    tower, table = _setup(catalog, cfg)
    out = tower(_features(table)).numpy()
    assert not np.allclose(np.linalg.norm(out, axis=1), 1.0)
    assert "item_id" not in tower.token_names


def test_item_id_only_tower(catalog) -> None:
    cfg = RecfuseConfig.from_dict({"modalities": [], "model": {"dim": 4, "fusion": "max"}})
    items, root = catalog
    vocab = IdVocab.build(items["item_id"], num_oov=0)
    table = build_item_features(items, cfg, root, vocab)
    tower = build_candidate_tower(cfg, items, vocab)
    out = tower(_features(table)).numpy()
    expected = tower.id_embedding.get_weights()[0][table["item_idx"]]
    np.testing.assert_allclose(out, expected / np.linalg.norm(expected, axis=1, keepdims=True), rtol=1e-5)


def test_contrastive_loss_is_added_only_when_training(catalog) -> None:
    tower, table = _setup(catalog, _cfg("attention", contrastive_weight=0.5))
    tower(_features(table), training=False)
    assert tower.losses == []
    tower(_features(table), training=True)
    assert len(tower.losses) == 1 and float(tower.losses[0]) > 0.0
    off, _ = _setup(catalog, _cfg("attention", contrastive_weight=0.0))
    off(_features(table), training=True)
    assert off.losses == []


def test_gradients_reach_every_branch(catalog) -> None:
    tower, table = _setup(catalog, _cfg("attention", modality_dropout=0.0, item_id_dropout=0.0))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tower(_features(table), training=True) * tf.random.normal([6, 8], seed=1))
        loss += tf.add_n(tower.losses)
    grads = tape.gradient(loss, tower.trainable_variables)
    names = {v.name.split("/")[1] for v, g in zip(tower.trainable_variables, grads) if g is not None}
    assert all(v.name.startswith("candidate_tower/") for v in tower.trainable_variables)
    assert {"image_cnn", "text_text", "categories_cat", "audio_align", "item_id_embedding", "fusion"} <= names


def test_graph_mode_call_matches_eager(catalog) -> None:
    tower, table = _setup(catalog, _cfg("attention"))
    fn = tf.function(lambda f: tower(f, training=False))
    np.testing.assert_allclose(fn(_features(table)).numpy(), tower(_features(table)).numpy(), atol=1e-6)


def test_save_weights_into_rebuilt_tower(catalog, tmp_path: Path) -> None:
    items, _ = catalog
    cfg = _cfg("attention")
    tower, table = _setup(catalog, cfg)
    before = tower(_features(table)).numpy()
    tower.save_weights(str(tmp_path / "ckpt"))
    rebuilt = build_candidate_tower(cfg, None, IdVocab.build(items["item_id"], 0), vocabularies=tower.vocabularies)
    assert not np.allclose(rebuilt(_features(table)).numpy(), before)
    rebuilt.load_weights(str(tmp_path / "ckpt")).assert_existing_objects_matched()
    np.testing.assert_allclose(rebuilt(_features(table)).numpy(), before, atol=1e-6)


def test_from_config_round_trip(catalog) -> None:
    tower, table = _setup(catalog, _cfg("weighted"))
    clone = CandidateTower.from_config(tower.get_config())
    clone.set_weights(tower.get_weights())
    np.testing.assert_allclose(clone(_features(table)).numpy(), tower(_features(table)).numpy(), atol=1e-6)
    assert clone.vocabularies == tower.vocabularies and "耳机" in tower.vocabularies["text"]


def test_saved_model_serving_function(catalog, tmp_path: Path) -> None:
    tower, table = _setup(catalog, _cfg("attention"))
    expected = tower(_features(table)).numpy()
    tf.saved_model.save(tower, str(tmp_path / "sm"), signatures={"serving_default": tower.serving_function()})
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    out = loaded.signatures["serving_default"](**_features(table))["embedding"].numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_vector_sources_for_image_and_text(catalog) -> None:
    items, root = catalog
    items = items.assign(image_vec=[[float(i)] * 3 for i in range(6)], text_vec=[[1.0, 0.0]] * 6)
    cfg = RecfuseConfig.from_dict(
        {
            "model": {"dim": 4, "fusion": "weighted", "alignment": "scale"},
            "modalities": [
                {"name": "image", "kind": "image", "source": "vector", "columns": ["image_vec"], "dim": 3},
                {"name": "text", "kind": "text", "source": "vector", "columns": ["text_vec"], "dim": 2},
            ],
        }
    )
    vocab = IdVocab.build(items["item_id"], 0)
    tower = build_candidate_tower(cfg, items, vocab)
    out = tower(_features(build_item_features(items, cfg, root, vocab))).numpy()
    assert out.shape == (6, 4) and tower.vocabularies == {}


def test_bad_inputs(catalog) -> None:
    items, root = catalog
    cfg = _cfg("max")
    vocab = IdVocab.build(items["item_id"], 0)
    with pytest.raises(ConfigError, match="needs `items`"):
        build_candidate_tower(cfg, None, vocab)
    tower, table = _setup(catalog, cfg)
    feats = _features(table)
    del feats["text_mask"]
    with pytest.raises(SchemaError, match="lack 'text_mask'"):
        tower(feats)
    with pytest.raises(ConfigError, match="model.fusion"):
        RecfuseConfig.from_dict({"model": {"fusion": "sum"}})


def test_prepared_integer_table_gives_identical_outputs(catalog) -> None:
    tower, table = _setup(catalog, _cfg("attention"))
    prepared = tower.prepare_features(table)
    assert prepared["text"].dtype == np.int64 and prepared["text"].shape == (6, 8)
    assert prepared["categories"].dtype == np.int64 and prepared["categories"].shape == (6, 1)
    assert prepared["image"] is table["image"]
    np.testing.assert_allclose(tower(_features(prepared)).numpy(), tower(_features(table)).numpy(), atol=1e-6)
    rows = tf.constant([4, 1])  # gathered rows, as the two-tower model does per batch
    gathered = {k: tf.gather(v, rows) for k, v in _features(prepared).items()}
    np.testing.assert_allclose(tower(gathered).numpy(), tower(_features(table)).numpy()[[4, 1]], atol=1e-6)
    again = tower.prepare_features(prepared)
    np.testing.assert_array_equal(again["text"], prepared["text"])


def test_modality_loss_adds_one_retrieval_loss_per_present_content_modality(catalog) -> None:
    """model.modality_loss_weight: loss(w) - loss(0) = w * sum over content modalities of the same
    in-batch softmax (same queries, logQ) scored with that modality's token alone; positives lacking
    the modality weigh 0 and, as negatives, score 0."""
    from recfuse.models.query_tower import QueryTower
    from recfuse.models.two_tower import TwoTowerModel

    tf.keras.utils.set_random_seed(3)
    tower, table = _setup(catalog, _cfg("attention", modality_dropout=0.0, contrastive_weight=0.0))
    query_tower = QueryTower(8, user_rows=4, hidden=(16,))
    prob = np.array([0.3, 0.2, 0.1, 0.15, 0.05, 0.2], np.float32)
    kw = dict(temperature=0.2, history_encoding="live", live_history_items=0)
    on = TwoTowerModel(query_tower, tower, table, prob, modality_loss_weight=0.7, **kw)
    off = TwoTowerModel(query_tower, tower, table, prob, modality_loss_weight=0.0, **kw)
    assert (on.aux_modalities, off.aux_modalities) == (4, 0)  # image, text, categories, audio; not the id token
    item_idx = np.array([0, 1, 3, 5], np.int64)  # i3 has no text/categories, i5 no image/audio
    hist = np.array([[2, 4, -1], [0, -1, -1], [1, 2, 4], [3, -1, -1]], np.int64)
    batch = {
        "user_idx": tf.constant([0, 1, 2, 3], tf.int64),
        "hist_idx": tf.constant(hist),
        "hist_pos": tf.constant(np.tile(np.arange(3, dtype=np.float32), (4, 1))),
        "item_idx": tf.constant(item_idx),
    }
    loss_on = float(on.compute_loss(batch, training=False))
    loss_off = float(off.compute_loss(batch, training=False))

    query = off._live_towers(batch, tf.constant(item_idx), False)[0].numpy()
    feats = {k: tf.constant(v[item_idx]) for k, v in table.items()}
    fused = tower(feats, training=False).numpy()
    tokens, mask = (t.numpy() for t in tower.modality_tokens(feats, training=False))
    log_q = np.log(len(item_idx) * prob[item_idx])  # 4 * 0.3 > 1: exact, not clipped at 1

    def softmax_ce(cands: np.ndarray, weight: np.ndarray) -> float:
        logits = query @ cands.T / 0.2 - log_q[None, :]
        logits -= logits.max(axis=1, keepdims=True)
        nll = -np.diag(logits - np.log(np.exp(logits).sum(axis=1, keepdims=True)))
        return float((nll * weight).sum())

    assert loss_off == pytest.approx(softmax_ce(fused, np.ones(4)), rel=1e-4)  # the manual loss is TFRS's
    present = mask[:, :4]
    assert present[:, 0].tolist() == [1, 1, 1, 0] and present[:, 1].tolist() == [1, 1, 0, 1]
    expected = 0.0
    for m in range(4):
        norm = np.sqrt(np.maximum((tokens[:, m] ** 2).sum(axis=1, keepdims=True), 1e-12))  # as tf.math.l2_normalize
        t = tokens[:, m] / norm * present[:, m : m + 1]
        expected += softmax_ce(t, present[:, m])
    assert expected > 1.0
    assert loss_on - loss_off == pytest.approx(0.7 * expected, rel=1e-4)


def test_modality_loss_needs_more_than_one_token(catalog) -> None:
    from recfuse.models.query_tower import QueryTower
    from recfuse.models.two_tower import TwoTowerModel

    base = _cfg("attention").to_dict()
    text_only = RecfuseConfig.from_dict({**base, "modalities": [base["modalities"][1]]})
    prob = np.full(6, 1 / 6, np.float32)
    alone = RecfuseConfig.from_dict({**text_only.to_dict(), "model": {**base["model"], "item_id_embedding": False}})
    for cfg, expected in ((alone, 0), (text_only, 1)):  # text alone: no fusion to balance; text + id token: 1
        tower, table = _setup(catalog, cfg)
        model = TwoTowerModel(QueryTower(8, user_rows=4, hidden=(16,)), tower, table, prob, modality_loss_weight=1.0)
        assert model.aux_modalities == expected
    with pytest.raises(ConfigError, match="modality_loss_weight"):
        _cfg("attention", modality_loss_weight=-1.0)
