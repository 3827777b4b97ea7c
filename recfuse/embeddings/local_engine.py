"""The local engine: the embedding job in this process, one encoder, shards written one behind.

Shard ``i`` is written (Parquet + fsync) on a thread while shard ``i + 1`` is encoded. Ray has no
in-process mode, so this plain loop is the engine for one machine and for tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recfuse.embeddings.encoder import EncoderFactory
from recfuse.embeddings.engine import EmbedReport, Progress, encode_checked, finalize
from recfuse.embeddings.shards import atomic_write_table, embeddings_table, rejects_table, shard_name
from recfuse.errors import DataError

logger = logging.getLogger(__name__)


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


def run_local(
    catalog: Path,
    out: Path,
    encoder_factory: EncoderFactory,
    batch_size: int,
    batches_per_shard: int,
    progress: Callable[[Progress], None] | None,
) -> EmbedReport:
    """The local engine (:class:`~recfuse.embeddings.engine.Engine`): this process, one encoder."""
    pf = pq.ParquetFile(catalog)
    start = time.perf_counter()
    report = EmbedReport(out_dir=out)
    total = pf.metadata.num_rows
    encoder = None
    dims: set[int] = set()
    # shard i is written (Parquet + fsync) on a thread while shard i+1 is encoded
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-writer")
    pending: Future[None] | None = None
    try:
        for shard, batches in _shards(pf, batch_size, batches_per_shard):
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
