"""Table readers: Parquet (streamed by record batch), CSV and JSON Lines, dispatched by file suffix.

All readers give the same pandas frame for the same data: list columns (vectors, categories) come
back as Python lists in an ``object`` column whichever the format. In CSV such columns are written
as JSON strings (``"[0.1, 0.2]"``, ``'["a", "b"]'``) and parsed here; only the empty string is read
as a missing value (a title ``"NA"`` stays a title).

Example:
    >>> df = read_table("data_samples/items.parquet", columns=["item_id", "title"])  # doctest: +SKIP
    >>> for batch in iter_record_batches("data_samples/interactions.parquet", batch_size=4096):  # doctest: +SKIP
    ...     print(batch.num_rows)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recfuse.errors import SchemaError

logger = logging.getLogger(__name__)

SUFFIXES: tuple[str, ...] = (".parquet", ".csv", ".jsonl", ".json")


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise SchemaError(f"data file {str(path)!r} does not exist; check the path in [data] or on the command line")


def _select(df: pd.DataFrame, path: Path, columns: Sequence[str] | None) -> pd.DataFrame:
    if columns is None:
        return df
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SchemaError(f"{str(path)!r} has no column(s) {missing}; found columns {list(df.columns)}")
    return df[list(columns)]


def arrow_to_frame(table: pa.Table | pa.RecordBatch) -> pd.DataFrame:
    """Convert Arrow data to pandas with list columns as Python lists (not numpy arrays).

    Args:
        table: an Arrow table or record batch.

    Returns:
        A frame with one column per Arrow column, in order.
    """
    data: dict[str, Any] = {}
    for name, col in zip(table.column_names, table.columns):
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
            data[name] = pd.Series(col.to_pylist(), dtype=object)
        else:
            data[name] = col.to_pandas()
    return pd.DataFrame(data, columns=list(table.column_names))


def read_parquet(path: str | Path, columns: Sequence[str] | None = None, batch_size: int = 65536) -> pd.DataFrame:
    """Read a Parquet file batch by batch (bounded memory while decoding) into one frame."""
    p = Path(path)
    frames = [arrow_to_frame(b) for b in iter_record_batches(p, batch_size=batch_size, columns=columns)]
    if not frames:
        schema = pq.ParquetFile(p).schema_arrow
        names = list(columns) if columns is not None else schema.names
        return pd.DataFrame({n: pd.Series([], dtype=object) for n in names})
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _parse_json_cell(path: Path, column: str, row: int, value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise SchemaError(
            f"{str(path)!r}: column {column!r} row {row} holds {value[:80]!r}, which is not valid JSON ({err.msg}); "
            'write list columns in CSV as JSON, e.g. "[0.1, 0.2]" or \'["a", "b"]\''
        ) from None


def _parse_csv_lists(df: pd.DataFrame, path: Path, row_offset: int = 0) -> pd.DataFrame:
    """Parse columns whose every non-null value is a JSON list literal (``[...]``)."""
    for col in df.columns:
        series = df[col]
        if series.dtype.kind not in ("O", "T") and not isinstance(series.dtype, pd.StringDtype):
            continue
        values = series.tolist()
        present = [v for v in values if isinstance(v, str)]
        if not present or not all(v.lstrip().startswith("[") and v.rstrip().endswith("]") for v in present):
            continue
        parsed = [
            _parse_json_cell(path, str(col), row_offset + i, v) if isinstance(v, str) else None
            for i, v in enumerate(values)
        ]
        df[col] = pd.Series(parsed, dtype=object, index=df.index)
    return df


_CSV_OPTS: dict[str, Any] = {"keep_default_na": False, "na_values": [""]}


def read_csv(path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a CSV file; list columns written as JSON strings are parsed into lists."""
    p = Path(path)
    _check_exists(p)
    try:
        df = pd.read_csv(p, **_CSV_OPTS)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise SchemaError(f"{str(p)!r} is not a readable UTF-8 CSV file: {err}") from None
    except pd.errors.EmptyDataError:
        raise SchemaError(f"{str(p)!r} is empty; a CSV file needs a header row naming the columns") from None
    return _select(_parse_csv_lists(df, p), p, columns)


def _json_records(p: Path) -> list[dict[str, Any]]:
    text = p.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise SchemaError(f"{str(p)!r} is not valid JSON: {err}") from None
        lines: list[Any] = records if isinstance(records, list) else [records]
        where = "element"
    else:
        lines = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise SchemaError(
                    f"{str(p)!r} line {lineno} is not valid JSON ({err.msg}): {line[:80]!r}; "
                    "JSON Lines files hold one JSON object per line"
                ) from None
        where = "line"
    for i, rec in enumerate(lines):
        if not isinstance(rec, dict):
            raise SchemaError(f"{str(p)!r} {where} {i + 1} is {type(rec).__name__}, expected a JSON object per row")
    return lines


def read_jsonl(path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read JSON Lines (one object per line) or a JSON array of objects; no type guessing on values."""
    p = Path(path)
    _check_exists(p)
    records = _json_records(p)
    names: dict[str, None] = {}
    for rec in records:
        names.update(dict.fromkeys(rec))
    data: dict[str, Any] = {}
    for name in names:
        values = [rec.get(name) for rec in records]
        if any(isinstance(v, (list, dict)) for v in values):
            data[name] = pd.Series(values, dtype=object)
        else:
            data[name] = pd.Series(values)
    return _select(pd.DataFrame(data, columns=list(names)), p, columns)


READERS: dict[str, Callable[..., pd.DataFrame]] = {
    ".parquet": read_parquet,
    ".csv": read_csv,
    ".jsonl": read_jsonl,
    ".json": read_jsonl,
}


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise SchemaError(
            f"cannot read {str(path)!r}: unsupported suffix {suffix or '(none)'!r}; "
            f"supported suffixes are {list(SUFFIXES)}"
        )
    return suffix


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a catalog or interactions table, choosing the reader by suffix.

    Args:
        path: ``.parquet``, ``.csv``, ``.jsonl`` or ``.json`` file.
        columns: optional subset of columns to return (all must exist).

    Returns:
        A frame; list columns hold Python lists.

    Raises:
        SchemaError: unknown suffix, missing file, unparseable content or a missing requested column.

    Example:
        >>> read_table("items.csv").columns.tolist()  # doctest: +SKIP
        ['item_id', 'title', 'image_vec']
    """
    p = Path(path)
    reader = READERS[_suffix(p)]
    logger.debug("reading %s", p)
    return reader(p, columns=columns)


def iter_record_batches(
    path: str | Path, batch_size: int = 1024, columns: Sequence[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream a table as Arrow record batches of at most ``batch_size`` rows.

    Parquet is decoded batch by batch (``ParquetFile.iter_batches``); CSV and JSON Lines are parsed
    whole and then sliced (they are the small-data formats).

    Example:
        >>> sum(b.num_rows for b in iter_record_batches("items.parquet", 256))  # doctest: +SKIP
        1500
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    p = Path(path)
    suffix = _suffix(p)
    _check_exists(p)
    if suffix == ".parquet":
        try:
            pf = pq.ParquetFile(p)
        except (pa.ArrowInvalid, OSError) as err:
            raise SchemaError(f"{str(p)!r} is not a readable Parquet file: {err}") from None
        if columns is not None:
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise SchemaError(f"{str(p)!r} has no column(s) {missing}; found columns {pf.schema_arrow.names}")
        yield from pf.iter_batches(batch_size=batch_size, columns=list(columns) if columns is not None else None)
        return
    df = READERS[suffix](p, columns=columns)
    try:
        table = pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise SchemaError(
            f"{str(p)!r}: a column mixes value types and cannot be streamed ({err}); give each column one type"
        ) from None
    yield from table.to_batches(max_chunksize=batch_size)
