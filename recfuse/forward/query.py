"""Numpy forward of the query (user) tower: the serving path, no TensorFlow.

The TensorFlow query tower (``recfuse.models.query_tower``) exports its weights with
``export_arrays()`` in exactly this layout, and a test checks both forwards agree to 1e-5.

Architecture (shared with the TF tower):

* ``E`` ``[num_items, d]``: the candidate tower's item embeddings (a memory bank while training,
  the bundle's embedding matrix when serving; cold items are in it as soon as they are embedded).
* the history summary of the user's recent items ``h_1..h_L`` (most recent first), one of:

  - attention pooling: ``s_j = v · tanh(E[h_j] W_a + b_a) + r · log1p(pos_j)``, masked softmax
    over valid ``j``, ``pooled = Σ α_j E[h_j]`` (zeros when there is no history);
  - a causal self-attention encoder (``sequence``, :mod:`recfuse.forward.sequence`) read out
    at the most recent item (zeros when there is no history). Such a tower has no attention
    scorer: its ``attn_w`` is ``[d, 0]`` (so ``attn_w.shape[0]`` is the history width ``d`` for
    either kind), ``attn_b``/``attn_v`` are empty and ``recency`` is 0.
* ``x = concat(pooled [d], user_emb[user_idx] [du] (optional), has_history [1])``
* MLP: ``relu(x W_i + b_i)`` for every layer but the last, which is linear, then L2-normalise
  when ``normalize``.

Array names (npz, loaded with ``allow_pickle=False``): ``attn_w [d,h]``, ``attn_b [h]``,
``attn_v [h]``, ``recency [1]`` (attention pooling) or the ``seq_*`` arrays (sequence encoder),
optional ``user_embedding [U,du]``, ``mlp_{i}_w``, ``mlp_{i}_b``. A tower with a sequence encoder is
saved as format ``…/2`` so that readers predating it refuse it instead of pooling without weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recfuse.errors import ArtifactError
from recfuse.forward.sequence import FastSequenceEncoder, NumpySequenceEncoder
from recfuse.types import FloatArray, Int64Array

FORMAT = "recfuse.query_tower.numpy/1"
SEQUENCE_FORMAT = "recfuse.query_tower.numpy/2"  # a tower with a sequence (transformer) encoder


@dataclass(frozen=True)
class NumpyQueryTower:
    """Query tower weights with a numpy forward.

    Example:
        >>> tower = NumpyQueryTower.load("bundle/query_tower")            # doctest: +SKIP
        >>> q = tower.encode(E, user_idx, hist_idx, hist_pos)             # doctest: +SKIP
    """

    attn_w: FloatArray
    attn_b: FloatArray
    attn_v: FloatArray
    recency: float
    mlp: tuple[tuple[FloatArray, FloatArray], ...]
    user_embedding: FloatArray | None = None
    normalize: bool = True
    sequence: NumpySequenceEncoder | None = None

    @property
    def dim(self) -> int:
        return int(self.mlp[-1][0].shape[1])

    @property
    def history_dim(self) -> int:
        """Width ``d`` of the item vectors a history is read from (the item matrix's columns)."""
        return int(self.attn_w.shape[0]) if self.sequence is None else int(self.sequence.dim)

    @property
    def encoder(self) -> str:
        """``attention`` or ``transformer`` (``model.query_encoder``)."""
        return "attention" if self.sequence is None else "transformer"

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], normalize: bool = True) -> NumpyQueryTower:
        n_layers = sum(1 for k in arrays if k.startswith("mlp_") and k.endswith("_w"))
        if n_layers == 0:
            raise ArtifactError(f"query tower arrays have no mlp_0_w; found keys {sorted(arrays)}")
        f32 = np.float32
        mlp = tuple(
            (np.asarray(arrays[f"mlp_{i}_w"], f32), np.asarray(arrays[f"mlp_{i}_b"], f32)) for i in range(n_layers)
        )
        ue = arrays.get("user_embedding")
        user_embedding = None if ue is None else np.asarray(ue, f32)
        if "seq_pos" in arrays:
            seq = NumpySequenceEncoder.from_arrays(arrays)
            empty = np.zeros(0, f32)
            return cls(np.zeros((seq.dim, 0), f32), empty, empty, 0.0, mlp, user_embedding, normalize, seq)
        return cls(
            attn_w=np.asarray(arrays["attn_w"], f32),
            attn_b=np.asarray(arrays["attn_b"], f32),
            attn_v=np.asarray(arrays["attn_v"], f32),
            recency=float(np.asarray(arrays["recency"]).reshape(-1)[0]),
            mlp=mlp,
            user_embedding=user_embedding,
            normalize=normalize,
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        if self.sequence is not None:
            out: dict[str, np.ndarray] = self.sequence.to_arrays()
        else:
            out = {
                "attn_w": self.attn_w,
                "attn_b": self.attn_b,
                "attn_v": self.attn_v,
                "recency": np.asarray([self.recency], np.float32),
            }
        for i, (w, b) in enumerate(self.mlp):
            out[f"mlp_{i}_w"], out[f"mlp_{i}_b"] = w, b
        if self.user_embedding is not None:
            out["user_embedding"] = self.user_embedding
        return out

    def save(self, prefix: str | Path) -> list[Path]:
        """Write ``prefix.npz`` and ``prefix.json``; returns the paths written."""
        p = Path(prefix)
        npz, meta = p.with_suffix(".npz"), p.with_suffix(".json")
        with open(npz, "wb") as fh:
            np.savez(fh, **self.to_arrays())  # type: ignore[arg-type]
        fmt = FORMAT if self.sequence is None else SEQUENCE_FORMAT
        info = {"format": fmt, "normalize": self.normalize, "dim": self.dim, "encoder": self.encoder}
        meta.write_text(json.dumps(info), encoding="utf-8")
        return [npz, meta]

    @classmethod
    def load(cls, prefix: str | Path) -> NumpyQueryTower:
        p = Path(prefix)
        npz, meta = p.with_suffix(".npz"), p.with_suffix(".json")
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            with np.load(npz, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as err:
            raise ArtifactError(f"cannot load query tower {str(p)!r}: {err}") from None
        fmt = SEQUENCE_FORMAT if "seq_pos" in arrays else FORMAT
        if info.get("format") != fmt:
            raise ArtifactError(f"query tower {str(meta)!r} has format {info.get('format')!r}, expected {fmt!r}")
        return cls.from_arrays(arrays, normalize=bool(info.get("normalize", True)))

    def attention_logits(self, item_matrix: FloatArray, chunk: int = 65_536) -> FloatArray:
        """Per-item attention logit ``v · tanh(E[i] W_a + b_a)`` of every row of ``item_matrix``.

        The logit of a history item depends only on its embedding, so a server computes it once per
        item matrix (one float per item) and passes it to :meth:`encode` as ``item_logits``; the
        per-request forward is then a gather, a softmax, a weighted sum and the MLP. Rows appended
        later (cold items) need only their own logits: ``np.concatenate([old, attention_logits(new)])``.

        Args:
            item_matrix: ``[num_items, d]`` item embeddings.
            chunk: rows per block (bounds the ``[chunk, h]`` temporary).

        Returns:
            ``[num_items]`` float32 logits.
        """
        if self.sequence is not None:
            raise ValueError("a `transformer` query tower has no per-item attention logits (its encoder reads order)")
        e = np.asarray(item_matrix, np.float32)
        if e.ndim != 2 or e.shape[1] != self.attn_w.shape[0]:
            raise ValueError(f"`item_matrix` must be [num_items, {self.attn_w.shape[0]}], got shape {tuple(e.shape)}")
        out = np.empty(len(e), np.float32)
        for start in range(0, len(e), chunk):
            block = e[start : start + chunk]
            out[start : start + len(block)] = np.tanh(block @ self.attn_w + self.attn_b) @ self.attn_v
        return out

    def encode(
        self,
        item_matrix: FloatArray,
        user_idx: Int64Array,
        hist_idx: Int64Array,
        hist_pos: FloatArray | None = None,
        item_logits: FloatArray | None = None,
    ) -> FloatArray:
        """Query embeddings.

        Args:
            item_matrix: ``[num_items, d]`` item embeddings indexed by item vocabulary index.
            user_idx: ``[b]`` user vocabulary indices (OOV buckets allowed); ignored without a user table.
            hist_idx: ``[b, L]`` item indices, most recent first, ``-1`` for padding/unknown.
            hist_pos: ``[b, L]`` recency positions (default ``0..L-1``).
            item_logits: ``[num_items]`` precomputed :meth:`attention_logits` of ``item_matrix`` (the
                serving path); ``None`` computes the logits of the history items here (ignored by a
                sequence encoder).

        Returns:
            ``[b, d]`` float32 query vectors.
        """
        hist_idx = np.asarray(hist_idx, np.int64)
        b, length = hist_idx.shape
        mask = hist_idx >= 0
        safe = np.where(mask, hist_idx, 0)
        h = item_matrix[safe]  # [b, L, d]
        if self.sequence is not None:
            positions = np.arange(length, dtype=np.float32) if hist_pos is None else hist_pos
            pooled = self.sequence.encode(h, self.sequence.position_index(positions), mask)
            return self._head(pooled, mask, user_idx)
        if item_logits is None:
            scores = np.tanh(h @ self.attn_w + self.attn_b) @ self.attn_v  # [b, L]
        else:
            scores = item_logits[safe]
        if hist_pos is None:
            recency = np.log1p(np.arange(length, dtype=np.float32))  # broadcasts over the batch
        else:
            recency = np.log1p(np.asarray(hist_pos, np.float32))
        scores = scores + self.recency * recency
        scores = np.where(mask, scores, -1e9)
        scores = scores - scores.max(axis=1, keepdims=True)
        weights = np.exp(scores) * mask
        denom = weights.sum(axis=1, keepdims=True)
        weights = weights / np.maximum(denom, 1e-12)
        pooled = np.matmul(weights[:, None, :], h)[:, 0, :]  # [b, d]
        return self._head(pooled, mask, user_idx)

    def _head(self, pooled: FloatArray, mask: np.ndarray, user_idx: Int64Array) -> FloatArray:
        """``concat(pooled, user embedding, has_history)`` -> MLP -> optional L2 normalisation."""
        has_hist = np.asarray(mask.any(axis=1, keepdims=True), np.float32)
        parts = [pooled]
        if self.user_embedding is not None:
            parts.append(self.user_embedding[np.asarray(user_idx, np.int64)])
        parts.append(has_hist)
        x = np.concatenate(parts, axis=1).astype(np.float32)
        for i, (w, bias) in enumerate(self.mlp):
            x = x @ w + bias
            if i < len(self.mlp) - 1:
                x = np.maximum(x, 0.0)
        if self.normalize:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x.astype(np.float32)


class QueryEncoder:
    """A :class:`NumpyQueryTower` bound to one item matrix, with everything request-independent precomputed.

    Built once per loaded bundle: the first MLP layer split into its history, user and has-history
    blocks and, for attention pooling, the per-item attention logits
    (:meth:`NumpyQueryTower.attention_logits`) and the recency term per position; for a sequence
    encoder, its LayerNorms folded into the matmuls that follow them
    (:class:`~recfuse.forward.sequence.FastSequenceEncoder`; nothing per item can be cached,
    since an item's representation depends on its position and its neighbours). :meth:`encode_one`
    then runs one query as a handful of small numpy calls on the valid history rows — no padding, no
    concatenation. It computes what :meth:`NumpyQueryTower.encode` computes (tested equal to float32
    rounding).

    Args:
        tower: the query tower.
        item_matrix: ``[num_items, d]`` item embeddings the history rows index.
        item_logits: precomputed logits of ``item_matrix`` (computed here when None; attention pooling only).

    Example:
        >>> enc = QueryEncoder(tower, item_matrix)                       # doctest: +SKIP
        >>> q = enc.encode_one(user_idx=3, hist=np.array([17, 4, 9]))   # doctest: +SKIP
    """

    def __init__(self, tower: NumpyQueryTower, item_matrix: FloatArray, item_logits: FloatArray | None = None) -> None:
        self.tower = tower
        self.item_matrix = item_matrix
        d = int(tower.attn_w.shape[0])
        w0, b0 = tower.mlp[0]
        du = 0 if tower.user_embedding is None else int(tower.user_embedding.shape[1])
        self._d = d
        self._w0_hist = np.ascontiguousarray(w0[:d])
        self._w0_user = np.ascontiguousarray(w0[d : d + du]) if du else None
        self._b0 = b0
        self._b0_with_hist = (b0 + w0[d + du]).astype(np.float32)  # bias + the has_history=1 row
        self._rest = tower.mlp[1:]
        self._sequence = None if tower.sequence is None else FastSequenceEncoder(tower.sequence)
        #: ``[num_items]`` attention logits (None for a sequence encoder)
        self.item_logits: FloatArray | None = None
        if self._sequence is not None:
            self._w0_hist, self._b0_with_hist = self._sequence.fold_output(self._w0_hist, self._b0_with_hist)
            self._max_one = tower.sequence.max_positions  # type: ignore[union-attr]  # longer: the padded forward
            return
        self.item_logits = tower.attention_logits(item_matrix) if item_logits is None else item_logits
        if self.item_logits.shape != (len(item_matrix),):
            raise ValueError(
                f"`item_logits` must be [{len(item_matrix)}] (one per item row), got shape {self.item_logits.shape}"
            )
        self._recency = np.float32(tower.recency) * np.log1p(np.arange(4096, dtype=np.float32))
        self._max_one = len(self._recency)

    def with_items(self, new_vectors: FloatArray) -> QueryEncoder:
        """A new encoder over the item matrix with ``new_vectors`` appended (only their logits are computed)."""
        new_vectors = np.asarray(new_vectors, np.float32)
        matrix = np.concatenate([self.item_matrix, new_vectors])
        if self.item_logits is None:
            return QueryEncoder(self.tower, matrix)
        return QueryEncoder(
            self.tower, matrix, np.concatenate([self.item_logits, self.tower.attention_logits(new_vectors)])
        )

    def encode_one(self, user_idx: int, hist: Int64Array) -> FloatArray:
        """Query vector ``[d]`` of one user index and its history rows (most recent first, all valid)."""
        n = len(hist)
        if n:
            if n > self._max_one:
                return self.encode_many([user_idx], [hist])[0]
            if self._sequence is not None:
                summary = self._sequence.encode_one(self.item_matrix[hist])
            else:
                s = self.item_logits[hist] + self._recency[:n]  # type: ignore[index]
                s = np.exp(s - s.max())
                summary = (s @ self.item_matrix[hist]) / s.sum()
            x = summary @ self._w0_hist + self._b0_with_hist
        else:
            x = self._b0.copy()  # never hand out the weights themselves
        if self._w0_user is not None:
            x = x + self.tower.user_embedding[user_idx] @ self._w0_user  # type: ignore[index]
        for w, bias in self._rest:
            x = np.maximum(x, 0.0) @ w + bias
        if self.tower.normalize:
            x = x / max(float(np.sqrt(x @ x)), 1e-12)
        return x.astype(np.float32, copy=False)

    def encode_many(self, user_idx: Sequence[int], hists: Sequence[Int64Array]) -> FloatArray:
        """Query vectors ``[b, d]``: one :meth:`encode_one` per query for small batches, else one padded forward."""
        b = len(hists)
        if b == 1 and len(hists[0]) <= self._max_one:  # the serving call: a [1, d] view, no copy
            return self.encode_one(int(user_idx[0]), hists[0])[None, :]
        if b <= 4:
            out = np.empty((b, self.tower.dim), np.float32)
            for r in range(b):
                if len(hists[r]) <= self._max_one:
                    out[r] = self.encode_one(int(user_idx[r]), hists[r])
                    continue
                return self._padded(user_idx, hists)
            return out
        return self._padded(user_idx, hists)

    def _padded(self, user_idx: Sequence[int], hists: Sequence[Int64Array]) -> FloatArray:
        length = max((len(h) for h in hists), default=0) or 1
        hist = np.full((len(hists), length), -1, dtype=np.int64)
        for r, h in enumerate(hists):
            hist[r, : len(h)] = h
        users = np.asarray(user_idx, dtype=np.int64)
        return self.tower.encode(self.item_matrix, users, hist, item_logits=self.item_logits)
