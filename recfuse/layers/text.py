"""Text branch: whitespace token strings -> ids -> embeddings -> masked mean or a small Transformer.

The token strings come from :func:`recfuse.data.text_tokens.tokenize` (word tokens + CJK character
n-grams), so the ``TextVectorization`` here only splits on whitespace. Its vocabulary is computed on
the catalog when the tower is built and travels in ``get_config`` (and is re-used at embedding time).

Example:
    >>> enc = TextEncoder(vocabulary=["red", "shoe"], max_tokens=4, embedding_dim=8)
    >>> enc(tf.constant(["red shoe", ""])).shape
    TensorShape([2, 8])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from recfuse.layers.masking import drop_keeping_one

# TextVectorization rejects an empty vocabulary; a catalog without text still gets a valid layer.
EMPTY_VOCAB_TOKEN = "<no-text>"


@tf.keras.utils.register_keras_serializable(package="recfuse")
class MaskedMeanPooling(tf.keras.layers.Layer):
    """Mean over the positions where ``mask`` is set; all-masked rows give zeros.

    Call:
        x ``[b, L, e]``, mask ``[b, L]`` (bool or 0/1) -> ``[b, e]``.
    """

    def call(self, x: tf.Tensor, mask: tf.Tensor | None = None) -> tf.Tensor:
        if mask is None:
            return tf.reduce_mean(x, axis=1)
        m = tf.cast(mask, x.dtype)[..., None]
        return tf.reduce_sum(x * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1.0)

    def compute_mask(self, inputs: Any, mask: Any = None) -> None:
        return None


@tf.keras.utils.register_keras_serializable(package="recfuse")
class TransformerBlock(tf.keras.layers.Layer):
    """Post-norm Transformer encoder block (self-attention with padding mask + ReLU FFN).

    Args:
        dim: model width ``e``.
        num_heads: attention heads.
        ff_dim: hidden width of the feed-forward net (default ``2 * dim``).
        dropout: dropout rate on attention output and FFN output.

    Call:
        x ``[b, L, e]``, mask ``[b, L]`` -> ``[b, L, e]``.
    """

    def __init__(self, dim: int, num_heads: int = 2, ff_dim: int = 0, dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.ff_dim = int(ff_dim or 2 * dim)
        self.dropout = float(dropout)
        self.attn = tf.keras.layers.MultiHeadAttention(
            num_heads=self.num_heads, key_dim=max(1, self.dim // self.num_heads), dropout=self.dropout, name="mha"
        )
        self.ff1 = tf.keras.layers.Dense(self.ff_dim, activation="relu", name="ff1")
        self.ff2 = tf.keras.layers.Dense(self.dim, name="ff2")
        self.norm1 = tf.keras.layers.LayerNormalization(name="norm1")
        self.norm2 = tf.keras.layers.LayerNormalization(name="norm2")
        self.drop = tf.keras.layers.Dropout(self.dropout)

    def call(self, x: tf.Tensor, mask: tf.Tensor | None = None, training: bool | None = None) -> tf.Tensor:
        attn_mask = None
        if mask is not None:
            m = tf.cast(mask, tf.bool)
            attn_mask = tf.logical_and(m[:, :, None], m[:, None, :])
        h = self.attn(x, x, attention_mask=attn_mask, training=training)
        x = self.norm1(x + self.drop(h, training=training))
        h = self.ff2(self.ff1(x))
        return self.norm2(x + self.drop(h, training=training))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "ff_dim": self.ff_dim,
            "dropout": self.dropout,
        }


@tf.keras.utils.register_keras_serializable(package="recfuse")
class TextEncoder(tf.keras.layers.Layer):
    """Token strings -> ``[b, embedding_dim]`` (masked mean of token embeddings, optionally contextualised).

    Args:
        vocabulary: token vocabulary (most frequent first), without padding/OOV entries.
        max_tokens: sequence length ``L`` (longer texts are truncated, shorter padded).
        embedding_dim: token embedding width ``e`` (the output width).
        encoder: ``mean`` (masked mean pooling) or ``transformer`` (Transformer blocks with a
            padding mask and learned positions, then masked mean).
        num_layers: Transformer blocks (``transformer`` only).
        num_heads: attention heads (``transformer`` only).
        ff_dim: hidden width of each block's feed-forward net (``transformer`` only; default
            ``2 * embedding_dim``).
        dropout: dropout of each block's attention and feed-forward outputs while training
            (``transformer`` only; default 0).
        token_dropout: while training, each token of a text is hidden with this probability
            (word dropout: the pooled vector cannot lean on one rare token that names its item); a
            text never loses all its tokens (one comes back). Inference is unchanged.

    Call:
        text ``[b]`` string (whitespace-joined tokens), or ``[b, L]`` int ids from :meth:`token_ids`
        -> ``[b, e]``; empty strings give zeros for ``mean``.
    """

    def __init__(
        self,
        vocabulary: Sequence[str],
        max_tokens: int = 64,
        embedding_dim: int = 64,
        encoder: str = "mean",
        num_layers: int = 1,
        num_heads: int = 2,
        token_dropout: float = 0.0,
        ff_dim: int = 0,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if encoder not in ("mean", "transformer"):
            raise ValueError(f"`encoder` must be 'mean' or 'transformer', got {encoder!r}")
        if not 0.0 <= float(token_dropout) < 1.0:
            raise ValueError(f"`token_dropout` must be in [0, 1), got {token_dropout!r}")
        self.token_dropout = float(token_dropout)
        self.vocabulary = [str(t) for t in vocabulary] or [EMPTY_VOCAB_TOKEN]
        bad = [t for t in self.vocabulary if not t or " " in t]
        if bad:
            raise ValueError(f"`vocabulary` entries must be non-empty tokens without spaces, got {bad[:3]!r}")
        self.max_tokens = int(max_tokens)
        self.embedding_dim = int(embedding_dim)
        self.encoder = encoder
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.ff_dim = int(ff_dim or 2 * self.embedding_dim)
        self.dropout = float(dropout)
        self.vectorize = tf.keras.layers.TextVectorization(
            max_tokens=len(self.vocabulary) + 2,
            standardize=None,
            split="whitespace",
            output_mode="int",
            output_sequence_length=self.max_tokens,
            vocabulary=self.vocabulary,
            name="vectorize",
        )
        self.embed = tf.keras.layers.Embedding(
            len(self.vocabulary) + 2, self.embedding_dim, mask_zero=True, name="token_embedding"
        )
        self.pool = MaskedMeanPooling(name="pool")
        self.blocks: list[TransformerBlock] = []
        if encoder == "transformer":
            self.positions = tf.keras.layers.Embedding(self.max_tokens, self.embedding_dim, name="positions")
            self.blocks = [
                TransformerBlock(self.embedding_dim, self.num_heads, self.ff_dim, self.dropout, name=f"block{i}")
                for i in range(self.num_layers)
            ]

    @property
    def output_dim(self) -> int:
        return self.embedding_dim

    def token_ids(self, text: tf.Tensor) -> tf.Tensor:
        """``[b, L]`` int64 token ids (0 = padding, 1 = out of vocabulary)."""
        return self.vectorize(tf.reshape(text, [-1]))

    def call(self, text: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        # strings are vectorised here; integer input is taken as precomputed token_ids (faster training)
        ids = self.token_ids(text) if text.dtype == tf.string else tf.cast(text, tf.int64)
        # padding sits at the end: drop the columns no row of this batch uses (identical output,
        # so short titles do not pay for max_tokens positions in the Transformer)
        used = tf.reduce_max(tf.reduce_sum(tf.cast(tf.not_equal(ids, 0), tf.int32), axis=1))
        ids = ids[:, : tf.maximum(used, 1)]
        mask = tf.not_equal(ids, 0)
        if training and self.token_dropout > 0:
            mask = drop_keeping_one(tf.cast(mask, tf.float32), self.token_dropout) > 0
        x = self.embed(ids)
        if self.blocks:
            x = x + self.positions(tf.range(tf.shape(ids)[1]))[None]
            for block in self.blocks:
                x = block(x, mask=mask, training=training)
        return self.pool(x, mask=mask)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "vocabulary": list(self.vocabulary),
            "max_tokens": self.max_tokens,
            "embedding_dim": self.embedding_dim,
            "encoder": self.encoder,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "token_dropout": self.token_dropout,
            "ff_dim": self.ff_dim,
            "dropout": self.dropout,
        }
