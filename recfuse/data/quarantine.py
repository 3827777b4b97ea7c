"""Quarantine side files: rejected rows written to Parquet with a ``reject_reason`` column.

Rows keep their original columns (values that Arrow cannot store in their original type, such as a
vector holding a string, are written as JSON text) plus ``row`` (0-based position in the input) and
``reject_reason``. Writes are atomic (temp file + fsync + rename).

Example:
    >>> write_rejected(bad_df, reasons, Path("quarantine/rejected_items.parquet"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from recfuse.fsio import atomic_write_parquet

logger = logging.getLogger(__name__)


def _jsonish(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def _to_table(frame: pd.DataFrame) -> pa.Table:
    arrays: dict[str, pa.Array] = {}
    for col in frame.columns:
        values = frame[col].tolist()
        try:
            arrays[str(col)] = pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            arrays[str(col)] = pa.array([_jsonish(v) for v in values], type=pa.string())
    return pa.table(arrays)


def write_rejected(frame: pd.DataFrame, rows: Sequence[int], reasons: Sequence[str], path: Path) -> Path:
    """Write rejected rows with their input position and reason.

    Args:
        frame: the rejected rows (original columns).
        rows: ``[n]`` 0-based input positions of those rows.
        reasons: ``[n]`` reason codes.
        path: target Parquet file.

    Returns:
        ``path``.
    """
    out = frame.reset_index(drop=True).copy()
    out["row"] = list(rows)
    out["reject_reason"] = list(reasons)
    atomic_write_parquet(path, _to_table(out))
    logger.info("wrote %d rejected rows to %s", len(out), path)
    return path
