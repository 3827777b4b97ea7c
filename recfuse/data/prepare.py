"""``recfuse prepare``: interactions → user-sorted Parquet shards + manifest, in bounded memory.

Training examples need each user's interactions in time order. Sorting a whole interactions table in
pandas holds all of it (several times over) in memory; this step does it in two streamed passes:

1. read the input (one Parquet file or a folder of them, in sorted file order) batch by batch with
   pyarrow, count unusable rows, and append every usable row to one of ``buckets`` bucket files
   chosen by a hash of its ``user_id`` (so a user lives in exactly one bucket);
2. sort each bucket alone by ``(user_id, timestamp)`` (stable, so ties keep input order, as
   :func:`recfuse.training.examples.sort_interactions` does) and write it as one or more shards of
   at most ``rows_per_shard`` rows, cut only between users: a user never spans two shards.

With a split (``split=``, the config's ``[data]`` split kind, seed and cold fraction) pass 2 also
splits each bucket as :func:`recfuse.data.splits.split_interactions` splits the whole table (the
same parts for every kind: the split of a user needs only that user's rows, the global cold-item
set and each row's input row number, which pass 1 records): only the training rows go into the
shards, users.parquet and item_counts.parquet; the val and test rows go to ``val.parquet`` and
``test.parquet`` (about a tenth of the rows each); the manifest's ``split`` holds the split's
record (kind, seed, sizes, fingerprint: what a model trained in memory stores) and its
``cold_item_fraction``. With ``item_ids`` (the validated catalog) rows whose item is not in it are
left out and counted as ``unknown_item``, as ``load_dataset`` leaves them out.

Peak memory is one input batch plus one bucket (``total / buckets`` rows), whatever the total.
Only ``user_id``, ``item_id`` and ``timestamp`` (int64 unix seconds) are kept. Unusable rows (a null
id, a null or unparsable timestamp) are counted per reason in the manifest and left out, never
dropped silently (``on_bad_rows="fail"`` raises instead, nothing written). The folder also holds
``users.parquet`` (every user in shard order, with its number of distinct items) and
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
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recfuse.config import SPLITS
from recfuse.data.bucket_split import COLUMNS, SCHEMA, BucketSplit
from recfuse.data.prepare_input import WEIGHT, batches, ids, input_files, timestamps
from recfuse.data.splits import SPLIT_COLUMN, column_parts
from recfuse.errors import ArtifactError, ConfigError, DataError, SchemaError
from recfuse.fsio import atomic_write_json, fsync_dir, fsync_tree, sha256_file

logger = logging.getLogger(__name__)

FORMAT = "recfuse.prepared/1"
MANIFEST = "manifest.json"
REASONS = ("null_user_id", "null_item_id", "bad_timestamp", "bad_weight", "unknown_item")
PARTS = ("val", "test")  # the held-out parts' files: val.parquet, test.parquet

__all__ = ["FORMAT", "MANIFEST", "input_files", "load_manifest", "prepare_interactions"]


def prepare_interactions(
    src: str | Path,
    out: str | Path,
    buckets: int = 0,
    rows_per_shard: int = 1_000_000,
    batch_rows: int = 262_144,
    split: str | None = None,
    seed: int = 42,
    cold_item_fraction: float = 0.1,
    item_ids: Collection[str] | None = None,
    on_bad_rows: str = "quarantine",
) -> dict[str, Any]:
    """Write user-sorted shards of ``src`` to the folder ``out`` (replaced atomically).

    Args:
        src: a Parquet file or a folder of them with ``user_id``, ``item_id``, ``timestamp``
            (and ``split`` for ``split="column"``).
        out: output folder.
        buckets: hash buckets of pass 1 (0: enough for ``rows_per_shard`` rows each on average).
        rows_per_shard: most rows per shard (a user with more rows gets a shard of its own).
        batch_rows: rows read per input batch.
        split: ``None`` (every usable row is written to the shards) or a split kind of
            :func:`recfuse.data.splits.split_interactions`: only the training part goes into the
            shards, val and test into ``val.parquet`` / ``test.parquet``.
        seed, cold_item_fraction: the split's (``data.split_seed``, ``data.cold_item_fraction``).
        item_ids: the validated catalog's ids: rows of other items are left out (``unknown_item``).
        on_bad_rows: ``quarantine`` (unusable rows are counted and left out) or ``fail`` (any
            unusable row raises, nothing is written), as ``data.on_bad_rows``.

    Returns:
        The manifest (also written to ``out/manifest.json``).

    Raises:
        SchemaError: missing column, id or timestamp column of an unusable type, no input file, a
            ``split`` value other than train / valid / test, no training row, unusable rows with
            ``on_bad_rows="fail"``.
        ConfigError: unknown split kind or a cold fraction outside [0, 0.9].
        DataError: a split of no usable row.
        ValueError: a non-positive size argument, an unknown ``on_bad_rows``.
    """
    for name, value, low in (("buckets", buckets, 0), ("rows_per_shard", rows_per_shard, 1),
                             ("batch_rows", batch_rows, 1)):  # fmt: skip
        if int(value) < low:
            raise ValueError(f"`{name}` must be >= {low}, got {value}")
    if on_bad_rows not in ("quarantine", "fail"):
        raise ValueError(f"`on_bad_rows` must be 'quarantine' or 'fail', got {on_bad_rows!r}")
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split kind must be one of {list(SPLITS)}, got {split!r}")
    if not 0.0 <= cold_item_fraction <= 0.9:
        raise ConfigError(f"`cold_item_fraction` must be in [0, 0.9], got {cold_item_fraction!r}")
    files = input_files(src)
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    n_buckets = int(buckets) or max(1, math.ceil(total / rows_per_shard))
    known = None if item_ids is None else pa.array(sorted({str(i) for i in item_ids}), pa.string())
    dest = Path(out).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        bad, all_items = _partition(files, tmp / "buckets", n_buckets, batch_rows, split, known, on_bad_rows)
        splitter = None
        if split is not None:
            splitter = BucketSplit(tmp, split, seed, cold_item_fraction, all_items)
        shards, n_users, item_counts = _sort_buckets(tmp, n_buckets, rows_per_shard, splitter)
        shutil.rmtree(tmp / "buckets")
        counts = pa.table({"item_id": pa.array(list(item_counts.index), pa.string()),
                           "count": pa.array(item_counts.to_numpy(np.int64))})  # fmt: skip
        pq.write_table(counts, tmp / "item_counts.parquet")
        manifest = {
            "format": FORMAT,
            "source_files": [str(f) for f in files],
            "input_rows": total,
            "rows": int(sum(s["rows"] for s in shards)),
            "unusable_rows": bad,
            "users": n_users,
            "items": int(len(item_counts)),
            "buckets": n_buckets,
            "rows_per_shard": int(rows_per_shard),
            "shards": shards,
            "users_file": {"file": "users.parquet", "sha256": sha256_file(tmp / "users.parquet")},
            "item_counts_file": {"file": "item_counts.parquet", "sha256": sha256_file(tmp / "item_counts.parquet")},
            "split": None,
        }
        if splitter is not None:
            manifest["split"] = splitter.close()
            for part in PARTS:
                manifest[f"{part}_file"] = {"file": f"{part}.parquet", "sha256": sha256_file(tmp / f"{part}.parquet")}
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
    files: list[Path],
    bucket_dir: Path,
    n_buckets: int,
    batch_rows: int,
    split: str | None,
    known: pa.Array | None,
    on_bad_rows: str,
) -> tuple[dict[str, int], list[str]]:
    """Pass 1: usable rows (with their input row number) appended to their user's bucket file.

    Returns:
        ``(unusable rows per reason, the distinct items of the usable rows)``.
    """
    bucket_dir.mkdir()
    columns = (*COLUMNS, SPLIT_COLUMN) if split == "column" else COLUMNS
    schema = _bucket_schema(split)
    writers: dict[int, pq.ParquetWriter] = {}
    bad = dict.fromkeys(REASONS, 0)
    items_seen: set[str] = set()
    offset = 0
    try:
        for path, batch in batches(files, batch_rows, columns):
            users = ids(batch.column("user_id"), "user_id", path)
            items = ids(batch.column("item_id"), "item_id", path)
            ts = timestamps(batch.column("timestamp"), path)
            u_null, i_null, t_null = (
                np.asarray(c.is_null().to_numpy(zero_copy_only=False)) for c in (users, items, ts)
            )
            w_bad = np.zeros(len(u_null), dtype=bool)
            if WEIGHT in batch.schema.names:  # as validate: a weight must be a finite number >= 0
                w = pd.to_numeric(batch.column(WEIGHT).to_pandas(), errors="coerce").to_numpy(
                    np.float64, na_value=np.nan
                )
                w_bad = ~np.isfinite(w) | (w < 0)
            unknown = np.zeros(len(u_null), dtype=bool)
            if known is not None:
                unknown = ~np.asarray(pc.is_in(items, value_set=known).to_numpy(zero_copy_only=False), dtype=bool)
            bad["null_user_id"] += int(u_null.sum())
            bad["null_item_id"] += int((i_null & ~u_null).sum())
            bad["bad_timestamp"] += int((t_null & ~u_null & ~i_null).sum())
            earlier = u_null | i_null | t_null
            bad["bad_weight"] += int((w_bad & ~earlier).sum())
            bad["unknown_item"] += int((unknown & ~w_bad & ~earlier).sum())
            if on_bad_rows == "fail" and any(bad.values()):
                shown = ", ".join(f"{n} {r}" for r, n in bad.items() if n)
                raise SchemaError(
                    f"interactions in {str(path)!r} have unusable rows ({shown})"
                    " and `data.on_bad_rows` is 'fail'; fix them (see `recfuse validate`) or set "
                    '`data.on_bad_rows = "quarantine"` to leave them out'
                )
            keep = ~(u_null | i_null | t_null | w_bad | unknown)
            cols = [users, items, ts, pa.array(offset + np.arange(len(keep), dtype=np.int64))]
            offset += len(keep)
            if split == "column":
                cols.append(pa.array(column_parts(batch.column(SPLIT_COLUMN).to_pandas()), pa.int8()))
            table = pa.table(cols, schema=schema).filter(pa.array(keep))
            if not table.num_rows:
                continue
            items_seen.update(pc.unique(table.column("item_id")).to_pylist())
            user_np = table.column("user_id").to_numpy(zero_copy_only=False)
            bucket = (pd.util.hash_array(user_np) % np.uint64(n_buckets)).astype(np.int64)
            order = np.argsort(bucket, kind="stable")  # stable: a user's rows keep input order
            table, bucket = table.take(pa.array(order)), bucket[order]
            bounds = np.flatnonzero(np.diff(bucket)) + 1
            for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(bucket)], strict=True):
                b = int(bucket[start])
                if b not in writers:
                    writers[b] = pq.ParquetWriter(bucket_dir / f"bucket-{b:05d}.parquet", schema, compression="none")
                writers[b].write_table(table.slice(int(start), int(stop - start)))
    finally:
        for w in writers.values():
            w.close()
    if split is not None and not items_seen:
        raise DataError("cannot split an empty interactions table (no usable row); check the interactions")
    return bad, sorted(items_seen)


def _bucket_schema(split: str | None) -> pa.Schema:
    """Bucket files: the interaction columns, the input row number, and the ``column`` split's part."""
    fields = [*SCHEMA, pa.field("row", pa.int64())]
    return pa.schema([*fields, pa.field("part", pa.int8())] if split == "column" else fields)


def _sort_buckets(
    tmp: Path, n_buckets: int, rows_per_shard: int, splitter: BucketSplit | None
) -> tuple[list[dict[str, Any]], int, pd.Series]:
    """Pass 2: each bucket (split, with ``splitter``) sorted by (user, time) and cut into shards between users.

    Writes ``users.parquet`` (user_id and its distinct items, in shard order) as it goes.

    Returns:
        ``(shard entries, users, rows per item of the shards, sorted by item id)``.
    """
    shards: list[dict[str, Any]] = []
    n_users = 0
    item_counts: dict[str, int] = {}
    users_schema = pa.schema([("user_id", pa.string()), ("items", pa.int64())])
    with pq.ParquetWriter(tmp / "users.parquet", users_schema) as users_out:
        for b in range(n_buckets):
            path = tmp / "buckets" / f"bucket-{b:05d}.parquet"
            if not path.exists():
                continue
            table = pq.read_table(path)
            table = splitter.apply(table) if splitter is not None else table.select(list(COLUMNS))
            order = pc.sort_indices(table, sort_keys=[("user_id", "ascending"), ("timestamp", "ascending")])
            table = table.take(order)  # Arrow's sort is stable: ties keep input order
            vc = pc.value_counts(table.column("item_id")).flatten()
            for item, n in zip(vc[0].to_pylist(), vc[1].to_pylist(), strict=True):
                item_counts[item] = item_counts.get(item, 0) + int(n)
            user_np = table.column("user_id").to_numpy(zero_copy_only=False)
            distinct = pd.DataFrame({"u": user_np, "i": table.column("item_id").to_numpy(zero_copy_only=False)})
            per_user = distinct.groupby("u", sort=False)["i"].nunique()  # first-appearance order: shard order
            ids = pa.array(per_user.index.to_numpy(), pa.string())
            users_out.write_table(pa.table([ids, pa.array(per_user.to_numpy(np.int64))], schema=users_schema))
            n_users += len(per_user)
            starts = np.r_[0, np.flatnonzero(user_np[1:] != user_np[:-1]) + 1]
            start = 0
            while start < table.num_rows:
                stop = _cut(starts, start, rows_per_shard, table.num_rows)
                part = table.slice(start, stop - start)
                name = f"shard-{len(shards):05d}.parquet"
                pq.write_table(part, tmp / name, row_group_size=65_536)
                block = user_np[start:stop]
                users_in = int(np.count_nonzero(block[1:] != block[:-1]) + 1)
                shards.append(
                    {"file": name, "rows": int(stop - start), "users": users_in, "sha256": sha256_file(tmp / name)}
                )
                start = stop
            del table, distinct
    counts = pd.Series(item_counts, dtype=np.int64)
    return shards, n_users, counts.sort_index()


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
    held = [manifest[f"{p}_file"] for p in PARTS if manifest.get(f"{p}_file")]
    entries = [*manifest["shards"], manifest["users_file"], manifest["item_counts_file"], *held]
    for entry in entries:
        f = root / entry["file"]
        if not f.is_file():
            raise ArtifactError(f"prepared file {str(f)!r} is missing; re-run `recfuse prepare`")
        if verify and sha256_file(f) != entry["sha256"]:
            raise ArtifactError(f"prepared file {str(f)!r} does not match its sha256 in the manifest; re-run prepare")
    return manifest
