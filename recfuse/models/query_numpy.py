"""Numpy forward of the query (user) tower: the serving path, no TensorFlow.

The TensorFlow query tower (``recfuse.models.query_tower``) exports its weights with
``export_arrays()`` in exactly this layout, and a test checks both forwards agree to 1e-5.

Architecture (shared with the TF tower):

* ``E`` ``[num_items, d]``: the candidate tower's item embeddings (a memory bank while training,
  the bundle's embedding matrix when serving; cold items are in it as soon as they are embedded).
* history attention pooling over the user's recent items ``h_1..h_L`` (most recent first):
  ``s_j = v · tanh(E[h_j] W_a + b_a) + r · log1p(pos_j)``, masked softmax over valid ``j``,
  ``pooled = Σ α_j E[h_j]`` (zeros when there is no history).
* ``x = concat(pooled [d], user_emb[user_idx] [du] (optional), has_history [1])``
* MLP: ``relu(x W_i + b_i)`` for every layer but the last, which is linear, then L2-normalise
  when ``normalize``.

Array names (npz, loaded with ``allow_pickle=False``): ``attn_w [d,h]``, ``attn_b [h]``,
``attn_v [h]``, ``recency [1]``, optional ``user_embedding [U,du]``, ``mlp_{i}_w``, ``mlp_{i}_b``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recfuse.errors import ArtifactError
from recfuse.types import FloatArray, Int64Array

FORMAT = "recfuse.query_tower.numpy/1"


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

    @property
    def dim(self) -> int:
        return int(self.mlp[-1][0].shape[1])

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
        return cls(
            attn_w=np.asarray(arrays["attn_w"], f32),
            attn_b=np.asarray(arrays["attn_b"], f32),
            attn_v=np.asarray(arrays["attn_v"], f32),
            recency=float(np.asarray(arrays["recency"]).reshape(-1)[0]),
            mlp=mlp,
            user_embedding=None if ue is None else np.asarray(ue, f32),
            normalize=normalize,
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {
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
        meta.write_text(json.dumps({"format": FORMAT, "normalize": self.normalize, "dim": self.dim}), encoding="utf-8")
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
        if info.get("format") != FORMAT:
            raise ArtifactError(f"query tower {str(meta)!r} has format {info.get('format')!r}, expected {FORMAT!r}")
        return cls.from_arrays(arrays, normalize=bool(info.get("normalize", True)))

    def encode(
        self,
        item_matrix: FloatArray,
        user_idx: Int64Array,
        hist_idx: Int64Array,
        hist_pos: FloatArray | None = None,
    ) -> FloatArray:
        """Query embeddings.

        Args:
            item_matrix: ``[num_items, d]`` item embeddings indexed by item vocabulary index.
            user_idx: ``[b]`` user vocabulary indices (OOV buckets allowed); ignored without a user table.
            hist_idx: ``[b, L]`` item indices, most recent first, ``-1`` for padding/unknown.
            hist_pos: ``[b, L]`` recency positions (default ``0..L-1``).

        Returns:
            ``[b, d]`` float32 query vectors.
        """
        hist_idx = np.asarray(hist_idx, np.int64)
        b, length = hist_idx.shape
        if hist_pos is None:
            hist_pos = np.broadcast_to(np.arange(length, dtype=np.float32), (b, length))
        mask = hist_idx >= 0
        h = item_matrix[np.where(mask, hist_idx, 0)]  # [b, L, d]
        scores = np.tanh(h @ self.attn_w + self.attn_b) @ self.attn_v  # [b, L]
        scores = scores + self.recency * np.log1p(np.asarray(hist_pos, np.float32))
        scores = np.where(mask, scores, -1e9)
        scores = scores - scores.max(axis=1, keepdims=True)
        weights = np.exp(scores) * mask
        denom = weights.sum(axis=1, keepdims=True)
        weights = weights / np.maximum(denom, 1e-12)
        pooled = np.einsum("bl,bld->bd", weights, h)
        has_hist = mask.any(axis=1, keepdims=True).astype(np.float32)
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
