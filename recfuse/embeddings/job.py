"""Offline embedding job: stream a catalog through an encoder into resumable Parquet shards.

Layout of ``out_dir`` when done::

    part-00000.parquet …   item_id (string), vector (fixed_size_list<float32>[d])
    rejects.parquet        item_id, reason — every row that could not be embedded
    manifest.json          shards (name, rows, sha256), rows, rejects, dim (no timestamps: reruns are byte-identical)
    _SUCCESS

Shard ``i`` holds the catalog's record batches ``[i * batches_per_shard, (i + 1) * batches_per_shard)``
(``ParquetFile.iter_batches`` with a fixed ``batch_size`` is deterministic), and each shard is written
atomically after its rejects (``_rejects/part-i.parquet``), so a part file's existence means the
shard is complete. A killed run restarted with the same arguments skips complete shards and produces
byte-identical output.

Example:
    >>> from recfuse.embeddings import HashProjectionEncoder, run_embedding_job
    >>> report = run_embedding_job("items.parquet", "out/emb", lambda: HashProjectionEncoder(32))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from recfuse.embeddings.encoder import EncoderFactory
from recfuse.embeddings.engine import EmbedReport, Engine, Progress
from recfuse.embeddings.local_engine import run_local
from recfuse.embeddings.shards import atomic_write_json
from recfuse.errors import ConfigError, SchemaError

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")


def run_embedding_job(
    catalog_path: str | Path,
    out_dir: str | Path,
    encoder_factory: EncoderFactory,
    batch_size: int = 1024,
    batches_per_shard: int = 16,
    engine: str = "local",
    progress: Callable[[Progress], None] | None = None,
) -> EmbedReport:
    """Embed every catalog row with ``encoder_factory()`` and write shards, rejects and a manifest.

    Args:
        catalog_path: Parquet catalog with an ``item_id`` column (plus whatever the encoder reads).
        out_dir: output directory (created; complete shards from an earlier run are reused).
        encoder_factory: zero-argument callable returning an encoder (see :mod:`recfuse.embeddings.encoder`).
        batch_size: rows per record batch handed to the encoder.
        batches_per_shard: record batches per output shard (keep it fixed across a resumed run).
        engine: ``local`` (this process) or ``ray`` (Ray Data actor pool; needs ``recfuse[ray]``).
        progress: called with :class:`Progress` after every batch.

    Returns:
        :class:`EmbedReport` (rows read, embedded, rejected, shard names, seconds).

    Raises:
        ConfigError: bad engine/batch sizes, or a different ``batch_size``/``batches_per_shard`` than
            the partial output was written with.
        SchemaError: missing catalog file or ``item_id`` column.
        DataError: the encoder returned inconsistent shapes or widths.
    """
    if engine not in ENGINES:
        raise ConfigError(f"`engine` must be one of {list(ENGINES)}, got {engine!r}")
    if batch_size < 1 or batches_per_shard < 1:
        raise ConfigError(
            f"`batch_size` and `batches_per_shard` must be >= 1, got {batch_size} and {batches_per_shard}"
        )
    catalog = Path(catalog_path)
    if not catalog.is_file():
        raise SchemaError(f"catalog file {str(catalog)!r} does not exist; pass a Parquet catalog")
    pf = pq.ParquetFile(catalog)
    if "item_id" not in pf.schema_arrow.names:
        raise SchemaError(f"catalog {str(catalog)!r} has no `item_id` column; columns: {pf.schema_arrow.names}")
    out = Path(out_dir)
    (out / "_rejects").mkdir(parents=True, exist_ok=True)
    _check_layout(out, batch_size, batches_per_shard)
    return _engine(engine)(catalog, out, encoder_factory, batch_size, batches_per_shard, progress)


def _engine(name: str) -> Engine:
    if name == "ray":
        from recfuse.embeddings.ray_engine import run_ray  # Ray is an optional extra: imported when chosen

        return run_ray
    return run_local


def _check_layout(out: Path, batch_size: int, batches_per_shard: int) -> None:
    layout = {"batch_size": batch_size, "batches_per_shard": batches_per_shard, "format": 1}
    path = out / "_layout.json"
    if path.exists():
        import json

        old = json.loads(path.read_text())
        if old != layout:
            raise ConfigError(
                f"{str(out)!r} holds a partial run with {old}, now asked for {layout}; "
                "rerun with the same --batch-size or use a new --out directory"
            )
    else:
        atomic_write_json(path, layout)
