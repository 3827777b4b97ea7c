"""Every custom layer: ``get_config`` holds every constructor argument, and
``from_config(get_config())`` + a weights copy gives identical outputs."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from recfuse.layers.alignment import ModalityProjection
from recfuse.layers.categorical import CategoryEncoder
from recfuse.layers.fusion import AttentionFusion, ConcatFusion, GatedFusion, MaxFusion, WeightedFusion
from recfuse.layers.image import BackboneEncoder, ImageCNN
from recfuse.layers.masking import ModalityDropout
from recfuse.layers.text import MaskedMeanPooling, TextEncoder, TransformerBlock

TOKENS = np.random.default_rng(0).normal(size=(3, 3, 8)).astype(np.float32)
MASK = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 0]], np.float32)


def _run_fusion(layer: tf.keras.layers.Layer) -> tf.Tensor:
    return layer(TOKENS, MASK)


CASES: list[tuple[str, Callable[[], tf.keras.layers.Layer], Callable[[Any], tf.Tensor]]] = [
    (
        "cnn",
        lambda: ImageCNN(filters=(4, 8), name="cnn"),
        lambda layer: layer(np.full((2, 32, 32, 3), 0.3, np.float32)),
    ),
    (
        "cnn_two_convs",
        lambda: ImageCNN(filters=(4, 8), convs_per_block=2, name="cnn2"),
        lambda layer: layer(np.full((2, 32, 32, 3), 0.3, np.float32)),
    ),
    (
        "backbone",
        lambda: BackboneEncoder("mobilenet_v3_small", image_size=32, weights="", trainable_backbone=True),
        lambda layer: layer(np.random.default_rng(1).random((2, 32, 32, 3)).astype(np.float32)),
    ),
    (
        "text_mean",
        lambda: TextEncoder(["a", "b", "无线"], max_tokens=4, embedding_dim=6),
        lambda layer: layer(tf.constant(["a b", "无线 zz", ""])),
    ),
    (
        "text_transformer",
        lambda: TextEncoder(
            ["a", "b"],
            max_tokens=5,
            embedding_dim=8,
            encoder="transformer",
            num_layers=2,
            token_dropout=0.3,
            ff_dim=10,
            dropout=0.1,
        ),
        lambda layer: layer(tf.constant(["a b a", "b"])),
    ),
    (
        "transformer_block",
        lambda: TransformerBlock(8, num_heads=2, ff_dim=12, dropout=0.1),
        lambda layer: layer(TOKENS, mask=tf.constant(MASK > 0)),
    ),
    ("masked_mean", lambda: MaskedMeanPooling(), lambda layer: layer(TOKENS, mask=tf.constant(MASK))),
    (
        "category",
        lambda: CategoryEncoder(["x", "y"], embedding_dim=5),
        lambda layer: layer(tf.constant(["x|y", "", "q"])),
    ),
    ("proj_linear", lambda: ModalityProjection(4, "linear", normalize=True), lambda layer: layer(TOKENS[:, 0])),
    ("proj_mlp", lambda: ModalityProjection(4, "mlp", hidden=7), lambda layer: layer(TOKENS[:, 0])),
    ("proj_scale", lambda: ModalityProjection(4, "scale", seed=3), lambda layer: layer(TOKENS[:, 0])),
    ("dropout", lambda: ModalityDropout([0.2, 0.3, 0.4], seed=1), lambda layer: layer(MASK)),
    ("concat", lambda: ConcatFusion(8, 3, hidden=(16, 8)), _run_fusion),
    ("weighted", lambda: WeightedFusion(8, primary_index=1, weighted_lambda=0.2, learn_lambda=True), _run_fusion),
    ("max", lambda: MaxFusion(8), _run_fusion),
    ("gated", lambda: GatedFusion(8, hidden=5), _run_fusion),
    ("attention", lambda: AttentionFusion(8, num_heads=4, hidden=(16,), dropout=0.1), _run_fusion),
    ("attention_encoder", lambda: AttentionFusion(8, num_heads=2, hidden=(16,), encoder_layers=1), _run_fusion),
]


@pytest.mark.parametrize("make,run", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_layer_round_trips_through_get_config(make: Callable[[], Any], run: Callable[[Any], tf.Tensor]) -> None:
    layer = make()
    out = run(layer).numpy()
    # randomise weights so a copy that silently fails (or a default init) cannot pass
    rng = np.random.default_rng(7)
    layer.set_weights([w + rng.normal(scale=0.05, size=w.shape).astype(w.dtype) for w in layer.get_weights()])
    out = run(layer).numpy()

    config = layer.get_config()
    json.dumps(config)  # plain data only
    base = set(inspect.signature(tf.keras.layers.Layer.__init__).parameters)
    params = [p for p in inspect.signature(type(layer).__init__).parameters if p not in base | {"self", "kwargs"}]
    assert set(params) <= set(config), f"get_config lacks {sorted(set(params) - set(config))}"

    clone = type(layer).from_config(config)
    run(clone)  # build
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(run(clone).numpy(), out, rtol=1e-6, atol=1e-6)
    assert clone.get_config() == config


def test_layers_deserialize_by_registered_name() -> None:
    layer = GatedFusion(8, hidden=5, name="g")
    restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert isinstance(restored, GatedFusion) and restored.hidden == 5 and restored.name == "g"
