"""Input checks for the index: shapes, dtypes, finiteness and ids, with messages that say the fix."""

from __future__ import annotations

from typing import Any

import numpy as np

from recfuse.errors import InvalidRequestError, RecfuseError, SchemaError
from recfuse.types import FloatArray, Int64Array


def check_vectors(
    vectors: Any, name: str = "vectors", dim: int | None = None, error: type[RecfuseError] = SchemaError
) -> FloatArray:
    """Return ``vectors`` as a C-contiguous float32 ``[n, d]`` array or raise ``error`` (SchemaError by default)."""
    arr = np.asarray(vectors)
    if arr.ndim != 2:
        raise error(f"`{name}` must be rank 2 [n, dim], got shape {arr.shape}; reshape it to 2-D")
    if not np.issubdtype(arr.dtype, np.floating):
        raise error(f"`{name}` must be a float array (float32), got dtype {arr.dtype}; cast with .astype(np.float32)")
    if arr.shape[1] == 0:
        raise error(f"`{name}` must have dim >= 1, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise error(f"`{name}` must have dim {dim} (the index's), got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise error(
            f"`{name}` has {len(bad)} row(s) with NaN/inf values (first rows {bad[:5].tolist()}); "
            "drop or re-embed them"
        )
    return arr


def check_ids(ids: Any, n: int, existing: Int64Array | None = None) -> Int64Array:
    """Return ``ids`` as int64 ``[n]`` (unique, >= 0, not in ``existing``) or raise :class:`SchemaError`."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise SchemaError(f"`ids` must be rank 1 [n], got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise SchemaError(f"`ids` must be integers (int64 catalog ids), got dtype {arr.dtype}")
    if len(arr) != n:
        raise SchemaError(f"`ids` must have one id per vector ({n}), got {len(arr)}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise SchemaError(
            f"`ids` must be >= 0 (-1 marks padding in results), got {int(arr.min())}; map ids to non-negative ints"
        )
    uniq, counts = np.unique(arr, return_counts=True)
    if len(uniq) != len(arr):
        dupes = uniq[counts > 1]
        raise SchemaError(f"`ids` must be unique, got {len(dupes)} duplicate id(s), e.g. {dupes[:5].tolist()}")
    if existing is not None and len(existing):
        clash = arr[np.isin(arr, existing)]
        if len(clash):
            raise SchemaError(
                f"`ids` must be new to the index, got {len(clash)} id(s) already present, e.g. {clash[:5].tolist()}; "
                "rebuild the index to replace items"
            )
    return arr


def check_k(k: Any) -> int:
    """``k`` as a positive int or :class:`InvalidRequestError`."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidRequestError(f"`k` must be a positive integer, got {k!r}")
    return int(k)
