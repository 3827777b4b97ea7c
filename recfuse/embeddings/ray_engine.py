"""Ray Data engine: the same per-batch encoder in an actor pool (``read_parquet → map_batches → shards``).

Ray is the optional ``recfuse[ray]`` extra and is imported lazily. The session is started on
127.0.0.1 with ``num_cpus=2`` unless one is already running (``ray.init(address=...)`` by the
caller points it at a cluster); two actors at ``num_cpus=0.5`` hold one model each (``num_cpus=1``
each deadlocks a 2-CPU local session). Results are written through the same shard writer as the
local engine (same layout, rejects and manifest; shard boundaries are every
``batch_size * batches_per_shard`` rows in catalog order).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recfuse.embeddings.encoder import EncoderFactory
from recfuse.embeddings.job import EmbedReport, Progress, encode_checked, finalize
from recfuse.embeddings.shards import atomic_write_table, embeddings_table, rejects_table, shard_name
from recfuse.errors import ConfigError

logger = logging.getLogger(__name__)


def import_ray() -> Any:
    """``ray`` (with Ray Data) or :class:`ConfigError` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(
            "`--engine ray` needs Ray, which is not installed; run `pip install 'recfuse[ray]'` "
            "or use the default `--engine local`"
        ) from None
    return ray


class _EncodeActor:
    """Holds one encoder (model) per actor; returns embedded rows and rejects as one Arrow table."""

    def __init__(self, encoder_factory: EncoderFactory) -> None:
        self.encoder = encoder_factory()

    def __call__(self, table: pa.Table) -> pa.Table:
        batch = table.combine_chunks().to_batches()[0] if table.num_rows else pa.record_batch([], schema=table.schema)
        res = encode_checked(self.encoder, batch)
        n_ok, d = len(res.item_ids), int(res.vectors.shape[1]) if res.vectors.ndim == 2 else 0
        ids = list(res.item_ids) + [r[0] for r in res.rejects]
        reasons = [""] * n_ok + [r[1] for r in res.rejects]
        vecs = np.vstack([res.vectors.reshape(n_ok, d), np.zeros((len(res.rejects), d), np.float32)])
        return pa.table({"item_id": ids, "reason": reasons, "vector": list(vecs.astype(np.float32))})


def run_ray(
    catalog: Path,
    out: Path,
    encoder_factory: EncoderFactory,
    batch_size: int,
    batches_per_shard: int,
    progress: Callable[[Progress], None] | None,
) -> EmbedReport:
    """Run the job on Ray Data; results stream back in order and are sharded like the local engine."""
    ray = import_ray()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.target_max_block_size = 8 * 1024 * 1024
    ctx.execution_options.preserve_order = True  # deterministic shard contents
    start = time.perf_counter()
    ds = ray.data.read_parquet(str(catalog)).map_batches(
        _EncodeActor,
        fn_constructor_args=(encoder_factory,),
        batch_size=batch_size,
        batch_format="pyarrow",
        concurrency=2,
        num_cpus=0.5,
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
        table = pa.concat_tables(tables) if tables else pa.table({"item_id": [], "reason": [], "vector": []})
        report.rows += table.num_rows
        ok = np.asarray(table.column("reason").to_pylist()) == ""
        ids = table.column("item_id").to_pylist()
        vec_rows = table.column("vector").to_pylist()
        vecs = np.asarray([v for v, keep in zip(vec_rows, ok) if keep], dtype=np.float32).reshape(int(ok.sum()), -1)
        rej = [(i, r) for i, r, keep in zip(ids, table.column("reason").to_pylist(), ok) if not keep]
        if not (out / name).exists():
            atomic_write_table(out / "_rejects" / name, rejects_table(rej))
            atomic_write_table(out / name, embeddings_table([i for i, k in zip(ids, ok) if k], vecs))
        else:
            report.skipped_shards += 1
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
