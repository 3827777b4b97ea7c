"""Reading ``recfuse prepare``'s input: Parquet files batch by batch, ids as strings, timestamps as seconds.

The rules match :func:`recfuse.data.validate_interactions.validate_interactions`: integer ids become
strings, a timestamp must be whole unix seconds in ``[0, MAX_TIMESTAMP]`` (else null: an unusable
row), and ``weight`` is read when present only so that rows with a bad weight are left out.

Example:
    >>> for path, batch in batches(input_files("runs/interactions/"), 262_144, COLUMNS):  # doctest: +SKIP
    ...     users = ids(batch.column("user_id"), "user_id", path)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recfuse.data.splits import SPLIT_COLUMN
from recfuse.data.validate_interactions import MAX_TIMESTAMP
from recfuse.errors import SchemaError

__all__ = ["WEIGHT", "batches", "ids", "input_files", "timestamps"]

WEIGHT = "weight"  # optional: read only to leave out the rows `recfuse validate` rejects


def input_files(src: str | Path) -> list[Path]:
    """The Parquet files of ``src`` (a file, or every ``*.parquet`` under a folder), sorted."""
    path = Path(src)
    if path.is_file():
        if path.suffix.lower() not in (".parquet", ".pq"):
            raise SchemaError(
                f"`interactions` {str(path)!r} is not a Parquet file; `recfuse prepare` streams Parquet only "
                "(convert it, e.g. pandas read_csv(...).to_parquet(...))"
            )
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if files:
            return files
        raise SchemaError(f"`interactions` folder {str(path)!r} holds no *.parquet file; point it at Parquet data")
    raise SchemaError(f"`interactions` {str(path)!r} does not exist; give a Parquet file or a folder of them")


def ids(col: pa.ChunkedArray | pa.Array, name: str, path: Path) -> pa.Array:
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return pc.cast(col, pa.string())
    if pa.types.is_integer(col.type):
        return pc.cast(col, pa.string())  # ids are strings everywhere: 7 -> "7" (see recfuse.data.vocab)
    raise SchemaError(
        f"`{name}` in {str(path)!r} has type {col.type}; ids must be strings or integers (cast the column)"
    )


def timestamps(col: pa.ChunkedArray | pa.Array, path: Path) -> pa.Array:
    """int64 unix seconds; unusable values (NaN, non-integral floats, outside [0, MAX_TIMESTAMP]) become null."""
    if pa.types.is_timestamp(col.type):
        return pc.cast(pc.cast(col, pa.timestamp("s"), safe=False), pa.int64())
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        values = col.to_numpy(zero_copy_only=False).astype(np.float64)
        ok = np.isfinite(values) & (values == np.floor(values)) & (values >= 0) & (values <= MAX_TIMESTAMP)
        if pa.types.is_integer(col.type):  # exact int64 (a float64 round trip is exact below 2**53 only)
            ints = np.asarray(pc.fill_null(pc.cast(col, pa.int64()), 0).to_numpy(zero_copy_only=False))
            return pa.array(np.where(ok, ints, 0), pa.int64(), mask=~ok)
        return pa.array(np.where(ok, values, 0).astype(np.int64), mask=~ok)
    raise SchemaError(
        f"`timestamp` in {str(path)!r} has type {col.type}; expected int64 unix seconds "
        "(convert it, e.g. pandas to_datetime(...).astype('int64') // 10**9)"
    )


def batches(files: list[Path], batch_rows: int, columns: tuple[str, ...]) -> Iterator[tuple[Path, pa.RecordBatch]]:
    for path in files:
        pf = pq.ParquetFile(path)
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            why = (
                f"; `data.split` = 'column' needs a {SPLIT_COLUMN!r} column (train / valid / test)"
                if SPLIT_COLUMN in missing
                else " (see recfuse validate)"
            )
            raise SchemaError(f"{str(path)!r} lacks column(s) {missing}; interactions need {list(columns)}{why}")
        read = [*columns, WEIGHT] if WEIGHT in pf.schema_arrow.names else list(columns)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=read, use_threads=False):
            yield path, batch
