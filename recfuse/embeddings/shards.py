"""Atomic Parquet writes for embedding shards, reject files and the job manifest."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REJECT_SCHEMA = pa.schema([("item_id", pa.string()), ("reason", pa.string())])


def shard_name(i: int) -> str:
    return f"part-{i:05d}.parquet"


def embeddings_table(item_ids: list[str] | pa.Array, vectors: np.ndarray) -> pa.Table:
    """``item_id`` string + ``vector`` fixed_size_list<float32>[d]."""
    d = int(vectors.shape[1])
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    vec = pa.FixedSizeListArray.from_arrays(flat, d)
    ids = item_ids if isinstance(item_ids, (pa.Array, pa.ChunkedArray)) else pa.array(item_ids, type=pa.string())
    return pa.table({"item_id": ids, "vector": vec})


def rejects_table(rejects: list[tuple[str, str]]) -> pa.Table:
    return pa.table(
        {"item_id": [r[0] for r in rejects], "reason": [r[1] for r in rejects]}, schema=REJECT_SCHEMA
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_table(path: Path, table: pa.Table) -> None:
    """Write ``table`` to ``path`` via temp file + fsync + rename (deterministic bytes for equal tables)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
