"""The interface between the embedding job and its engines, and what every engine shares.

:func:`recfuse.embeddings.job.run_embedding_job` checks its arguments and the output directory, then
hands the work to an :class:`Engine` (the local loop, :mod:`recfuse.embeddings.local_engine`, or Ray
Data, :mod:`recfuse.embeddings.ray_engine`). Engines import this module, never the job, so the job
can choose among them without an import cycle. Every engine checks each encoder result with
:func:`encode_checked` and ends with :func:`finalize`, so their output is identical.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recfuse.embeddings.encoder import EncodeResult, EncoderFactory
from recfuse.embeddings.shards import atomic_write_json, atomic_write_table, rejects_table, sha256
from recfuse.errors import DataError

logger = logging.getLogger(__name__)


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


class Engine(Protocol):
    """Runs a checked job: writes every shard of ``catalog`` into ``out`` and returns :func:`finalize`'s report.

    ``out/_rejects`` exists and the layout (``batch_size``, ``batches_per_shard``) matches any partial
    output already there; shards whose part file exists are complete and are skipped.
    """

    def __call__(
        self,
        catalog: Path,
        out: Path,
        encoder_factory: EncoderFactory,
        batch_size: int,
        batches_per_shard: int,
        progress: Callable[[Progress], None] | None,
    ) -> EmbedReport: ...


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
