"""The item-item head inside a bundle: written beside the index, recorded in the manifest, loaded verified.

A trained model may carry an item-item head (:mod:`recfuse.itemitem`: sparse weights ``W [n, n]``
and ``beta``). Export copies it to ``item_head/`` of the bundle version (``head.json`` + three
``.npy``, no pickles), inside the writer's temporary directory, so the manifest's checksums cover it
like every other file; the manifest's ``item_head`` key records what it is (method, params, beta,
nnz, and ``candidates``: how many index candidates beyond ``k`` the Recommender re-ranks with it).
The loader reads it only after the checksums passed, with :func:`recfuse.itemitem.load_item_head`,
which checks every array against the catalog size. Bundles without the key load as before.

New items (``add-items``) have no interactions: :func:`grown_head` carries a head forward to the
larger catalog with empty rows and columns for them.

Example:
    >>> import numpy as np, scipy.sparse as sp
    >>> head = ItemHead(sp.csr_matrix(np.eye(2, dtype=np.float32)), 1.0, "itemknn", {"neighbors": 1})
    >>> grown_head(head, 3).weights.shape, head_record(head, 50)["candidates"]
    ((3, 3), 50)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recfuse.errors import ArtifactError
from recfuse.itemitem import HEAD_DIR, ItemHead, load_item_head

#: manifest key of the head's record
MANIFEST_KEY = "item_head"
#: files of ``HEAD_DIR`` every bundle with a head lists in its manifest
HEAD_FILES = tuple(f"{HEAD_DIR}/{name}" for name in ("head.json", "indptr.npy", "indices.npy", "data.npy"))

__all__ = [
    "HEAD_DIR",
    "HEAD_FILES",
    "MANIFEST_KEY",
    "grown_head",
    "head_record",
    "read_bundle_head",
    "reindexed_head",
    "write_head",
]


def head_record(head: ItemHead, candidates: int) -> dict[str, Any]:
    """The manifest's ``item_head`` entry: the head's record without its selection evidence (that
    stays in ``item_head/head.json``), plus the served re-rank's ``candidates``."""
    record = {k: v for k, v in head.record().items() if k != "selection"}
    record["candidates"] = int(candidates)
    return record


def write_head(version_dir: Path, head: ItemHead) -> Path:
    """Write ``head`` to ``version_dir/item_head`` (the writer passes its temporary directory)."""
    return head.save(version_dir / HEAD_DIR)


def grown_head(head: ItemHead, n_items: int) -> ItemHead:
    """``head`` over a catalog grown to ``n_items`` rows: the new items' rows and columns are empty
    (no interactions), the old weights unchanged.

    Raises:
        ValueError: ``n_items`` is smaller than the head's catalog (items are never removed).
    """
    n = head.n_items
    if n_items < n:
        raise ValueError(f"`n_items` must be >= the head's {n} items (a catalog only grows), got {n_items}")
    w = head.weights
    indptr = np.concatenate([w.indptr.astype(np.int64), np.full(n_items - n, w.indptr[-1], np.int64)])
    weights = sp.csr_matrix((w.data, w.indices.astype(np.int64), indptr), shape=(n_items, n_items), dtype=np.float32)
    return dataclasses.replace(head, weights=weights)  # every other field (beta, method, ...) carried


def reindexed_head(head: ItemHead, head_ids: Sequence[str], item_ids: Sequence[str]) -> ItemHead:
    """``head`` (rows/columns = ``head_ids``) over another catalog ``item_ids`` (e.g. a bundle built from
    embedding shards): weights between items both catalogs hold move to their new rows; items the
    head never saw get empty rows and columns, items the catalog lacks are dropped.
    """
    if len(head_ids) != head.n_items:
        raise ValueError(f"`head_ids` must name the head's {head.n_items} rows, got {len(head_ids)}")
    if list(head_ids) == list(item_ids):
        return head
    new_row = {str(i): r for r, i in enumerate(item_ids)}
    where = np.array([new_row.get(str(i), -1) for i in head_ids], np.int64)
    w = head.weights.tocoo()
    rows, cols = where[w.row], where[w.col]
    keep = (rows >= 0) & (cols >= 0)
    n = len(item_ids)
    weights = sp.csr_matrix((w.data[keep], (rows[keep], cols[keep])), shape=(n, n), dtype=np.float32)
    return dataclasses.replace(head, weights=weights)


def read_bundle_head(version_dir: Path, manifest: Mapping[str, Any], n_items: int) -> tuple[ItemHead | None, int]:
    """``(head, candidates)`` of a verified bundle version; ``(None, 0)`` when it has no head.

    Raises:
        ArtifactError: the manifest records a head but does not list its files, its ``candidates``
            is not a positive integer, or the files do not describe a head over ``n_items`` items.
    """
    record = manifest.get(MANIFEST_KEY)
    if record is None:
        return None, 0
    where = f"bundle {version_dir.name!r}"
    missing = [f for f in HEAD_FILES if f not in manifest["files"]]
    if missing:
        raise ArtifactError(f"{where}: the manifest records an item head but lists no {missing}; re-export the bundle")
    candidates = record.get("candidates") if isinstance(record, Mapping) else None
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ArtifactError(f"{where}: manifest item_head.candidates must be an integer >= 1, got {candidates!r}")
    return load_item_head(version_dir / HEAD_DIR, n_items), candidates
