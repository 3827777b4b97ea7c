"""Ray Data engine: the same per-batch encoder in an actor pool (``read_parquet → map_batches → shards``).

Ray is the optional ``recfuse[ray]`` extra and is imported lazily. The session is started on
127.0.0.1 with ``num_cpus=2`` unless one is already running (``ray.init(address=...)`` by the
caller points it at a cluster); two actors at ``num_cpus=0.5`` hold one model each (``num_cpus=1``
each deadlocks a 2-CPU local session). Results are written through the same shard writer as the
local engine (same layout, rejects and manifest; shard boundaries are every
``batch_size * batches_per_shard`` rows in catalog order).

Loopback only: Ray maps ``_node_ip_address="127.0.0.1"`` to the host's routable address and binds
its servers to every interface unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set before ``ray`` is
first imported. :func:`import_ray` sets it (unless the caller chose a value), and a local session is
refused when ``ray`` was imported earlier without it.

Batches: the catalog is re-blocked to exactly ``batch_size`` rows per block (``strict``
repartition), so every actor call sees the same record batch as the local loop (identical
embeddings, and no batch straddles a shard boundary).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from recfuse import ray_session
from recfuse.embeddings.encoder import EncoderFactory
from recfuse.embeddings.engine import EmbedReport, Progress, encode_checked, finalize
from recfuse.embeddings.shards import atomic_write_table, embeddings_table, rejects_table, shard_name

logger = logging.getLogger(__name__)


def import_ray() -> Any:
    """``ray`` (with Ray Data) or :class:`ConfigError` naming the extra to install."""
    return ray_session.import_ray("ray.data")


class _EncodeActor:
    """Holds one encoder (model) per actor; returns one batch's embedded rows, then its rejects.

    Output columns: ``item_id`` (string), ``reason`` (null for embedded rows) and ``vector``
    (fixed_size_list<float32>[d], null for rejected rows).
    """

    def __init__(self, encoder_factory: EncoderFactory) -> None:
        self.encoder = encoder_factory()

    def __call__(self, table: pa.Table) -> pa.Table:
        table = table.combine_chunks()
        batches = table.to_batches()
        batch = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)
        res = encode_checked(self.encoder, batch)
        emb = embeddings_table(res.item_ids, res.vectors)
        n_ok, n_rej = emb.num_rows, len(res.rejects)
        vec_type = emb.schema.field("vector").type
        return pa.table(
            {
                "item_id": pa.concat_arrays(
                    [emb.column("item_id").combine_chunks(), pa.array([r[0] for r in res.rejects], pa.string())]
                ),
                "reason": pa.array([None] * n_ok + [r[1] for r in res.rejects], pa.string()),
                "vector": pa.concat_arrays([emb.column("vector").combine_chunks(), pa.nulls(n_rej, vec_type)]),
            }
        )


def run_ray(
    catalog: Path,
    out: Path,
    encoder_factory: EncoderFactory,
    batch_size: int,
    batches_per_shard: int,
    progress: Callable[[Progress], None] | None,
) -> EmbedReport:
    """The Ray engine (:class:`~recfuse.embeddings.engine.Engine`): Ray Data actors, results streamed back
    in order and sharded like the local engine."""
    ray = import_ray()
    if not ray.is_initialized():
        ray_session.start_local(ray, num_cpus=2)
    ctx = ray.data.DataContext.get_current()
    ctx.target_max_block_size = 8 * 1024 * 1024
    ctx.execution_options.preserve_order = True  # deterministic shard contents
    start = time.perf_counter()
    ds = (
        ray.data.read_parquet(str(catalog))
        .repartition(target_num_rows_per_block=batch_size, strict=True)  # actor batches == local batches
        .map_batches(
            _EncodeActor,
            fn_constructor_args=(encoder_factory,),
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=2),
            num_cpus=0.5,
        )
    )
    report = EmbedReport(out_dir=out)
    rows_per_shard = batch_size * batches_per_shard
    buf: list[pa.Table] = []
    buffered = 0
    shard = 0

    def flush(tables: list[pa.Table]) -> None:
        nonlocal shard
        name = shard_name(shard)
        report.shards.append(name)
        if (out / name).exists():
            report.rows += sum(t.num_rows for t in tables)
            report.skipped_shards += 1
        else:
            report.rows += _write_shard(out, name, tables)
        shard += 1

    for table in ds.iter_batches(batch_size=rows_per_shard, batch_format="pyarrow"):
        buf.append(table)
        buffered += table.num_rows
        while buffered >= rows_per_shard:
            whole = pa.concat_tables(buf)
            flush([whole.slice(0, rows_per_shard)])
            rest = whole.slice(rows_per_shard)
            buf, buffered = ([rest] if rest.num_rows else []), rest.num_rows
        if progress is not None:
            done = report.rows + buffered
            progress(Progress(done, -1, done / max(time.perf_counter() - start, 1e-9)))
    if buf or shard == 0:
        flush(buf)
    report.seconds = time.perf_counter() - start
    return finalize(out, report)


def _write_shard(out: Path, name: str, tables: list[pa.Table]) -> int:
    """Split the actors' rows into the shard's embeddings and rejects, write both; returns the row count."""
    table = pa.concat_tables(tables) if tables else _EMPTY
    d = table.schema.field("vector").type.list_size
    ok = pc.is_null(table.column("reason"))
    emb, rej = table.filter(ok), table.filter(pc.invert(ok))
    vecs = emb.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, d)
    rejects = list(zip(rej.column("item_id").to_pylist(), rej.column("reason").to_pylist()))
    atomic_write_table(out / "_rejects" / name, rejects_table(rejects))
    atomic_write_table(out / name, embeddings_table(emb.column("item_id").combine_chunks(), vecs))
    return table.num_rows


_EMPTY = pa.table(  # an empty catalog: one empty shard of width 1, as the local engine writes
    {
        "item_id": pa.array([], pa.string()),
        "reason": pa.array([], pa.string()),
        "vector": pa.array([], pa.list_(pa.float32(), 1)),
    }
)
