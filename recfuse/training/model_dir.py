"""Write the model directory (training output) atomically.

Layout of ``out_dir`` (read by :class:`recfuse.models.trained.TrainedModel`)::

    model.json                 format, dims, the split's record (kind, seed, sizes, fingerprint), file
                               list (written last: its presence marks a complete dir)
    config.json                cfg.to_dict()
    vocab_items.json           IdVocab (num_oov=0; row i of every item matrix = catalog item i)
    vocab_users.json           IdVocab with cfg.model.user_oov_buckets hashed OOV rows
    candidate_vocabularies.json  text-token / category vocabularies of the candidate tower
    vocab_categories.json      IdVocab of the first categorical modality's values (when there is one)
    weights/ckpt.*             tf.train.Checkpoint of query_tower + candidate_tower (no pickle)
    query_tower.npz/.json      NumpyQueryTower export
    item_embeddings.parquet    item_id, vector (catalog at the end of training)
    user_history.parquet       user_id, items (train + val interactions, most recent first)
    train_items.parquet        user_id, items (training interactions: the ranking mask)
    warm_items.json            items seen in training (their item-id embedding is used)
    popularity.parquet         item_id, count (training interactions)
    history.json, train_state.json
    checkpoints/, tensorboard/ training work dirs (resume), moved over from the previous dir
    selection/                 train.refit's early-stopped run (recfuse.training.refit), moved over
                               only into the refit it chose the epochs of

Atomicity: everything is written into a sibling temp dir (fsynced), the work dirs are moved into it,
then the old directory is renamed aside and the temp dir renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from recfuse import __version__
from recfuse.config import RecfuseConfig
from recfuse.data.vocab import IdVocab
from recfuse.models.trained import MODEL_FORMAT
from recfuse.models.two_tower import TwoTowerModel
from recfuse.training.examples import user_histories
from recfuse.training.setup import BuiltModel

logger = logging.getLogger(__name__)

# the early-stopped run of ``train.refit`` (recfuse.training.refit), under the refit's model directory
SELECTION_DIR = "selection"
# kept across a rewrite of the model directory
WORK_DIRS = ("checkpoints", "tensorboard", SELECTION_DIR)


def write_model_dir(
    out: Path,
    cfg: RecfuseConfig,
    built: BuiltModel,
    model: TwoTowerModel,
    split: Any,
    counts: np.ndarray,
    state: dict[str, Any],
    user_lists: Callable[[Path, Path], None] | None = None,
) -> Path:
    """Write all artifacts for ``model`` and atomically make ``out`` that directory.

    ``user_lists(user_history_path, train_items_path)`` writes the two per-user files instead of
    ``split.train`` / ``split.val`` (streamed training: from the prepared shards, one at a time).
    """
    out = Path(out).resolve()
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    item_vocab, user_vocab = built.item_vocab, built.user_vocab
    _json(tmp / "config.json", cfg.to_dict())
    item_vocab.save(tmp / "vocab_items.json")
    user_vocab.save(tmp / "vocab_users.json")
    vocabularies = dict(model.candidate_tower.vocabularies)
    _json(tmp / "candidate_vocabularies.json", vocabularies)
    categorical = [m.name for m in cfg.modalities if m.kind == "categorical" and m.name in vocabularies]
    if categorical:
        IdVocab.build(vocabularies[categorical[0]], num_oov=1).save(tmp / "vocab_categories.json")
    tf.train.Checkpoint(query_tower=model.query_tower, candidate_tower=model.candidate_tower).write(
        str(tmp / "weights" / "ckpt")
    )
    model.query_tower.to_numpy().save(tmp / "query_tower")
    matrix = model.memory_bank.numpy().astype(np.float32)
    _vectors(tmp / "item_embeddings.parquet", list(item_vocab.ids), matrix)
    if user_lists is not None:
        user_lists(tmp / "user_history.parquet", tmp / "train_items.parquet")
    else:
        seen = pd.concat([split.train, split.val], ignore_index=True) if len(split.val) else split.train
        _lists(tmp / "user_history.parquet", user_histories(seen))
        _lists(tmp / "train_items.parquet", user_histories(split.train))
    _json(tmp / "warm_items.json", sorted(built.warm_items))
    pop = pd.DataFrame({"item_id": list(item_vocab.ids), "count": counts.astype(np.int64)})
    _parquet(tmp / "popularity.parquet", pop.sort_values("count", ascending=False, kind="stable"))
    _json(tmp / "history.json", state.get("history", []))
    _json(tmp / "train_state.json", state)
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    _json(
        tmp / "model.json",
        {
            "format": MODEL_FORMAT,
            "recfuse_version": __version__,
            "dim": int(matrix.shape[1]),
            "num_items": int(matrix.shape[0]),
            "num_users": len(user_vocab),
            "variant": cfg.variant,
            "best_epoch": state.get("best_epoch"),
            "best_metric": state.get("best_metric"),
            # the split it was trained on: `recfuse evaluate` refuses data that no longer gives it
            "split": split.record() if hasattr(split, "record") else None,
            "files": files,
        },
    )
    _fsync_tree(tmp)
    if out.exists():
        # a selection run belongs to the refit that follows it (train.refit without refit_epochs);
        # any other training replaces the earlier model and its selection run with it
        refit_of_selection = cfg.train.refit and not cfg.train.refit_epochs
        keep = [n for n in WORK_DIRS if refit_of_selection or n != SELECTION_DIR]
        for name in keep:
            if (out / name).exists():
                os.replace(out / name, tmp / name)
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    _fsync_dir(out.parent)
    logger.info("model directory written: %s", out)
    return out


def _json(path: Path, payload: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=1, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())


def _parquet(path: Path, df: pd.DataFrame) -> None:
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)


def _vectors(path: Path, ids: list[str], matrix: np.ndarray) -> None:
    d = int(matrix.shape[1])
    vec = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), d)
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.string()), "vector": vec}), path)


def _lists(path: Path, histories: dict[str, list[str]]) -> None:
    table = pa.table(
        {
            "user_id": pa.array(list(histories), pa.string()),
            "items": pa.array(list(histories.values()), pa.list_(pa.string())),
        }
    )
    pq.write_table(table, path)


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    for d in [*(p for p in path.rglob("*") if p.is_dir()), path]:
        _fsync_dir(d)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
