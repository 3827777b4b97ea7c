"""Causal self-attention encoder of a user's history (SASRec-style), the ``transformer`` query encoder.

The exact twin of :class:`recfuse.forward.sequence.NumpySequenceEncoder` (formulas and array
names there); :meth:`CausalSequenceEncoder.export_arrays` returns its weights in that layout.

Design: pre-LN blocks (LayerNorm before attention and before the point-wise feed-forward, residual
around each, a final LayerNorm) train stably without learning-rate warm-up; learned position
embeddings are indexed by recency (0 = most recent), so the most recent item always has the same
position whatever the history length. The history stays most recent first: the causal mask lets
token ``j`` read tokens ``k >= j`` (itself and older). The summary is the output at the first valid
position (the most recent item), which reads the whole history; every other position only feeds it.

Training is the two-tower loss as for attention pooling: one example per interaction with the
previous items as history, so every prefix of a user's sequence is a training query. SASRec's
next-item loss at every position (:meth:`CausalSequenceEncoder.sequence_outputs` against the item
after each position) would reuse one forward for ``L`` targets, but needs per-position targets in
the example pipeline and a per-position retrieval loss; it is not implemented.

Example:
    >>> enc = CausalSequenceEncoder(dim=64, layers=2, heads=2, max_positions=50)     # doctest: +SKIP
    >>> summary = enc(h, hist_pos, mask, training=False)                               # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf

from recfuse.forward.sequence import LAYER_NORM_EPSILON, MASKED


@tf.keras.utils.register_keras_serializable(package="recfuse")
class CausalSelfAttentionBlock(tf.keras.layers.Layer):
    """One pre-LN block: ``x += drop(MHA(LN1(x)))``, ``x += drop(FFN(LN2(x)))``.

    Args:
        dim: model width ``d``.
        heads: attention heads (must divide ``dim``).
        ffn_dim: hidden width of the point-wise feed-forward (default ``dim``, as in SASRec).
        dropout: dropout rate on the two residual branches while training.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int = 0, dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if heads < 1 or dim % heads:
            raise ValueError(f"`heads` must divide `dim` = {dim}, got {heads}")
        self.dim, self.heads = int(dim), int(heads)
        self.ffn_dim = int(ffn_dim or dim)
        self.dropout = float(dropout)
        self.ln1 = tf.keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="ln1")
        self.qkv = tf.keras.layers.Dense(3 * self.dim, name="qkv")
        self.out = tf.keras.layers.Dense(self.dim, name="out")
        self.ln2 = tf.keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="ln2")
        self.ffn1 = tf.keras.layers.Dense(self.ffn_dim, activation="relu", name="ffn1")
        self.ffn2 = tf.keras.layers.Dense(self.dim, name="ffn2")
        self.drop = tf.keras.layers.Dropout(self.dropout)

    def call(  # type: ignore[override]
        self, x: tf.Tensor, allowed: tf.Tensor, training: bool | None = None, index: tf.Tensor | None = None
    ) -> tf.Tensor:
        """The block at every position, or at one position per row.

        Args:
            x: ``[b, L, d]`` inputs.
            allowed: ``[b, 1, L, L]`` bool, True where a query row may read a key column.
            training: dropout on when True.
            index: ``[b]`` int32 position to compute per row (None: all positions). Keys and values
                still come from every position, but the attention query, the projections and the
                feed-forward run on one row: what the last block of a readout needs.

        Returns:
            ``[b, L, d]``, or ``[b, d]`` with ``index``.
        """
        b, length = tf.shape(x)[0], tf.shape(x)[1]
        dh = self.dim // self.heads
        qkv = tf.reshape(self.qkv(self.ln1(x)), [b, length, 3, self.heads, dh])
        qkv = tf.transpose(qkv, [2, 0, 3, 1, 4])  # [3, b, H, L, dh]
        q = qkv[0]
        if index is not None:
            q = tf.gather(q, index, axis=2, batch_dims=1)[:, :, None]  # [b, H, 1, dh]
            allowed = tf.gather(allowed, index, axis=2, batch_dims=1)[:, :, None]  # [b, 1, 1, L]
            x = tf.gather(x, index, axis=1, batch_dims=1)[:, None]  # [b, 1, d]
            length = 1
        s = tf.matmul(q, qkv[1], transpose_b=True) * (1.0 / math.sqrt(dh))
        s = tf.where(allowed, s, MASKED)
        w = tf.exp(s - tf.reduce_max(s, axis=-1, keepdims=True)) * tf.cast(allowed, tf.float32)
        w = w / tf.maximum(tf.reduce_sum(w, axis=-1, keepdims=True), 1e-12)  # no allowed key: zeros, not NaN
        att = tf.reshape(tf.transpose(tf.matmul(w, qkv[2]), [0, 2, 1, 3]), [b, length, self.dim])
        x = x + self.drop(self.out(att), training=training)
        x = x + self.drop(self.ffn2(self.ffn1(self.ln2(x))), training=training)
        return x if index is None else x[:, 0]

    def export_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}{k}": v.numpy() for k, v in self.variables_by_name().items()}

    def variables_by_name(self) -> dict[str, tf.Variable]:
        """This block's variables under their array names (without prefix)."""
        return {
            "ln1_g": self.ln1.gamma, "ln1_b": self.ln1.beta, "qkv_w": self.qkv.kernel, "qkv_b": self.qkv.bias,
            "out_w": self.out.kernel, "out_b": self.out.bias, "ln2_g": self.ln2.gamma, "ln2_b": self.ln2.beta,
            "ffn1_w": self.ffn1.kernel, "ffn1_b": self.ffn1.bias, "ffn2_w": self.ffn2.kernel, "ffn2_b": self.ffn2.bias,
        }  # fmt: skip

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(dim=self.dim, heads=self.heads, ffn_dim=self.ffn_dim, dropout=self.dropout)
        return config


@tf.keras.utils.register_keras_serializable(package="recfuse")
class CausalSequenceEncoder(tf.keras.layers.Layer):
    """History item embeddings ``[b, L, d]`` (most recent first) -> ``[b, d]`` summary.

    Args:
        dim: model width ``d`` (the item embedding width).
        layers: number of :class:`CausalSelfAttentionBlock`.
        heads: attention heads per block (must divide ``dim``).
        max_positions: rows of the position table (longer histories share the last row).
        ffn_dim: feed-forward hidden width (default ``dim``).
        dropout: dropout on the input and on each block's residual branches while training.
    """

    def __init__(
        self,
        dim: int,
        layers: int = 2,
        heads: int = 2,
        max_positions: int = 50,
        ffn_dim: int = 0,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if layers < 1:
            raise ValueError(f"`layers` must be >= 1, got {layers}")
        if max_positions < 1:
            raise ValueError(f"`max_positions` must be >= 1, got {max_positions}")
        self.dim, self.layers, self.heads = int(dim), int(layers), int(heads)
        self.max_positions = int(max_positions)
        self.ffn_dim = int(ffn_dim or dim)
        self.dropout = float(dropout)
        self.positions = tf.keras.layers.Embedding(self.max_positions, self.dim, name="positions")
        self.blocks = [
            CausalSelfAttentionBlock(self.dim, self.heads, self.ffn_dim, self.dropout, name=f"block_{i}")
            for i in range(self.layers)
        ]
        self.ln = tf.keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="ln")
        self.drop = tf.keras.layers.Dropout(self.dropout)

    def call(  # type: ignore[override]
        self, h: tf.Tensor, hist_pos: tf.Tensor, mask: tf.Tensor, training: bool | None = None
    ) -> tf.Tensor:
        """Summaries.

        Args:
            h: ``[b, L, d]`` history item embeddings (any values at padded slots).
            hist_pos: ``[b, L]`` recency positions (0 = most recent).
            mask: ``[b, L]`` bool, True at real items.
            training: dropout on when True.

        Returns:
            ``[b, d]``: LayerNorm of the output at the first valid position; zeros for empty histories.
        """
        x, allowed = self._inputs(h, hist_pos, mask, training)
        for block in self.blocks[:-1]:
            x = block(x, allowed, training=training)
        first = tf.argmax(tf.cast(mask, tf.int32), axis=1, output_type=tf.int32)
        out = self.ln(self.blocks[-1](x, allowed, training=training, index=first))
        return out * tf.reduce_max(tf.cast(mask, tf.float32), axis=1, keepdims=True)

    def sequence_outputs(
        self, h: tf.Tensor, hist_pos: tf.Tensor, mask: tf.Tensor, training: bool | None = None
    ) -> tf.Tensor:
        """``[b, L, d]`` outputs of the last block at every position (before the final LayerNorm).

        Position ``j`` depends only on the valid items ``k >= j`` (itself and older ones): what a
        next-item loss at every position (SASRec's training) would read.
        """
        x, allowed = self._inputs(h, hist_pos, mask, training)
        for block in self.blocks:
            x = block(x, allowed, training=training)
        return x

    def _inputs(
        self, h: tf.Tensor, hist_pos: tf.Tensor, mask: tf.Tensor, training: bool | None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Block inputs ``[b, L, d]`` (scaled items + positions) and the ``[b, 1, L, L]`` causal-and-valid mask."""
        maskf = tf.cast(mask, tf.float32)
        pos = tf.clip_by_value(tf.cast(hist_pos, tf.int64), 0, self.max_positions - 1)
        x = (h * math.sqrt(self.dim) + self.positions(pos)) * maskf[:, :, None]
        x = self.drop(x, training=training)
        order = tf.range(tf.shape(h)[1])
        causal = order[None, :] >= order[:, None]  # [L(q), L(k)]: itself and older items
        return x, tf.logical_and(causal[None, None], mask[:, None, None, :])

    def variables_by_name(self) -> dict[str, tf.Variable]:
        """Every variable under its :class:`~recfuse.forward.sequence.NumpySequenceEncoder` array name."""
        out = {"seq_pos": self.positions.embeddings, "seq_ln_g": self.ln.gamma, "seq_ln_b": self.ln.beta}
        for i, block in enumerate(self.blocks):
            out.update({f"seq_{i}_{k}": v for k, v in block.variables_by_name().items()})
        return out

    def export_arrays(self) -> dict[str, np.ndarray]:
        """Weights under the :class:`~recfuse.forward.sequence.NumpySequenceEncoder` names."""
        out = {k: v.numpy() for k, v in self.variables_by_name().items()}
        out["seq_heads"] = np.asarray([self.heads], np.int64)
        return out

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            dim=self.dim,
            layers=self.layers,
            heads=self.heads,
            max_positions=self.max_positions,
            ffn_dim=self.ffn_dim,
            dropout=self.dropout,
        )
        return config
