"""Image branch encoders: a small trainable CNN and ``tf.keras.applications`` backbones.

Both take ``[b, S, S, 3]`` pixels in ``[0, 1]`` (float32, or uint8 0–255) and return a pooled
``[b, F]`` feature vector; the alignment layer then projects it into the shared space. Backbones are
built with ``weights=<local file path>`` or ``None`` and never download anything.

Example:
    >>> cnn = ImageCNN(filters=(8, 16))
    >>> cnn(tf.zeros([2, 32, 32, 3])).shape
    TensorShape([2, 16])
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf

from recfuse.errors import ConfigError

logger = logging.getLogger(__name__)


def to_unit_pixels(images: tf.Tensor) -> tf.Tensor:
    """Float32 pixels in ``[0, 1]`` from float (assumed already in [0, 1]) or uint8 input."""
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 255.0
    return tf.cast(images, tf.float32)


@tf.keras.utils.register_keras_serializable(package="recfuse")
class ImageCNN(tf.keras.layers.Layer):
    """Few Conv2D + BatchNorm + ReLU blocks (stride-2 stem, 2x2 max-pooling between blocks), global average pooled.

    Args:
        filters: output channels of each conv block (its last entry is the output width ``F``).
        augment: while training only, flip each image left-right at random and shift it by up to
            ``augment_shift`` of its size (edge pixels repeated), so the CNN learns what an item's
            picture shows rather than the exact pixels of the items it was trained on. Inference
            (``training`` false) is untouched.
        augment_shift: largest shift as a fraction of the image side (``augment`` only).
        convs_per_block: 3x3 conv + BatchNorm + ReLU layers per block (the first one of the first
            block has stride 2).

    Call:
        images ``[b, S, S, 3]`` -> ``[b, filters[-1]]``.
    """

    def __init__(
        self,
        filters: tuple[int, ...] | list[int] = (16, 32, 64, 128),
        augment: bool = False,
        augment_shift: float = 0.125,
        convs_per_block: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters = tuple(int(f) for f in filters)
        self.convs_per_block = int(convs_per_block)
        if not 1 <= self.convs_per_block <= 8:
            raise ValueError(f"`convs_per_block` must be in [1, 8], got {convs_per_block}")
        self.augment = bool(augment)
        self.augment_shift = float(augment_shift)
        if not 0.0 <= self.augment_shift < 0.5:
            raise ValueError(f"`augment_shift` must be in [0, 0.5), got {augment_shift}")
        if not self.filters or min(self.filters) < 1:
            raise ValueError(f"`filters` must be a non-empty list of positive ints, got {list(filters)}")
        self.convs = [
            # stride-2 stem: the first block works at half resolution (4x fewer FLOPs on the widest map)
            tf.keras.layers.Conv2D(f, 3, strides=2 if i == 0 else 1, padding="same", use_bias=False, name=f"conv{i}")
            for i, f in enumerate(self.filters)
        ]
        self.norms = [tf.keras.layers.BatchNormalization(name=f"bn{i}") for i in range(len(self.filters))]
        # the further convs of each block (none with one conv per block, so a one-conv model's
        # variables and checkpoints are exactly those of the layer before this option existed)
        self.extra_convs = [
            tf.keras.layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i}_{j}")
            for i, f in enumerate(self.filters)
            for j in range(1, self.convs_per_block)
        ]
        self.extra_norms = [
            tf.keras.layers.BatchNormalization(name=f"bn{i}_{j}")
            for i in range(len(self.filters))
            for j in range(1, self.convs_per_block)
        ]
        self.pool = tf.keras.layers.MaxPooling2D(2, padding="same")
        self.gap = tf.keras.layers.GlobalAveragePooling2D()

    @property
    def output_dim(self) -> int:
        return self.filters[-1]

    def _augment(self, x: tf.Tensor) -> tf.Tensor:
        """Per-image random left-right flip and integer shift (edge-replicated) of ``[b, S, S, c]``."""
        b, size = tf.shape(x)[0], tf.shape(x)[1]
        flip = tf.random.uniform([b, 1, 1, 1]) < 0.5
        x = tf.where(flip, tf.reverse(x, axis=[2]), x)
        if self.augment_shift <= 0.0:
            return x
        max_px = tf.cast(tf.math.floor(self.augment_shift * tf.cast(size, tf.float32)), tf.int32)
        shifts = tf.random.uniform([b, 2], -max_px, max_px + 1, dtype=tf.int32)
        grid = tf.range(size)[None, :]
        rows = tf.clip_by_value(grid - shifts[:, :1], 0, size - 1)  # [b, S]
        cols = tf.clip_by_value(grid - shifts[:, 1:], 0, size - 1)
        x = tf.gather(x, rows, axis=1, batch_dims=1)
        return tf.gather(x, cols, axis=2, batch_dims=1)

    def call(self, images: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x = to_unit_pixels(images)
        if self.augment and training:
            x = self._augment(x)
        extra = self.convs_per_block - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = tf.nn.relu(norm(conv(x), training=training))
            block = slice(i * extra, (i + 1) * extra)
            for conv2, norm2 in zip(self.extra_convs[block], self.extra_norms[block]):
                x = tf.nn.relu(norm2(conv2(x), training=training))
            if i < len(self.convs) - 1:
                x = self.pool(x)
        return self.gap(x)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "filters": list(self.filters),
            "augment": self.augment,
            "augment_shift": self.augment_shift,
            "convs_per_block": self.convs_per_block,
        }


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one ``tf.keras.applications`` model and feed it ``[0, 255]`` RGB pixels."""

    builder: Callable[..., tf.keras.Model]
    preprocess: Callable[[tf.Tensor], tf.Tensor] | None
    extra: tuple[tuple[str, Any], ...] = ()


def _specs() -> dict[str, BackboneSpec]:
    apps = tf.keras.applications
    return {
        # MobileNetV3 and EfficientNet rescale/normalise internally (they expect 0..255).
        "mobilenet_v3_small": BackboneSpec(apps.MobileNetV3Small, None, (("include_preprocessing", True),)),
        "mobilenet_v3_large": BackboneSpec(apps.MobileNetV3Large, None, (("include_preprocessing", True),)),
        "efficientnet_b0": BackboneSpec(apps.EfficientNetB0, None),
        "resnet50": BackboneSpec(apps.ResNet50, apps.resnet50.preprocess_input),
    }


BACKBONE_NAMES = ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "resnet50")


def canonical_backbone(name: str) -> str:
    """Registry key of a backbone name (``MobileNetV3Small``, ``mobilenet-v3-small`` -> ``mobilenet_v3_small``)."""
    squashed = name.lower().replace("_", "").replace("-", "")
    for key in BACKBONE_NAMES:
        if key.replace("_", "") == squashed:
            return key
    raise ConfigError(f"unknown image backbone {name!r}; choose one of {list(BACKBONE_NAMES)}")


def check_weights_path(weights: str) -> str | None:
    """``None`` for random init (``""``), else an existing local file; never a download keyword."""
    if not weights:
        return None
    if weights == "imagenet":
        raise ConfigError(
            "backbone weights 'imagenet' would download from the internet; download the .h5 file once and pass "
            "its local path (`backbone_weights` / --weights)"
        )
    if not Path(weights).is_file():
        raise ConfigError(f"backbone weights file {weights!r} does not exist; pass the path of a local .h5 file")
    return weights


def build_backbone(name: str, image_size: int, weights: str = "") -> tf.keras.Model:
    """A headless, globally average-pooled application model ``[b, S, S, 3] (0..255) -> [b, F]``.

    Args:
        name: backbone name (see :data:`BACKBONE_NAMES`).
        image_size: input side ``S``.
        weights: local weights file path (a headless model's weights), or ``""`` for random init.

    Raises:
        ConfigError: unknown name, missing weights file, or weights that do not fit the model.
    """
    key = canonical_backbone(name)
    spec = _specs()[key]
    path = check_weights_path(weights)
    try:
        return spec.builder(
            input_shape=(image_size, image_size, 3), include_top=False, weights=path, pooling="avg", **dict(spec.extra)
        )
    except (ValueError, OSError) as err:
        raise ConfigError(
            f"cannot build backbone {key!r} (image_size={image_size}, weights={weights!r}): {err}"
        ) from None


@tf.keras.utils.register_keras_serializable(package="recfuse")
class BackboneEncoder(tf.keras.layers.Layer):
    """A frozen or trainable ``tf.keras.applications`` backbone, global average pooled.

    Args:
        backbone: backbone name (see :data:`BACKBONE_NAMES`).
        image_size: input side ``S``.
        weights: local weights file (``""`` = random init).
        trainable_backbone: fine-tune the backbone (else it runs in inference mode, BN frozen).

    Call:
        images ``[b, S, S, 3]`` in ``[0, 1]`` -> ``[b, F]``.
    """

    def __init__(
        self,
        backbone: str = "mobilenet_v3_small",
        image_size: int = 64,
        weights: str = "",
        trainable_backbone: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.backbone = canonical_backbone(backbone)
        self.image_size = int(image_size)
        self.weights_path = str(weights or "")
        self.trainable_backbone = bool(trainable_backbone)
        self.model = build_backbone(self.backbone, self.image_size, self.weights_path)
        self.model.trainable = self.trainable_backbone
        self._preprocess = _specs()[self.backbone].preprocess

    @property
    def output_dim(self) -> int:
        return int(self.model.output_shape[-1])

    def call(self, images: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x = to_unit_pixels(images) * 255.0
        if self._preprocess is not None:
            x = self._preprocess(x)
        return self.model(x, training=training if self.trainable_backbone else False)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "backbone": self.backbone,
            "image_size": self.image_size,
            "weights": self.weights_path,
            "trainable_backbone": self.trainable_backbone,
        }
