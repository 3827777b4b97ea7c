"""The ``transformer`` query encoder: TF == numpy (incl. padding and empty histories), causality,
serving path, artifacts, config errors, and a tiny real training run served through Recommender."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from recfuse.config import RecfuseConfig  # noqa: E402
from recfuse.errors import ArtifactError, ConfigError  # noqa: E402
from recfuse.forward.query import SEQUENCE_FORMAT, NumpyQueryTower, QueryEncoder  # noqa: E402
from recfuse.models.query_tower import QueryTower  # noqa: E402
from recfuse.models.sequence_encoder import CausalSelfAttentionBlock, CausalSequenceEncoder  # noqa: E402

D, L, N_ITEMS = 8, 7, 30


def _tower(seed: int = 0, user_rows: int = 12, layers: int = 2, heads: int = 2, **kw: object) -> QueryTower:
    tf.keras.utils.set_random_seed(seed)
    tower = QueryTower(
        dim=D, user_rows=user_rows, hidden=(16,), encoder="transformer", encoder_layers=layers,
        encoder_heads=heads, max_positions=L, **kw,
    )  # fmt: skip
    tower.build_for(D)
    # LayerNorm scales/shifts start at 1/0: perturb them so the export of every array is exercised
    rng = np.random.default_rng(seed + 100)
    for v in tower.sequence.weights:
        if "ln" in v.name:
            v.assign(v.numpy() + rng.normal(scale=0.2, size=v.shape).astype(np.float32))
    return tower


def _inputs(seed: int, b: int = 16, length: int = L, user_rows: int = 12):
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(N_ITEMS, D)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)  # unit rows, as the candidate tower gives
    u = rng.integers(0, max(user_rows, 1), size=b).astype(np.int64)
    h = rng.integers(0, N_ITEMS, size=(b, length)).astype(np.int64)
    lengths = rng.integers(0, length + 1, size=b)
    lengths[0], lengths[1], lengths[2] = 0, length, 1  # empty, full, one item
    h[np.arange(length)[None, :] >= lengths[:, None]] = -1
    p = np.broadcast_to(np.arange(length, dtype=np.float32), (b, length)).copy()
    return e, u, h, p


def _tf(tower: QueryTower, e, u, h, p, training: bool = False) -> np.ndarray:  # type: ignore[no-untyped-def]
    return tower(tf.constant(e), tf.constant(u), tf.constant(h), tf.constant(p), training=training).numpy()


@pytest.mark.parametrize(
    ("user_rows", "layers", "heads", "normalize"), [(12, 2, 2, True), (0, 1, 1, False), (12, 3, 4, True)]
)
def test_tf_tower_matches_numpy_forward_and_serving_path(user_rows: int, layers: int, heads: int, normalize) -> None:
    tower = _tower(1, user_rows=user_rows, layers=layers, heads=heads, normalize=normalize)
    e, u, h, p = _inputs(2, user_rows=user_rows)
    got_tf = _tf(tower, e, u, h, p)
    np_tower = tower.to_numpy()
    assert np_tower.encoder == "transformer" and np_tower.attn_w.shape == (D, 0)
    got_np = np_tower.encode(e, u, h, p)
    assert np.isfinite(got_tf).all() and np.isfinite(got_np).all()
    assert np.max(np.abs(got_tf - got_np)) <= 1e-5
    # the serving path: unpadded rows, LayerNorms folded, last block queried at the newest item only
    enc = QueryEncoder(np_tower, e)
    assert enc.item_logits is None
    rows = [r[r >= 0] for r in h]
    one = np.stack([enc.encode_one(int(a), r) for a, r in zip(u, rows)])
    assert np.max(np.abs(one - got_np)) <= 1e-5
    assert np.max(np.abs(enc.encode_many(u[:3], rows[:3]) - got_np[:3])) <= 1e-5
    assert np.max(np.abs(enc.encode_many(u, rows) - got_np)) <= 1e-5  # the padded batch path
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(got_np, axis=1), 1.0, atol=1e-5)


def test_empty_history_is_finite_and_has_finite_gradients() -> None:
    tower = _tower(3)
    e, u, h, p = _inputs(4)
    h[:] = -1  # a whole batch without history: every attention row has zero allowed keys
    out = _tf(tower, e, u, h, p)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(tower.to_numpy().encode(e, u, h, p), out, atol=1e-5)
    # the summary is exactly zero: the query is the user/bias path alone, as with attention pooling
    summary = tower.sequence(tf.gather(e, np.maximum(h, 0)), p, h >= 0).numpy()
    assert not summary.any()
    enc = QueryEncoder(tower.to_numpy(), e)
    np.testing.assert_allclose(enc.encode_one(int(u[0]), np.zeros(0, np.int64)), out[0], atol=1e-5)
    _, _, h2, _ = _inputs(4)  # mixed empty and non-empty rows, in training mode (dropout on)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tower(tf.constant(e), u, h2, p, training=True))
    grads = tape.gradient(loss, tower.trainable_variables)
    assert all(g is None or np.isfinite(tf.convert_to_tensor(g).numpy()).all() for g in grads)


def test_causal_order_and_padding() -> None:
    tower = _tower(5)
    np_tower = tower.to_numpy()
    seq = np_tower.sequence
    assert seq is not None
    e, _, _, _ = _inputs(6)
    user = np.array([3])
    pos = np.arange(L, dtype=np.float32)[None, :]

    def q(items: list[int], length: int = L) -> np.ndarray:
        h = np.full((1, length), -1, np.int64)
        h[0, : len(items)] = items
        return np_tower.encode(e, user, h, pos[:, :length])[0]

    base = q([4, 9, 2, 17])
    assert np.abs(q([4, 9, 2, 11]) - base).max() > 1e-3  # the OLDEST item changes the query
    assert np.abs(q([17, 2, 9, 4]) - base).max() > 1e-3  # order matters (positions + causal mask)
    # padding is never read: shorter padding, other values at padded slots, other padded positions
    np.testing.assert_allclose(q([4, 9, 2, 17], length=4), base, atol=1e-6)
    h = np.array([[4, 9, 2, 17, -1, -1, -1]])
    p2 = pos + (h < 0) * 100.0
    np.testing.assert_allclose(np_tower.encode(e, user, h, p2)[0], base, atol=1e-6)
    tf_e = tf.constant(e)
    np.testing.assert_allclose(_tf(tower, e, user, h, p2)[0], base, atol=1e-5)
    # causality: position j reads only items k >= j (itself and older), in TF and numpy alike
    h_new = np.array([[5, 9, 2, 17, -1, -1, -1]])  # only the newest item differs
    for hh in (h, h_new):
        assert np.isfinite(seq.sequence_outputs(e[np.maximum(hh, 0)], seq.position_index(pos), hh >= 0)).all()
    outs = [
        tower.sequence.sequence_outputs(tf.gather(tf_e, np.maximum(hh, 0)), pos, hh >= 0).numpy() for hh in (h, h_new)
    ]
    np_outs = [seq.sequence_outputs(e[np.maximum(hh, 0)], seq.position_index(pos), hh >= 0) for hh in (h, h_new)]
    np.testing.assert_allclose(outs[0][0, 1:4], outs[1][0, 1:4], atol=1e-6)  # older positions unchanged
    np.testing.assert_allclose(np_outs[0][0, 1:4], np_outs[1][0, 1:4], atol=1e-6)
    assert np.abs(outs[0][0, 0] - outs[1][0, 0]).max() > 1e-3  # the newest position changed
    np.testing.assert_allclose(outs[0][0, :4], np_outs[0][0, :4], atol=1e-5)


def test_attention_pooling_is_order_blind_without_its_recency_term() -> None:
    """What is true of the default encoder: a permuted history pools to the same vector unless the
    learned recency weight is non-zero (it is the pooling's only view of order)."""
    tf.keras.utils.set_random_seed(7)
    tower = QueryTower(dim=D, user_rows=12, hidden=(16,))
    tower.build_for(D)
    e, u, _, _ = _inputs(8)
    h = np.array([[4, 9, 2, 17, -1]])
    perm = np.array([[17, 2, 9, 4, -1]])
    p = np.arange(5, dtype=np.float32)[None, :]
    np.testing.assert_allclose(_tf(tower, e, u[:1], h, p), _tf(tower, e, u[:1], perm, p), atol=1e-6)
    tower.recency.assign([0.8])
    assert np.abs(_tf(tower, e, u[:1], h, p) - _tf(tower, e, u[:1], perm, p)).max() > 1e-4


def test_new_items_are_usable_in_a_history_at_once_and_long_histories() -> None:
    tower = _tower(9)
    np_tower = tower.to_numpy()
    e, _, _, _ = _inputs(10)
    new = np.random.default_rng(11).normal(size=(3, D)).astype(np.float32)
    grown = QueryEncoder(np_tower, e).with_items(new)
    full = np.concatenate([e, new])
    hist = np.array([N_ITEMS + 1, 2, N_ITEMS], np.int64)  # cold items inside a history
    want = np_tower.encode(full, np.array([3]), hist[None, :])[0]
    np.testing.assert_allclose(grown.encode_one(3, hist), want, atol=1e-5)
    # longer than the position table: positions past it share its last row, through the padded path
    long = np.arange(L + 5, dtype=np.int64) % N_ITEMS
    got = QueryEncoder(np_tower, e).encode_one(3, long)
    np.testing.assert_allclose(got, np_tower.encode(e, np.array([3]), long[None, :])[0], atol=1e-6)
    p = np.arange(L + 5, dtype=np.float32)[None, :]
    np.testing.assert_allclose(got, _tf(tower, e, np.array([3]), long[None, :], p)[0], atol=1e-5)


def test_dropout_only_while_training() -> None:
    tower = _tower(12, encoder_dropout=0.5)
    e, u, h, p = _inputs(13)
    np.testing.assert_array_equal(_tf(tower, e, u, h, p), _tf(tower, e, u, h, p))
    assert np.abs(_tf(tower, e, u, h, p, training=True) - _tf(tower, e, u, h, p)).max() > 1e-3


def test_save_load_round_trip_without_pickle_and_format_guard(tmp_path: Path) -> None:
    tower = _tower(14)
    e, u, h, p = _inputs(15)
    want = _tf(tower, e, u, h, p)
    paths = tower.to_numpy().save(tmp_path / "qt")
    info = json.loads(paths[1].read_text())
    assert info["format"] == SEQUENCE_FORMAT and info["encoder"] == "transformer"
    with np.load(paths[0], allow_pickle=False) as data:
        assert "seq_0_qkv_w" in data.files and "attn_w" not in data.files
    loaded = NumpyQueryTower.load(tmp_path / "qt")
    assert loaded.sequence is not None and loaded.sequence.heads == 2 and len(loaded.sequence.blocks) == 2
    assert np.max(np.abs(loaded.encode(e, u, h, p) - want)) <= 1e-5
    # a reader that would ignore the sequence arrays must not see the attention-pooling format
    paths[1].write_text(json.dumps({**info, "format": "recfuse.query_tower.numpy/1"}))
    with pytest.raises(ArtifactError, match=r"has format 'recfuse.query_tower.numpy/1', expected .*numpy/2"):
        NumpyQueryTower.load(tmp_path / "qt")
    arrays = tower.export_arrays()
    del arrays["seq_1_ffn2_b"]
    with pytest.raises(ArtifactError, match=r"sequence encoder arrays lack 'seq_1_ffn2_b'"):
        NumpyQueryTower.from_arrays(arrays)
    with pytest.raises(ValueError, match=r"`transformer` query tower has no per-item attention logits"):
        loaded.attention_logits(e)


@pytest.mark.parametrize(
    ("make", "run"),
    [
        (
            lambda: CausalSelfAttentionBlock(8, heads=2, ffn_dim=12, dropout=0.1, name="blk"),
            lambda layer, h, p, m: layer(h, tf.ones((len(h), 1, h.shape[1], h.shape[1]), tf.bool)),
        ),
        (
            lambda: CausalSequenceEncoder(8, layers=2, heads=4, max_positions=5, ffn_dim=6, dropout=0.2, name="enc"),
            lambda layer, h, p, m: layer(h, p, m),
        ),
        (
            lambda: QueryTower(
                dim=8,
                user_rows=5,
                hidden=(16,),
                encoder="transformer",
                encoder_layers=1,
                encoder_heads=2,
                encoder_dropout=0.3,
                max_positions=5,
                name="qt",
            ),
            lambda layer, h, p, m: layer(
                tf.reshape(h[:, 0], (-1, 8)), tf.zeros(len(h), tf.int64), tf.where(m, 0, -1), p
            ),
        ),
    ],
    ids=["block", "encoder", "query_tower"],
)
def test_layers_round_trip_through_get_config(make, run) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(16)
    h = tf.constant(rng.normal(size=(3, 5, 8)).astype(np.float32))
    p = tf.constant(np.broadcast_to(np.arange(5, dtype=np.float32), (3, 5)).copy())
    m = tf.constant(np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool))
    layer = make()
    run(layer, h, p, m)
    layer.set_weights([w + rng.normal(scale=0.05, size=w.shape).astype(w.dtype) for w in layer.get_weights()])
    out = run(layer, h, p, m).numpy()
    config = layer.get_config()
    json.dumps(config)
    base = set(inspect.signature(tf.keras.layers.Layer.__init__).parameters)
    params = [x for x in inspect.signature(type(layer).__init__).parameters if x not in base | {"self", "kwargs"}]
    assert set(params) <= set(config), f"get_config lacks {sorted(set(params) - set(config))}"
    if isinstance(layer, QueryTower):  # not registered: built from the model config, never deserialised
        clone = QueryTower.from_config(config)
    else:  # registered under package "recfuse"
        clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    run(clone, h, p, m)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(run(clone, h, p, m).numpy(), out, rtol=1e-6, atol=1e-6)
    assert clone.get_config() == config


def test_layer_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"`heads` must divide `dim` = 8, got 3"):
        CausalSelfAttentionBlock(8, heads=3)
    with pytest.raises(ValueError, match=r"`layers` must be >= 1, got 0"):
        CausalSequenceEncoder(8, layers=0)
    with pytest.raises(ValueError, match=r"`encoder` must be one of \['attention', 'transformer'\], got 'rnn'"):
        QueryTower(dim=8, encoder="rnn")


def test_config_keys_defaults_and_errors() -> None:
    m = RecfuseConfig().model
    assert (m.query_encoder, m.query_layers, m.query_heads, m.query_dropout) == ("attention", 2, 2, 0.2)
    cfg = RecfuseConfig.from_dict({"model": {"query_encoder": "transformer", "query_layers": 1, "query_heads": 4}})
    assert RecfuseConfig.from_dict(cfg.to_dict()) == cfg
    bad = {
        "query_encoder": ("gru", r"`model.query_encoder` must be one of \['attention', 'transformer'\], got 'gru'"),
        "query_layers": (5, r"`model.query_layers` must be in \[1, 4\], got 5"),
        "query_heads": (0, r"`model.query_heads` must be in \[1, 64\], got 0"),
        "query_dropout": (0.95, r"`model.query_dropout` must be in \[0.0, 0.9\], got 0.95"),
    }
    for key, (value, match) in bad.items():
        with pytest.raises(ConfigError, match=match):
            RecfuseConfig.from_dict({"model": {key: value}})
    with pytest.raises(ConfigError, match=r"`model.query_heads` = 4 must divide `model.dim` = 30 .* e\.g\. 3"):
        RecfuseConfig.from_dict({"model": {"query_encoder": "transformer", "dim": 30, "query_heads": 4}})
    # the attention encoder does not use the heads, so they need not divide dim there
    assert RecfuseConfig.from_dict({"model": {"dim": 30, "query_heads": 4}}).model.query_heads == 4


@pytest.mark.slow
def test_trains_saves_loads_and_serves(tmp_path: Path) -> None:
    from recfuse.bundle.export import export_model
    from recfuse.data.splits import split_interactions
    from recfuse.data.synthetic import generate
    from recfuse.data.validate import load_dataset
    from recfuse.inference import Recommender
    from recfuse.models.trained import TrainedModel
    from recfuse.training.trainer import train

    generate(tmp_path / "syn", n_items=120, n_users=60, seed=1)
    cfg = RecfuseConfig.from_dict(
        {
            "data": {"items": str(tmp_path / "syn" / "items.parquet"),
                     "interactions": str(tmp_path / "syn" / "interactions.parquet"), "max_history": 8},
            "modalities": [{"name": "categories", "kind": "categorical"}],
            "model": {"dim": 16, "query_hidden": [32], "fusion_hidden": [32], "query_encoder": "transformer",
                      "query_layers": 2, "query_heads": 2},
            "train": {"epochs": 2, "batch_size": 128, "learning_rate": 0.01, "seed": 3},
            "index": {"factory": "Flat", "recall_queries": 50},
        }
    )  # fmt: skip
    ds = load_dataset(cfg.data, cfg.modalities)
    split = split_interactions(ds.interactions, "random", 42)
    result = train(cfg, ds, split, tmp_path / "model", progress=False)
    assert result.history[1]["loss"] < result.history[0]["loss"]
    model = TrainedModel.load(tmp_path / "model")
    assert model.query_tower.encoder == "transformer" and model.query_tower.sequence is not None
    model._build_tf()  # noqa: SLF001  (the restored TF query tower, to compare with the numpy forward)
    tf_tower = model._tf_query_tower  # noqa: SLF001
    assert tf_tower is not None and tf_tower.encoder == "transformer"

    users = sorted(model.user_histories)[:5]
    hists = [model.user_histories[u] for u in users]
    np_q = model.query_embeddings([*users, None, users[0]], [*hists, hists[0][:3], []])
    from recfuse.models.history import history_arrays

    h, p = history_arrays([*hists, hists[0][:3], []], model.item_vocab, cfg.data.max_history)
    uidx = model.user_indices([*users, None, users[0]])
    tf_q = tf_tower(model.item_embeddings, uidx, h, p).numpy()
    assert np.isfinite(tf_q).all() and np.max(np.abs(np_q - tf_q)) <= 1e-5

    bundle = export_model(tmp_path / "model", tmp_path / "bundles")
    sig = tf.saved_model.load(str(bundle / "query_tower_savedmodel")).signatures["serving_default"]
    sm_q = sig(user_idx=tf.constant(uidx), hist_idx=tf.constant(h), hist_pos=tf.constant(p))["query"].numpy()
    assert np.max(np.abs(sm_q - np_q)) <= 1e-5
    rec = Recommender.from_bundle(bundle.parent)
    for u in users[:3]:
        r = rec.recommend(user_id=u, k=5)
        assert r.fallback == "" and len(r.items) == 5
    # the served query of an anonymous history equals the TF tower's (ranking the same top items)
    anon = hists[0][:3]
    r = rec.recommend(history=anon, k=5)
    scores = model.ranking_embeddings @ tf_q[5]
    top = [model.item_ids[i] for i in np.argsort(-scores, kind="stable")[:5]]
    assert r.fallback == "" and [s.item_id for s in r.items] == top
    want = scores[[model.item_ids.index(i) for i in top]]
    np.testing.assert_allclose([s.score for s in r.items], want, atol=1e-5)


@pytest.mark.parametrize("encoder", ["attention", "transformer"])
def test_load_arrays_is_the_inverse_of_export_arrays(encoder: str) -> None:
    kw = {"encoder": encoder, "encoder_layers": 2, "max_positions": L}
    towers = []
    for seed in (17, 18):
        tf.keras.utils.set_random_seed(seed)
        t = QueryTower(dim=D, user_rows=12, hidden=(16,), **kw)  # type: ignore[arg-type]
        t.build_for(D)
        towers.append(t)
    src, dst = towers
    dst.load_arrays(src.export_arrays())
    e, u, h, p = _inputs(19)
    np.testing.assert_array_equal(_tf(dst, e, u, h, p), _tf(src, e, u, h, p))
    arrays = src.export_arrays()
    arrays["mlp_0_w"] = arrays["mlp_0_w"][:-1]
    with pytest.raises(ValueError, match=r"`arrays\['mlp_0_w'\]` must have shape \(17, 16\), got \(16, 16\)"):
        dst.load_arrays(arrays)
