"""Read and check embedding shards one record batch at a time (the scan pass of an index build).

Shards are what ``recfuse embed`` writes: ``part-NNNNN.parquet`` files with an ``item_id`` string
column and a ``vector`` fixed_size_list<float>[d] column, listed in the job's ``manifest.json``.
:func:`scan_shards` checks every shard (one width ``d``, item ids present and unique across shards,
vectors not null and finite) and records the usable rows' ids in row order; rows with bad vectors
fail the scan, or with ``on_bad_vectors="skip"`` are set aside and listed (never dropped silently).
:func:`iter_usable` then streams the usable vectors batch by batch, and :func:`read_shard_vectors`
reads them all into one matrix where a caller needs it (a bundle's files).

Example:
    >>> scan = scan_shards("out/emb")                           # doctest: +SKIP
    >>> scan.n, scan.dim, scan.item_ids[0].as_py()             # doctest: +SKIP
    (2000000, 64, 'i0')
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recfuse.errors import ConfigError, SchemaError
from recfuse.types import FloatArray, Int64Array

logger = logging.getLogger(__name__)

#: rows per record batch read from a shard
BATCH_ROWS = 65_536
BAD_VECTOR_POLICIES = ("fail", "skip")


@dataclass(frozen=True)
class ShardProgress:
    """Where a pass over the shards stands: ``stage`` is ``scan``, ``sample``, ``train``, ``add`` or ``read``."""

    stage: str
    rows_done: int
    rows_total: int


Progress = Callable[[ShardProgress], None]


@dataclass
class ShardScan:
    """What the scan pass found (pass it to :func:`build_index_from_shards` to skip a second scan).

    Attributes:
        shards: the shard files, in row order.
        dim: vector width ``d``.
        rows: rows per shard as stored (bad rows included).
        item_ids: ``[n]`` ids of the usable rows in row order; row ``i`` becomes FAISS id ``i``.
        bad_rows: ``[b]`` sorted positions (over all stored rows) of the rows set aside.
        rejects: ``(item_id, reason)`` of each row set aside (``on_bad_vectors="skip"``).
    """

    shards: list[Path]
    dim: int
    rows: list[int]
    item_ids: pa.Array
    bad_rows: Int64Array
    rejects: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Usable rows (what the index will hold)."""
        return len(self.item_ids)


def shard_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The shard files of a finished ``recfuse embed`` directory (its manifest order), or the given files.

    Raises:
        SchemaError: no shards, an unfinished job directory, a missing file, or a shard whose row
            count differs from the job manifest.
    """
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        root = Path(source)
        manifest = root / "manifest.json"
        if not manifest.is_file():
            raise SchemaError(
                f"{str(root)!r} has no manifest.json, so it is not a finished `recfuse embed` output "
                "(rerun the same `recfuse embed` command to finish it, or pass the shard files themselves)"
            )
        try:
            entries = json.loads(manifest.read_text(encoding="utf-8"))["shards"]
            paths = [root / str(e["name"]) for e in entries]
        except (ValueError, KeyError, TypeError) as err:
            raise SchemaError(
                f"embed manifest {str(manifest)!r} is unreadable ({type(err).__name__}: {err}); expected JSON with "
                "a `shards` list of {name, rows}: rerun `recfuse embed` into an empty directory"
            ) from None
        for entry, path in zip(entries, paths):
            rows = pq.read_metadata(path).num_rows if path.is_file() else None
            if rows != entry.get("rows"):
                raise SchemaError(
                    f"shard {str(path)!r} has {rows} rows, the embed manifest {str(manifest)!r} says "
                    f"{entry.get('rows')}; the directory was changed after the job: rerun `recfuse embed` into it"
                )
    else:
        paths = [Path(source)] if isinstance(source, (str, Path)) else [Path(p) for p in source]
    if not paths:
        where = repr(str(source)) if isinstance(source, (str, Path)) else "the given file list (empty)"
        raise SchemaError(f"no embedding shards in {where}; run `recfuse embed --out DIR` first")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SchemaError(f"embedding shard {missing[0]!r} does not exist ({len(missing)} missing); check the paths")
    return paths


def _shard_dim(path: Path) -> int:
    schema = pq.read_schema(path)
    for column in ("item_id", "vector"):
        if column not in schema.names:
            raise SchemaError(
                f"shard {str(path)!r} has no `{column}` column (columns: {schema.names}); embedding shards "
                "hold item_id (string) and vector (fixed_size_list<float32>[d]), as `recfuse embed` writes them"
            )
    vtype = schema.field("vector").type
    if not pa.types.is_fixed_size_list(vtype) or not pa.types.is_floating(vtype.value_type):
        raise SchemaError(
            f"shard {str(path)!r} column `vector` has type {vtype}, expected fixed_size_list<float32>[d]; "
            "write it with pa.FixedSizeListArray.from_arrays(values, d) (as `recfuse embed` does)"
        )
    id_type = schema.field("item_id").type
    if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type) or pa.types.is_integer(id_type)):
        raise SchemaError(f"shard {str(path)!r} column `item_id` has type {id_type}, expected string item ids")
    return int(vtype.list_size)


def _batches(path: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=columns, use_threads=False)


def _matrix(column: pa.Array, dim: int) -> tuple[FloatArray, np.ndarray]:
    """``([b, d] float32, [b] bool usable)`` of a fixed-size-list vector column (null rows unusable)."""
    flat = column.values.slice(column.offset * dim, len(column) * dim).to_numpy(zero_copy_only=False)
    x = np.asarray(flat, dtype=np.float32).reshape(len(column), dim)
    ok = np.asarray(np.isfinite(x).all(axis=1))
    if column.null_count:
        ok &= column.is_valid().to_numpy(zero_copy_only=False)
    return x, ok


def scan_shards(
    source: str | Path | Sequence[str | Path], on_bad_vectors: str = "fail", progress: Progress | None = None
) -> ShardScan:
    """Pass 1: check every shard (schema, width, ids, vectors) one batch at a time.

    Args:
        source: a finished ``recfuse embed`` directory or shard files (see :func:`shard_files`).
        on_bad_vectors: ``fail`` raises on the first shard with null or NaN/inf vectors; ``skip``
            sets those rows aside and lists them in ``ShardScan.rejects``.
        progress: called after every batch.

    Raises:
        SchemaError: naming the shard and column: widths that differ across shards, bad vectors
            (``fail``), null or duplicate item ids.
        ConfigError: an unknown ``on_bad_vectors``.
    """
    if on_bad_vectors not in BAD_VECTOR_POLICIES:
        raise ConfigError(f"`on_bad_vectors` must be one of {list(BAD_VECTOR_POLICIES)}, got {on_bad_vectors!r}")
    paths = shard_files(source)
    dims = [_shard_dim(p) for p in paths]
    for path, dim in zip(paths, dims):
        if dim != dims[0]:
            raise SchemaError(
                f"shard {str(path)!r} column `vector` has width {dim}, but {str(paths[0])!r} has {dims[0]}; "
                "every shard must come from one model: re-embed into an empty `recfuse embed --out` directory"
            )
    rows = [pq.read_metadata(p).num_rows for p in paths]
    total, start = sum(rows), 0
    ids: list[pa.Array] = []
    bad: list[np.ndarray] = []
    rejects: list[tuple[str, str]] = []
    for path in paths:
        shard_bad: list[tuple[str, str]] = []
        for batch in _batches(path, ["item_id", "vector"]):
            item_ids = batch.column("item_id").cast(pa.string())
            if item_ids.null_count:
                first = int(np.flatnonzero(~item_ids.is_valid().to_numpy(zero_copy_only=False))[0])
                raise SchemaError(
                    f"shard {str(path)!r} column `item_id` has a null value at row {start + first} (over all "
                    "shards); every vector needs its item id: re-run `recfuse embed`"
                )
            _, ok = _matrix(batch.column("vector"), dims[0])
            if not ok.all():
                rows_bad = np.flatnonzero(~ok)
                nulls = batch.column("vector").is_null().to_numpy(zero_copy_only=False)[rows_bad]
                shard_bad += [(item_ids[int(r)].as_py(), "null vector" if is_null else "NaN/inf in vector")
                              for r, is_null in zip(rows_bad, nulls)]  # fmt: skip
                bad.append(start + rows_bad)
                item_ids = item_ids.filter(pa.array(ok))
            ids.append(item_ids)
            start += batch.num_rows
            if progress is not None:
                progress(ShardProgress("scan", start, total))
        if shard_bad and on_bad_vectors == "fail":
            raise SchemaError(
                f"shard {str(path)!r} column `vector` has {len(shard_bad)} unusable row(s) (first: item "
                f"{shard_bad[0][0]!r}, {shard_bad[0][1]}); re-embed them (the embed job rejects non-finite "
                "vectors) or pass on_bad_vectors='skip' (--skip-bad-vectors) to leave them out and have them listed"
            )
        rejects += [(item_id, f"{reason} ({path.name})") for item_id, reason in shard_bad]
    all_ids = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
    bad_rows = np.concatenate(bad).astype(np.int64) if bad else np.zeros(0, np.int64)
    scan = ShardScan(paths, dims[0], rows, all_ids, bad_rows, rejects)
    _check_unique(scan)
    if rejects:
        logger.warning("%d of %d shard rows set aside (null or NaN/inf vectors)", len(rejects), total)
    return scan


def _check_unique(scan: ShardScan) -> None:
    counts = pc.value_counts(scan.item_ids)
    dupes = counts.filter(pc.greater(counts.field("counts"), 1))
    if not len(dupes):
        return
    value = dupes.field("values")[0].as_py()
    positions = np.flatnonzero(pc.equal(scan.item_ids, value).to_numpy(zero_copy_only=False))
    raw = _raw_positions(scan, positions)
    bounds = np.cumsum(scan.rows)
    where = sorted({scan.shards[int(np.searchsorted(bounds, r, side="right"))].name for r in raw})
    raise SchemaError(
        f"column `item_id` must be unique across shards, got {len(dupes)} duplicated id(s), e.g. {value!r} "
        f"{len(positions)} times (in {', '.join(where)}); embed each item once (one catalog row per item_id)"
    )


def _raw_positions(scan: ShardScan, kept: np.ndarray) -> Int64Array:
    """Stored-row positions of usable-row positions ``kept`` (skipping the rows set aside)."""
    kept = np.asarray(kept, dtype=np.int64)
    if not len(scan.bad_rows):
        return kept
    before = scan.bad_rows - np.arange(len(scan.bad_rows))  # usable rows before each bad row
    return kept + np.searchsorted(before, kept, side="right")


def iter_usable(
    scan: ShardScan, stage: str = "read", progress: Progress | None = None
) -> Iterator[tuple[int, FloatArray]]:
    """``(first usable row, [b, d] usable vectors)`` per batch, in row order (``progress`` tagged ``stage``)."""
    start_raw = start = 0
    total = sum(scan.rows)
    for path in scan.shards:
        for batch in _batches(path, ["vector"]):
            x, _ = _matrix(batch.column("vector"), scan.dim)
            lo, hi = np.searchsorted(scan.bad_rows, [start_raw, start_raw + len(x)])
            if hi > lo:
                x = np.delete(x, scan.bad_rows[lo:hi] - start_raw, axis=0)
            start_raw += batch.num_rows
            yield start, x
            start += len(x)
            if progress is not None:
                progress(ShardProgress(stage, start_raw, total))


def read_shard_vectors(scan: ShardScan) -> FloatArray:
    """``[n, d]`` every usable vector in row order: the whole matrix in memory (for a bundle's files)."""
    out = np.empty((scan.n, scan.dim), np.float32)
    for start, x in iter_usable(scan):
        out[start : start + len(x)] = x
    return out
