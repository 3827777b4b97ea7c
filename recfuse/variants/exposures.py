"""Exposure logging for online A/B tests: never blocks the request path, never loses rows silently.

:meth:`ExposureLogger.log` puts an :class:`Exposure` on a bounded queue with ``put_nowait``; when the
queue is full the row is dropped, counted (:meth:`ExposureLogger.stats`) and a warning is logged
(first drop, then at most every 10 s with the running total). A background thread batches rows and
writes rotating Parquet files (a new file every ``rotate_rows`` rows or ``rotate_seconds`` seconds,
whichever first), each written to a hidden temp file, fsynced and renamed into place, so readers
never see half a file. :meth:`ExposureLogger.close` drains the queue and writes the last file.

File schema (``exposures-<unix_ms>-<pid>-<seq>.parquet``): request_id str, user_id str, variant str,
item_ids list<str>, scores list<float32>, ts float64 (unix seconds).

Example:
    >>> import tempfile
    >>> with ExposureLogger(tempfile.mkdtemp()) as log:
    ...     log.log(Exposure("r1", "u1", "attention", ["i1", "i2"], [0.9, 0.5], ts=1.0))
    >>> log.stats().written
    1
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recfuse.errors import ConfigError

logger = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("user_id", pa.string()),
        ("variant", pa.string()),
        ("item_ids", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float32())),
        ("ts", pa.float64()),
    ]
)
FILE_GLOB = "exposures-*.parquet"
_WARN_EVERY_S = 10.0


@dataclass(frozen=True)
class Exposure:
    """One served recommendation list.

    Attributes:
        request_id: id of the request (joins click feedback to the exposure).
        user_id: the user ("" for anonymous requests).
        variant: the variant that served it.
        item_ids: returned items, in rank order.
        scores: their scores (same length as ``item_ids``).
        ts: unix seconds when served (defaults to now).
    """

    request_id: str
    user_id: str
    variant: str
    item_ids: Sequence[str]
    scores: Sequence[float]
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ExposureStats:
    """Counters of an :class:`ExposureLogger` (all since it started).

    Attributes:
        logged: rows accepted onto the queue.
        dropped: rows refused because the queue was full or the logger was closed.
        written: rows written to Parquet files.
        failed: rows lost because a file write failed (logged with the error).
        files: Parquet files written.
        queue_depth: rows waiting on the queue now.
    """

    logged: int
    dropped: int
    written: int
    failed: int
    files: int
    queue_depth: int


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class ExposureLogger:
    """Background Parquet writer for exposures with a bounded queue.

    Args:
        directory: output directory (created if missing).
        rotate_rows: start a new file after this many rows.
        rotate_seconds: write buffered rows at least this often (seconds).
        queue_size: bound of the in-memory queue; rows beyond it are dropped and counted.

    Raises:
        ConfigError: a non-positive ``rotate_rows``, ``rotate_seconds`` or ``queue_size``.
    """

    def __init__(
        self,
        directory: str | Path,
        rotate_rows: int = 10_000,
        rotate_seconds: float = 60.0,
        queue_size: int = 10_000,
    ) -> None:
        limits = {"rotate_rows": rotate_rows, "rotate_seconds": rotate_seconds, "queue_size": queue_size}
        for name, value in limits.items():
            if not value > 0:
                raise ConfigError(f"`{name}` must be > 0, got {value!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rotate_rows = int(rotate_rows)
        self.rotate_seconds = float(rotate_seconds)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=int(queue_size))
        self._lock = threading.Lock()
        self._logged = self._dropped = self._written = self._failed = self._files = 0
        self._seq = 0
        self._last_warn = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="recfuse-exposure-writer", daemon=True)
        self._thread.start()

    # -- request path -------------------------------------------------------------------------
    def log(self, exposure: Exposure) -> bool:
        """Queue one exposure without blocking; returns False (and counts a drop) when it is full."""
        if not self._closed:
            try:
                self._queue.put_nowait(exposure)
            except queue.Full:
                pass
            else:
                with self._lock:
                    self._logged += 1
                return True
        self._count_drop()
        return False

    def _count_drop(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._dropped += 1
            dropped = self._dropped
            warn = dropped == 1 or now - self._last_warn >= _WARN_EVERY_S
            if warn:
                self._last_warn = now
        if warn:
            logger.warning(
                "exposure log %s: dropped %d exposure row(s) so far (queue full at %d or logger closed); "
                "A/B analysis will under-count; raise queue_size or lower rotate_rows",
                self.directory,
                dropped,
                self._queue.maxsize,
            )

    def stats(self) -> ExposureStats:
        """Current counters (cheap; safe from any thread)."""
        with self._lock:
            return ExposureStats(
                self._logged, self._dropped, self._written, self._failed, self._files, self._queue.qsize()
            )

    # -- control ------------------------------------------------------------------------------
    def flush(self, timeout: float | None = 30.0) -> None:
        """Block until everything queued before this call is written to a file."""
        if self._closed:
            return
        marker = _Flush()
        self._queue.put(marker, timeout=timeout)
        marker.done.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> ExposureStats:
        """Stop accepting rows, write everything queued, stop the thread; returns the final stats."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP, timeout=timeout)
            self._thread.join(timeout)
        stats = self.stats()
        if stats.dropped or stats.failed:
            logger.warning(
                "exposure log %s closed: %d written, %d DROPPED (queue full), %d FAILED (write errors)",
                self.directory,
                stats.written,
                stats.dropped,
                stats.failed,
            )
        return stats

    def __enter__(self) -> ExposureLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writer thread ------------------------------------------------------------------------
    def _run(self) -> None:
        buffer: list[Exposure] = []
        first_at = 0.0
        while True:
            wait = self.rotate_seconds - (time.monotonic() - first_at) if buffer else self.rotate_seconds
            try:
                item = self._queue.get(timeout=max(0.01, min(wait, 1.0)))
            except queue.Empty:
                item = None
            if isinstance(item, Exposure):
                if not buffer:
                    first_at = time.monotonic()
                buffer.append(item)
                if len(buffer) >= self.rotate_rows:
                    self._write(buffer)
                    buffer = []
            elif isinstance(item, _Flush) or item is _STOP:
                if buffer:
                    self._write(buffer)
                    buffer = []
                if isinstance(item, _Flush):
                    item.done.set()
                else:
                    return
            elif buffer and time.monotonic() - first_at >= self.rotate_seconds:
                self._write(buffer)
                buffer = []

    def _write(self, rows: list[Exposure]) -> None:
        self._seq += 1
        name = f"exposures-{int(time.time() * 1000):013d}-{os.getpid()}-{self._seq:06d}.parquet"
        tmp = self.directory / f".{name}.tmp"
        try:
            table = pa.table(
                {
                    "request_id": [r.request_id for r in rows],
                    "user_id": [r.user_id for r in rows],
                    "variant": [r.variant for r in rows],
                    "item_ids": [list(map(str, r.item_ids)) for r in rows],
                    "scores": [[float(s) for s in r.scores] for r in rows],
                    "ts": [float(r.ts) for r in rows],
                },
                schema=SCHEMA,
            )
            with open(tmp, "wb") as fh:
                pq.write_table(table, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.directory / name)
        except Exception:  # the writer thread must survive a bad row or a full disk
            logger.exception("exposure log %s: writing %d row(s) to %s failed", self.directory, len(rows), name)
            tmp.unlink(missing_ok=True)
            with self._lock:
                self._failed += len(rows)
            return
        with self._lock:
            self._written += len(rows)
            self._files += 1


def exposure_files(directory: str | Path) -> list[Path]:
    """Finished exposure files in ``directory`` (temp files excluded), oldest first."""
    return sorted(Path(directory).glob(FILE_GLOB))


def read_exposures(directory: str | Path) -> pa.Table:
    """All finished exposure files of ``directory`` as one Arrow table with :data:`SCHEMA`.

    Raises:
        FileNotFoundError: the directory does not exist.
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"exposure directory {str(d)!r} does not exist")
    tables = [pq.read_table(p).cast(SCHEMA) for p in exposure_files(d)]
    if not tables:
        return SCHEMA.empty_table()
    return pa.concat_tables(tables)
