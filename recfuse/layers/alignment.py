"""Alignment: project each modality's features into the shared ``d``-dimensional space.

Three projections (``cfg.model.alignment``):

* ``linear``: one Dense layer to ``d``;
* ``mlp``: Dense(ReLU) -> Dense(``d``);
* ``scale``: per-dimension learnable scale and shift; when the input is not already ``d``-wide a
  fixed (non-trainable, seeded) random projection to ``d`` comes first, so pretrained features keep
  their geometry and only ``2d`` parameters are learned.

Each projected token may be L2-normalised. :func:`info_nce` is the symmetric image–text contrastive
loss between two projections of the same items.

Example:
    >>> proj = ModalityProjection(dim=8, alignment="mlp")
    >>> proj(tf.zeros([3, 20])).shape
    TensorShape([3, 8])
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from recfuse.config.model import ALIGNMENTS


@tf.keras.utils.register_keras_serializable(package="recfuse")
class ModalityProjection(tf.keras.layers.Layer):
    """Project ``[b, F]`` modality features to ``[b, d]``.

    Args:
        dim: shared dimension ``d``.
        alignment: ``linear`` | ``mlp`` | ``scale``.
        hidden: hidden width of ``mlp`` (default ``2 * dim``).
        normalize: L2-normalise the output token.
        seed: seed of the fixed projection of ``scale``.

    Call:
        x ``[b, F]`` -> ``[b, d]``.
    """

    def __init__(
        self,
        dim: int,
        alignment: str = "linear",
        hidden: int = 0,
        normalize: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if alignment not in ALIGNMENTS:
            raise ValueError(f"`alignment` must be one of {list(ALIGNMENTS)}, got {alignment!r}")
        self.dim = int(dim)
        self.alignment = alignment
        self.hidden = int(hidden or 2 * dim)
        self.normalize = bool(normalize)
        self.seed = int(seed)
        self.fixed: tf.keras.layers.Dense | None = None
        if alignment == "linear":
            self.dense = tf.keras.layers.Dense(self.dim, name="proj")
        elif alignment == "mlp":
            self.dense_in = tf.keras.layers.Dense(self.hidden, activation="relu", name="hidden")
            self.dense = tf.keras.layers.Dense(self.dim, name="proj")

    def build(self, input_shape: tf.TensorShape) -> None:
        in_dim = int(input_shape[-1])
        if self.alignment == "scale":
            if in_dim != self.dim:
                init = tf.keras.initializers.GlorotUniform(seed=self.seed)
                self.fixed = tf.keras.layers.Dense(
                    self.dim, use_bias=False, kernel_initializer=init, trainable=False, name="fixed_proj"
                )
                self.fixed.build(input_shape)
            self.scale = self.add_weight(name="scale", shape=(self.dim,), initializer="ones", trainable=True)
            self.shift = self.add_weight(name="shift", shape=(self.dim,), initializer="zeros", trainable=True)
        super().build(input_shape)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        if self.alignment == "linear":
            y = self.dense(x)
        elif self.alignment == "mlp":
            y = self.dense(self.dense_in(x))
        else:
            y = self.fixed(x) if self.fixed is not None else x
            y = y * self.scale + self.shift
        return tf.math.l2_normalize(y, axis=-1) if self.normalize else y

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "dim": self.dim,
            "alignment": self.alignment,
            "hidden": self.hidden,
            "normalize": self.normalize,
            "seed": self.seed,
        }


def info_nce(
    a: tf.Tensor, b: tf.Tensor, valid: tf.Tensor, temperature: float = 0.1, ids: tf.Tensor | None = None
) -> tf.Tensor:
    """Symmetric InfoNCE between row-aligned embeddings, over the rows where ``valid`` is set.

    Row ``i`` of ``a`` is the positive of row ``i`` of ``b``; the other valid rows are negatives,
    except rows with the same id (the same item twice in a batch is not its own negative).

    Args:
        a: ``[b, d]`` (e.g. image projections).
        b: ``[b, d]`` (e.g. text projections of the same items).
        valid: ``[b]`` bool/0-1 — items having both modalities.
        temperature: softmax temperature.
        ids: ``[b]`` item ids/indices (None: every row is a different item).

    Returns:
        Scalar loss (0 when fewer than two valid rows).
    """
    keep = tf.cast(valid, tf.bool)
    a = tf.math.l2_normalize(tf.boolean_mask(a, keep), axis=-1)
    b = tf.math.l2_normalize(tf.boolean_mask(b, keep), axis=-1)
    n = tf.shape(a)[0]
    logits = tf.matmul(a, b, transpose_b=True) / temperature
    if ids is not None:
        kept_ids = tf.boolean_mask(tf.reshape(ids, [-1]), keep)
        same = tf.equal(kept_ids[:, None], kept_ids[None, :])
        duplicate = tf.logical_and(same, tf.logical_not(tf.cast(tf.eye(n), tf.bool)))
        logits = tf.where(duplicate, tf.constant(-1e9, logits.dtype), logits)
    labels = tf.range(n)
    loss_ab = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    loss_ba = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=tf.transpose(logits))
    loss = 0.5 * (tf.reduce_mean(loss_ab) + tf.reduce_mean(loss_ba))
    return tf.where(n >= 2, loss, tf.zeros_like(loss))
