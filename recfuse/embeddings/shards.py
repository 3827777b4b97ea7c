"""Atomic Parquet writes for embedding shards, reject files and the job manifest."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from recfuse.fsio import atomic_write_json as atomic_write_json
from recfuse.fsio import atomic_write_parquet, sha256_file

# The names the engines use; the one implementation lives in recfuse.fsio.
atomic_write_table = atomic_write_parquet
sha256 = sha256_file


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
