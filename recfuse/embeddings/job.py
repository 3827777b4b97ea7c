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
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recfuse.embeddings.encoder import EncodeResult, EncoderFactory
from recfuse.embeddings.shards import (
    atomic_write_json,
    atomic_write_table,
    embeddings_table,
    rejects_table,
    sha256,
    shard_name,
)
from recfuse.errors import ConfigError, DataError, SchemaError

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Progress:
    """Progress of a running job (passed to the ``progress`` callback after each batch)."""

    rows_done: int
    rows_total: int
    items_per_s: float


@dataclass
class EmbedReport:
    """Summary of a finished job."""

    out_dir: Path
    rows: int = 0
    embedded: int = 0
    rejects: int = 0
    shards: list[str] = field(default_factory=list)
    skipped_shards: int = 0
    dim: int = 0
    seconds: float = 0.0

    @property
    def items_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


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
    if engine == "ray":
        from recfuse.embeddings.ray_engine import run_ray

        return run_ray(catalog, out, encoder_factory, batch_size, batches_per_shard, progress)
    return _run_local(pf, out, encoder_factory, batch_size, batches_per_shard, progress)


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


def _shards(pf: pq.ParquetFile, batch_size: int, per_shard: int) -> Iterator[tuple[int, list[pa.RecordBatch]]]:
    group: list[pa.RecordBatch] = []
    shard = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        group.append(batch)
        if len(group) == per_shard:
            yield shard, group
            shard, group = shard + 1, []
    if group or shard == 0:
        yield shard, group


def encode_checked(encoder: object, batch: pa.RecordBatch) -> EncodeResult:
    """Run ``encoder.encode`` and check its result against the batch (ids, shapes, finiteness)."""
    res: EncodeResult = encoder.encode(batch)  # type: ignore[attr-defined]
    vecs = np.asarray(res.vectors, dtype=np.float32)
    if vecs.ndim != 2 or len(vecs) != len(res.item_ids):
        raise DataError(
            f"encoder returned vectors of shape {vecs.shape} for {len(res.item_ids)} item ids; "
            "it must return [n, d] with one row per id"
        )
    if len(res.item_ids) + len(res.rejects) != batch.num_rows:
        raise DataError(
            f"encoder accounted for {len(res.item_ids)} embedded + {len(res.rejects)} rejected rows "
            f"of a {batch.num_rows}-row batch; every row must be embedded or rejected"
        )
    finite = np.isfinite(vecs).all(axis=1)
    ids = res.item_ids
    rejects = list(res.rejects)
    if not finite.all():
        rows = np.flatnonzero(finite)
        rejects += [(str(ids[i]), "non-finite embedding") for i in np.flatnonzero(~finite)]
        ids = ids.take(pa.array(rows)) if isinstance(ids, pa.Array) else [ids[i] for i in rows]
        vecs = vecs[finite]
    return EncodeResult(ids, vecs, rejects)


def _run_local(
    pf: pq.ParquetFile,
    out: Path,
    encoder_factory: EncoderFactory,
    batch_size: int,
    per_shard: int,
    progress: Callable[[Progress], None] | None,
) -> EmbedReport:
    start = time.perf_counter()
    report = EmbedReport(out_dir=out)
    total = pf.metadata.num_rows
    encoder = None
    dims: set[int] = set()
    # shard i is written (Parquet + fsync) on a thread while shard i+1 is encoded
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-writer")
    pending: Future[None] | None = None
    try:
        for shard, batches in _shards(pf, batch_size, per_shard):
            name = shard_name(shard)
            report.shards.append(name)
            report.rows += sum(b.num_rows for b in batches)
            if (out / name).exists():
                report.skipped_shards += 1
                logger.info("shard %s already complete; skipping", name)
                continue
            encoder = encoder or encoder_factory()
            ids: list[pa.Array] = []
            n_done = 0
            vecs: list[np.ndarray] = []
            rejects: list[tuple[str, str]] = []
            for batch in batches:
                res = encode_checked(encoder, batch)
                ids.append(_as_arrow(res.item_ids))
                n_done += len(res.item_ids)
                vecs.append(res.vectors)
                rejects += res.rejects
                if progress is not None:
                    done = report.rows - sum(b.num_rows for b in batches) + n_done + len(rejects)
                    elapsed = time.perf_counter() - start
                    progress(Progress(done, total, done / elapsed if elapsed > 0 else 0.0))
            dims.update(v.shape[1] for v in vecs if v.size)
            if len(dims) > 1:
                raise DataError(f"encoder returned vectors of different widths {sorted(dims)}; it must use one d")
            matrix = np.concatenate(vecs) if vecs else np.zeros((0, max(dims or {1})), np.float32)
            id_arr = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
            if pending is not None:
                pending.result()  # at most one shard in flight; surfaces write errors
            pending = writer.submit(_write_shard, out, name, id_arr, matrix, rejects)
        if pending is not None:
            pending.result()
    finally:
        writer.shutdown(wait=True)
    report.seconds = time.perf_counter() - start
    return finalize(out, report)


def _write_shard(out: Path, name: str, ids: pa.Array, matrix: np.ndarray, rejects: list[tuple[str, str]]) -> None:
    atomic_write_table(out / "_rejects" / name, rejects_table(rejects))
    atomic_write_table(out / name, embeddings_table(ids, matrix))  # commit point of the shard


def _as_arrow(ids: list[str] | pa.Array) -> pa.Array:
    if isinstance(ids, pa.ChunkedArray):
        return ids.combine_chunks().cast(pa.string())
    if isinstance(ids, pa.Array):
        return ids.cast(pa.string())
    return pa.array([str(i) for i in ids], type=pa.string())


def finalize(out: Path, report: EmbedReport) -> EmbedReport:
    """Write rejects.parquet, manifest.json and _SUCCESS from the complete shards (deterministic)."""
    entries = []
    rejects = []
    for name in report.shards:
        meta = pq.read_metadata(out / name)
        entries.append({"name": name, "rows": meta.num_rows, "sha256": sha256(out / name)})
        rejects.append(pq.read_table(out / "_rejects" / name))
        vec_type = meta.schema.to_arrow_schema().field("vector").type
        report.dim = int(vec_type.list_size)
    rej = pa.concat_tables(rejects) if rejects else rejects_table([])
    atomic_write_table(out / "rejects.parquet", rej)
    report.embedded = sum(e["rows"] for e in entries)
    report.rejects = rej.num_rows
    if report.embedded + report.rejects != report.rows:
        raise DataError(
            f"{report.rows} catalog rows but {report.embedded} embedded + {report.rejects} rejected; "
            f"delete {str(out)!r} and rerun"
        )
    manifest = {
        "format": 1,
        "rows": report.rows,
        "embedded": report.embedded,
        "rejects": report.rejects,
        "dim": report.dim,
        "shards": entries,
        "rejects_sha256": sha256(out / "rejects.parquet"),
    }
    atomic_write_json(out / "manifest.json", manifest)
    (out / "_SUCCESS").write_text("")
    if report.rejects:
        logger.warning("%d of %d rows rejected; see %s", report.rejects, report.rows, out / "rejects.parquet")
    return report
