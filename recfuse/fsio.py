"""Durable file-system primitives: atomic writes, fsync, checksums — the one copy every artifact uses.

Every artifact recfuse writes (bundles, model directories, embedding shards, quarantine files,
evaluation results, the synthetic sample) goes through these: a unique temp file in the target's
directory, fsync, ``os.replace``, then an fsync of the directory, so a reader sees the old file or the
new one, never a partial one. A bundle is only durable when every file *and* every directory entry
pointing at it has reached the disk before the rename that publishes it; :func:`fsync_tree` does that
for a whole directory.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = atomic_write_text(d / "CURRENT", "v1\\n")
    >>> (d / "CURRENT").read_text()
    'v1\\n'
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

_CHUNK = 1 << 20


def fsync_file(path: Path) -> None:
    """Flush one file's data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (new/renamed names) to disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root``, in sorted (deterministic) order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def fsync_tree(root: Path) -> None:
    """fsync every file and every directory under ``root`` (directories bottom-up, root last)."""
    for f in iter_files(root):
        fsync_file(f)
    dirs = [Path(dp) for dp, _dn, _fn in os.walk(root)]
    for d in reversed(dirs):
        fsync_dir(d)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically (temp file + fsync + ``os.replace`` + directory fsync).

    The parent directory is created if needed; the file is world-readable (0644) like a plain write.
    """
    return _atomic_write(Path(path), lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int = 1) -> Path:
    """JSON (sorted keys, UTF-8, NaN allowed) version of :func:`atomic_write_bytes`."""
    text = json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False, allow_nan=True) + "\n"
    return atomic_write_text(path, text)


def atomic_write_parquet(path: str | Path, table: pa.Table, compression: str = "zstd") -> Path:
    """Parquet version of :func:`atomic_write_bytes` (equal tables give identical bytes)."""
    return _atomic_write(Path(path), lambda fh: pq.write_table(table, fh, compression=compression))


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
