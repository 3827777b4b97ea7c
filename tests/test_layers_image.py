"""Image branch: small CNN, application backbones from a local weights file (never downloaded)."""

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
from recfuse.errors import ConfigError
from recfuse.layers.image import BackboneEncoder, ImageCNN, build_backbone, canonical_backbone
from recfuse.models.candidate_tower import build_candidate_tower


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tf.keras.Model]:
    """A tiny headless MobileNetV3Small (random init) saved to .h5, standing in for downloaded weights."""
    model = tf.keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), include_top=False, weights=None, pooling="avg"
    )
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v3_small_notop.h5"
    model.save_weights(str(path))
    return path, model


def test_cnn_output_width_and_uint8_input() -> None:
    cnn = ImageCNN(filters=(4, 8, 6))
    x = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3)).astype(np.uint8)
    out = cnn(x).numpy()
    assert out.shape == (2, 6) and cnn.output_dim == 6
    np.testing.assert_allclose(cnn(x.astype(np.float32) / 255.0).numpy(), out, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="filters"):
        ImageCNN(filters=())


def test_cnn_convs_per_block_stacks_convs_and_keeps_the_one_conv_layout() -> None:
    x = np.random.default_rng(1).integers(0, 256, size=(2, 16, 16, 3)).astype(np.uint8)
    one, two = ImageCNN(filters=(4, 8)), ImageCNN(filters=(4, 8), convs_per_block=2)
    assert one(x).shape == two(x).shape == (2, 8)
    kernels = lambda layer: [tuple(w.shape) for w in layer.trainable_weights if "kernel" in w.name]  # noqa: E731
    assert kernels(one) == [(3, 3, 3, 4), (3, 3, 4, 8)]
    # block 0: 3->4 (stride 2), 4->4; block 1: 4->8, 8->8
    assert sorted(kernels(two)) == sorted([(3, 3, 3, 4), (3, 3, 4, 4), (3, 3, 4, 8), (3, 3, 8, 8)])
    # a one-conv CNN has no extra layers, so its checkpoints are those of the layer before the option
    assert one.extra_convs == [] and len(two.extra_convs) == 2
    again = ImageCNN.from_config(two.get_config())
    again(x)
    again.set_weights(two.get_weights())
    np.testing.assert_allclose(again(x).numpy(), two(x).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="convs_per_block"):
        ImageCNN(convs_per_block=0)


def _shifted(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``img`` moved by (dy, dx) pixels with the edge rows/columns repeated (numpy reference)."""
    n = img.shape[0]
    rows = np.clip(np.arange(n) - dy, 0, n - 1)
    cols = np.clip(np.arange(n) - dx, 0, n - 1)
    return img[rows][:, cols]


def test_cnn_augment_is_a_flip_and_shift_of_each_image_and_only_while_training() -> None:
    rng = np.random.default_rng(3)
    x = rng.random((64, 8, 8, 3)).astype(np.float32)
    cnn = ImageCNN(filters=(4,), augment=True, augment_shift=0.25)  # up to 2 px on an 8 px side
    tf.random.set_seed(7)
    out = cnn._augment(tf.constant(x)).numpy()
    seen = set()
    for img, aug in zip(x, out):
        matches = [
            (flip, dy, dx)
            for flip in (False, True)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(_shifted(img[:, ::-1] if flip else img, dy, dx), aug)
        ]
        assert matches, "an augmented image is not a flip/shift of its input"
        seen.add(matches[0])
    assert len(seen) > 10  # per-image randomness, not one transform for the batch
    # inference never augments: repeated calls agree, and equal a non-augmenting twin with the same weights
    twin = ImageCNN(filters=(4,))
    twin(x[:1])
    cnn(x[:1])
    twin.set_weights(cnn.get_weights())
    np.testing.assert_array_equal(cnn(x, training=False).numpy(), twin(x, training=False).numpy())
    again = ImageCNN.from_config(cnn.get_config())
    assert again.augment and again.augment_shift == 0.25
    with pytest.raises(ValueError, match="augment_shift"):
        ImageCNN(augment=True, augment_shift=0.5)


def test_backbone_loads_a_local_weights_file(weights_file: tuple[Path, tf.keras.Model]) -> None:
    path, reference = weights_file
    enc = BackboneEncoder("MobileNetV3Small", image_size=32, weights=str(path))
    assert enc.backbone == "mobilenet_v3_small" and enc.output_dim == 576
    for a, b in zip(enc.model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(1).random((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(enc(x).numpy(), reference(x * 255.0, training=False).numpy(), rtol=1e-5, atol=1e-6)
    assert enc.trainable_weights == []  # frozen by default


def test_trainable_backbone_exposes_weights(weights_file: tuple[Path, tf.keras.Model]) -> None:
    enc = BackboneEncoder("mobilenet_v3_small", image_size=32, weights=str(weights_file[0]), trainable_backbone=True)
    assert len(enc.trainable_weights) > 10


def test_backbone_errors_never_download(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="would download.*local path"):
        build_backbone("mobilenet_v3_small", 32, "imagenet")
    with pytest.raises(ConfigError, match="does not exist"):
        build_backbone("resnet50", 32, str(tmp_path / "nope.h5"))
    with pytest.raises(ConfigError, match=r"unknown image backbone 'vgg16'.*mobilenet_v3_small"):
        canonical_backbone("vgg16")
    assert canonical_backbone("EfficientNet-B0") == "efficientnet_b0"


@pytest.mark.slow  # builds EfficientNetB0
def test_backbone_weights_for_another_model_is_a_config_error(weights_file: tuple[Path, tf.keras.Model]) -> None:
    with pytest.raises(ConfigError, match="cannot build backbone 'efficientnet_b0'"):
        build_backbone("efficientnet_b0", 32, str(weights_file[0]))


def test_tower_with_backbone_source(weights_file: tuple[Path, tf.keras.Model], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")).save(tmp_path / f"{i}.png")
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "image": ["0.png", "1.png", "2.png"]})
    cfg = RecfuseConfig.from_dict(
        {
            "model": {"dim": 8, "fusion": "attention", "fusion_hidden": [8]},
            "modalities": [
                {
                    "name": "image",
                    "kind": "image",
                    "source": "backbone",
                    "image_size": 32,
                    "backbone_weights": str(weights_file[0]),
                }
            ],
        }
    )
    vocab = IdVocab.build(items["item_id"], 0)
    tower = build_candidate_tower(cfg, items, vocab)
    table = build_item_features(items, cfg, tmp_path, vocab)
    out = tower({k: tf.constant(v) for k, v in table.items()}).numpy()
    assert out.shape == (3, 8)
    backbone_vars = {id(v) for v in tower.encoders["image"].model.weights}
    assert not backbone_vars & {id(v) for v in tower.trainable_variables}  # frozen inside the tower
