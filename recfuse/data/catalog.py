"""Load and validate the catalog alone, for runs that stream the interactions instead of loading them.

``recfuse prepare --config`` keeps only interactions whose item the validated catalog holds (as
``load_dataset`` does), and ``recfuse train --prepared`` needs the items without the interactions:
both read the catalog exactly as :func:`recfuse.data.validate.load_dataset` does.

Example:
    >>> cat = load_catalog(cfg.data, cfg.modalities)  # doctest: +SKIP
    >>> len(cat.items), cat.images_dir                 # doctest: +SKIP
    (1200, PosixPath('data_samples'))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from recfuse.config import DataConfig, ModalityConfig, default_modalities
from recfuse.data.images import image_root
from recfuse.data.readers import read_table
from recfuse.data.report import MAX_PROBLEMS, TableReport
from recfuse.data.validate_items import validate_catalog
from recfuse.errors import DataError


@dataclass
class Catalog:
    """A validated catalog.

    Attributes:
        items: ``[n_items]`` rows, normalised as ``load_dataset`` normalises them.
        report: what was read, kept and rejected.
        rejected: ids of rejected catalog rows.
        images_dir: base directory of relative image paths.
    """

    items: pd.DataFrame
    report: TableReport
    rejected: set[str]
    images_dir: Path


def load_catalog(
    data_cfg: DataConfig,
    modalities: Sequence[ModalityConfig] = default_modalities(),
    *,
    max_problems: int = MAX_PROBLEMS,
    truncated: dict[str, int] | None = None,
) -> Catalog:
    """Read and validate ``data_cfg.items`` (the interactions are not read).

    ``truncated``, when given, receives per text column the number of values cut to the limits.

    Raises:
        SchemaError: table-level problems, or bad rows when ``on_bad_rows == "fail"``.
        DataError: no usable item.
    """
    items_path = Path(data_cfg.items)
    images_dir = image_root(
        data_cfg.images_dir if data_cfg.images_dir else items_path.parent, data_cfg.allow_external_images
    )
    qdir = Path(data_cfg.quarantine_dir) if data_cfg.quarantine_dir else items_path.parent / "quarantine"
    items, report, rejected = validate_catalog(
        read_table(items_path), modalities, images_dir, path=str(items_path), on_bad_rows=data_cfg.on_bad_rows,
        quarantine_dir=qdir, max_problems=max_problems, max_title_chars=data_cfg.max_title_chars,
        max_text_chars=data_cfg.max_text_chars, long_text=data_cfg.long_text, truncated=truncated,
    )  # fmt: skip
    if items.empty:
        raise DataError(f"items file {str(items_path)!r}: no usable items ({report.rejected} rejected)")
    return Catalog(items, report, rejected, images_dir)
