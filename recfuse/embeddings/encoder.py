"""The per-batch encoder contract of the embedding job, and a deterministic numpy encoder.

An encoder maps one Arrow record batch of catalog rows to item ids, vectors and rejected rows; the
same object runs in the local loop and inside Ray actors. Encoders are built by a zero-argument
factory so each worker constructs (and owns) its model.

Example:
    >>> import pyarrow as pa
    >>> enc = HashProjectionEncoder(dim=4)
    >>> res = enc.encode(pa.record_batch({"item_id": ["a", "b"], "title": ["red shoe", "blue hat"]}))
    >>> res.vectors.shape, res.item_ids.to_pylist()
    ((2, 4), ['a', 'b'])
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pyarrow as pa

from recfuse.types import FloatArray


@dataclass
class EncodeResult:
    """Output of one batch: ``vectors[i]`` embeds ``item_ids[i]``; ``rejects`` are ``(item_id, reason)``.

    ``item_ids`` may be a Python list or an Arrow string array (cheaper for large batches).
    """

    item_ids: list[str] | pa.Array
    vectors: FloatArray  # [n, d] float32
    rejects: list[tuple[str, str]] = field(default_factory=list)


class Encoder(Protocol):
    def encode(self, batch: pa.RecordBatch) -> EncodeResult: ...


EncoderFactory = Callable[[], Encoder]


class HashProjectionEncoder:
    """Deterministic numpy encoder: a random projection of a vector column, or of hashed title tokens.

    Rows whose vector has the wrong width (or is null/NaN) are rejected with a reason. Used to test and
    benchmark the job engines without TensorFlow.

    Args:
        dim: output width ``d``.
        vector_column: optional fixed-size-list column to project (``in_dim`` wide); else ``title``.
        in_dim: expected width of ``vector_column``.
        seed: projection seed.
    """

    def __init__(self, dim: int = 32, vector_column: str | None = None, in_dim: int = 0, seed: int = 0) -> None:
        self.dim, self.vector_column, self.in_dim = dim, vector_column, in_dim
        rng = np.random.default_rng(seed)
        self._proj = rng.standard_normal((max(in_dim, 1), dim)).astype(np.float32)
        self._token_table = rng.standard_normal((4096, dim)).astype(np.float32)

    def encode(self, batch: pa.RecordBatch) -> EncodeResult:
        id_col = batch.column("item_id").cast(pa.string())
        rejects: list[tuple[str, str]] = []
        keep: list[int] = []
        rows: list[np.ndarray] = []
        col = batch.column(self.vector_column) if self.vector_column else None
        if (
            col is not None
            and pa.types.is_fixed_size_list(col.type)
            and col.type.list_size == self.in_dim
            and col.null_count == 0
        ):  # whole batch at once: one matmul, rows with NaN rejected
            mat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), self.in_dim)
            finite = np.isfinite(mat).all(axis=1)
            keep = np.flatnonzero(finite).tolist()
            rejects = [(str(id_col[i]), f"non-finite value in {self.vector_column!r}") for i in np.flatnonzero(~finite)]
            out = mat[finite] @ self._proj
        elif self.vector_column:
            for i, vec in enumerate(batch.column(self.vector_column).to_pylist()):
                if vec is None or len(vec) != self.in_dim:
                    width = "null" if vec is None else len(vec)
                    reason = f"wrong vector width in {self.vector_column!r}: {width} != {self.in_dim}"
                    rejects.append((str(id_col[i]), reason))
                    continue
                arr = np.asarray(vec, dtype=np.float32)
                if not np.isfinite(arr).all():
                    rejects.append((str(id_col[i]), f"non-finite value in {self.vector_column!r}"))
                    continue
                keep.append(i)
                rows.append(arr)
            out = np.stack(rows) @ self._proj if rows else np.zeros((0, self.dim), np.float32)
        else:
            titles = batch.column("title").to_pylist()
            for i, title in enumerate(titles):
                toks = str(title or "").lower().split() or [""]
                idx = [zlib.crc32(t.encode()) % len(self._token_table) for t in toks]
                rows.append(self._token_table[idx].mean(axis=0))
                keep.append(i)
            out = np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = (out / np.maximum(norms, 1e-12)).astype(np.float32)
        kept = id_col if len(keep) == len(id_col) else id_col.take(pa.array(keep, type=pa.int64()))
        return EncodeResult(kept, out, rejects)
