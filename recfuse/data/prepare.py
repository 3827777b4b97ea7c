"""``recfuse prepare``: interactions → user-sorted Parquet shards + manifest, in bounded memory.

Training examples need each user's interactions in time order. Sorting a whole interactions table in
pandas holds all of it (several times over) in memory; this step does it in two streamed passes:

1. read the input (one Parquet file or a folder of them, in sorted file order) batch by batch with
   pyarrow, count unusable rows, and append every usable row to one of ``buckets`` bucket files
   chosen by a hash of its ``user_id`` (so a user lives in exactly one bucket);
2. sort each bucket alone by ``(user_id, timestamp)`` (stable, so ties keep input order, as
   :func:`recfuse.training.examples.sort_interactions` does) and write it as one or more shards of
   at most ``rows_per_shard`` rows, cut only between users: a user never spans two shards.

Peak memory is one input batch plus one bucket (``total / buckets`` rows), whatever the total.
Only ``user_id``, ``item_id`` and ``timestamp`` (int64 unix seconds) are kept. Unusable rows (a null
id, a null or unparsable timestamp) are counted per reason in the manifest and left out, never
dropped silently. The folder also holds ``users.parquet`` (every user, in shard order) and
``item_counts.parquet`` (rows per item): the user vocabulary and the popularity counts come from
them without another pass. Everything is written in a temp folder beside ``out`` and renamed into
place (a crash leaves the previous ``out`` or none, never a half one); re-running replaces ``out``.

Example:
    >>> m = prepare_interactions("data_samples/interactions.parquet", "runs/prepared")  # doctest: +SKIP
    >>> m["rows"], len(m["shards"])                                                       # doctest: +SKIP
    (23504, 1)
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recfuse.errors import ArtifactError, SchemaError
from recfuse.fsio import atomic_write_json, fsync_dir, fsync_tree, sha256_file

logger = logging.getLogger(__name__)

FORMAT = "recfuse.prepared/1"
MANIFEST = "manifest.json"
COLUMNS = ("user_id", "item_id", "timestamp")
SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64())])
REASONS = ("null_user_id", "null_item_id", "bad_timestamp")

__all__ = ["FORMAT", "MANIFEST", "input_files", "load_manifest", "prepare_interactions"]


def input_files(src: str | Path) -> list[Path]:
    """The Parquet files of ``src`` (a file, or every ``*.parquet`` under a folder), sorted."""
    path = Path(src)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if files:
            return files
        raise SchemaError(f"`interactions` folder {str(path)!r} holds no *.parquet file; point it at Parquet data")
    raise SchemaError(f"`interactions` {str(path)!r} does not exist; give a Parquet file or a folder of them")


def _ids(col: pa.ChunkedArray | pa.Array, name: str, path: Path) -> pa.Array:
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return pc.cast(col, pa.string())
    if pa.types.is_integer(col.type):
        return pc.cast(col, pa.string())  # ids are strings everywhere: 7 -> "7" (see recfuse.data.vocab)
    raise SchemaError(
        f"`{name}` in {str(path)!r} has type {col.type}; ids must be strings or integers (cast the column)"
    )


def _timestamps(col: pa.ChunkedArray | pa.Array, path: Path) -> pa.Array:
    """int64 unix seconds; unusable values (NaN, non-integral floats) become null."""
    if pa.types.is_integer(col.type):
        return pc.cast(col, pa.int64())
    if pa.types.is_timestamp(col.type):
        return pc.cast(pc.cast(col, pa.timestamp("s"), safe=False), pa.int64())
    if pa.types.is_floating(col.type):
        values = col.to_numpy(zero_copy_only=False).astype(np.float64)
        ok = np.isfinite(values) & (values == np.floor(values))
        return pa.array(np.where(ok, values, 0).astype(np.int64), mask=~ok)
    raise SchemaError(
        f"`timestamp` in {str(path)!r} has type {col.type}; expected int64 unix seconds "
        "(convert it, e.g. pandas to_datetime(...).astype('int64') // 10**9)"
    )


def _batches(files: list[Path], batch_rows: int) -> Iterator[tuple[Path, pa.RecordBatch]]:
    for path in files:
        pf = pq.ParquetFile(path)
        missing = [c for c in COLUMNS if c not in pf.schema_arrow.names]
        if missing:
            raise SchemaError(
                f"{str(path)!r} lacks column(s) {missing}; interactions need {list(COLUMNS)} (see recfuse validate)"
            )
        for batch in pf.iter_batches(batch_size=batch_rows, columns=list(COLUMNS), use_threads=False):
            yield path, batch


def prepare_interactions(
    src: str | Path,
    out: str | Path,
    buckets: int = 0,
    rows_per_shard: int = 1_000_000,
    batch_rows: int = 262_144,
) -> dict[str, Any]:
    """Write user-sorted shards of ``src`` to the folder ``out`` (replaced atomically).

    Args:
        src: a Parquet file or a folder of them with ``user_id``, ``item_id``, ``timestamp``.
        out: output folder.
        buckets: hash buckets of pass 1 (0: enough for ``rows_per_shard`` rows each on average).
        rows_per_shard: most rows per shard (a user with more rows gets a shard of its own).
        batch_rows: rows read per input batch.

    Returns:
        The manifest (also written to ``out/manifest.json``).

    Raises:
        SchemaError: missing column, id or timestamp column of an unusable type, no input file.
        ValueError: a non-positive size argument.
    """
    for name, value, low in (("buckets", buckets, 0), ("rows_per_shard", rows_per_shard, 1),
                             ("batch_rows", batch_rows, 1)):  # fmt: skip
        if int(value) < low:
            raise ValueError(f"`{name}` must be >= {low}, got {value}")
    files = input_files(src)
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    n_buckets = int(buckets) or max(1, math.ceil(total / rows_per_shard))
    dest = Path(out).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        bad, item_counts = _partition(files, tmp / "buckets", n_buckets, batch_rows)
        shards, users = _sort_buckets(tmp, n_buckets, rows_per_shard)
        shutil.rmtree(tmp / "buckets")
        pq.write_table(pa.table({"user_id": pa.array(users, pa.string())}), tmp / "users.parquet")
        counts = pa.table({"item_id": pa.array(list(item_counts.index), pa.string()),
                           "count": pa.array(item_counts.to_numpy(np.int64))})  # fmt: skip
        pq.write_table(counts, tmp / "item_counts.parquet")
        manifest = {
            "format": FORMAT,
            "source_files": [str(f) for f in files],
            "input_rows": total,
            "rows": int(sum(s["rows"] for s in shards)),
            "unusable_rows": bad,
            "users": len(users),
            "items": int(len(item_counts)),
            "buckets": n_buckets,
            "rows_per_shard": int(rows_per_shard),
            "shards": shards,
            "users_file": {"file": "users.parquet", "sha256": sha256_file(tmp / "users.parquet")},
            "item_counts_file": {"file": "item_counts.parquet", "sha256": sha256_file(tmp / "item_counts.parquet")},
        }
        atomic_write_json(tmp / MANIFEST, manifest)
        fsync_tree(tmp)
        _publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if any(bad.values()):
        logger.warning("left out unusable interaction rows: %s", bad)
    return manifest


def _partition(
    files: list[Path], bucket_dir: Path, n_buckets: int, batch_rows: int
) -> tuple[dict[str, int], pd.Series]:
    """Pass 1: usable rows appended to their user's bucket file; unusable rows and item rows counted."""
    bucket_dir.mkdir()
    writers: dict[int, pq.ParquetWriter] = {}
    bad = dict.fromkeys(REASONS, 0)
    item_counts = pd.Series(dtype=np.int64)
    try:
        for path, batch in _batches(files, batch_rows):
            users = _ids(batch.column("user_id"), "user_id", path)
            items = _ids(batch.column("item_id"), "item_id", path)
            ts = _timestamps(batch.column("timestamp"), path)
            u_null, i_null, t_null = (
                np.asarray(c.is_null().to_numpy(zero_copy_only=False)) for c in (users, items, ts)
            )
            bad["null_user_id"] += int(u_null.sum())
            bad["null_item_id"] += int((i_null & ~u_null).sum())
            bad["bad_timestamp"] += int((t_null & ~u_null & ~i_null).sum())
            keep = ~(u_null | i_null | t_null)
            table = pa.table([users, items, ts], schema=SCHEMA).filter(pa.array(keep))
            if not table.num_rows:
                continue
            vc = pc.value_counts(table.column("item_id")).flatten()
            item_counts = item_counts.add(
                pd.Series(vc[1].to_numpy(), index=vc[0].to_numpy(zero_copy_only=False)), fill_value=0
            ).astype(np.int64)
            user_np = table.column("user_id").to_numpy(zero_copy_only=False)
            bucket = (pd.util.hash_array(user_np) % np.uint64(n_buckets)).astype(np.int64)
            order = np.argsort(bucket, kind="stable")  # stable: a user's rows keep input order
            table, bucket = table.take(pa.array(order)), bucket[order]
            bounds = np.flatnonzero(np.diff(bucket)) + 1
            for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(bucket)], strict=True):
                b = int(bucket[start])
                if b not in writers:
                    writers[b] = pq.ParquetWriter(bucket_dir / f"bucket-{b:05d}.parquet", SCHEMA, compression="none")
                writers[b].write_table(table.slice(int(start), int(stop - start)))
    finally:
        for w in writers.values():
            w.close()
    return bad, item_counts.sort_index()


def _sort_buckets(tmp: Path, n_buckets: int, rows_per_shard: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Pass 2: each bucket sorted by (user, time) and cut into shards between users."""
    shards: list[dict[str, Any]] = []
    users: list[str] = []
    for b in range(n_buckets):
        path = tmp / "buckets" / f"bucket-{b:05d}.parquet"
        if not path.exists():
            continue
        table = pq.read_table(path)
        order = pc.sort_indices(table, sort_keys=[("user_id", "ascending"), ("timestamp", "ascending")])
        table = table.take(order)  # Arrow's sort is stable
        user_np = table.column("user_id").to_numpy(zero_copy_only=False)
        starts = np.r_[0, np.flatnonzero(user_np[1:] != user_np[:-1]) + 1]
        start = 0
        while start < table.num_rows:
            stop = _cut(starts, start, rows_per_shard, table.num_rows)
            part = table.slice(start, stop - start)
            name = f"shard-{len(shards):05d}.parquet"
            pq.write_table(part, tmp / name, row_group_size=65_536)
            block = user_np[start:stop]
            n_users = int(np.count_nonzero(block[1:] != block[:-1]) + 1)
            users.extend(block[np.r_[0, np.flatnonzero(block[1:] != block[:-1]) + 1]].tolist())
            shards.append(
                {"file": name, "rows": int(stop - start), "users": n_users, "sha256": sha256_file(tmp / name)}
            )
            start = stop
        del table
    return shards, users


def _cut(starts: np.ndarray, start: int, rows_per_shard: int, n: int) -> int:
    """End of the shard beginning at ``start``: the last user start within ``rows_per_shard`` rows,
    or the next user start when one user alone has more rows."""
    if start + rows_per_shard >= n:
        return n
    stop = int(starts[np.searchsorted(starts, start + rows_per_shard, side="right") - 1])
    if stop > start:
        return stop
    k = int(np.searchsorted(starts, start, side="right"))
    return int(starts[k]) if k < len(starts) else n


def _publish(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` to ``dest``, replacing an earlier ``dest`` (moved aside first, then removed)."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        os.replace(dest, old)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_manifest(folder: str | Path, verify: bool = True) -> dict[str, Any]:
    """The manifest of a prepared folder, checked (format, files present, sha256 with ``verify``).

    Raises:
        ArtifactError: no manifest, another format, a missing or changed file.
    """
    root = Path(folder)
    path = root / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{str(root)!r} is not a prepared folder (no {MANIFEST}); run `recfuse prepare` first")
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{str(path)!r} has format {manifest.get('format')!r}, expected {FORMAT!r}; re-run prepare")
    entries = [*manifest["shards"], manifest["users_file"], manifest["item_counts_file"]]
    for entry in entries:
        f = root / entry["file"]
        if not f.is_file():
            raise ArtifactError(f"prepared file {str(f)!r} is missing; re-run `recfuse prepare`")
        if verify and sha256_file(f) != entry["sha256"]:
            raise ArtifactError(f"prepared file {str(f)!r} does not match its sha256 in the manifest; re-run prepare")
    return manifest
