"""Table-level checks of the data contract: required columns and their types.

A table-level problem (a missing or mistyped column, a vector column of the wrong width, duplicate
item ids) means the file or the config is wrong as a whole, so it raises :class:`SchemaError` at
once; row-level problems are handled by :mod:`recfuse.data.validate`.

Example:
    >>> specs = catalog_specs(default_modalities())  # doctest: +SKIP
    >>> check_columns(items_df, specs, "items", "items.parquet")  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recfuse.config import ModalityConfig
from recfuse.errors import SchemaError

# Column kinds and how they are described in messages.
KIND_TEXT = {
    "id": "string or integer id",
    "str": "string",
    "timestamp": "int64 unix seconds",
    "number": "float",
    "list_str": "list of strings",
    "vector": "list of floats",
    "image": "relative path string or encoded image bytes",
}

OPTIONAL_TEXT_COLUMNS = ("description",)


@dataclass(frozen=True)
class ColumnSpec:
    """Expected column: ``kind`` is a key of :data:`KIND_TEXT`; ``modality`` names the declaring modality."""

    name: str
    kind: str
    required: bool = True
    modality: str = ""
    dim: int = 0


def catalog_specs(modalities: Sequence[ModalityConfig]) -> list[ColumnSpec]:
    """Columns the catalog must (or may) have, given the declared modalities."""
    specs: dict[str, ColumnSpec] = {
        "item_id": ColumnSpec("item_id", "id"),
        "title": ColumnSpec("title", "str"),
        "description": ColumnSpec("description", "str", required=False),
        "image": ColumnSpec("image", "image", required=False),
        "categories": ColumnSpec("categories", "list_str", required=False),
    }
    for m in modalities:
        if m.source == "vector" or m.kind == "vector":
            specs[m.column] = ColumnSpec(m.column, "vector", True, m.name, m.dim)
        elif m.kind == "image":
            specs[m.column] = ColumnSpec(m.column, "image", True, m.name)
        elif m.kind == "text":
            for col in m.columns:
                specs[col] = ColumnSpec(col, "str", col not in OPTIONAL_TEXT_COLUMNS, m.name)
        elif m.kind == "categorical":
            for col in m.columns:
                specs[col] = ColumnSpec(col, "list_str", True, m.name)
    return list(specs.values())


INTERACTION_SPECS: tuple[ColumnSpec, ...] = (
    ColumnSpec("user_id", "id"),
    ColumnSpec("item_id", "id"),
    ColumnSpec("timestamp", "timestamp"),
    ColumnSpec("event", "str", required=False),
    ColumnSpec("weight", "number", required=False),
)


def _is_null(v: object) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and v != v) or v is pd.NA or v is pd.NaT


def _is_list(v: object) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


def _value_ok(kind: str, v: object) -> bool:
    if kind == "id":
        return isinstance(v, (str, int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer())
    if kind == "str":
        return isinstance(v, str)
    if kind == "timestamp":
        # Strings are judged per row (bad_timestamp) unless none parses; see check_columns.
        return isinstance(v, (int, np.integer, float, np.floating, str)) and not isinstance(v, bool)
    if kind == "number":
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    if kind == "list_str":
        return _is_list(v) and all(isinstance(x, str) for x in v)  # type: ignore[attr-defined]
    if kind == "vector":
        return _is_list(v)
    if kind == "image":
        return isinstance(v, (str, bytes, bytearray))
    raise ValueError(f"unknown column kind {kind!r}")


def _describe(v: object) -> str:
    if _is_list(v):
        inner = sorted({type(x).__name__ for x in v})  # type: ignore[attr-defined]
        return f"list of {'/'.join(inner) or 'nothing'}"
    return type(v).__name__


def _parses_as_number(v: object) -> bool:
    if not isinstance(v, str):
        return True
    try:
        float(v)
    except ValueError:
        return False
    return True


def _fast_ok(kind: str, series: pd.Series) -> bool:
    """Whole-column dtype shortcut (skips the per-value scan for large, well-typed columns)."""
    dtype = series.dtype
    if kind in ("id", "timestamp", "number") and pd.api.types.is_integer_dtype(dtype):
        return not pd.api.types.is_bool_dtype(dtype)
    if kind in ("timestamp", "number") and pd.api.types.is_float_dtype(dtype):
        return True
    return kind in ("str", "id") and isinstance(dtype, pd.StringDtype)


def check_columns(df: pd.DataFrame, specs: Sequence[ColumnSpec], table: str, path: str) -> None:
    """Raise :class:`SchemaError` for a missing required column or a column of the wrong type.

    Args:
        df: the table as read.
        specs: expected columns.
        table: ``items`` or ``interactions`` (for messages).
        path: file path (for messages).
    """
    found = list(map(str, df.columns))
    for spec in specs:
        if spec.name not in df.columns:
            if not spec.required:
                continue
            who = f" (declared by modality {spec.modality!r})" if spec.modality else ""
            raise SchemaError(
                f"{table} file {path!r} is missing column {spec.name!r}{who}, expected type {KIND_TEXT[spec.kind]}; "
                f"found columns {found}"
            )
        series = df[spec.name]
        if spec.kind == "timestamp" and pd.api.types.is_datetime64_any_dtype(series.dtype):
            continue  # converted to unix seconds by the validator
        if _fast_ok(spec.kind, series):
            continue
        values = series.tolist()
        for row, v in enumerate(values):
            if _is_null(v) or _value_ok(spec.kind, v):
                continue
            raise SchemaError(
                f"{table} file {path!r}: column {spec.name!r} has the wrong type: expected {KIND_TEXT[spec.kind]}, "
                f"found {_describe(v)} (dtype {series.dtype}; e.g. row {row}: {str(v)[:60]!r})"
            )
        if spec.kind == "timestamp":
            present = [v for v in values if not _is_null(v)]
            if present and not any(_parses_as_number(v) for v in present):
                raise SchemaError(
                    f"{table} file {path!r}: column {spec.name!r} has the wrong type: "
                    f"expected {KIND_TEXT['timestamp']}, found str "
                    f"(dtype {series.dtype}; e.g. {str(present[0])[:60]!r}); "
                    "convert the column to integer seconds since 1970-01-01 UTC"
                )
        if spec.kind == "vector":
            check_vector_width(df, spec, table, path)


def check_vector_width(df: pd.DataFrame, spec: ColumnSpec, table: str, path: str) -> None:
    """Raise when the usual (most common) width of a vector column differs from the declared dim.

    Single rows of another width are row-level problems (``vector_width``), handled by the validator.
    """
    widths = Counter(len(v) for v in df[spec.name].tolist() if _is_list(v))
    if not widths:
        return
    width, _ = widths.most_common(1)[0]
    if width == spec.dim:
        return
    values = df[spec.name].tolist()
    row = next(i for i, v in enumerate(values) if _is_list(v) and len(v) == width)
    item = df["item_id"].iloc[row] if "item_id" in df.columns else row
    raise SchemaError(
        f"{table} file {path!r}: vector column {spec.name!r} (modality {spec.modality!r}) has width {width} "
        f"in {widths[width]} of {sum(widths.values())} rows (e.g. row {row}, item {str(item)!r}), "
        f"expected dim {spec.dim}; set dim = {width} for this modality in [[modalities]] or fix the column"
    )


def check_duplicate_ids(ids: pd.Series, path: str, show: int = 5) -> None:
    """Raise when catalog item ids repeat (after canonicalisation to strings), listing some."""
    counts = ids.value_counts()
    dupes = counts[counts > 1]
    if len(dupes):
        sample = ", ".join(f"{k!r} x{v}" for k, v in list(dupes.items())[:show])
        raise SchemaError(
            f"items file {path!r}: {len(dupes)} item id(s) appear more than once ({sample}); "
            "item_id must be unique in the catalog: drop or merge the duplicate rows"
        )
