"""The bundle manifest: what a version directory holds and how to check it is intact.

``manifest.json`` is written last inside the temporary directory. It records the format version,
the recfuse version, the model version, the fusion variant, the embedding dim, the metric, the
faiss factory string, the item count, the measured ANN Recall@10 (item vectors as queries), the
served recall (``served_recall``: Recall@10 on the query vectors in ``served_queries.npy``, the
target, whether efSearch / nprobe were tuned to it and every value tried; absent in bundles
written before it), the training and index configs (with any tuned value, which the loader
applies), the item-item head's record when the bundle has one (``item_head``: method, params,
beta, nnz and the served re-rank's ``candidates``), the UTC creation time, and the sha256 + size of
every other file (paths relative to the version directory, ``/``-separated).

A manifest is untrusted input: every file entry must be a relative path that stays inside the
version directory (no ``..``, no absolute path, no symlink leading out), checked before anything
is opened, and error messages name files only by their bundle-relative path, so a crafted manifest
learns nothing about files outside the bundle.

Example:
    >>> m = read_manifest(Path("bundles/attention/20261128T031500.000000Z-1a2b3c"))  # doctest: +SKIP
    >>> m["embedding_dim"], m["item_count"]                                           # doctest: +SKIP
    (64, 10000)
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recfuse.errors import ArtifactError
from recfuse.fsio import iter_files, sha256_file
from recfuse.itemitem import HEAD_DIR

logger = logging.getLogger(__name__)

FORMAT = "recfuse.bundle"
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
QUERY_TOWER = "query_tower"  # prefix: query_tower.npz + query_tower.json
EMBEDDINGS = "embeddings.parquet"
INDEX = "index.faiss"
# query vectors the served recall is measured on (export draws them; add-items measures again on them)
SERVED_QUERIES = "served_queries.npy"
VOCAB_USERS = "vocab_users.json"
VOCAB_ITEMS = "vocab_items.json"
VOCAB_CATEGORIES = "vocab_categories.json"
ITEMS = "items.parquet"
POPULARITY = "popularity.parquet"
USER_HISTORY = "user_history.parquet"
CONFIG = "config.json"
SAVEDMODEL_DIR = "query_tower_savedmodel"
MODEL_DIR = "model"
# the item-item head (optional; recfuse.bundle.item_head): head.json + indptr/indices/data .npy
ITEM_HEAD_DIR = HEAD_DIR

REQUIRED_FILES = (
    f"{QUERY_TOWER}.npz",
    f"{QUERY_TOWER}.json",
    EMBEDDINGS,
    INDEX,
    VOCAB_USERS,
    VOCAB_ITEMS,
    VOCAB_CATEGORIES,
    ITEMS,
    POPULARITY,
    USER_HISTORY,
    CONFIG,
)

# Keys every manifest must carry (checked on load before anything else is read).
REQUIRED_KEYS = (
    "format",
    "format_version",
    "recfuse_version",
    "version",
    "model_version",
    "variant",
    "embedding_dim",
    "metric",
    "index_factory",
    "item_count",
    "ann_recall",
    "training_config",
    "index_config",
    "created_at",
    "files",
)


def file_entries(version_dir: Path) -> dict[str, dict[str, Any]]:
    """``{relative_path: {"sha256", "size"}}`` for every file under ``version_dir`` except the manifest."""
    out: dict[str, dict[str, Any]] = {}
    for f in iter_files(version_dir):
        rel = f.relative_to(version_dir).as_posix()
        if rel == MANIFEST:
            continue
        out[rel] = {"sha256": sha256_file(f), "size": f.stat().st_size}
    return out


_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def check_entry_path(version_dir: Path, rel: object) -> Path:
    """The file a manifest entry names, after checking it stays inside ``version_dir``.

    Raises:
        ArtifactError: a non-string, empty, absolute, ``..``/``.``-component, backslash or control-character
            path, or one whose real location (symlinks followed) is outside the version directory. The
            message names only the entry as written in the manifest.
    """
    shown = repr(rel)[:120]
    if not isinstance(rel, str) or not rel:
        raise ArtifactError(f"{MANIFEST}: file entry {shown} is not a non-empty relative path")
    parts = rel.split("/")
    if rel.startswith("/") or _BAD_CHARS.search(rel) or any(part in ("", ".", "..") for part in parts):
        raise ArtifactError(
            f"{MANIFEST}: file entry {shown} is not a plain relative path inside the bundle version (no leading "
            "'/', no '.' or '..' components, no backslashes or control characters); the manifest is crafted or "
            "corrupt: re-export the bundle"
        )
    path = version_dir.joinpath(*parts)
    root = version_dir.resolve()
    real = path.resolve()
    if real != root and root not in real.parents:
        raise ArtifactError(
            f"{MANIFEST}: file entry {shown} leads outside the bundle version through a symlink; bundle files must "
            "be regular files inside the version directory"
        )
    return path


def read_manifest(version_dir: Path) -> dict[str, Any]:
    """Parse and check the manifest's format and required keys.

    Raises:
        ArtifactError: missing/unreadable manifest, another format, an unsupported format version or a
            missing key — the message names ``manifest.json`` and the mismatch.
    """
    path = version_dir / MANIFEST
    if path.is_symlink():
        raise ArtifactError(f"bundle {version_dir.name!r}: {MANIFEST} is a symlink; it must be a regular file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(
            f"bundle file {str(path)!r} is missing: {str(version_dir)!r} is not a complete bundle version"
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"bundle file {str(path)!r} is unreadable: {err}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ArtifactError(f"{str(path)!r}: format is {found!r}, expected {FORMAT!r}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{str(path)!r}: format_version is {raw.get('format_version')!r}, this recfuse reads "
            f"format_version {FORMAT_VERSION}; re-export the bundle with this recfuse version"
        )
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise ArtifactError(f"{str(path)!r}: missing key(s) {missing}")
    if not isinstance(raw["files"], dict):
        raise ArtifactError(f"{str(path)!r}: 'files' must map relative paths to {{sha256, size}}")
    return raw


def verify_files(version_dir: Path, files: Mapping[str, Mapping[str, Any]], checksums: bool = True) -> None:
    """Check every listed file exists with the recorded size (and sha256 when ``checksums``).

    Raises:
        ArtifactError: naming the first missing, resized or tampered file with expected vs found values.
    """
    for req in REQUIRED_FILES:
        if req not in files:
            raise ArtifactError(f"bundle {str(version_dir)!r}: manifest lists no {req!r}; the bundle is incomplete")
    checked: list[tuple[str, Path, Mapping[str, Any]]] = []
    for rel, entry in sorted(files.items()):
        path = check_entry_path(version_dir, rel)  # every entry, before any file is opened
        if not isinstance(entry, Mapping) or not isinstance(entry.get("size"), int) or "sha256" not in entry:
            raise ArtifactError(f"{MANIFEST}: file entry {rel!r} must be {{'sha256': str, 'size': int}}")
        checked.append((rel, path, entry))
    where = f"bundle {version_dir.name!r}"
    for rel, path, entry in checked:
        if not path.is_file():
            raise ArtifactError(f"{where}: file {rel!r} is missing (listed in {MANIFEST})")
        size = path.stat().st_size
        if size != int(entry["size"]):
            raise ArtifactError(
                f"{where}: file {rel!r} has size {size}, manifest says {entry['size']}: the file was modified"
            )
        if checksums:
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                raise ArtifactError(
                    f"{where}: file {rel!r} has sha256 {digest[:16]}…, manifest says "
                    f"{str(entry['sha256'])[:16]}…: the file was modified or corrupted"
                )
    extra = sorted(
        f.relative_to(version_dir).as_posix()
        for f in iter_files(version_dir)
        if f.relative_to(version_dir).as_posix() not in files and f.name != MANIFEST
    )
    if extra:
        logger.warning("bundle %s holds %d file(s) not in its manifest (ignored): %s", version_dir, len(extra), extra)
