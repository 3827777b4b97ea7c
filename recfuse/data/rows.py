"""Row-level helpers shared by the catalog and interaction checks, and the bad-row policy.

A bad row either stops validation with the first one and the count (``on_bad_rows = "fail"``) or is
written to a quarantine side file and removed (``"quarantine"``); either way it is counted in the
report, never silently dropped.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from recfuse.data.quarantine import write_rejected
from recfuse.data.report import Problem, TableReport
from recfuse.data.vocab import id_str
from recfuse.errors import SchemaError

logger = logging.getLogger(__name__)


def is_null(v: object) -> bool:
    """``v`` is a missing value: None, NaN or ``pd.NA``."""
    return v is None or (isinstance(v, (float, np.floating)) and v != v) or v is pd.NA


def ids_to_str(series: pd.Series) -> pd.Series:
    """Canonical string ids (``7`` and ``7.0`` -> ``"7"``); nulls stay ``None``."""
    if isinstance(series.dtype, pd.StringDtype) or pd.api.types.is_integer_dtype(series.dtype):
        text = series.astype(object) if isinstance(series.dtype, pd.StringDtype) else series.astype(str).astype(object)
        return text.where(series.notna(), None)
    return pd.Series([None if is_null(v) else id_str(v) for v in series.tolist()], index=series.index, dtype=object)


def short_value(v: object) -> str:
    """``v`` as report text: at most 80 characters, bytes as their length."""
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    s = v if isinstance(v, str) else str(v)
    return s if len(s) <= 80 else s[:77] + "..."


def apply_bad_rows(
    df: pd.DataFrame,
    bad: dict[int, Problem],
    report: TableReport,
    on_bad_rows: str,
    quarantine_file: Path,
) -> pd.DataFrame:
    """Apply the bad-row policy; returns the kept rows (positions not in ``bad``)."""
    report.read = len(df)
    report.ok = len(df) - len(bad)
    positions = sorted(bad)
    for pos in positions:
        report.reject(bad[pos])
    if not positions:
        return df
    if on_bad_rows == "fail":
        first = bad[positions[0]]
        raise SchemaError(
            f"{report.name} file {report.path!r}: {len(positions)} row(s) cannot be used "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(report.reasons.items()))}); first: {first.to_text()}; "
            'fix the rows, or set [data] on_bad_rows = "quarantine" (or pass --quarantine DIR) to set them aside'
        )
    write_rejected(df.iloc[positions], positions, [bad[p].reason for p in positions], quarantine_file)
    report.quarantine_file = str(quarantine_file)
    logger.warning("%s: %d row(s) quarantined to %s", report.name, len(positions), quarantine_file)
    return df.drop(index=df.index[positions]).reset_index(drop=True)
