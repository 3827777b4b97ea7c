"""Write a converted MicroLens-50k dataset: the data contract's files, a record and a ready config.

:func:`convert_microlens` reads the originals with :func:`recfuse.data.microlens.load_microlens`
and writes ``items.parquet``, ``interactions.parquet``, ``conversion.json`` (source sha256s,
options, counts, drops) and ``recfuse.toml`` (absolute data paths, ``split = "column"``, the test
protocol, a token-text modality on ``title`` and a categorical one on ``categories``) into a temp
folder beside the output, then renames it into place: a crash never leaves half a dataset at the
output path.

Example:
    >>> r = convert_microlens("../shared/datasets/microlens-50k", "runs/datasets/microlens-50k")  # doctest: +SKIP
    >>> r.data.counts["train"], r.data.counts["valid"], r.data.counts["test"]  # doctest: +SKIP
    (259708, 50000, 50000)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recfuse.data.microlens import MicroLensData, load_microlens
from recfuse.fsio import fsync_dir, fsync_tree

logger = logging.getLogger(__name__)

ITEMS_SCHEMA = pa.schema([("item_id", pa.string()), ("title", pa.string()), ("categories", pa.list_(pa.string()))])
INTERACTIONS_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64()), ("split", pa.string())]
)


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert_microlens` wrote.

    Attributes:
        out: the output folder (items.parquet, interactions.parquet, conversion.json, recfuse.toml).
        data: the converted tables and their counts.
        seconds: wall time of reading, converting and writing.
    """

    out: Path
    data: MicroLensData
    seconds: float


def config_toml(out: Path, data: MicroLensData) -> str:
    """A ready ``recfuse.toml`` for the converted folder ``out`` (absolute data paths)."""
    items = json.dumps(str(out.resolve() / "items.parquet"))
    inter = json.dumps(str(out.resolve() / "interactions.parquet"))
    cut = f", last {data.max_items_per_user} items per user" if data.max_items_per_user else ""
    how = f"protocol {data.protocol}, seed {data.seed}{cut}"
    return f"""# MicroLens-50k converted by `recfuse convert microlens` ({how}).
# Do not commit or publish these files (the dataset's terms). Paths are absolute.

[data]
items = {items}
interactions = {inter}
# the interactions' own split column ({data.protocol}): train / valid / test
split = "column"

[eval]
# {"leave-one-out: the test query reads every earlier item (train + valid)" if data.protocol == "loo" else
   "random per-user split: the test query reads the training items only"}; train items are masked
history = "{"train+valid" if data.protocol == "loo" else "train"}"

[[modalities]]
name = "text"
kind = "text"
source = "tokens"
columns = ["title"]
# a token found in one item only is that item's id in disguise
min_item_count = 2

[[modalities]]
name = "categories"
kind = "categorical"
columns = ["categories"]
"""


def _record(data: MicroLensData) -> dict[str, Any]:
    return {
        "dataset": "MicroLens-50k",
        "source_sha256": data.sha256,
        "checksum_mismatches": data.checksum_mismatches,
        "protocol": data.protocol,
        "seed": data.seed,
        "max_items_per_user": data.max_items_per_user,
        "counts": data.counts,
        "dropped": data.dropped,
        "timestamp": "0-based position in the user's sequence (order within a user only)",
        "title": "original title, hashtags kept; categories = its hashtags, lower-cased, deduplicated",
    }


def write_converted(out: str | Path, data: MicroLensData) -> Path:
    """Write ``data`` to the folder ``out`` atomically (temp folder, fsync, rename; an old ``out`` is replaced).

    Returns:
        The output folder.
    """
    dest = Path(out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        items = pa.Table.from_pandas(data.items, schema=ITEMS_SCHEMA, preserve_index=False)
        inter = pa.Table.from_pandas(data.interactions, schema=INTERACTIONS_SCHEMA, preserve_index=False)
        pq.write_table(items, tmp / "items.parquet", compression="zstd")
        pq.write_table(inter, tmp / "interactions.parquet", compression="zstd")
        text = json.dumps(_record(data), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        (tmp / "conversion.json").write_text(text, encoding="utf-8")
        (tmp / "recfuse.toml").write_text(config_toml(dest, data), encoding="utf-8")
        os.chmod(tmp, 0o755)
        fsync_tree(tmp)
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def convert_microlens(
    src: str | Path,
    out: str | Path,
    protocol: str = "loo",
    seed: int = 42,
    max_items_per_user: int = 0,
    strict: bool = False,
    expected_sha256: Mapping[str, str] | None = None,
) -> ConversionResult:
    """Read the MicroLens-50k files in ``src`` and write the converted dataset to ``out``.

    Args: as :func:`load_microlens`, plus ``out``, the output folder (replaced atomically).

    Returns:
        :class:`ConversionResult`.

    Raises:
        as :func:`load_microlens`.

    Example:
        >>> r = convert_microlens("../shared/datasets/microlens-50k", "runs/datasets/microlens-50k")  # doctest: +SKIP
        >>> r.data.counts["train"], r.data.counts["valid"], r.data.counts["test"]  # doctest: +SKIP
        (259708, 50000, 50000)
    """
    t0 = time.perf_counter()
    data = load_microlens(src, protocol, seed, max_items_per_user, strict, expected_sha256)
    path = write_converted(out, data)
    seconds = time.perf_counter() - t0
    logger.info("converted MicroLens-50k to %s in %.1f s", path, seconds)
    return ConversionResult(path, data, seconds)
