"""Version names, the ``CURRENT`` pointer and the per-variant writer lock.

Layout under a bundles root::

    ROOT/<variant>/<version>/      complete, verified version directories (never modified)
    ROOT/<variant>/CURRENT         text file: the name of the published version
    ROOT/<variant>/.tmp-<version>-<hex>/   a version being written (ignored by readers)
    ROOT/<variant>/.lock           flock held by the one writer of this variant

A version becomes visible only through ``os.replace`` of ``CURRENT``, so readers see the old or the
new version, never a half one; a killed writer leaves at most a ``.tmp-*`` directory, removed by the
next writer (which holds the lock, so no other writer can own it).

Example:
    >>> name = new_version_name()
    >>> len(name.split("-")[-1])
    6
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from recfuse.errors import ArtifactError
from recfuse.fsio import atomic_write_text, fsync_dir

logger = logging.getLogger(__name__)

CURRENT = "CURRENT"
TMP_PREFIX = ".tmp-"
LOCK = ".lock"


def new_version_name(now: dt.datetime | None = None) -> str:
    """Sortable, unique version name: ``20261128T031500.123456Z-1a2b3c`` (UTC time + 6 random hex)."""
    t = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return f"{t:%Y%m%dT%H%M%S.%f}Z-{secrets.token_hex(3)}"


MAX_CURRENT_BYTES = 4096


def check_version_name(name: str) -> bool:
    """Whether ``name`` can be a version directory directly inside a variant directory (no path in it)."""
    return (
        bool(name)
        and len(name) <= 255
        and not name.startswith(".")
        and "/" not in name
        and "\\" not in name
        and name.isprintable()
    )


def read_current(variant_dir: Path) -> str:
    """The published version name of a variant directory.

    ``CURRENT`` must name a directory that is a direct child of ``variant_dir`` (not ``..``, not an
    absolute or nested path, not a hidden temp directory, not a symlink); nothing it names is
    looked at before the name passes, and messages show only the name.

    Raises:
        ArtifactError: no ``CURRENT`` (nothing published yet), a name that is not a direct child, or it names a
            missing directory.
    """
    pointer = variant_dir / CURRENT
    try:
        with pointer.open("rb") as f:
            raw = f.read(MAX_CURRENT_BYTES + 1)
    except FileNotFoundError:
        raise ArtifactError(
            f"{str(pointer)!r} does not exist: no bundle version of variant {variant_dir.name!r} is published; "
            "run `recfuse export` first"
        ) from None
    name = raw.decode("utf-8", "replace").strip()
    if len(raw) > MAX_CURRENT_BYTES or not check_version_name(name):
        raise ArtifactError(
            f"{variant_dir.name}/{CURRENT} names {name[:80]!r}, which is not a version directory name (it must be "
            "a direct child of the variant directory: no '/', no '..', not absolute, not hidden); "
            "republish with `recfuse export`"
        )
    target = variant_dir / name
    if target.is_symlink() or not target.is_dir():
        raise ArtifactError(
            f"{variant_dir.name}/{CURRENT} names version {name!r}, which is not a directory in the variant "
            "directory (symlinks are not followed)"
        )
    return name


def publish_current(variant_dir: Path, version: str) -> None:
    """Atomically point ``CURRENT`` at ``version`` (temp file + fsync + ``os.replace`` + dir fsync)."""
    atomic_write_text(variant_dir / CURRENT, version + "\n")


def list_versions(variant_dir: Path) -> list[str]:
    """Complete version directories (with a manifest), oldest first; temp directories are ignored."""
    if not variant_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in variant_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").is_file()
    )


def list_variants(root: Path) -> list[str]:
    """Variant directories of a bundles root that have a ``CURRENT`` pointer."""
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / CURRENT).is_file()
    )


@contextlib.contextmanager
def writer_lock(variant_dir: Path) -> Iterator[None]:
    """Exclusive per-variant writer lock (released by the kernel if the writer dies)."""
    variant_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(variant_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def clean_stale(variant_dir: Path) -> int:
    """Remove ``.tmp-*`` directories left by killed writers (call with the writer lock held)."""
    removed = 0
    for p in variant_dir.iterdir():
        if p.name.startswith(TMP_PREFIX) or p.name.startswith(f".{CURRENT}.tmp-"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed += 1
    if removed:
        fsync_dir(variant_dir)
        logger.info("removed %d stale temporary entr(ies) from %s", removed, variant_dir)
    return removed


def prune_versions(variant_dir: Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions, never the published one; returns the names removed."""
    if keep < 1:
        raise ArtifactError(f"`keep_versions` must be >= 1, got {keep}")
    current = read_current(variant_dir)
    versions = list_versions(variant_dir)
    doomed = [v for v in versions[:-keep] if v != current]
    for v in doomed:
        # Rename first so a reader never sees a half-deleted version directory under its real name.
        trash = variant_dir / f"{TMP_PREFIX}del-{v}"
        os.replace(variant_dir / v, trash)
        shutil.rmtree(trash, ignore_errors=True)
    if doomed:
        fsync_dir(variant_dir)
    return doomed
