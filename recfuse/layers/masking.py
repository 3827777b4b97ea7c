"""Modality masks while training: modality dropout and item-id dropout.

The candidate tower builds a ``[b, M]`` mask of the modality tokens that are present. While
training, :class:`ModalityDropout` hides present tokens at a per-token rate (content modalities at
``cfg.model.modality_dropout``, the item-id token at ``cfg.model.item_id_dropout``) and always keeps
at least one present token per item (a random one of those present), so the model learns to rank
items that lack a modality and cold items that only have content.

Example:
    >>> drop = ModalityDropout(rates=[0.5, 0.5])
    >>> drop(tf.ones([4, 2]), training=False).numpy().tolist()
    [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf


def drop_keeping_one(mask: tf.Tensor, rates: tf.Tensor | float, seed: int | None = None) -> tf.Tensor:
    """Clear each set entry of a ``[b, n]`` float 0/1 ``mask`` with probability ``rates`` (a scalar or
    ``[1, n]``); a row that loses every set entry gets one of them back, picked at random."""
    shape = tf.shape(mask)
    kept = mask * tf.cast(tf.random.uniform(shape, seed=seed) >= rates, tf.float32)
    emptied = tf.logical_and(tf.reduce_sum(kept, axis=1) == 0, tf.reduce_sum(mask, axis=1) > 0)
    pick = tf.argmax(tf.random.uniform(shape, seed=seed) * mask + mask, axis=1)
    restore = tf.one_hot(pick, shape[1], dtype=tf.float32) * tf.cast(emptied, tf.float32)[:, None]
    return tf.maximum(kept, restore)


@tf.keras.utils.register_keras_serializable(package="recfuse")
class ModalityDropout(tf.keras.layers.Layer):
    """Randomly hide present modality tokens while training, keeping at least one.

    Args:
        rates: drop probability of each of the ``M`` tokens.
        seed: seed of the random generator.

    Call:
        mask ``[b, M]`` float 0/1 -> ``[b, M]`` float 0/1 (unchanged when not training).
    """

    def __init__(self, rates: Sequence[float], seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rates = [float(r) for r in rates]
        bad = [r for r in self.rates if not 0.0 <= r <= 1.0]
        if bad:
            raise ValueError(f"`rates` must be in [0, 1], got {self.rates}")
        self.seed = seed

    def call(self, mask: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        mask = tf.cast(mask, tf.float32)
        if not training or not any(r > 0 for r in self.rates):
            return mask
        return drop_keeping_one(mask, tf.constant(self.rates, tf.float32)[None, :], self.seed)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rates": list(self.rates), "seed": self.seed}
