"""Write a bundle version and publish it atomically.

Steps (each reported to ``on_step``, which crash tests use to kill the writer at that point):
``locked`` → ``tmp_created`` → ``wrote:<file>`` … → ``building_index`` → ``measuring_recall`` →
``index_built`` → ``manifest_written`` →
``fsynced`` → ``renamed`` (version directory in place, not yet published) → ``published``
(``CURRENT`` replaced) → ``done``. A crash before ``published`` leaves the previous version
visible; after it, the new one. No file is ever modified after the rename.

Example:
    >>> path = write_bundle("bundles", contents)   # doctest: +SKIP
    >>> path.parent.name, (path.parent / "CURRENT").read_text().strip() == path.name   # doctest: +SKIP
    ('attention', True)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recfuse import __version__
from recfuse.bundle import manifest as mf
from recfuse.bundle.contents import BundleContents, check_name
from recfuse.bundle.item_head import MANIFEST_KEY, head_record, write_head
from recfuse.bundle.publish import (
    TMP_PREFIX,
    clean_stale,
    new_version_name,
    prune_versions,
    publish_current,
    writer_lock,
)
from recfuse.config import IndexConfig
from recfuse.errors import ArtifactError
from recfuse.fsio import fsync_dir, fsync_tree
from recfuse.index import ItemIndex, build_index
from recfuse.index.build import check_recall
from recfuse.index.served import Truth, TuneResult, served_recall, served_truth, tunable_param, tune_search
from recfuse.types import ProgressFn

logger = logging.getLogger(__name__)

#: the cut-off of the served recall recorded in the manifest
SERVED_K = 10

StepHook = Callable[[str], None]

# Training work dirs of a model directory that a bundle does not need (resume state, logs).
MODEL_COPY_IGNORE = ("checkpoints", "tensorboard", ".*")


def _noop(step: str) -> None:
    del step


# the writer steps a progress report names (the others are too quick to mention)
_STEP_STAGES = {
    "tmp_created": "writing bundle files",
    "building_index": "building index",
    "measuring_recall": "measuring served recall",
    "manifest_written": "publishing",
}


def progress_steps(progress: ProgressFn | None) -> StepHook | None:
    """An ``on_step`` hook reporting the writer's long steps to ``progress`` as stages (None: None)."""
    if progress is None:
        return None
    report = progress

    def hook(step: str) -> None:
        if step in _STEP_STAGES:
            report(_STEP_STAGES[step], 0, 0)

    return hook


def write_bundle(
    root: str | Path,
    contents: BundleContents,
    index_cfg: IndexConfig | None = None,
    *,
    version: str | None = None,
    index: ItemIndex | None = None,
    keep_versions: int | None = None,
    on_step: StepHook | None = None,
) -> Path:
    """Write ``contents`` as a new version of ``ROOT/<variant>/`` and publish it.

    Args:
        root: bundles root directory (created if missing).
        contents: what to write; validated first (nothing is written when it is invalid).
        index_cfg: FAISS index choice; defaults to ``contents.index_config``.
        version: version directory name (default: UTC time + random suffix, sortable).
        index: an already built index over ``contents.item_vectors`` with ids ``0..n-1``
            (incremental add); built with :func:`recfuse.index.build_index` when ``None``.
        keep_versions: when set, delete all but the newest ``keep_versions`` versions afterwards.
        on_step: called with the name of each step (see module docstring).

    Returns:
        The published version directory ``ROOT/<variant>/<version>``.

    Raises:
        ArtifactError: invalid contents, an existing version name, or an index not matching the vectors.
    """
    hook = on_step or _noop
    contents.validate()
    cfg = index_cfg or contents.index_config
    version = version or new_version_name()
    check_name("version", version)
    variant_dir = Path(root) / contents.variant
    with writer_lock(variant_dir):
        hook("locked")
        clean_stale(variant_dir)
        final = variant_dir / version
        if final.exists():
            raise ArtifactError(f"bundle version {str(final)!r} already exists; pass another `version`")
        tmp = variant_dir / f"{TMP_PREFIX}{version}-{secrets.token_hex(3)}"
        tmp.mkdir()
        hook("tmp_created")
        try:
            _write_files(tmp, contents, hook)
            ranked = contents.ranked_vectors  # what the index holds: computed once for build and recall
            hook("building_index")
            measure_later = contents.served_queries is not None and len(contents.served_queries) > 0
            built = _write_index(tmp, ranked, cfg, index, measure_later)
            hook("measuring_recall")
            served = _served(tmp, contents, ranked, cfg, built)
            hook("index_built")
            manifest = _manifest(tmp, contents, built.config, built, version)
            manifest["served_recall"] = served
            manifest["index_choice"] = built.choice  # the candidates export tried (factory "auto"), or None
            (tmp / mf.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
            hook("manifest_written")
            fsync_tree(tmp)
            hook("fsynced")
            os.replace(tmp, final)
            fsync_dir(variant_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        hook("renamed")
        publish_current(variant_dir, version)
        hook("published")
        if keep_versions is not None:
            prune_versions(variant_dir, keep_versions)
    logger.info(
        "published bundle %s (%d items, dim %d, %s, recall %s)",
        final,
        len(contents.item_ids),
        contents.item_vectors.shape[1],
        built.factory,
        manifest["ann_recall"],
    )
    hook("done")
    return final


def _write_files(tmp: Path, c: BundleContents, hook: StepHook) -> None:
    c.query_tower.save(tmp / mf.QUERY_TOWER)
    hook(f"wrote:{mf.QUERY_TOWER}")
    n, d = c.item_vectors.shape
    vec = pa.FixedSizeListArray.from_arrays(pa.array(c.item_vectors.reshape(-1), pa.float32()), d)
    scale = np.ones(n, np.float32) if c.item_scale is None else np.asarray(c.item_scale, np.float32)
    table = pa.table(
        {
            "item_id": pa.array(list(c.item_ids), pa.string()),
            "vector": vec,
            "rank_scale": pa.array(scale, pa.float32()),
            "variant": pa.array([c.variant] * n, pa.string()).dictionary_encode(),
        }
    )
    pq.write_table(table, tmp / mf.EMBEDDINGS)
    hook(f"wrote:{mf.EMBEDDINGS}")
    if c.item_vocab is None:  # validate() sets it; guard against callers skipping it
        raise ArtifactError("`item_vocab` is unset: call BundleContents.validate() before writing")
    c.user_vocab.save(tmp / mf.VOCAB_USERS)
    c.item_vocab.save(tmp / mf.VOCAB_ITEMS)
    c.category_vocab.save(tmp / mf.VOCAB_CATEGORIES)
    hook("wrote:vocabs")
    items = pa.table(
        {
            "item_id": pa.array(c.items["item_id"].tolist(), pa.string()),
            "title": pa.array(c.items["title"].tolist(), pa.string()),
            "categories": pa.array(c.items["categories"].tolist(), pa.list_(pa.string())),
        }
    )
    pq.write_table(items, tmp / mf.ITEMS)
    hook(f"wrote:{mf.ITEMS}")
    pop_ids = sorted(c.popularity, key=lambda i: (-int(c.popularity[i]), str(i)))
    pq.write_table(
        pa.table(
            {
                "item_id": pa.array([str(i) for i in pop_ids], pa.string()),
                "count": pa.array([int(c.popularity[i]) for i in pop_ids], pa.int64()),
            }
        ),
        tmp / mf.POPULARITY,
    )
    hook(f"wrote:{mf.POPULARITY}")
    users = sorted(c.user_history)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(users, pa.string()),
                "items": pa.array([[str(i) for i in c.user_history[u]] for u in users], pa.list_(pa.string())),
            }
        ),
        tmp / mf.USER_HISTORY,
    )
    hook(f"wrote:{mf.USER_HISTORY}")
    (tmp / mf.CONFIG).write_text(json.dumps(dict(c.config), indent=2, sort_keys=True), encoding="utf-8")
    hook(f"wrote:{mf.CONFIG}")
    if c.item_head is not None:
        write_head(tmp, c.item_head)
        hook(f"wrote:{mf.ITEM_HEAD_DIR}")
    if c.model_dir is not None:
        shutil.copytree(c.model_dir, tmp / mf.MODEL_DIR, ignore=shutil.ignore_patterns(*MODEL_COPY_IGNORE))
        hook(f"wrote:{mf.MODEL_DIR}")
    if c.query_savedmodel_dir is not None:
        shutil.copytree(c.query_savedmodel_dir, tmp / mf.SAVEDMODEL_DIR)
        hook(f"wrote:{mf.SAVEDMODEL_DIR}")


def _write_index(
    tmp: Path, ranked: np.ndarray, cfg: IndexConfig, index: ItemIndex | None, measure_later: bool
) -> ItemIndex:
    """Build (unless given) and save the index; ``measure_later``: its item-vector recall is left to
    :func:`_served`, which measures it at the tuned setting in one exact pass with the served queries."""
    n, d = ranked.shape
    if index is None:
        build_cfg = dataclasses.replace(cfg, recall_queries=0) if measure_later else cfg
        index = build_index(ranked, np.arange(n, dtype=np.int64), build_cfg)
        index.config = cfg
    elif index.ntotal != n or index.dim != d:
        raise ArtifactError(
            f"`index` holds {index.ntotal} vectors of dim {index.dim}, but the bundle has {n} items of dim {d}; "
            "pass an index over exactly `ranked_vectors` (ids 0..n-1) or None to build one"
        )
    index.save(tmp / mf.INDEX)
    return index


def _served(
    tmp: Path, c: BundleContents, ranked: np.ndarray, cfg: IndexConfig, index: ItemIndex
) -> dict[str, Any] | None:
    """Served recall of ``index`` on the contents' query vectors, after tuning efSearch / nprobe to
    ``cfg.target_recall`` when the config leaves them unset; the queries are stored beside it."""
    queries = c.served_queries
    if queries is None or len(queries) == 0:
        return None
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    np.save(tmp / mf.SERVED_QUERIES, queries, allow_pickle=False)
    # item vectors as queries (the manifest's ann_recall), unless measured at build: the rows
    # measure_recall would draw, their exact top-k found in the same pass as the served queries'
    # (or in the pass the factory choice made, handed over on the index)
    count = min(cfg.recall_queries, len(ranked)) if index.recall is None else 0
    truth = index.truth
    if not (isinstance(truth, Truth) and truth.fits(queries, count)):
        truth = served_truth(index.metric, ranked, queries, count, cfg.seed, SERVED_K)
    index.truth = None  # used once: the index outlives the export
    rows, exact, exact_items = truth.rows, truth.exact, truth.exact_items
    param = tunable_param(index)
    tuned: TuneResult | None = None
    if cfg.target_recall > 0 and param and getattr(cfg, param) is None:
        tuned = tune_search(index, ranked, queries, cfg.target_recall, k=SERVED_K, exact=exact)
        recall = tuned.recall
    else:
        recall = served_recall(index, ranked, queries, k=SERVED_K, exact=exact)
    if count:  # at the setting served, after tuning
        index.recall = served_recall(index, ranked, ranked[rows], k=SERVED_K, exact=exact_items)
        check_recall(index.recall, index.factory, cfg)
    ef, nprobe = index.config.search_params()
    logger.info("index %s: served recall@%d %.4f on %d queries (%s)", index.factory, SERVED_K, recall, len(queries),
                f"tuned {param} = {tuned.value}" if tuned else "not tuned")  # fmt: skip
    return {
        "recall": recall,
        "k": SERVED_K,
        "queries": c.served_queries_about or f"{len(queries)} query vectors",
        "n_queries": len(queries),
        "target": cfg.target_recall,
        "met": None if cfg.target_recall <= 0 else bool(recall >= cfg.target_recall),
        "tuned": {param: tuned.value} if tuned is not None else None,
        "tried": [[v, r] for v, r in tuned.tried] if tuned is not None else [],
        "search_params": {"ef_search": ef, "nprobe": nprobe} if param else {},
    }


def _manifest(tmp: Path, c: BundleContents, cfg: IndexConfig, index: ItemIndex, version: str) -> dict[str, Any]:
    n, d = c.item_vectors.shape
    data_cfg = c.config.get("data", {}) if isinstance(c.config, Mapping) else {}
    recall = getattr(index, "recall", None)
    return {
        "format": mf.FORMAT,
        "format_version": mf.FORMAT_VERSION,
        "recfuse_version": __version__,
        "version": version,
        "parent_version": c.parent_version,
        "model_version": str(c.model_id),
        "variant": c.variant,
        "embedding_dim": int(d),
        "metric": cfg.metric,
        "index_factory": index.factory,
        "item_count": int(n),
        "user_count": len(c.user_vocab),
        "ann_recall": None if recall is None else float(recall),
        "max_history": int(data_cfg.get("max_history", 20)) if isinstance(data_cfg, Mapping) else 20,
        "query_normalize": bool(c.query_tower.normalize),
        "training_config": dict(c.config),
        "index_config": dataclasses.asdict(cfg),
        "has_model": c.model_dir is not None,
        "has_query_savedmodel": c.query_savedmodel_dir is not None,
        **({MANIFEST_KEY: head_record(c.item_head, int(c.item_head_candidates))} if c.item_head is not None else {}),
        "created_at": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        "files": mf.file_entries(tmp),
    }


def index_config_from_dict(raw: Mapping[str, Any]) -> IndexConfig:
    """Rebuild the :class:`IndexConfig` stored in a manifest (unknown keys are ignored with a warning)."""
    known = {f.name for f in dataclasses.fields(IndexConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        logger.warning("manifest index_config has unknown key(s) %s (written by a newer recfuse?)", unknown)
    kwargs: dict[str, Any] = {k: v for k, v in raw.items() if k in known}
    return IndexConfig(**kwargs)


__all__: Sequence[str] = ["write_bundle", "index_config_from_dict", "StepHook"]
