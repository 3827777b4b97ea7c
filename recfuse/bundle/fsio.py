"""Durable file-system primitives for bundle publishing: fsync, atomic replace, checksums.

A bundle is only durable when every file *and* every directory entry pointing at it has reached the
disk before the rename that publishes it; :func:`fsync_tree` does that for a whole directory.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_text_atomic(d / "CURRENT", "v1\\n")
    >>> (d / "CURRENT").read_text()
    'v1\\n'
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

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


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically: unique temp file + fsync + ``os.replace`` + dir fsync.

    Readers see either the old content or the new one, never a partial file.
    """
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
