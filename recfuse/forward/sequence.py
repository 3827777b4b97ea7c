"""Numpy forward of the causal sequence encoder of the ``transformer`` query tower (no TensorFlow).

The twin of :class:`recfuse.models.sequence_encoder.CausalSequenceEncoder` (tested equal to 1e-5).
Histories arrive most recent first (index 0 = the latest item, ``-1`` padding), and that layout is
kept: "causal" in time means token ``j`` attends to itself and to the older tokens ``k >= j``, an
upper-triangular mask here, so nothing is reversed. The summary is the output at the most recent
valid position (the first valid index), which attends to the whole history. SASRec
(Kang & McAuley, 2018) with pre-LN blocks:

* ``x_j = sqrt(d) · E[h_j] + P[pos_j]`` (padded tokens are zero and never attended to)
* per block: ``x += MHA(LN1(x), causal & valid)`` then ``x += W2 relu(W1 LN2(x) + b1) + b2``
* summary ``LN(x_first_valid)``; zeros for an empty history.

Masked softmax rows with no allowed key (padding rows, empty histories) give zero weights, never NaN.

Array names (prefix ``seq_``): ``seq_pos [P, d]``, ``seq_heads [1]``, ``seq_ln_g``/``seq_ln_b [d]``
and per block ``l``: ``seq_{l}_ln1_g``, ``seq_{l}_ln1_b``, ``seq_{l}_qkv_w [d, 3d]`` (columns
``q | k | v``, heads contiguous inside each), ``seq_{l}_qkv_b``, ``seq_{l}_out_w [d, d]``,
``seq_{l}_out_b``, ``seq_{l}_ln2_g``, ``seq_{l}_ln2_b``, ``seq_{l}_ffn1_w [d, f]``, ``seq_{l}_ffn1_b``,
``seq_{l}_ffn2_w [f, d]``, ``seq_{l}_ffn2_b``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from recfuse.errors import ArtifactError
from recfuse.types import BoolArray, FloatArray, Int64Array

LAYER_NORM_EPSILON = 1e-5
MASKED = -1e9  # logit of a masked key: exp() underflows to exactly 0, and stays finite
BLOCK_KEYS = (
    "ln1_g", "ln1_b", "qkv_w", "qkv_b", "out_w", "out_b", "ln2_g", "ln2_b", "ffn1_w", "ffn1_b", "ffn2_w", "ffn2_b"
)  # fmt: skip


def layer_norm(x: FloatArray, gamma: FloatArray | None = None, beta: FloatArray | None = None) -> FloatArray:
    """LayerNorm over the last axis (``gamma``/``beta`` None: the bare normalisation)."""
    inv_d = np.float32(1.0 / x.shape[-1])
    c = x - np.add.reduce(x, axis=-1, keepdims=True) * inv_d  # fewer numpy calls than .mean(): serving path
    out = c / np.sqrt(np.einsum("...i,...i->...", c, c)[..., None] * inv_d + np.float32(LAYER_NORM_EPSILON))
    return out if gamma is None else out * gamma + beta


@dataclass(frozen=True)
class SequenceBlock:
    """Weights of one pre-LN Transformer block (shapes in the module docstring)."""

    ln1_g: FloatArray
    ln1_b: FloatArray
    qkv_w: FloatArray
    qkv_b: FloatArray
    out_w: FloatArray
    out_b: FloatArray
    ln2_g: FloatArray
    ln2_b: FloatArray
    ffn1_w: FloatArray
    ffn1_b: FloatArray
    ffn2_w: FloatArray
    ffn2_b: FloatArray


@dataclass(frozen=True)
class NumpySequenceEncoder:
    """Causal self-attention over a most-recent-first history -> ``[b, d]`` summary.

    Example:
        >>> enc = NumpySequenceEncoder.from_arrays(arrays)                    # doctest: +SKIP
        >>> summary = enc.encode(item_matrix[safe_idx], pos_idx, mask)        # doctest: +SKIP
    """

    positions: FloatArray
    blocks: tuple[SequenceBlock, ...]
    ln_g: FloatArray
    ln_b: FloatArray
    heads: int

    @property
    def dim(self) -> int:
        return int(self.positions.shape[1])

    @property
    def max_positions(self) -> int:
        return int(self.positions.shape[0])

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> NumpySequenceEncoder:
        f32 = np.float32
        n_blocks = sum(1 for k in arrays if k.startswith("seq_") and k.endswith("_qkv_w"))
        try:
            blocks = tuple(
                SequenceBlock(**{k: np.asarray(arrays[f"seq_{i}_{k}"], f32) for k in BLOCK_KEYS})
                for i in range(n_blocks)
            )
            enc = cls(
                positions=np.asarray(arrays["seq_pos"], f32),
                blocks=blocks,
                ln_g=np.asarray(arrays["seq_ln_g"], f32),
                ln_b=np.asarray(arrays["seq_ln_b"], f32),
                heads=int(np.asarray(arrays["seq_heads"]).reshape(-1)[0]),
            )
        except KeyError as err:
            raise ArtifactError(f"sequence encoder arrays lack {err.args[0]!r}; found keys {sorted(arrays)}") from None
        if not blocks or enc.heads < 1 or enc.dim % enc.heads:
            raise ArtifactError(
                f"sequence encoder arrays are inconsistent: {len(blocks)} blocks, {enc.heads} heads, dim {enc.dim}"
            )
        return enc

    def to_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {
            "seq_pos": self.positions,
            "seq_heads": np.asarray([self.heads], np.int64),
            "seq_ln_g": self.ln_g,
            "seq_ln_b": self.ln_b,
        }
        for i, block in enumerate(self.blocks):
            for k in BLOCK_KEYS:
                out[f"seq_{i}_{k}"] = getattr(block, k)
        return out

    def position_index(self, hist_pos: FloatArray) -> Int64Array:
        """Row of :attr:`positions` of each recency position (clipped to the table)."""
        return np.clip(np.asarray(hist_pos).astype(np.int64), 0, self.max_positions - 1)

    def encode(self, h: FloatArray, pos_idx: Int64Array, mask: BoolArray) -> FloatArray:
        """History summaries (the reference forward, padded batches).

        Args:
            h: ``[b, L, d]`` item embeddings of the history (any values at padded slots).
            pos_idx: ``[b, L]`` rows of the position table (:meth:`position_index`).
            mask: ``[b, L]`` True at real history items.

        Returns:
            ``[b, d]`` float32: LN of the output at the first valid position; zeros for empty rows.
        """
        x = self.sequence_outputs(h, pos_idx, mask)
        first = mask.argmax(axis=1)
        out = layer_norm(x[np.arange(len(x)), first], self.ln_g, self.ln_b) * mask.any(axis=1, keepdims=True)
        return out.astype(np.float32)

    def sequence_outputs(self, h: FloatArray, pos_idx: Int64Array, mask: BoolArray) -> FloatArray:
        """``[b, L, d]`` outputs of the last block at every position (before the final LayerNorm).

        Position ``j`` depends only on the valid items ``k >= j`` (itself and older ones); padded
        positions hold values no valid position reads.
        """
        b, length, d = h.shape
        heads, dh = self.heads, d // self.heads
        maskf = mask.astype(np.float32)
        x = (h * np.float32(np.sqrt(d)) + self.positions[pos_idx]) * maskf[:, :, None]
        order = np.arange(length)
        allowed = (order[None, :] >= order[:, None])[None, None] & mask[:, None, None, :]  # [b, 1, L(q), L(k)]
        for blk in self.blocks:
            qkv = layer_norm(x, blk.ln1_g, blk.ln1_b) @ blk.qkv_w + blk.qkv_b
            q, k, v = qkv.reshape(b, length, 3, heads, dh).transpose(2, 0, 3, 1, 4)  # each [b, H, L, dh]
            s = (q @ k.transpose(0, 1, 3, 2)) * np.float32(1.0 / np.sqrt(dh))
            s = np.where(allowed, s, MASKED)
            w = np.exp(s - s.max(axis=-1, keepdims=True)) * allowed
            w = w / np.maximum(w.sum(axis=-1, keepdims=True), 1e-12)
            att = (w @ v).transpose(0, 2, 1, 3).reshape(b, length, d)
            x = x + att @ blk.out_w + blk.out_b
            z = layer_norm(x, blk.ln2_g, blk.ln2_b)
            x = x + np.maximum(z @ blk.ffn1_w + blk.ffn1_b, 0.0) @ blk.ffn2_w + blk.ffn2_b
        return x


class FastSequenceEncoder:
    """:class:`NumpySequenceEncoder` for one history without padding (the serving call), weights folded.

    Each LayerNorm's scale and shift is folded into the matmul that follows it, and ``1/sqrt(dh)``
    into the query columns. The summary reads the last block at the most recent item only, so that
    block is reassociated around its one query ``z_0`` (``z = LN1(x)``, per head ``h``)::

        scores_h = (z_0 W_q^h + b_q^h)(z W_k^h + b_k^h)^T = (z_0 A_h + c_h) z^T + const
        out      = Σ_h (softmax(scores_h) z) W_v^h W_o^h + b_v W_o + b_o

    with ``A_h = W_q^h W_k^h^T`` and ``c_h = b_q^h W_k^h^T`` precomputed (the constant cancels in
    the softmax, whose weights sum to 1): no key or value projection of the ``n`` rows at all.
    :meth:`encode_one` returns the bare normalisation of the summary: the caller folds
    ``ln_g``/``ln_b`` into its next matmul (:meth:`fold_output`). Equal to
    :meth:`NumpySequenceEncoder.encode` to float32 rounding.

    Args:
        enc: the encoder.
    """

    def __init__(self, enc: NumpySequenceEncoder) -> None:
        d = enc.dim
        heads, dh = enc.heads, d // enc.heads
        self.enc, self.heads, self.dh = enc, heads, dh
        self.scale = np.float32(np.sqrt(d))
        f32, f64 = np.float32, np.float64
        folded: list[tuple[np.ndarray, ...]] = []
        for blk in enc.blocks:
            qscale = np.ones(3 * d)
            qscale[:d] = 1.0 / np.sqrt(dh)
            qkv_w = blk.ln1_g.astype(f64)[:, None] * blk.qkv_w * qscale
            qkv_b = (blk.ln1_b.astype(f64) @ blk.qkv_w + blk.qkv_b) * qscale
            ffn1_w = (blk.ln2_g[:, None] * blk.ffn1_w.astype(f64)).astype(f32)
            ffn1_b = (blk.ln2_b.astype(f64) @ blk.ffn1_w + blk.ffn1_b).astype(f32)
            folded.append((qkv_w, qkv_b, blk.out_w, blk.out_b, ffn1_w, ffn1_b, blk.ffn2_w, blk.ffn2_b))
        qkv_w, qkv_b, out_w, out_b, ffn1_w, ffn1_b, ffn2_w, ffn2_b = folded.pop()
        wq, wk, wv = (qkv_w[:, i * d : (i + 1) * d].reshape(d, heads, dh) for i in range(3))
        bq, bv = qkv_b[:d].reshape(heads, dh), qkv_b[2 * d :]
        wo = out_w.astype(f64).reshape(heads, dh, d)
        a = np.einsum("ihe,jhe->ihj", wq, wk).reshape(d, heads * d)  # [d, H·d]: A_h side by side
        c = np.einsum("he,jhe->hj", bq, wk).reshape(heads * d)
        w_vo = np.einsum("ihe,hej->hij", wv, wo).reshape(heads * d, d)  # [H·d, d]: W_v^h W_o^h stacked
        b_vo = bv @ out_w + out_b
        self.last = tuple(x.astype(f32) for x in (a, c, w_vo, b_vo, ffn1_w, ffn1_b, ffn2_w, ffn2_b))
        self.blocks = [tuple(x.astype(f32) for x in b) for b in folded]
        p = enc.max_positions
        self.causal = np.where(np.arange(p)[None, :] >= np.arange(p)[:, None], 0.0, MASKED).astype(f32)
        self._inv_d, self._eps = 1.0 / d, float(LAYER_NORM_EPSILON)

    def fold_output(self, w: FloatArray, b: FloatArray) -> tuple[FloatArray, FloatArray]:
        """``(w', b')`` with ``LN(x) @ w + b == norm(x) @ w' + b'`` (the final LayerNorm folded in)."""
        w64 = w.astype(np.float64)
        return (self.enc.ln_g[:, None] * w64).astype(np.float32), (self.enc.ln_b @ w64 + b).astype(np.float32)

    def _norm(self, v: FloatArray) -> FloatArray:
        """Bare LayerNorm of one vector ``[d]`` (fewer numpy calls than :func:`layer_norm`)."""
        c = v - float(v.sum()) * self._inv_d
        return c * (1.0 / math.sqrt(float(c @ c) * self._inv_d + self._eps))

    def encode_one(self, rows: FloatArray) -> FloatArray:
        """``[d]`` normalised (no ``ln_g``/``ln_b``) summary of ``rows`` ``[n, d]`` (most recent first, ``n >= 1``,
        ``n <= max_positions``; positions ``0..n-1``)."""
        n, d = rows.shape
        heads, dh = self.heads, self.dh
        x = rows * self.scale + self.enc.positions[:n]
        for qkv_w, qkv_b, out_w, out_b, ffn1_w, ffn1_b, ffn2_w, ffn2_b in self.blocks:
            qkv = (layer_norm(x) @ qkv_w + qkv_b).reshape(n, 3, heads, dh).transpose(1, 2, 0, 3)
            s = qkv[0] @ qkv[1].transpose(0, 2, 1) + self.causal[:n, :n]  # [H, n, n]
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            x = x + (s @ qkv[2]).transpose(1, 0, 2).reshape(n, d) @ out_w + out_b
            x = x + np.maximum(layer_norm(x) @ ffn1_w + ffn1_b, 0.0) @ ffn2_w + ffn2_b
        a, c, w_vo, b_vo, ffn1_w, ffn1_b, ffn2_w, ffn2_b = self.last
        z = layer_norm(x)
        s = (z[0] @ a + c).reshape(heads, d) @ z.T  # [H, n]: the most recent item reads the whole history
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        x0 = x[0] + (s @ z).reshape(heads * d) @ w_vo + b_vo
        x0 = x0 + np.maximum(self._norm(x0) @ ffn1_w + ffn1_b, 0.0) @ ffn2_w + ffn2_b
        return self._norm(x0)
