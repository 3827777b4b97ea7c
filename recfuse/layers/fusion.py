"""Fusion variants: ``[b, M, d]`` modality tokens + ``[b, M]`` presence mask -> ``[b, d]`` item vector.

Registry :data:`FUSIONS` (selected by ``cfg.model.fusion``; its names are
:data:`recfuse.config.FUSIONS`, the one list the config validates against):

* ``concat``: masked tokens concatenated with the mask indicators -> MLP -> ``d``;
* ``weighted``: ``Z = (1-λ)·image + λ·mean(other present tokens)``, λ a learnable sigmoid-parameterised
  scalar or fixed; falls back to whichever side is present;
* ``max``: elementwise max over the present tokens;
* ``gated``: softmax gate over the present tokens from a learned score of each token;
* ``attention``: optionally ``encoder_layers`` Transformer blocks of masked self-attention over the
  tokens (each modality reads the others), then a learned query token (optionally plus a context
  vector) attends over them with multi-head attention; missing modalities are excluded through
  ``attention_mask``, then a residual + feed-forward block gives ``d``.

Every variant is independent of the values of masked tokens, and rows with no present token give
zeros.

Example:
    >>> fuse = make_fusion("gated", dim=8, num_tokens=3)
    >>> fuse(tf.random.normal([2, 3, 8]), tf.constant([[1., 0., 1.], [1., 1., 1.]])).shape
    TensorShape([2, 8])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from recfuse.config.checks import check_choice
from recfuse.config.model import FUSIONS as FUSION_NAMES
from recfuse.layers.text import TransformerBlock

_NEG = -1e9


def _any_present(mask: tf.Tensor) -> tf.Tensor:
    """``[b, 1]`` 1.0 where at least one token is present."""
    return tf.cast(tf.reduce_sum(mask, axis=1, keepdims=True) > 0, tf.float32)


def masked_mean(tokens: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of the present tokens ``[b, M, d]`` x ``[b, M]`` -> ``[b, d]`` (zeros when none)."""
    m = mask[..., None]
    return tf.reduce_sum(tf.where(m > 0, tokens, 0.0), axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1.0)


def _mlp(hidden: Sequence[int], dim: int, prefix: str) -> list[tf.keras.layers.Layer]:
    layers: list[tf.keras.layers.Layer] = [
        tf.keras.layers.Dense(h, activation="relu", name=f"{prefix}{i}") for i, h in enumerate(hidden)
    ]
    layers.append(tf.keras.layers.Dense(dim, name=f"{prefix}_out"))
    return layers


class Fusion(tf.keras.layers.Layer):
    """Base class: ``call(tokens [b, M, d], mask [b, M], training=None, context=None) -> [b, d]``."""

    def __init__(self, dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim = int(dim)

    def call(
        self, tokens: tf.Tensor, mask: tf.Tensor, training: bool | None = None, context: tf.Tensor | None = None
    ) -> tf.Tensor:
        mask = tf.cast(mask, tf.float32)
        return self.fuse(tf.cast(tokens, tf.float32), mask, training, context) * _any_present(mask)

    def fuse(self, tokens: tf.Tensor, mask: tf.Tensor, training: bool | None, context: tf.Tensor | None) -> tf.Tensor:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dim": self.dim}


@tf.keras.utils.register_keras_serializable(package="recfuse")
class ConcatFusion(Fusion):
    """Concatenate the masked tokens and the mask indicators, then an MLP to ``d``.

    Args:
        dim: output width ``d``.
        num_tokens: ``M`` (the input width is fixed).
        hidden: widths of the ReLU hidden layers.
    """

    def __init__(self, dim: int, num_tokens: int, hidden: Sequence[int] = (128,), **kwargs: Any) -> None:
        super().__init__(dim, **kwargs)
        self.num_tokens = int(num_tokens)
        self.hidden = tuple(int(h) for h in hidden)
        self.mlp = _mlp(self.hidden, self.dim, "mlp")

    def fuse(self, tokens: tf.Tensor, mask: tf.Tensor, training: bool | None, context: tf.Tensor | None) -> tf.Tensor:
        x = tf.where(mask[..., None] > 0, tokens, 0.0)
        x = tf.concat([tf.reshape(x, [-1, self.num_tokens * self.dim]), mask], axis=-1)
        for layer in self.mlp:
            x = layer(x)
        return x

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_tokens": self.num_tokens, "hidden": list(self.hidden)}


@tf.keras.utils.register_keras_serializable(package="recfuse")
class WeightedFusion(Fusion):
    """``Z = (1-λ)·primary + λ·mean(other present tokens)``.

    Args:
        dim: width ``d``.
        primary_index: index of the primary (image) token; ``-1`` when there is none (plain masked mean).
        weighted_lambda: initial (or fixed) λ in ``[0, 1]``.
        learn_lambda: learn λ = sigmoid(w) (initialised at ``weighted_lambda``) or keep it fixed.
    """

    def __init__(
        self, dim: int, primary_index: int = 0, weighted_lambda: float = 0.5, learn_lambda: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(dim, **kwargs)
        self.primary_index = int(primary_index)
        self.weighted_lambda = float(weighted_lambda)
        self.learn_lambda = bool(learn_lambda)

    def build(self, input_shape: Any) -> None:
        # created in build (not __init__) so the variable is scoped under the layer's name
        p = min(max(self.weighted_lambda, 1e-4), 1 - 1e-4)
        self.lambda_logit = self.add_weight(
            name="lambda_logit",
            shape=(),
            initializer=tf.keras.initializers.Constant(math.log(p / (1 - p))),
            trainable=self.learn_lambda,
        )
        super().build(input_shape)

    @property
    def lam(self) -> tf.Tensor:
        """The current λ."""
        if self.learn_lambda:
            return tf.sigmoid(self.lambda_logit)
        return tf.constant(self.weighted_lambda, tf.float32)

    def fuse(self, tokens: tf.Tensor, mask: tf.Tensor, training: bool | None, context: tf.Tensor | None) -> tf.Tensor:
        if self.primary_index < 0:
            return masked_mean(tokens, mask)
        m = tokens.shape[1]
        primary_onehot = tf.one_hot(self.primary_index, m, dtype=tf.float32)[None, :]
        p_mask = mask * primary_onehot
        o_mask = mask * (1.0 - primary_onehot)
        primary = masked_mean(tokens, p_mask)
        others = masked_mean(tokens, o_mask)
        has_p = _any_present(p_mask)
        has_o = _any_present(o_mask)
        lam = self.lam
        w_p = tf.where(has_o > 0, 1.0 - lam, 1.0) * has_p
        w_o = tf.where(has_p > 0, lam, 1.0) * has_o
        return w_p * primary + w_o * others

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "primary_index": self.primary_index,
            "weighted_lambda": self.weighted_lambda,
            "learn_lambda": self.learn_lambda,
        }


@tf.keras.utils.register_keras_serializable(package="recfuse")
class MaxFusion(Fusion):
    """Elementwise max over the present tokens."""

    def fuse(self, tokens: tf.Tensor, mask: tf.Tensor, training: bool | None, context: tf.Tensor | None) -> tf.Tensor:
        return tf.reduce_max(tf.where(mask[..., None] > 0, tokens, _NEG), axis=1)


@tf.keras.utils.register_keras_serializable(package="recfuse")
class GatedFusion(Fusion):
    """Softmax gate over the present tokens from a learned score ``v·tanh(W t)`` of each token.

    Args:
        dim: width ``d``.
        hidden: width of the scorer (default ``d``).
    """

    def __init__(self, dim: int, hidden: int = 0, **kwargs: Any) -> None:
        super().__init__(dim, **kwargs)
        self.hidden = int(hidden or dim)
        self.score_hidden = tf.keras.layers.Dense(self.hidden, activation="tanh", name="score_hidden")
        self.score = tf.keras.layers.Dense(1, use_bias=False, name="score")

    def gates(self, tokens: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        """``[b, M]`` gate weights (0 on masked tokens, rows sum to 1 where anything is present)."""
        logits = tf.squeeze(self.score(self.score_hidden(tf.cast(tokens, tf.float32))), -1)
        return tf.nn.softmax(tf.where(tf.cast(mask, tf.float32) > 0, logits, _NEG), axis=-1) * tf.cast(mask, tf.float32)

    def fuse(self, tokens: tf.Tensor, mask: tf.Tensor, training: bool | None, context: tf.Tensor | None) -> tf.Tensor:
        g = self.gates(tokens, mask)
        return tf.reduce_sum(tf.where(mask[..., None] > 0, tokens, 0.0) * g[..., None], axis=1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "hidden": self.hidden}


@tf.keras.utils.register_keras_serializable(package="recfuse")
class AttentionFusion(Fusion):
    """A learned query attends over the modality tokens (masked), then residual + FFN -> ``d``.

    Args:
        dim: width ``d``.
        num_heads: attention heads.
        hidden: widths of the feed-forward nets' hidden layers.
        dropout: attention dropout.
        encoder_layers: :class:`~recfuse.layers.text.TransformerBlock` s (masked self-attention +
            FFN, post-norm; FFN width ``hidden[0]``) applied to the tokens before the pooling, so each
            modality's token is contextualised by the others; 0 pools the aligned tokens directly.

    Call:
        ``context`` ``[b, d]`` (optional) is added to the learned query (user-conditioned fusion).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 2,
        hidden: Sequence[int] = (128,),
        dropout: float = 0.0,
        encoder_layers: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(dim, **kwargs)
        self.num_heads = int(num_heads)
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)
        self.encoder_layers = int(encoder_layers)
        self.attn = tf.keras.layers.MultiHeadAttention(
            num_heads=self.num_heads, key_dim=max(1, self.dim // self.num_heads), dropout=self.dropout, name="mha"
        )
        self.norm1 = tf.keras.layers.LayerNormalization(name="norm1")
        self.norm2 = tf.keras.layers.LayerNormalization(name="norm2")
        self.ffn = _mlp(self.hidden, self.dim, "ffn")
        # The text branch's Transformer block, over the modality tokens instead of word tokens.
        self.encoder = [
            TransformerBlock(self.dim, self.num_heads, ff_dim=(self.hidden or (2 * self.dim,))[0], name=f"enc{i}")
            for i in range(self.encoder_layers)
        ]

    def build(self, input_shape: Any) -> None:
        self.query = self.add_weight(
            name="query", shape=(1, 1, self.dim), initializer=tf.keras.initializers.RandomNormal(stddev=0.1)
        )
        super().build(input_shape)

    def attention_scores(self, tokens: tf.Tensor, mask: tf.Tensor, context: tf.Tensor | None = None) -> tf.Tensor:
        """``[b, heads, 1, M]`` attention weights (exactly 0 on masked tokens)."""
        if not self.built:
            self.build(tf.TensorShape(tokens.shape))
        _, scores = self._attend(tf.cast(tokens, tf.float32), tf.cast(mask, tf.float32), False, context)
        return scores

    def _attend(
        self, tokens: tf.Tensor, mask: tf.Tensor, training: bool | None, context: tf.Tensor | None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        b = tf.shape(tokens)[0]
        q = tf.tile(self.query, [b, 1, 1])
        if context is not None:
            q = q + tf.cast(context, tf.float32)[:, None, :]
        # masked keys get zero weight; a row without any present token is zeroed by the base class
        attn_mask = tf.cast(mask, tf.bool)[:, None, :]
        present = mask[..., None] > 0
        values = tf.where(present, tokens, 0.0)
        for block in self.encoder:
            # every present token reads the present ones; rows of absent tokens are zeroed again
            values = tf.where(present, block(values, mask=mask > 0, training=training), 0.0)
        out, scores = self.attn(q, values, attention_mask=attn_mask, return_attention_scores=True, training=training)
        return self.norm1(out + q), scores

    def fuse(self, tokens: tf.Tensor, mask: tf.Tensor, training: bool | None, context: tf.Tensor | None) -> tf.Tensor:
        x, _ = self._attend(tokens, mask, training, context)
        h = x
        for layer in self.ffn:
            h = layer(h)
        return tf.squeeze(self.norm2(x + h), axis=1)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "hidden": list(self.hidden),
            "dropout": self.dropout,
            "encoder_layers": self.encoder_layers,
        }


_CLASSES: dict[str, type[Fusion]] = {
    "concat": ConcatFusion,
    "weighted": WeightedFusion,
    "max": MaxFusion,
    "gated": GatedFusion,
    "attention": AttentionFusion,
}
#: the layer of each fusion the config accepts, in its order (a name without a layer fails at import)
FUSIONS: dict[str, type[Fusion]] = {name: _CLASSES[name] for name in FUSION_NAMES}


def make_fusion(
    name: str,
    dim: int,
    num_tokens: int,
    primary_index: int = -1,
    hidden: Sequence[int] = (128,),
    num_heads: int = 2,
    weighted_lambda: float = 0.5,
    learn_lambda: bool = True,
    encoder_layers: int = 0,
    dropout: float = 0.0,
    gated_hidden: int = 0,
) -> Fusion:
    """Build the fusion layer registered under ``name`` with the options that variant reads.

    Args:
        name: one of :data:`FUSIONS` (``model.fusion``).
        dim: width ``d`` (``model.dim``).
        num_tokens: ``M``, the modality tokens (``concat`` only).
        primary_index: the image token's index, -1 when there is none (``weighted`` only).
        hidden: ``model.fusion_hidden`` (``concat``'s MLP, ``attention``'s feed-forward net).
        num_heads: ``model.attention_heads`` (``attention`` only).
        weighted_lambda / learn_lambda: ``model.weighted_lambda`` / ``model.learn_lambda`` (``weighted``).
        encoder_layers: ``model.attention_layers`` (``attention`` only).
        dropout: ``model.attention_dropout`` (``attention`` only).
        gated_hidden: ``model.gated_hidden``, the scorer's width, 0 = ``dim`` (``gated`` only).

    Raises:
        ConfigError: ``name`` is not in :data:`FUSIONS`.
    """
    check_choice("model", "fusion", name, FUSION_NAMES)
    if name == "concat":
        return ConcatFusion(dim, num_tokens, hidden, name="fusion")
    if name == "weighted":
        return WeightedFusion(dim, primary_index, weighted_lambda, learn_lambda, name="fusion")
    if name == "gated":
        return GatedFusion(dim, gated_hidden, name="fusion")
    if name == "attention":
        return AttentionFusion(dim, num_heads, hidden, dropout, encoder_layers, name="fusion")
    return FUSIONS[name](dim, name="fusion")
