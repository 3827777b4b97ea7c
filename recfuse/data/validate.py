"""Load and validate a catalog and its interactions against the data contract.

Table-level problems (missing/mistyped columns, wrong vector width, duplicate ids) raise
:class:`SchemaError`. Row-level problems (missing or unreadable image, a vector of another width or
with NaN, an interaction with an unknown item, a null user id, a bad timestamp…) either raise with
the first row and the count (``on_bad_rows = "fail"``) or are written to
``<quarantine_dir>/rejected_items.parquet`` / ``rejected_interactions.parquet`` with a
``reject_reason`` column, counted in the report and removed (``"quarantine"``). Never silently.

After validation ``items.item_id`` and ``interactions.user_id/item_id`` are ``str``; text columns are
``str`` (``""`` when missing); ``image`` is a path string, bytes or ``None``; ``categories`` is a list
of strings; each vector column holds lists of ``dim`` floats (zeros when the row has none, see the
``has_<modality>`` flag); ``has_image``/``has_text`` flag presence; ``timestamp`` is int64.

Text fields are bounded (``[data] max_title_chars`` for ``title``, ``max_text_chars`` for every other
text column): a longer value is cut and counted (``long_text = "truncate"``, the default; a note in
the report) or is a bad row with reason ``text_too_long`` (``"reject"``). Image paths must stay
inside the image directory unless ``allow_external_images`` (reason ``image_outside``).

Example:
    >>> cfg = RecfuseConfig.from_toml("data_samples/recfuse.toml")  # doctest: +SKIP
    >>> ds = load_dataset(cfg.data, cfg.modalities)  # doctest: +SKIP
    >>> print(ds.report.to_text())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recfuse.config import DataConfig, ModalityConfig, default_modalities
from recfuse.data.images import check_image, image_root
from recfuse.data.quarantine import write_rejected
from recfuse.data.readers import read_table
from recfuse.data.report import MAX_PROBLEMS, Problem, TableReport, ValidationReport
from recfuse.data.schema import INTERACTION_SPECS, ColumnSpec, catalog_specs, check_columns, check_duplicate_ids
from recfuse.data.vocab import id_str
from recfuse.errors import DataError, SchemaError

logger = logging.getLogger(__name__)

# Unix seconds beyond this (year ~2200) are almost surely milliseconds or garbage.
MAX_TIMESTAMP = 7_258_118_400


@dataclass
class Dataset:
    """A validated catalog + interactions.

    Attributes:
        items: ``[n_items]`` rows, normalised as described in the module docstring.
        interactions: ``[n_interactions]`` rows (user_id, item_id, timestamp, event, weight, …).
        report: what was read, kept and rejected.
        images_dir: base directory of relative image paths.
    """

    items: pd.DataFrame
    interactions: pd.DataFrame
    report: ValidationReport
    images_dir: Path


def _null(v: object) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and v != v) or v is pd.NA


def ids_to_str(series: pd.Series) -> pd.Series:
    """Canonical string ids (``7`` and ``7.0`` -> ``"7"``); nulls stay ``None``."""
    if isinstance(series.dtype, pd.StringDtype) or pd.api.types.is_integer_dtype(series.dtype):
        text = series.astype(object) if isinstance(series.dtype, pd.StringDtype) else series.astype(str).astype(object)
        return text.where(series.notna(), None)
    return pd.Series([None if _null(v) else id_str(v) for v in series.tolist()], index=series.index, dtype=object)


def _short(v: object) -> str:
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    s = v if isinstance(v, str) else str(v)
    return s if len(s) <= 80 else s[:77] + "..."


def _vector_problem(v: object, spec: ColumnSpec) -> tuple[str, str] | None:
    if _null(v):
        return None
    vec = list(v)  # type: ignore[call-overload]
    if len(vec) != spec.dim:
        return "vector_width", f"vector has {len(vec)} values, expected dim {spec.dim} (modality {spec.modality!r})"
    for x in vec:
        if _null(x):
            return "vector_nan", f"vector holds {x!r}; replace null/NaN values or set the whole vector to null"
        if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
            return "vector_type", f"vector holds {type(x).__name__} {x!r}, expected numbers only"
        if not math.isfinite(float(x)):
            return "vector_nan", f"vector holds {x!r}; replace NaN/inf or set the whole vector to null"
    return None


def _finish(
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
                bad[pos] = Problem(pos, str(ids[pos]), spec.name, _short(v), found[0], found[1])
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
                bad[pos] = Problem(pos, str(ids[pos]), spec.name, _short(v), found[0], found[1])
    report = TableReport("items", path, max_problems=max_problems)
    kept = _finish(df, bad, report, on_bad_rows, Path(quarantine_dir) / "rejected_items.parquet")
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
                    bad[pos] = Problem(pos, str(ids[pos]), spec.name, _short(values[pos]), "text_too_long", message)
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
            df[spec.name] = pd.Series(["" if _null(v) else str(v) for v in col.tolist()], dtype=object)
        elif spec.kind == "list_str":
            col = df[spec.name] if spec.name in df.columns else pd.Series([None] * len(df), dtype=object)
            df[spec.name] = pd.Series([[] if _null(v) else [str(x) for x in v] for v in col.tolist()], dtype=object)
        elif spec.kind == "vector":
            present = [not _null(v) for v in df[spec.name].tolist()]
            zeros = [0.0] * spec.dim
            df[spec.name] = pd.Series(
                [[float(x) for x in v] if ok else list(zeros) for v, ok in zip(df[spec.name].tolist(), present)],
                dtype=object,
            )
            df[f"has_{spec.modality}"] = np.array(present, dtype=bool)
    image_col = df["image"] if "image" in df.columns else pd.Series([None] * len(df), dtype=object)
    images = [
        None if _null(v) or v == "" else (bytes(v) if isinstance(v, bytearray) else v) for v in image_col.tolist()
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


def _timestamp_problems(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(int64 seconds [n], bad mask [n])``."""
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        bad = series.isna().to_numpy()
        secs = (series.astype("datetime64[s]").astype("int64")).to_numpy()
        return np.where(bad, 0, secs).astype(np.int64), bad
    num = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(num) | (num < 0) | (num > MAX_TIMESTAMP) | (np.floor(np.nan_to_num(num)) != np.nan_to_num(num))
    return np.where(bad, 0, np.nan_to_num(num)).astype(np.int64), bad


def validate_interactions(
    interactions: pd.DataFrame,
    item_ids: set[str],
    *,
    rejected_items: set[str] | None = None,
    path: str = "interactions",
    on_bad_rows: str = "fail",
    quarantine_dir: str | Path = "quarantine",
    max_problems: int = MAX_PROBLEMS,
) -> tuple[pd.DataFrame, TableReport]:
    """Validate and normalise interactions against the kept catalog ids.

    Args:
        interactions: ``[n]`` rows as read.
        item_ids: ids of the kept catalog items.
        rejected_items: ids of catalog rows that were rejected (reason ``item_rejected`` instead of
            ``unknown_item``).

    Returns:
        ``(kept interactions, report)``; columns user_id, item_id (str), timestamp (int64), event (str),
        weight (float64) and any extra columns.
    """
    check_columns(interactions, INTERACTION_SPECS, "interactions", path)
    df = interactions.reset_index(drop=True).copy()
    users = ids_to_str(df["user_id"])
    items = ids_to_str(df["item_id"])
    secs, bad_ts = _timestamp_problems(df["timestamp"])
    weight = (
        pd.to_numeric(df["weight"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if "weight" in df.columns
        else np.ones(len(df))
    )
    bad_weight = ~np.isfinite(weight) | (weight < 0)
    user_null = users.isna().to_numpy()
    item_null = items.isna().to_numpy()
    known = items.isin(item_ids).to_numpy()
    rejected = items.isin(rejected_items or set()).to_numpy()
    raw_ts = df["timestamp"].tolist()
    raw_w = df["weight"].tolist() if "weight" in df.columns else [1.0] * len(df)
    checks = (
        (user_null, "user_id", None, "null_user_id", "user_id is null; every interaction needs a user"),
        (item_null, "item_id", None, "null_item_id", "item_id is null; every interaction needs an item"),
        (bad_ts, "timestamp", raw_ts, "bad_timestamp",
         f"timestamp must be whole unix seconds in [0, {MAX_TIMESTAMP}] (milliseconds? divide by 1000)"),
        (bad_weight, "weight", raw_w, "bad_weight", "weight must be a finite number >= 0"),
        (rejected, "item_id", None, "item_rejected", "the item's catalog row was rejected (see rejected items)"),
        (~known, "item_id", None, "unknown_item", "item_id is not in the catalog; add the item or fix the id"),
    )  # fmt: skip
    bad: dict[int, Problem] = {}
    for mask, field, raw, reason, message in checks:
        for pos in np.flatnonzero(mask).tolist():
            if pos in bad:
                continue
            value = raw[pos] if raw is not None else df[field].iloc[pos]
            who = f"{users.iloc[pos]} -> {items.iloc[pos]}"
            bad[pos] = Problem(pos, who, field, _short(value), reason, message)
    df["user_id"] = users
    df["item_id"] = items
    df["timestamp"] = secs
    df["weight"] = np.where(bad_weight, 0.0, weight)
    report = TableReport("interactions", path, max_problems=max_problems)
    if "event" in df.columns:
        df["event"] = df["event"].astype(object).where(df["event"].notna(), "").astype(str).astype(object)
    kept = _finish(df, bad, report, on_bad_rows, Path(quarantine_dir) / "rejected_interactions.parquet")
    if "event" not in kept.columns:
        kept["event"] = pd.Series([""] * len(kept), dtype=object)
    kept["timestamp"] = kept["timestamp"].astype(np.int64)
    kept["weight"] = kept["weight"].astype(np.float64)
    return kept, report


def load_dataset(
    data_cfg: DataConfig,
    modalities: Sequence[ModalityConfig] = default_modalities(),
    *,
    max_problems: int = MAX_PROBLEMS,
) -> Dataset:
    """Read, validate and normalise the catalog and interactions named in ``data_cfg``.

    Args:
        data_cfg: file paths, images_dir (default: the catalog's directory), bad-row policy,
            quarantine_dir (default: ``quarantine/`` beside the catalog).
        modalities: declared modalities.
        max_problems: problem rows listed per table in the report.

    Returns:
        :class:`Dataset`.

    Raises:
        SchemaError: table-level problems, or bad rows when ``on_bad_rows == "fail"``.
        DataError: nothing usable is left.

    Example:
        >>> ds = load_dataset(DataConfig(items="items.csv", interactions="events.jsonl"))  # doctest: +SKIP
        >>> ds.report.items.ok, ds.report.interactions.rejected  # doctest: +SKIP
        (200, 0)
    """
    items_path = Path(data_cfg.items)
    images_dir = image_root(
        data_cfg.images_dir if data_cfg.images_dir else items_path.parent, data_cfg.allow_external_images
    )
    qdir = Path(data_cfg.quarantine_dir) if data_cfg.quarantine_dir else items_path.parent / "quarantine"
    items_raw = read_table(items_path)
    truncated: dict[str, int] = {}
    items, item_report, rejected = validate_catalog(
        items_raw, modalities, images_dir, path=str(items_path), on_bad_rows=data_cfg.on_bad_rows,
        quarantine_dir=qdir, max_problems=max_problems, max_title_chars=data_cfg.max_title_chars,
        max_text_chars=data_cfg.max_text_chars, long_text=data_cfg.long_text, truncated=truncated,
    )  # fmt: skip
    if items.empty:
        raise DataError(f"items file {str(items_path)!r}: no usable items ({item_report.rejected} rejected)")
    inter_raw = read_table(data_cfg.interactions)
    inter, inter_report = validate_interactions(
        inter_raw, set(items["item_id"]), rejected_items=rejected, path=str(data_cfg.interactions),
        on_bad_rows=data_cfg.on_bad_rows, quarantine_dir=qdir, max_problems=max_problems,
    )  # fmt: skip
    if inter.empty:
        raise DataError(
            f"interactions file {data_cfg.interactions!r}: no usable interactions ({inter_report.rejected} rejected)"
        )
    report = ValidationReport(item_report, inter_report, users=int(inter["user_id"].nunique()))
    if truncated:
        cut = ", ".join(f"{col}: {n}" for col, n in sorted(truncated.items()))
        report.notes.append(
            f"items: text values cut to the limits (max_title_chars {data_cfg.max_title_chars}, "
            f"max_text_chars {data_cfg.max_text_chars}): {cut}"
        )
    report.coverage = coverage(items, modalities)
    logger.info("loaded %d items, %d interactions", len(items), len(inter))
    return Dataset(items, inter, report, images_dir)


def coverage(items: pd.DataFrame, modalities: Sequence[ModalityConfig]) -> dict[str, float]:
    """Share of items having each modality (``has_<name>`` flags), plus image and text."""
    out: dict[str, float] = {}
    n = max(len(items), 1)
    for name in ["image", "text", *[m.name for m in modalities]]:
        col = f"has_{name}"
        if col in items.columns and name not in out:
            out[name] = float(items[col].sum()) / n
    return out


def with_paths(data_cfg: DataConfig, **changes: str) -> DataConfig:
    """Copy of ``data_cfg`` with the given non-empty fields replaced (CLI overrides)."""
    kept: dict[str, Any] = {k: v for k, v in changes.items() if v}
    return dataclasses.replace(data_cfg, **kept)
