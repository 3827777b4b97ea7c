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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from recfuse.config import DataConfig, ModalityConfig, default_modalities
from recfuse.data.catalog import load_catalog
from recfuse.data.readers import read_table
from recfuse.data.report import MAX_PROBLEMS, ValidationReport
from recfuse.data.validate_interactions import validate_interactions
from recfuse.data.validate_items import validate_catalog  # noqa: F401  (re-exported: the catalog half of load_dataset)
from recfuse.errors import DataError

logger = logging.getLogger(__name__)


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
    truncated: dict[str, int] = {}
    cat = load_catalog(data_cfg, modalities, max_problems=max_problems, truncated=truncated)
    items, item_report, rejected, images_dir = cat.items, cat.report, cat.rejected, cat.images_dir
    qdir = Path(data_cfg.quarantine_dir) if data_cfg.quarantine_dir else Path(data_cfg.items).parent / "quarantine"
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
