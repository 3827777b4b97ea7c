"""Incremental add: embed new catalog items with a bundle's model and publish a new version, no retraining.

The bundle's ``model/`` copy is loaded with :class:`recfuse.models.trained.TrainedModel` and its
candidate tower embeds the new rows from content (item id masked, as for cold items in training).
The new rows are appended after the existing ones (row = vocab index = FAISS id stays stable for
old items), added to the loaded FAISS index with ``ItemIndex.add`` (no rebuild; ANN recall is
re-measured and recorded), and the whole thing is published as a new version whose manifest names
its ``parent_version``. Because the query tower reads history items from the bundle's item matrix,
a new item is recommendable — and meaningful inside a history — the moment it is published.

Rows that cannot be used (unreadable image, wrong vector width…) are validated with the data
contract, counted and reported in :class:`AddResult`, never silently dropped. Ids already in the
bundle are skipped and counted (``on_existing="skip"``) or rejected (``"error"``).

An item-item head (``item_head/``) is carried forward to the grown catalog: the new items have no
interactions, so their rows and columns are empty (:func:`recfuse.bundle.item_head.grown_head`).

The TF SavedModel in ``query_tower_savedmodel/`` is carried over unchanged: its baked-in item
matrix is the export's catalog (serving uses the numpy forward over the full, updated matrix).

Example:
    >>> r = add_items("bundles/attention", "new_items.parquet")   # doctest: +SKIP
    >>> r.added, r.path.name                                       # doctest: +SKIP
    (25, '20261128T041500.000000Z-4d5e6f')
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recfuse.bundle import manifest as mf
from recfuse.bundle.contents import BundleContents
from recfuse.bundle.export import metadata_frame
from recfuse.bundle.item_head import grown_head
from recfuse.bundle.loader import LoadedBundle, load_bundle
from recfuse.bundle.writer import progress_steps, write_bundle
from recfuse.config import RecfuseConfig
from recfuse.data.images import image_root
from recfuse.data.readers import read_table
from recfuse.data.validate import validate_catalog
from recfuse.data.vocab import id_str
from recfuse.errors import ArtifactError, DataError, SchemaError
from recfuse.index import ItemIndex, measure_recall
from recfuse.models.trained import TrainedModel
from recfuse.types import FloatArray, ProgressFn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AddResult:
    """Outcome of :func:`add_items`.

    Attributes:
        path: the published version directory (the old one when nothing was added).
        added: items embedded and published.
        skipped_existing: catalog ids already in the bundle (``on_existing="skip"``).
        rejected: rows that failed validation or embedding.
        rejects: ``(item_id, reason)`` of each rejected row.
    """

    path: Path
    added: int
    skipped_existing: int
    rejected: int
    rejects: list[tuple[str, str]] = field(default_factory=list)


def add_items(
    bundle: str | Path | LoadedBundle,
    catalog: str | Path | pd.DataFrame,
    root: str | Path | None = None,
    *,
    images_dir: str | Path | None = None,
    allow_external_images: bool = False,
    on_existing: str = "skip",
    version: str | None = None,
    keep_versions: int | None = None,
    progress: ProgressFn | None = None,
) -> AddResult:
    """Embed ``catalog``'s new items and publish ``bundle`` + them as a new version.

    Args:
        bundle: the bundle to extend (path accepted by ``load_bundle`` or a loaded bundle).
        catalog: new catalog rows (path or frame with the catalog columns of the model's modalities).
        root: bundles root to publish into (default: the bundle's own root).
        images_dir: base of relative image paths (default: the catalog file's directory).
        allow_external_images: image paths may leave ``images_dir`` (absolute paths, ``..``); off, such
            rows are rejected (``image_outside``).
        on_existing: ``skip`` (count) or ``error`` for ids already in the bundle.
        version: name of the new version (default: time-based).
        keep_versions: prune older versions after publishing.
        progress: called ``(stage, done, total)`` as the work proceeds (:data:`recfuse.types.ProgressFn`).

    Returns:
        :class:`AddResult` (nothing is published when no row is new and usable).

    Raises:
        ArtifactError: the bundle has no ``model/`` directory; DataError: existing ids with
            ``on_existing="error"`` or a catalog without ``item_id``.
    """
    if on_existing not in ("skip", "error"):
        raise DataError(f"`on_existing` must be 'skip' or 'error', got {on_existing!r}")
    tell = progress or _quiet
    tell("loading bundle", 0, 0)
    loaded = bundle if isinstance(bundle, LoadedBundle) else load_bundle(bundle)
    if loaded.model_dir is None:
        raise ArtifactError(
            f"bundle {str(loaded.path)!r} has no {mf.MODEL_DIR}/ directory, so new items cannot be embedded; "
            "re-export it from the trained model with `recfuse export`"
        )
    frame, base_dir = _read_catalog(catalog)
    images = image_root(images_dir if images_dir is not None else base_dir, allow_external_images)
    tell("loading model", 0, 0)
    model = TrainedModel.load(loaded.model_dir)

    ids = [id_str(x) for x in frame["item_id"]]
    existing = [i for i in ids if i in loaded.item_vocab]
    if existing and on_existing == "error":
        raise DataError(
            f"{len(existing)} catalog item id(s) are already in bundle {loaded.version}, e.g. {existing[:3]}; "
            "remove them or pass on_existing='skip' (--on-existing skip)"
        )
    fresh = frame[[i not in loaded.item_vocab for i in ids]].reset_index(drop=True)
    name = "catalog" if isinstance(catalog, pd.DataFrame) else str(catalog)
    tell("validating new items", 0, 0)
    with tempfile.TemporaryDirectory(prefix="recfuse-add-") as qdir:
        valid, report, _ = validate_catalog(
            fresh, model.config.modalities, images, path=name, on_bad_rows="quarantine", quarantine_dir=qdir
        )
    rejects = [(p.id, f"{p.reason}: {p.message}") for p in report.problems]
    vectors, valid, embed_rejects = _embed(model, valid, images, tell)
    rejects += embed_rejects
    n_rejected = report.rejected + len(embed_rejects)
    if len(valid) == 0:
        logger.warning("add_items: no new usable items (%d existing, %d rejected)", len(existing), n_rejected)
        return AddResult(loaded.path, 0, len(existing), n_rejected, rejects)

    contents, index = _extended(loaded, valid, vectors, tell)
    path = write_bundle(
        root or loaded.root, contents, contents.index_config, version=version, index=index,
        keep_versions=keep_versions, on_step=progress_steps(progress),
    )  # fmt: skip
    logger.info(
        "add_items: %d added, %d existing skipped, %d rejected -> %s", len(valid), len(existing), n_rejected, path
    )
    return AddResult(path, len(valid), len(existing), n_rejected, rejects)


def _read_catalog(catalog: str | Path | pd.DataFrame) -> tuple[pd.DataFrame, Path]:
    if isinstance(catalog, pd.DataFrame):
        frame, base = catalog, Path.cwd()
    else:
        frame, base = read_table(catalog), Path(catalog).parent
    if "item_id" not in frame.columns:
        raise DataError(f"catalog {str(catalog)[:80]!r} has no `item_id` column; columns: {list(frame.columns)}")
    return frame, base


Reject = tuple[str, str]


def _quiet(stage: str, done: int, total: int) -> None:
    del stage, done, total


def _embed(
    model: TrainedModel, items: pd.DataFrame, images: Path, tell: ProgressFn
) -> tuple[FloatArray, pd.DataFrame, list[Reject]]:
    """Embed all rows; when a batch fails, embed row by row and reject the rows that fail."""
    if items.empty:
        return np.zeros((0, model.query_tower.dim), np.float32), items, []
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        tell("embedding items", done, len(items))

    tell("embedding items", 0, len(items))
    try:
        vectors = model.embed_items(items, images, on_batch=step)
    except (SchemaError, DataError, ValueError) as err:
        logger.warning("add_items: batch embedding failed (%s); isolating bad rows", err)
        keep: list[int] = []
        parts: list[FloatArray] = []
        rejects: list[Reject] = []
        for pos in range(len(items)):
            row = items.iloc[pos : pos + 1]
            try:
                parts.append(model.embed_items(row, images))
                keep.append(pos)
            except (SchemaError, DataError, ValueError) as row_err:
                rejects.append((str(row["item_id"].iloc[0]), f"embedding_failed: {row_err}"))
        kept = items.iloc[keep].reset_index(drop=True)
        dim = model.query_tower.dim
        return (np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)), kept, rejects
    finite = np.flatnonzero(np.isfinite(vectors).all(axis=1))
    bad = sorted(set(range(len(items))) - set(finite.tolist()))
    rejects = [(str(items["item_id"].iloc[i]), "embedding_not_finite: the tower produced NaN/inf") for i in bad]
    return vectors[finite], items.iloc[finite].reset_index(drop=True), rejects


def _extended(
    loaded: LoadedBundle, new_items: pd.DataFrame, new_vectors: FloatArray, tell: ProgressFn
) -> tuple[BundleContents, ItemIndex]:
    """Contents of ``loaded`` with the new items appended, and its index with them added."""
    n = len(loaded.item_ids)
    # a search parameter export tuned is tuned again for the grown catalog; one the config set stays
    tuned = (loaded.manifest.get("served_recall") or {}).get("tuned") or {}
    cfg = loaded.index_config
    if "ef_search" in tuned:
        cfg = dataclasses.replace(cfg, ef_search=None)
    if "nprobe" in tuned:
        cfg = dataclasses.replace(cfg, nprobe=None)
    queries_file = loaded.path / mf.SERVED_QUERIES
    queries = np.load(queries_file, allow_pickle=False) if queries_file.is_file() else None
    new_ids = [id_str(x) for x in new_items["item_id"]]
    config = RecfuseConfig.from_dict(loaded.config)
    meta = metadata_frame(new_items, config)
    # new items have no training interactions: they are ranked with the count-0 factor, as cold items
    # are at export (model.new_item_scale; the popularity prior's factor is 1 at count 0)
    new_vectors = new_vectors.astype(np.float32)
    new_scale = np.full(len(new_ids), config.model.new_item_scale, np.float32)
    old_scale = np.ones(n, np.float32) if loaded.item_scale is None else loaded.item_scale
    scale = np.concatenate([old_scale, new_scale])
    vectors = np.concatenate([loaded.item_vectors, new_vectors])
    index = loaded.index
    index.choice = loaded.manifest.get("index_choice")  # the grown index keeps the chosen factory
    tell("adding items to the index", 0, 0)
    index.add(new_vectors * new_scale[:, None], np.arange(n, n + len(new_ids), dtype=np.int64))
    if cfg.recall_queries > 0:
        tell("measuring index recall", 0, 0)
        ranked = vectors * scale[:, None]
        index.recall = measure_recall(index, ranked, np.arange(len(ranked)), min(cfg.recall_queries, len(ranked)))
    else:
        index.recall = loaded.manifest.get("ann_recall")
    history = dict(zip(loaded.user_history["user_id"], (list(x) for x in loaded.user_history["items"])))
    saved = loaded.path / mf.SAVEDMODEL_DIR
    contents = BundleContents(
        variant=loaded.variant,
        model_id=loaded.model_id,
        item_ids=[*loaded.item_ids, *new_ids],
        item_vectors=vectors,
        item_scale=None if bool((scale == 1.0).all()) else scale,
        items=pd.concat([loaded.items, meta], ignore_index=True),
        query_tower=loaded.query_tower,
        user_vocab=loaded.user_vocab,
        category_vocab=loaded.category_vocab,
        popularity=dict(zip(loaded.popularity["item_id"], (int(c) for c in loaded.popularity["count"]))),
        user_history=history,
        config=loaded.config,
        index_config=cfg,
        model_dir=loaded.model_dir,
        query_savedmodel_dir=saved if saved.is_dir() else None,
        parent_version=loaded.version,
        served_queries=queries,
        served_queries_about=(loaded.manifest.get("served_recall") or {}).get("queries", ""),
        # new items have no interactions: the head is carried forward with empty rows/columns for them
        item_head=None if loaded.item_head is None else grown_head(loaded.item_head, n + len(new_ids)),
        item_head_candidates=loaded.item_head_candidates or 200,
    )
    return contents, index
