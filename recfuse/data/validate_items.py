"""Catalog validation: ids, vector widths, text bounds and images, then the normalised item table.

See :mod:`recfuse.data.validate` for the data contract and the bad-row policy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recfuse.config import ModalityConfig
from recfuse.data.images import check_image
from recfuse.data.report import MAX_PROBLEMS, Problem, TableReport
from recfuse.data.rows import apply_bad_rows, ids_to_str, is_null, short_value
from recfuse.data.schema import ColumnSpec, catalog_specs, check_columns, check_duplicate_ids

logger = logging.getLogger(__name__)


def _vector_problem(v: object, spec: ColumnSpec) -> tuple[str, str] | None:
    if is_null(v):
        return None
    vec = list(v)  # type: ignore[call-overload]
    if len(vec) != spec.dim:
        return "vector_width", f"vector has {len(vec)} values, expected dim {spec.dim} (modality {spec.modality!r})"
    for x in vec:
        if is_null(x):
            return "vector_nan", f"vector holds {x!r}; replace null/NaN values or set the whole vector to null"
        if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
            return "vector_type", f"vector holds {type(x).__name__} {x!r}, expected numbers only"
        if not math.isfinite(float(x)):
            return "vector_nan", f"vector holds {x!r}; replace NaN/inf or set the whole vector to null"
    return None


def validate_catalog(
    items: pd.DataFrame,
    modalities: Sequence[ModalityConfig],
    images_dir: str | Path,
    *,
    path: str = "items",
    on_bad_rows: str = "fail",
    quarantine_dir: str | Path = "quarantine",
    max_problems: int = MAX_PROBLEMS,
    allow_external_images: bool | None = None,
    max_title_chars: int = 1000,
    max_text_chars: int = 20_000,
    long_text: str = "truncate",
    truncated: dict[str, int] | None = None,
) -> tuple[pd.DataFrame, TableReport, set[str]]:
    """Validate and normalise a catalog.

    Args:
        items: the catalog as read (``[n]`` rows).
        modalities: declared modalities (decide required columns, vector dims, image checks).
        images_dir: base of relative image paths.
        path: file name used in messages.
        on_bad_rows: ``fail`` or ``quarantine``.
        quarantine_dir: where ``rejected_items.parquet`` goes.
        max_problems: problem rows kept in the report.
        allow_external_images: image paths may leave ``images_dir`` (None: an ``ImageRoot``'s own setting).
        max_title_chars: longest ``title``; max_text_chars: longest value of other text columns.
        long_text: ``truncate`` (cut, counted in ``truncated``) or ``reject`` (bad row ``text_too_long``).
        truncated: when given, filled with column -> number of values cut.

    Returns:
        ``(kept items, report, ids of rejected items)``.

    Raises:
        SchemaError: table-level problems, or bad rows with ``on_bad_rows="fail"``.
    """
    specs = catalog_specs(modalities)
    check_columns(items, specs, "items", path)
    df = items.reset_index(drop=True).copy()
    df["item_id"] = ids_to_str(df["item_id"])
    check_duplicate_ids(df["item_id"].dropna(), path)
    vec_specs = [s for s in specs if s.kind == "vector"]
    image_specs = [s for s in specs if s.kind == "image" and s.required]
    ids = df["item_id"].tolist()
    bad: dict[int, Problem] = {}
    for pos, item_id in enumerate(ids):
        if item_id is None:
            bad[pos] = Problem(pos, "", "item_id", "null", "null_item_id", "item_id is null; every item needs an id")
    for spec in vec_specs:
        for pos, v in enumerate(df[spec.name].tolist()):
            if pos in bad:
                continue
            found = _vector_problem(v, spec)
            if found:
                bad[pos] = Problem(pos, str(ids[pos]), spec.name, short_value(v), found[0], found[1])
    cut = _bound_text(df, specs, ids, bad, max_title_chars, max_text_chars, long_text)
    if cut:
        logger.warning(
            "%s: cut %s over-long text value(s) to the limits (max_title_chars %d, max_text_chars %d)",
            path,
            ", ".join(f"{n} {col}" for col, n in sorted(cut.items())),
            max_title_chars,
            max_text_chars,
        )
    if truncated is not None:
        truncated.update(cut)
    for spec in image_specs:
        for pos, v in enumerate(df[spec.name].tolist()):
            if pos in bad:
                continue
            found = check_image(v, images_dir, allow_external_images)
            if found:
                bad[pos] = Problem(pos, str(ids[pos]), spec.name, short_value(v), found[0], found[1])
    report = TableReport("items", path, max_problems=max_problems)
    kept = apply_bad_rows(df, bad, report, on_bad_rows, Path(quarantine_dir) / "rejected_items.parquet")
    rejected_ids = {str(ids[p]) for p in bad if ids[p] is not None}
    return _normalise_items(kept, specs, modalities), report, rejected_ids


def _bound_text(
    df: pd.DataFrame,
    specs: Sequence[ColumnSpec],
    ids: list[Any],
    bad: dict[int, Problem],
    max_title_chars: int,
    max_text_chars: int,
    long_text: str,
) -> dict[str, int]:
    """Cut (or mark bad, ``long_text="reject"``) text values over their limit; returns column -> values cut."""
    cut: dict[str, int] = {}
    for spec in specs:
        if spec.kind != "str" or spec.name not in df.columns:
            continue
        limit = max_title_chars if spec.name == "title" else max_text_chars
        values = df[spec.name].tolist()
        long = [pos for pos, v in enumerate(values) if isinstance(v, str) and len(v) > limit]
        if not long:
            continue
        if long_text == "reject":
            for pos in long:
                if pos not in bad:
                    message = (
                        f"{spec.name} has {len(values[pos])} characters, over the limit of {limit}; shorten it, raise "
                        f"[data] {'max_title_chars' if spec.name == 'title' else 'max_text_chars'}, or set long_text = "
                        '"truncate"'
                    )
                    bad[pos] = Problem(
                        pos, str(ids[pos]), spec.name, short_value(values[pos]), "text_too_long", message
                    )
            continue
        for pos in long:
            values[pos] = values[pos][:limit]
        df[spec.name] = pd.Series(values, index=df.index, dtype=object)
        cut[spec.name] = len(long)
    return cut


def _normalise_items(
    df: pd.DataFrame, specs: Sequence[ColumnSpec], modalities: Sequence[ModalityConfig]
) -> pd.DataFrame:
    for spec in specs:
        if spec.kind == "str":
            col = df[spec.name] if spec.name in df.columns else pd.Series([None] * len(df), dtype=object)
            df[spec.name] = pd.Series(["" if is_null(v) else str(v) for v in col.tolist()], dtype=object)
        elif spec.kind == "list_str":
            col = df[spec.name] if spec.name in df.columns else pd.Series([None] * len(df), dtype=object)
            df[spec.name] = pd.Series([[] if is_null(v) else [str(x) for x in v] for v in col.tolist()], dtype=object)
        elif spec.kind == "vector":
            present = [not is_null(v) for v in df[spec.name].tolist()]
            zeros = [0.0] * spec.dim
            df[spec.name] = pd.Series(
                [[float(x) for x in v] if ok else list(zeros) for v, ok in zip(df[spec.name].tolist(), present)],
                dtype=object,
            )
            df[f"has_{spec.modality}"] = np.array(present, dtype=bool)
    image_col = df["image"] if "image" in df.columns else pd.Series([None] * len(df), dtype=object)
    images = [
        None if is_null(v) or v == "" else (bytes(v) if isinstance(v, bytearray) else v) for v in image_col.tolist()
    ]
    df["image"] = pd.Series(images, dtype=object)
    df["has_image"] = np.array([v is not None for v in images], dtype=bool)
    non_empty = {
        name: np.array([bool(str(v).strip()) for v in df[name].tolist()], dtype=bool)
        for name in {c for m in modalities if m.kind == "text" and m.source == "tokens" for c in m.columns}
        | {"title", "description"}
    }
    text_cols = sorted({c for m in modalities if m.kind == "text" and m.source == "tokens" for c in m.columns})
    df["has_text"] = np.logical_or.reduce([non_empty[c] for c in text_cols or ["title", "description"]])
    for m in modalities:
        if m.kind == "image" and m.source != "vector":
            df[f"has_{m.name}"] = df["has_image"] if m.column == "image" else df[m.column].notna()
        elif m.kind == "text" and m.source == "tokens":
            df[f"has_{m.name}"] = np.logical_or.reduce([non_empty[c] for c in m.columns])
        elif m.kind == "categorical":
            df[f"has_{m.name}"] = np.array([len(v) > 0 for v in df[m.column].tolist()], dtype=bool)
    return df
