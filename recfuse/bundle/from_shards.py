"""Publish a bundle whose items are embedding shards, with its IVF index built from them streaming.

``recfuse embed`` writes a catalog's candidate-tower vectors as Parquet shards; this module turns
them into a normal verified bundle version (the server loads it like any other). The index is built
by :func:`recfuse.index.sharded.build_index_from_shards` without the vector matrix in memory. The
rest of :func:`recfuse.bundle.write_bundle` does need the whole ``[n, d]`` matrix: the bundle's
``embeddings.parquet`` (what the query tower reads a history from), the served-recall measurement
(exact top-10 of every served query over all items) and its copy multiplied by ``rank_scale``. So
publishing holds the matrix once the index is built; only the index build streams.

Everything except the items comes from a base :class:`BundleContents` (query tower, vocabularies,
user histories, popularity, training config, served queries, model copy): :func:`export_from_shards`
takes it from a trained model directory, as ``recfuse export`` does. The items, in shard row order,
are the shards' ``item_id`` values (row = vocab index = FAISS id); each is ranked by the popularity
prior's factor of its training count (``model.new_item_scale`` for items the model never trained
on), as export ranks them. The query tower's TF SavedModel is not written: its baked-in item matrix
would be the training catalog, not the shards' (serving uses the numpy forward).

Example:
    >>> result = export_from_shards("runs/model", "out/emb", "bundles", factory="IVF1024,Flat")  # doctest: +SKIP
    >>> result.path.parent.name, result.items                                                  # doctest: +SKIP
    ('attention', 2000000)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recfuse.bundle.contents import BundleContents
from recfuse.bundle.item_head import reindexed_head
from recfuse.bundle.writer import write_bundle
from recfuse.config import IndexConfig
from recfuse.errors import ArtifactError
from recfuse.index.sharded import Progress, ShardScan, build_index_from_shards, read_shard_vectors, scan_shards
from recfuse.ranking import popularity_scale
from recfuse.types import FloatArray

logger = logging.getLogger(__name__)

Shards = str | Path | Sequence[str | Path]


@dataclass(frozen=True)
class ShardExport:
    """Outcome of :func:`publish_from_shards`.

    Attributes:
        path: the published version directory.
        items: items in the bundle (usable shard rows).
        factory: the index's faiss factory string.
        ann_recall: the index's Recall@10 against exact search on item vectors (None: not measured).
        train_rows: rows the index was trained on.
        seconds: wall time per index-build stage (``scan``, ``sample``, ``train``, ``add``).
        rejects: ``(item_id, reason)`` of shard rows left out (``on_bad_vectors="skip"``).
    """

    path: Path
    items: int
    factory: str
    ann_recall: float | None
    train_rows: int
    seconds: dict[str, float]
    rejects: list[tuple[str, str]] = field(default_factory=list)


def publish_from_shards(
    root: str | Path,
    shards: Shards | ShardScan,
    base: BundleContents,
    index_cfg: IndexConfig | None = None,
    *,
    items: pd.DataFrame | None = None,
    on_bad_vectors: str = "fail",
    version: str | None = None,
    keep_versions: int | None = None,
    progress: Progress | None = None,
) -> ShardExport:
    """Publish ``base`` with its items replaced by the shards' as a new version of ``root/<variant>``.

    Args:
        root: bundles root.
        shards: a finished ``recfuse embed`` directory, shard files, or their :class:`ShardScan`.
        base: the bundle's other contents; its items, vectors and scales are replaced.
        index_cfg: FAISS config (default ``base.index_config``); its factory must be IVF.
        items: ``item_id, title[, categories]`` metadata of the shards' items (default:
            ``base.items``); rows for ids not in the shards are ignored, missing ones get empty titles.
        on_bad_vectors: ``fail`` or ``skip`` rows with null or NaN/inf vectors (listed in ``rejects``).
        version: version directory name (default: time-based).
        keep_versions: prune older versions afterwards.
        progress: called after every batch of the index build.

    Raises:
        SchemaError: bad shards (widths, ids, vectors); ConfigError: a non-IVF factory;
        ArtifactError: contents that do not fit the base (e.g. a vector width other than the query tower's).
    """
    cfg = index_cfg or base.index_config
    scan = shards if isinstance(shards, ShardScan) else scan_shards(shards, on_bad_vectors, progress)
    dim = base.query_tower.dim
    if scan.dim != dim:
        raise ArtifactError(
            f"the shards' `vector` column has width {scan.dim} but the model's query tower outputs {dim}; "
            "embed the catalog with the same model (`recfuse embed --model ...`)"
        )
    ids = [str(x) for x in scan.item_ids.to_pylist()]
    scale = _rank_scale(base, ids)
    built = build_index_from_shards(scan, cfg, scale=scale, progress=progress)
    vectors = read_shard_vectors(scan)  # the bundle's embeddings.parquet and served recall need the matrix
    known = set(ids)
    contents = dataclasses.replace(
        base,
        item_ids=ids,
        item_vectors=vectors,
        item_scale=scale,
        items=_items(items if items is not None else base.items, known),
        popularity={str(k): v for k, v in base.popularity.items() if str(k) in known},
        user_history={u: [i for i in h if str(i) in known] for u, h in base.user_history.items()},
        index_config=cfg,
        item_vocab=None,
        query_savedmodel_dir=None,
        # the model's head is over its own catalog rows: move it to the shards' rows
        item_head=None if base.item_head is None else reindexed_head(base.item_head, base.item_ids, ids),
    )
    path = write_bundle(root, contents, cfg, version=version, index=built.index, keep_versions=keep_versions)
    return ShardExport(
        path, scan.n, built.factory, built.index.recall, built.train_rows, built.seconds, list(scan.rejects)
    )


def _rank_scale(base: BundleContents, ids: list[str]) -> FloatArray | None:
    """Each item's popularity-prior factor from the base's training config and counts (None: all 1)."""
    model = base.config.get("model", {}) if isinstance(base.config.get("model"), dict) else {}
    prior = float(model.get("popularity_prior", 0.0) or 0.0)
    new_scale = float(model.get("new_item_scale", 1.0) or 1.0)
    if prior <= 0 and new_scale == 1.0:
        return None
    counts = np.array([base.popularity.get(i, 0) for i in ids], np.float64)
    return popularity_scale(counts, prior, new_scale)


def _items(frame: pd.DataFrame, known: set[str]) -> pd.DataFrame:
    """Metadata rows of the bundle's items only (BundleContents fills in the missing ones)."""
    if "item_id" not in frame.columns:
        raise ArtifactError(f"`items` must have an item_id column; columns: {list(frame.columns)}")
    ids = frame["item_id"].astype(str)
    return frame[ids.isin(known).to_numpy()].assign(item_id=ids).drop_duplicates("item_id").reset_index(drop=True)


def export_from_shards(
    model_dir: str | Path,
    shards: Shards,
    root: str | Path,
    index_cfg: IndexConfig | None = None,
    *,
    factory: str | None = None,
    train_sample: int | None = None,
    catalog: str | Path | None = None,
    on_bad_vectors: str = "fail",
    version: str | None = None,
    keep_versions: int | None = None,
    progress: Progress | None = None,
) -> ShardExport:
    """Publish a trained model with the items of its ``recfuse embed`` shards (loads TensorFlow).

    The shards are scanned first (a bad shard fails before the model is loaded); then the query side
    comes from :func:`recfuse.bundle.export.contents_from_model` and the model directory is copied
    to ``model/`` (so ``recfuse add-items`` works on the result).

    Args:
        model_dir: training output directory (``recfuse train --out``).
        shards: a finished ``recfuse embed`` directory or shard files.
        root: bundles root.
        index_cfg: FAISS config (default: the model config's ``index`` section).
        factory: overrides ``index_cfg.factory`` (an IVF factory or ``auto``).
        train_sample: overrides ``index_cfg.train_sample`` (rows the quantizer is trained on).
        catalog: items file for titles/categories of the shards' items (default: the model's catalog).
        on_bad_vectors, version, keep_versions, progress: as in :func:`publish_from_shards`.

    Raises:
        ArtifactError: a missing or unreadable model directory; otherwise as :func:`publish_from_shards`.
    """
    if not Path(model_dir).is_dir():
        raise ArtifactError(f"model directory {str(model_dir)!r} does not exist; train one with `recfuse train`")
    scan = scan_shards(shards, on_bad_vectors, progress)
    from recfuse.bundle.export import contents_from_model, metadata_frame
    from recfuse.data.readers import read_table
    from recfuse.models.trained import TrainedModel

    model = TrainedModel.load(model_dir)
    cfg = index_cfg or model.config.index
    overrides: dict[str, Any] = {"factory": factory, "train_sample": train_sample}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    base = contents_from_model(model, cfg)
    base.model_dir = model.model_dir
    items = None
    if catalog is not None:
        frame = read_table(catalog)
        if "item_id" not in frame.columns:
            raise ArtifactError(f"catalog {str(catalog)!r} has no `item_id` column; columns: {list(frame.columns)}")
        items = metadata_frame(frame, model.config)
    return publish_from_shards(
        root, scan, base, cfg, items=items, version=version, keep_versions=keep_versions, progress=progress
    )
