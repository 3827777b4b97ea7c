"""Fusion variants, masking semantics, modality dropout, alignment and the contrastive loss."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from recfuse.errors import ConfigError
from recfuse.layers.alignment import ModalityProjection, info_nce
from recfuse.layers.fusion import FUSIONS, AttentionFusion, GatedFusion, WeightedFusion, make_fusion
from recfuse.layers.masking import ModalityDropout

D, M = 8, 4
MASK = np.array([[1, 0, 1, 1], [1, 1, 1, 1], [0, 0, 1, 0], [0, 0, 0, 0]], np.float32)


def _tokens(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(4, M, D)).astype(np.float32)


def test_registry_has_the_five_variants() -> None:
    assert sorted(FUSIONS) == ["attention", "concat", "gated", "max", "weighted"]
    with pytest.raises(ConfigError, match=r"`model.fusion` must be one of \[.*\], got 'mean'"):
        make_fusion("mean", D, M)


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_masked_tokens_do_not_change_the_output(name: str) -> None:
    fuse = make_fusion(name, D, M, primary_index=0, hidden=(16,))
    x = _tokens()
    out = fuse(x, MASK).numpy()
    assert out.shape == (4, D)
    x2 = x.copy()
    x2[MASK == 0] = 1e3 * np.random.default_rng(5).normal(size=(int((MASK == 0).sum()), D))
    np.testing.assert_allclose(fuse(x2, MASK).numpy(), out, atol=1e-5)
    np.testing.assert_array_equal(out[3], np.zeros(D))  # no present token -> zeros
    assert np.abs(out[:3]).sum(axis=1).min() > 0


def test_weighted_fusion_formula_and_fallbacks() -> None:
    fuse = WeightedFusion(D, primary_index=0, weighted_lambda=0.3, learn_lambda=False)
    x = _tokens()
    out = fuse(x, MASK).numpy()
    np.testing.assert_allclose(out[0], 0.7 * x[0, 0] + 0.3 * x[0, [2, 3]].mean(0), rtol=1e-5)
    np.testing.assert_allclose(out[2], x[2, 2], rtol=1e-6)  # image missing -> others only
    only_image = np.array([[1, 0, 0, 0]], np.float32)
    np.testing.assert_allclose(fuse(x[:1], only_image).numpy()[0], x[0, 0], rtol=1e-6)
    assert fuse.lambda_logit.trainable is False


def test_weighted_fusion_lambda_is_learnable_sigmoid() -> None:
    fuse = WeightedFusion(D, primary_index=0, weighted_lambda=0.25, learn_lambda=True)
    fuse(_tokens(), MASK)
    assert float(fuse.lam) == pytest.approx(0.25, abs=1e-6)
    assert [v.name for v in fuse.trainable_variables] == [fuse.lambda_logit.name]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(fuse(_tokens(), MASK))
    assert tape.gradient(loss, fuse.lambda_logit) is not None


def test_max_fusion_is_elementwise_max_over_present() -> None:
    x = _tokens()
    out = make_fusion("max", D, M)(x, MASK).numpy()
    np.testing.assert_allclose(out[0], x[0, [0, 2, 3]].max(0))
    np.testing.assert_allclose(out[2], x[2, 2])


def test_gated_weights_are_a_softmax_over_present_tokens() -> None:
    fuse = GatedFusion(D)
    x = _tokens()
    g = fuse.gates(tf.constant(x), tf.constant(MASK)).numpy()
    np.testing.assert_array_equal(g[MASK == 0], 0.0)
    np.testing.assert_allclose(g[:3].sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(fuse(x, MASK).numpy()[0], (g[0][:, None] * x[0]).sum(0), rtol=1e-5)


def test_attention_gives_zero_weight_to_missing_modalities() -> None:
    fuse = AttentionFusion(D, num_heads=2, hidden=(16,))
    scores = fuse.attention_scores(tf.constant(_tokens()), tf.constant(MASK)).numpy()
    assert scores.shape == (4, 2, 1, M)
    np.testing.assert_array_equal(scores[:3, :, 0, :][np.broadcast_to(MASK[:3, None, :] == 0, (3, 2, M))], 0.0)
    np.testing.assert_allclose(scores[:3].sum(-1), 1.0, rtol=1e-5)


def test_attention_encoder_layers_let_tokens_read_each_other_and_keep_masking() -> None:
    """Without encoder layers the pooling weights of two present tokens compare only those two (a
    softmax); with a self-attention block before the pooling each token's key also carries the
    others, so changing a third token moves their ratio. Masked tokens still change nothing."""
    tf.keras.utils.set_random_seed(0)  # fixed initial weights: the size of the effect is reproducible
    x = _tokens()
    x_other = x.copy()
    x_other[1, 3] += 2.0  # item 1, token 3
    ratios = {}
    for layers in (0, 1):
        fuse = AttentionFusion(D, num_heads=2, hidden=(16,), encoder_layers=layers)
        s = fuse.attention_scores(tf.constant(x), tf.constant(MASK)).numpy()
        s2 = fuse.attention_scores(tf.constant(x_other), tf.constant(MASK)).numpy()
        ratios[layers] = (s[1, :, 0, 0] / s[1, :, 0, 2], s2[1, :, 0, 0] / s2[1, :, 0, 2])
        out = fuse(x, MASK).numpy()
        x_masked = x.copy()
        x_masked[MASK == 0] = 1e3
        np.testing.assert_allclose(fuse(x_masked, MASK).numpy(), out, atol=1e-5)
        np.testing.assert_array_equal(out[3], np.zeros(D))
        np.testing.assert_array_equal(s[:3, :, 0, :][np.broadcast_to(MASK[:3, None, :] == 0, (3, 2, M))], 0.0)
    np.testing.assert_allclose(*ratios[0], rtol=1e-5)  # float rounding only
    assert (np.abs(ratios[1][0] - ratios[1][1]) / ratios[1][0]).max() > 1e-4  # 10x that tolerance
    assert len(AttentionFusion(D, encoder_layers=2, hidden=(16,)).encoder) == 2


def test_attention_context_conditions_the_output() -> None:
    fuse = AttentionFusion(D, num_heads=2, hidden=(16,))
    x = _tokens()
    a = fuse(x, MASK).numpy()
    b = fuse(x, MASK, context=tf.ones([4, D]) * 3.0).numpy()
    assert not np.allclose(a[:3], b[:3])


def test_concat_uses_mask_indicators() -> None:
    fuse = make_fusion("concat", D, M, hidden=(16,))
    zeros = np.zeros((1, M, D), np.float32)
    a = fuse(zeros, np.array([[1, 1, 0, 0]], np.float32)).numpy()
    b = fuse(zeros, np.array([[1, 0, 1, 0]], np.float32)).numpy()
    assert not np.allclose(a, b)


def test_modality_dropout_keeps_at_least_one_present_token() -> None:
    drop = ModalityDropout([0.9, 0.9, 0.9, 0.9], seed=3)
    mask = np.tile(MASK, (50, 1))
    np.testing.assert_array_equal(drop(mask, training=False).numpy(), mask)
    out = drop(mask, training=True).numpy()
    assert ((out == 1) <= (mask == 1)).all()  # never turns a missing modality on
    has_any = mask.sum(1) > 0
    assert (out[has_any].sum(1) >= 1).all() and (out[~has_any] == 0).all()
    assert out.sum() < 0.5 * mask.sum()  # dropping actually happens
    with pytest.raises(ValueError, match="rates"):
        ModalityDropout([1.5])


def test_modality_dropout_rate_zero_token_is_never_dropped() -> None:
    out = ModalityDropout([0.0, 1.0], seed=1)(np.ones((64, 2), np.float32), training=True).numpy()
    np.testing.assert_array_equal(out[:, 0], 1.0)
    np.testing.assert_array_equal(out[:, 1], 0.0)


@pytest.mark.parametrize("alignment", ["linear", "mlp", "scale"])
def test_projection_shapes_and_normalisation(alignment: str) -> None:
    x = tf.random.normal([3, 20], seed=1)
    out = ModalityProjection(6, alignment, normalize=True)(x).numpy()
    assert out.shape == (3, 6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="alignment"):
        ModalityProjection(6, "conv")


def test_scale_alignment_learns_only_scale_and_shift() -> None:
    proj = ModalityProjection(6, "scale")
    proj(tf.zeros([1, 20]))
    assert sorted(v.name.split("/")[-1] for v in proj.trainable_variables) == ["scale:0", "shift:0"]
    same = ModalityProjection(6, "scale")
    x = tf.random.normal([2, 6], seed=2)
    np.testing.assert_allclose(same(x).numpy(), x.numpy())  # d-dim input: identity at init, no projection


def test_info_nce_matches_hand_computation_and_ignores_invalid_rows() -> None:
    a = np.eye(3, 4, dtype=np.float32)
    b = np.eye(3, 4, dtype=np.float32)
    loss = float(info_nce(a, b, np.array([True, True, True]), temperature=1.0))
    expected = -np.log(np.e / (np.e + 2.0))
    assert loss == pytest.approx(expected, rel=1e-5)
    b_bad = b.copy()
    b_bad[2] = [0, 0, 0, 1]
    assert float(info_nce(a, b_bad, np.array([True, True, False]), 1.0)) == pytest.approx(
        -np.log(np.e / (np.e + 1.0)), rel=1e-5
    )
    assert float(info_nce(a, b, np.array([True, False, False]), 1.0)) == 0.0


def test_info_nce_does_not_use_a_repeated_item_as_its_own_negative() -> None:
    # rows 0 and 2 are the same item (id 7): with ids, each is scored against row 1 only; row 1
    # (another item) still has both as negatives
    a = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    b = a.copy()
    with_ids = float(info_nce(a, b, np.ones(3, bool), 1.0, ids=np.array([7, 3, 7])))
    e = np.e
    expected = np.mean([-np.log(e / (e + 1)), -np.log(e / (e + 2)), -np.log(e / (e + 1))])
    assert with_ids == pytest.approx(expected, rel=1e-5)
    # without ids the duplicate counts as a negative as good as the positive: a higher loss
    assert float(info_nce(a, b, np.ones(3, bool), 1.0)) == pytest.approx(
        np.mean([-np.log(e / (2 * e + 1)), -np.log(e / (e + 2)), -np.log(e / (2 * e + 1))]), rel=1e-5
    )
    # invalid rows are dropped before ids are compared
    assert float(info_nce(a, b, np.array([True, True, False]), 1.0, ids=np.array([7, 3, 7]))) == pytest.approx(
        -np.log(e / (e + 1)), rel=1e-5
    )
