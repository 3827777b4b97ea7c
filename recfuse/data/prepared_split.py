"""The split a ``recfuse prepare`` folder records, read back without the training interactions.

``recfuse prepare --config`` splits while it streams (:mod:`recfuse.data.prepare`): the training
rows are the shards, val and test are small Parquet files, and the manifest's ``split`` holds the
record :meth:`recfuse.data.splits.Split.record` gives for the same data in memory. A
:class:`PreparedSplit` stands where a :class:`~recfuse.data.splits.Split` stands in training: it
has ``val``, ``test``, ``kind``, ``seed``, ``record()`` and ``fingerprint()``, and ``train`` is a
:class:`TrainingRows` (the size and each user's distinct items, from the manifest and
``users.parquet``), not a frame.

Example:
    >>> split = load_prepared_split("runs/prepared", cfg.data)  # doctest: +SKIP
    >>> split.record()["fingerprint"] == Split.record()["fingerprint"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from recfuse.config import DataConfig
from recfuse.data.prepare import load_manifest
from recfuse.errors import ConfigError
from recfuse.types import Int64Array

__all__ = ["PreparedSplit", "TrainingRows", "load_prepared_split"]


@dataclass(frozen=True)
class TrainingRows:
    """The training part of a split that stays on disk: what the pre-flight checks read of it.

    Attributes:
        rows: training interactions.
        user_items: ``[users]`` distinct training items of each user.
    """

    rows: int
    user_items: Int64Array

    def __len__(self) -> int:
        return self.rows

    @property
    def empty(self) -> bool:
        return self.rows == 0

    def median_user_items(self) -> float:
        """Median distinct training items per user (0 without users)."""
        return float(np.median(self.user_items)) if len(self.user_items) else 0.0


@dataclass(frozen=True)
class PreparedSplit:
    """The split of a prepared folder.

    Attributes:
        folder: the prepared folder (its shards are the training rows).
        manifest: its manifest.
        train: :class:`TrainingRows`.
        val: the validation rows (user_id, item_id, timestamp).

    The test rows are not held: training never reads them, and at 20M interactions under the 8:1:1
    ``random`` split they are 2M rows (~120 MB of RSS as a frame). :attr:`test` reads them from the
    folder on each access; :attr:`test_rows` counts them from the manifest.
    """

    folder: Path
    manifest: dict[str, Any]
    train: TrainingRows
    val: pd.DataFrame

    @property
    def test(self) -> pd.DataFrame:
        """The test rows (user_id, item_id, timestamp), read from the folder (not kept)."""
        return pd.read_parquet(self.folder / self.manifest["test_file"]["file"])

    @property
    def test_rows(self) -> int:
        """Number of test rows (from the manifest, without reading them)."""
        return int(self.manifest["split"]["test"])

    @property
    def kind(self) -> str:
        return str(self.manifest["split"]["kind"])

    @property
    def seed(self) -> int:
        return int(self.manifest["split"]["seed"])

    def record(self) -> dict[str, Any]:
        """The keys and values ``Split.record()`` gives for the same data split in memory."""
        return {k: v for k, v in self.manifest["split"].items() if k != "cold_item_fraction"}

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.record().items() if k != "fingerprint"}

    def fingerprint(self) -> str:
        return str(self.manifest["split"]["fingerprint"])


def load_prepared_split(folder: str | Path, data: DataConfig, verify: bool = True) -> PreparedSplit | None:
    """The split ``folder`` records, checked against the config's; ``None`` if it records none.

    Raises:
        ConfigError: the folder was split with another kind, seed or cold-item fraction than
            ``data`` asks for (both named), or is not a prepared folder.
    """
    from recfuse.errors import ArtifactError

    root = Path(folder)
    try:
        manifest = load_manifest(root, verify=verify)
    except ArtifactError as err:
        raise ConfigError(f"--prepared {str(root)!r}: {err}") from err
    rec = manifest.get("split")
    if not rec:
        return None
    want = {"kind": data.split, "seed": data.split_seed}
    have = {"kind": rec.get("kind"), "seed": rec.get("seed")}
    if data.split == "cold_start":
        want["cold_item_fraction"], have["cold_item_fraction"] = data.cold_item_fraction, rec.get("cold_item_fraction")
    if want != have:
        raise ConfigError(
            f"--prepared {str(root)!r} was split with {_settings(have)} but the config asks for {_settings(want)}; "
            "re-run `recfuse prepare --config` with this config, or set the config's [data] split to the folder's"
        )
    users = pq.read_table(root / manifest["users_file"]["file"])
    user_items = (
        users.column("items").to_numpy().astype(np.int64) if "items" in users.column_names else np.zeros(0, np.int64)
    )
    val = pd.read_parquet(root / manifest["val_file"]["file"])
    return PreparedSplit(root, manifest, TrainingRows(int(manifest["rows"]), user_items), val)


def _settings(s: dict[str, Any]) -> str:
    names = {"kind": "data.split", "seed": "data.split_seed", "cold_item_fraction": "data.cold_item_fraction"}
    return ", ".join(f"{names[k]} = {v!r}" for k, v in s.items())
