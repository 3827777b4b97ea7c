"""Export a trained model directory as a bundle version (the one TensorFlow-using module of recfuse.bundle).

``export_model`` loads :class:`recfuse.models.trained.TrainedModel`, writes the query tower as a TF
SavedModel (signature below) next to its numpy export, copies the model directory (without its
``checkpoints/`` and ``tensorboard/`` work dirs) to ``model/`` so ``recfuse embed`` and
``recfuse add-items`` can embed new items later, and publishes everything with
:func:`recfuse.bundle.write_bundle`.

Query SavedModel (``query_tower_savedmodel/``), signature ``serving_default``:

* inputs ``user_idx`` int64 ``[b]`` (``vocab_users.json`` index, OOV buckets included),
  ``hist_idx`` int64 ``[b, L]`` (item rows, ``-1`` padding, most recent first),
  ``hist_pos`` float32 ``[b, L]`` (``0..L-1``);
* output ``query`` float32 ``[b, d]``, equal to ``NumpyQueryTower.encode`` over the item matrix of
  the export (the training catalog). Serving uses the numpy forward, whose item matrix also holds
  items added later.

A model's item-item head (``item_head/``, fitted by ``recfuse train`` with ``[item_head]``) is written
to the bundle's ``item_head/`` and recorded in the manifest with ``[item_head] candidates``
(:mod:`recfuse.bundle.item_head`); the Recommender then serves the model's ranking with it.

Item metadata (title, categories) comes from ``catalog`` when given, else from the model
directory's ``adapt_items.parquet`` when it has one, else from the training config's
``data.items`` file; without any of them titles are empty (logged).

Example:
    >>> export_model("runs/model", "bundles")      # doctest: +SKIP
    PosixPath('bundles/attention/20261128T031500.123456Z-1a2b3c')
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from recfuse.bundle.contents import BundleContents
from recfuse.bundle.writer import progress_steps, write_bundle
from recfuse.config import IndexConfig, RecfuseConfig
from recfuse.data.readers import read_table
from recfuse.data.vocab import IdVocab, id_str
from recfuse.errors import ArtifactError
from recfuse.index.choose import auto_index
from recfuse.models.trained import TrainedModel
from recfuse.types import ProgressFn

logger = logging.getLogger(__name__)


def export_model(
    model_dir: str | Path,
    root: str | Path,
    index_cfg: IndexConfig | None = None,
    *,
    factory: str | None = None,
    catalog: str | Path | pd.DataFrame | None = None,
    version: str | None = None,
    keep_versions: int | None = None,
    savedmodel: bool = True,
    progress: ProgressFn | None = None,
) -> Path:
    """Publish a trained model as ``root/<variant>/<version>``.

    Args:
        model_dir: training output directory (``recfuse train --out``).
        root: bundles root.
        index_cfg: FAISS config (default: the model config's ``index`` section).
        factory: overrides ``index_cfg.factory`` (``Flat``, ``HNSW32``, ``IVF256,PQ16``, ``auto``).
        catalog: items table (path or frame) for titles/categories; default: see the module docstring.
        version: version name (default: time-based).
        keep_versions: prune older versions after publishing.
        savedmodel: also write the TF SavedModel of the query tower.
        progress: called ``(stage, done, total)`` as the export proceeds (:data:`recfuse.types.ProgressFn`).

    Returns:
        The published version directory.

    Raises:
        ArtifactError: unreadable model directory or invalid contents.
    """
    report = progress or _quiet
    report("loading model", 0, 0)
    model = TrainedModel.load(model_dir)
    cfg = index_cfg or model.config.index
    if factory:
        cfg = dataclasses.replace(cfg, factory=factory)
    contents = contents_from_model(model, cfg, catalog, progress=report)
    # factory "auto": the index is chosen by measurement on the served queries (recfuse.index.choose)
    if cfg.factory.strip() == "auto":
        report("choosing index (factory auto)", 0, 0)
    index, cfg = auto_index(contents.ranked_vectors, contents.served_queries, cfg)
    with tempfile.TemporaryDirectory(prefix="recfuse-export-") as td:
        if savedmodel:
            report("writing query tower SavedModel", 0, 0)
            contents.query_savedmodel_dir = model.export_query_savedmodel(Path(td) / "query_tower_savedmodel")
        contents.model_dir = model.model_dir  # copied without its work dirs (see writer.MODEL_COPY_IGNORE)
        path = write_bundle(
            root, contents, cfg, version=version, index=index, keep_versions=keep_versions,
            on_step=progress_steps(progress),
        )  # fmt: skip
    logger.info("exported %s as %s", model_dir, path)
    return path


def _quiet(stage: str, done: int, total: int) -> None:
    del stage, done, total


def contents_from_model(
    model: TrainedModel,
    index_cfg: IndexConfig,
    catalog: str | Path | pd.DataFrame | None = None,
    progress: ProgressFn | None = None,
) -> BundleContents:
    """The :class:`BundleContents` of a trained model (no SavedModel, no model copy)."""
    items = _metadata(model, catalog)
    queries, about = served_query_vectors(model, index_cfg.served_queries, index_cfg.seed, progress)
    return BundleContents(
        variant=model.config.variant,
        model_id=model_id_of(model.model_dir),
        item_ids=list(model.item_ids),
        item_vectors=model.item_embeddings,
        item_scale=model.ranking_scale,  # the popularity prior's factor: the index ranks by vectors x scale
        items=items,
        query_tower=model.query_tower,
        user_vocab=model.user_vocab,
        category_vocab=model.category_vocab or IdVocab((), num_oov=1),
        popularity=model.popularity,
        user_history=model.user_histories,
        config=model.config.to_dict(),
        index_config=index_cfg,
        served_queries=queries,
        served_queries_about=about,
        item_head=model.item_head,  # recfuse train's head over these item rows, served as a re-rank
        item_head_candidates=model.config.item_head.candidates,
    )


def served_query_vectors(
    model: TrainedModel, n: int, seed: int = 0, progress: ProgressFn | None = None
) -> tuple[np.ndarray, str]:
    """Query vectors like the ones the index will serve, from the model's own query tower.

    Four in five are known users' query vectors (user id and stored history, drawn at random), one
    in five history-only queries (an anonymous user with a prefix of a drawn user's history, most
    recent first, as a client sends one). Returns ``([m, d] float32, a description for the
    manifest)``; ``m`` is 0 when ``n`` is 0 or the model has no user history. ``progress`` gets the
    count of vectors computed after each chunk.
    """
    users = sorted(u for u, h in model.user_histories.items() if len(h))
    dim = model.item_embeddings.shape[1]
    if n <= 0 or not users:
        return np.zeros((0, dim), np.float32), "none"
    rng = np.random.default_rng(seed)
    n_known = min(len(users), n - n // 5)
    known = [users[i] for i in rng.choice(len(users), n_known, replace=False)]
    drawn = [users[i] for i in rng.integers(0, len(users), n // 5)]
    prefixes = [list(model.user_histories[u])[: int(rng.integers(1, len(model.user_histories[u]) + 1))] for u in drawn]
    report = progress or _quiet
    total = n_known + len(prefixes)
    parts: list[np.ndarray] = []
    for i in range(0, n_known, 1024):
        chunk = known[i : i + 1024]
        parts.append(model.query_embeddings(chunk, [model.user_histories[u] for u in chunk]))
        report("query vectors for served recall", sum(map(len, parts)), total)
    for i in range(0, len(prefixes), 1024):
        chunk_h = prefixes[i : i + 1024]
        parts.append(model.query_embeddings([None] * len(chunk_h), chunk_h))
        report("query vectors for served recall", sum(map(len, parts)), total)
    queries = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    about = f"{n_known} known users' query vectors + {len(prefixes)} history-only queries (model query tower)"
    return queries, about


def model_id_of(model_dir: Path) -> str:
    """``<dir name>-<12 hex of sha256(model.json + weights index)>``: stable for one trained model."""
    h = hashlib.sha256()
    for rel in ("model.json", "weights/ckpt.index"):
        p = model_dir / rel
        if p.is_file():
            h.update(p.read_bytes())
    return f"{model_dir.name}-{h.hexdigest()[:12]}"


def category_column(cfg: RecfuseConfig) -> str:
    """Catalog column of the categorical modality (``categories`` if none is configured)."""
    for m in cfg.modalities:
        if m.kind == "categorical":
            return m.column
    return "categories"


def metadata_frame(items: pd.DataFrame, cfg: RecfuseConfig) -> pd.DataFrame:
    """``item_id, title, categories`` from catalog rows (missing columns: empty values)."""
    cat_col = category_column(cfg)
    n = len(items)
    return pd.DataFrame(
        {
            "item_id": [id_str(x) for x in items["item_id"]],
            "title": items["title"].fillna("").astype(str).tolist() if "title" in items.columns else [""] * n,
            "categories": items[cat_col].tolist() if cat_col in items.columns else [[]] * n,
        }
    )


def _metadata(model: TrainedModel, catalog: str | Path | pd.DataFrame | None) -> pd.DataFrame:
    """Titles/categories: ``catalog``, else the model's ``adapt_items.parquet``, else its config's items file."""
    if catalog is None:
        for candidate in (model.model_dir / "adapt_items.parquet", Path(model.config.data.items)):
            if candidate.is_file():
                catalog = candidate
                break
    if catalog is None:
        logger.warning(
            "no catalog found for titles/categories (config data.items=%r); exporting empty metadata — "
            "pass `catalog` (--catalog) to include them",
            model.config.data.items,
        )
        return pd.DataFrame({"item_id": list(model.item_ids), "title": "", "categories": [[]] * len(model.item_ids)})
    frame = catalog if isinstance(catalog, pd.DataFrame) else read_table(catalog)
    if "item_id" not in frame.columns:
        raise ArtifactError(f"catalog {str(catalog)[:80]!r} has no `item_id` column; columns: {list(frame.columns)}")
    meta = metadata_frame(frame, model.config)
    known = set(model.item_ids)
    extra = int((~meta["item_id"].isin(known)).sum())
    if extra:
        logger.warning("catalog has %d item(s) the model did not embed; their metadata is not exported", extra)
    return meta[meta["item_id"].isin(known)].drop_duplicates("item_id")
