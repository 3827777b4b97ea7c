"""Query (user) tower in TensorFlow, the exact twin of :class:`recfuse.forward.query.NumpyQueryTower`.

The user's recent items are encoded through the candidate tower's item representations: the tower
receives the item matrix ``E [num_items, d]`` (a non-trainable memory bank while training, the
bundle's embedding matrix when serving) and summarises the rows of the history with one of two
encoders (``encoder``):

* ``attention`` (default): additive-attention pooling plus a learned recency term;
* ``transformer``: a causal self-attention encoder over the ordered history, read out at the most
  recent item (:class:`recfuse.models.sequence_encoder.CausalSequenceEncoder`).

A hashed user-id embedding (optional) and a ``has_history`` flag are concatenated to the summary,
then an MLP (ReLU hidden layers, linear output) and optional L2 normalisation give the ``[b, d]``
query.

:meth:`QueryTower.export_arrays` returns the weights under the array names of the numpy forward, so
``NumpyQueryTower.from_arrays(tower.export_arrays())`` computes the same vectors (tested to 1e-5).

Example:
    >>> tower = QueryTower(dim=8, user_rows=10, hidden=(16,))          # doctest: +SKIP
    >>> q = tower(E, user_idx, hist_idx, hist_pos)                      # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from recfuse.forward.query import NumpyQueryTower
from recfuse.models.sequence_encoder import CausalSequenceEncoder

QUERY_ENCODERS = ("attention", "transformer")


class QueryTower(tf.keras.layers.Layer):
    """Encoded history of item embeddings + optional user embedding -> MLP -> ``[b, d]``.

    Args:
        dim: output (and item embedding) dimension ``d``.
        user_rows: rows of the user-id embedding table (OOV buckets included); 0 disables it.
        user_dim: width of the user embedding (default ``dim``).
        attention_hidden: hidden width ``h`` of the attention scorer (default ``dim``).
        hidden: widths of the ReLU hidden layers of the MLP.
        normalize: L2-normalise the output.
        encoder: ``attention`` (pooling) or ``transformer`` (causal self-attention) history encoder.
        encoder_layers: blocks of the ``transformer`` encoder.
        encoder_heads: attention heads of the ``transformer`` encoder (must divide ``dim``).
        encoder_dropout: dropout of the ``transformer`` encoder while training.
        max_positions: position-table rows of the ``transformer`` encoder (the history length).
    """

    def __init__(
        self,
        dim: int,
        user_rows: int = 0,
        user_dim: int = 0,
        attention_hidden: int = 0,
        hidden: tuple[int, ...] | list[int] = (128,),
        normalize: bool = True,
        encoder: str = "attention",
        encoder_layers: int = 2,
        encoder_heads: int = 2,
        encoder_dropout: float = 0.0,
        max_positions: int = 50,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if encoder not in QUERY_ENCODERS:
            raise ValueError(f"`encoder` must be one of {list(QUERY_ENCODERS)}, got {encoder!r}")
        self.encoder = encoder
        self.encoder_layers, self.encoder_heads = int(encoder_layers), int(encoder_heads)
        self.encoder_dropout, self.max_positions = float(encoder_dropout), int(max_positions)
        self.dim = int(dim)
        self.user_rows = int(user_rows)
        self.user_dim = int(user_dim or dim) if user_rows else 0
        self.attention_hidden = int(attention_hidden or dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.normalize = bool(normalize)
        if encoder == "transformer":
            self.sequence = CausalSequenceEncoder(
                self.dim,
                layers=self.encoder_layers,
                heads=self.encoder_heads,
                max_positions=self.max_positions,
                dropout=self.encoder_dropout,
                name="sequence",
            )
        else:
            self.attn = tf.keras.layers.Dense(self.attention_hidden, activation="tanh", name="attn")
            self.attn_v = self.add_weight(
                name="attn_v", shape=(self.attention_hidden,), initializer="glorot_uniform", trainable=True
            )
            self.recency = self.add_weight(name="recency", shape=(1,), initializer="zeros", trainable=True)
        self.user_embedding = (
            tf.keras.layers.Embedding(self.user_rows, self.user_dim, name="user_embedding") if self.user_rows else None
        )
        widths = [*self.hidden, self.dim]
        self.mlp = [
            tf.keras.layers.Dense(w, activation="relu" if i < len(widths) - 1 else None, name=f"mlp_{i}")
            for i, w in enumerate(widths)
        ]

    def call(  # type: ignore[override]
        self,
        item_matrix: tf.Tensor,
        user_idx: tf.Tensor,
        hist_idx: tf.Tensor,
        hist_pos: tf.Tensor,
        training: bool | None = None,
    ) -> tf.Tensor:
        """Query embeddings.

        Args:
            item_matrix: ``[num_items, d]`` item embeddings (row = item vocabulary index).
            user_idx: ``[b]`` int user indices (ignored without a user table).
            hist_idx: ``[b, L]`` int item indices, most recent first, ``-1`` padding.
            hist_pos: ``[b, L]`` float recency positions.
            training: dropout of the ``transformer`` encoder on when True.

        Returns:
            ``[b, d]`` float32 query vectors.
        """
        hist_idx = tf.cast(hist_idx, tf.int64)
        mask = hist_idx >= 0
        maskf = tf.cast(mask, tf.float32)
        h = tf.gather(item_matrix, tf.where(mask, hist_idx, tf.zeros_like(hist_idx)))  # [b, L, d]
        if self.encoder == "transformer":
            pooled = self.sequence(h, hist_pos, mask, training=training)
        else:
            scores = tf.linalg.matvec(self.attn(h), self.attn_v)  # [b, L]
            scores = scores + self.recency[0] * tf.math.log1p(tf.cast(hist_pos, tf.float32))
            scores = tf.where(mask, scores, tf.fill(tf.shape(scores), -1e9))
            scores = scores - tf.reduce_max(scores, axis=1, keepdims=True)
            weights = tf.exp(scores) * maskf
            weights = weights / tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1e-12)
            pooled = tf.einsum("bl,bld->bd", weights, h)
        has_hist = tf.reduce_max(maskf, axis=1, keepdims=True)
        parts = [pooled]
        if self.user_embedding is not None:
            parts.append(self.user_embedding(tf.cast(user_idx, tf.int64)))
        parts.append(has_hist)
        x = tf.concat(parts, axis=1)
        for layer in self.mlp:
            x = layer(x)
        if self.normalize:
            x = tf.math.l2_normalize(x, axis=1, epsilon=1e-24)
        return x

    def position_queries(
        self,
        item_matrix: tf.Tensor,
        user_idx: tf.Tensor,
        hist_idx: tf.Tensor,
        hist_pos: tf.Tensor,
        training: bool | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Query vectors at every history position of the ``transformer`` encoder (SASRec's training readout).

        The output at position ``j`` reads the items at ``j`` and older (the history as it stood before
        the item at ``j - 1`` was consumed), so it is the query whose next item is ``hist_idx[:, j - 1]``
        (for ``j = 0``: the example's own target). Each position goes through the same user-embedding /
        MLP / normalisation head as :meth:`call`, and position 0 equals :meth:`call`'s query for a
        non-empty history (tested).

        Returns:
            ``([b, L, d] queries, [b, L] bool)``: True where position ``j`` holds a real item.

        Raises:
            ValueError: the tower's encoder is not ``transformer`` (pooling has no per-position output).
        """
        if self.encoder != "transformer":
            raise ValueError("position_queries needs encoder = 'transformer'; attention pooling has one output per row")
        hist_idx = tf.cast(hist_idx, tf.int64)
        mask = hist_idx >= 0
        maskf = tf.cast(mask, tf.float32)
        h = tf.gather(item_matrix, tf.where(mask, hist_idx, tf.zeros_like(hist_idx)))  # [b, L, d]
        x = self.sequence.sequence_outputs(h, hist_pos, mask, training=training)
        b, length = tf.shape(x)[0], tf.shape(x)[1]
        # the final LayerNorm was built on [b, d] summaries: apply it row-wise to [b * L, d]
        x = tf.reshape(self.sequence.ln(tf.reshape(x, [-1, self.dim])), [b, length, self.dim])
        x = x * maskf[:, :, None]
        parts = [x]
        if self.user_embedding is not None:
            u = self.user_embedding(tf.cast(user_idx, tf.int64))  # [b, du]
            parts.append(tf.broadcast_to(u[:, None, :], [b, length, self.user_dim]))
        parts.append(maskf[:, :, None])  # has_history: 1 at every real position
        x = tf.concat(parts, axis=2)
        for layer in self.mlp:
            x = layer(x)
        if self.normalize:
            x = tf.math.l2_normalize(x, axis=2, epsilon=1e-24)
        return x, mask

    def build_for(self, item_dim: int) -> None:
        """Create all variables by running a one-row forward (so checkpoints can be restored)."""
        self(
            tf.zeros((1, item_dim)),
            tf.zeros((1,), tf.int64),
            tf.constant([[0]], tf.int64),
            tf.zeros((1, 1)),
        )

    def export_arrays(self) -> dict[str, np.ndarray]:
        """Weights under the :class:`NumpyQueryTower` array names (``attn_w`` or ``seq_*``, ``mlp_0_w``…)."""
        if self.encoder == "transformer":
            out: dict[str, np.ndarray] = self.sequence.export_arrays()
        else:
            out = {
                "attn_w": self.attn.kernel.numpy(),
                "attn_b": self.attn.bias.numpy(),
                "attn_v": self.attn_v.numpy(),
                "recency": self.recency.numpy().reshape(1),
            }
        for i, layer in enumerate(self.mlp):
            out[f"mlp_{i}_w"] = layer.kernel.numpy()
            out[f"mlp_{i}_b"] = layer.bias.numpy()
        if self.user_embedding is not None:
            out["user_embedding"] = self.user_embedding.embeddings.numpy()
        return {k: v if k == "seq_heads" else np.asarray(v, np.float32) for k, v in out.items()}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Assign weights from :meth:`export_arrays`-style arrays (the inverse; the tower must be built).

        Raises:
            ValueError: an array is missing or has another shape (the message names it).
        """
        if self.encoder == "transformer":
            variables: dict[str, tf.Variable] = self.sequence.variables_by_name()
        else:
            variables = {"attn_w": self.attn.kernel, "attn_b": self.attn.bias, "attn_v": self.attn_v}
            variables["recency"] = self.recency
        for i, layer in enumerate(self.mlp):
            variables[f"mlp_{i}_w"], variables[f"mlp_{i}_b"] = layer.kernel, layer.bias
        if self.user_embedding is not None:
            variables["user_embedding"] = self.user_embedding.embeddings
        for name, var in variables.items():
            value = arrays.get(name)
            if value is None or tuple(np.shape(value)) != tuple(var.shape):
                got = None if value is None else tuple(np.shape(value))
                raise ValueError(f"`arrays[{name!r}]` must have shape {tuple(var.shape)}, got {got}")
            var.assign(np.asarray(value, np.float32))

    def to_numpy(self) -> NumpyQueryTower:
        """The numpy forward with this tower's current weights."""
        return NumpyQueryTower.from_arrays(self.export_arrays(), normalize=self.normalize)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            dim=self.dim,
            user_rows=self.user_rows,
            user_dim=self.user_dim,
            attention_hidden=self.attention_hidden,
            hidden=list(self.hidden),
            normalize=self.normalize,
            encoder=self.encoder,
            encoder_layers=self.encoder_layers,
            encoder_heads=self.encoder_heads,
            encoder_dropout=self.encoder_dropout,
            max_positions=self.max_positions,
        )
        return config


def build_query_tower(cfg: Any, user_rows: int) -> QueryTower:
    """The query tower of a :class:`recfuse.config.RecfuseConfig` (``user_rows``: user vocab size).

    The user-id embedding is used when ``cfg.model.user_id_embedding`` (anonymous users hit an OOV
    bucket, and ``has_history``/the history carry the rest); training decides ``"auto"`` first
    (:func:`recfuse.training.checks.resolve_auto_settings`), and an undecided ``"auto"`` counts as on.
    The history encoder is ``cfg.model.query_encoder``; a ``transformer`` one has ``cfg.data.max_history`` positions.
    """
    m = cfg.model
    return QueryTower(
        dim=m.dim,
        user_rows=user_rows if m.user_id_embedding is not False else 0,
        hidden=tuple(m.query_hidden),
        normalize=m.normalize,
        encoder=m.query_encoder,
        encoder_layers=m.query_layers,
        encoder_heads=m.query_heads,
        encoder_dropout=m.query_dropout,
        max_positions=cfg.data.max_history,
        name="query_tower",
    )
