"""Categorical branch: ``"a|b|c"`` category strings -> mean of category embeddings.

Values are looked up in a ``StringLookup`` over the catalog's categories (``""`` is padding, unknown
categories share one OOV row), embedded with ``mask_zero`` and mean-pooled over the present values.
Items with no category give zeros and carry mask 0 in the feature table.

Example:
    >>> enc = CategoryEncoder(vocabulary=["shoes", "red"], embedding_dim=4)
    >>> enc(tf.constant(["shoes|red", ""])).shape
    TensorShape([2, 4])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from recfuse.layers.text import MaskedMeanPooling

SEPARATOR = "|"
EMPTY_VOCAB_TOKEN = "<no-category>"


@tf.keras.utils.register_keras_serializable(package="recfuse")
class CategoryEncoder(tf.keras.layers.Layer):
    """Mean of the embeddings of an item's categories.

    Args:
        vocabulary: known category strings (no ``""``, no ``|``).
        embedding_dim: output width ``e``.
        separator: separator of the joined category string.

    Call:
        categories ``[b]`` string (``"a|b"``, ``""`` = none), or ``[b, C]`` int ids from
        :meth:`category_ids` -> ``[b, e]``.
    """

    def __init__(
        self, vocabulary: Sequence[str], embedding_dim: int = 32, separator: str = SEPARATOR, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.vocabulary = [str(v) for v in vocabulary] or [EMPTY_VOCAB_TOKEN]
        self.embedding_dim = int(embedding_dim)
        self.separator = separator
        bad = [v for v in self.vocabulary if not v or separator in v]
        if bad:
            raise ValueError(f"`vocabulary` entries must be non-empty and free of {separator!r}, got {bad[:3]!r}")
        self.lookup = tf.keras.layers.StringLookup(
            vocabulary=self.vocabulary, mask_token="", num_oov_indices=1, name="lookup"
        )
        self.embed = tf.keras.layers.Embedding(len(self.vocabulary) + 2, self.embedding_dim, name="category_embedding")
        self.pool = MaskedMeanPooling(name="pool")

    @property
    def output_dim(self) -> int:
        return self.embedding_dim

    def category_ids(self, categories: tf.Tensor) -> tf.Tensor:
        """``[b, C]`` int64 ids (0 = padding, 1 = unknown category)."""
        parts = tf.strings.split(tf.reshape(categories, [-1]), sep=self.separator)
        dense = parts.to_tensor(default_value="")
        # a batch where no item has any category still needs one column
        dense = tf.cond(tf.shape(dense)[1] > 0, lambda: dense, lambda: tf.fill([tf.shape(dense)[0], 1], ""))
        return self.lookup(dense)

    def call(self, categories: tf.Tensor) -> tf.Tensor:
        ids = self.category_ids(categories) if categories.dtype == tf.string else tf.cast(categories, tf.int64)
        return self.pool(self.embed(ids), mask=tf.not_equal(ids, 0))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "vocabulary": list(self.vocabulary),
            "embedding_dim": self.embedding_dim,
            "separator": self.separator,
        }
