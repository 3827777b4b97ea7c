"""What training needs of a prepared folder's training rows besides the examples, streamed shard by shard.

With a folder that records its split (``recfuse prepare --config``) no table of the training
interactions is built: the validation queries (:func:`stream_val_queries`) and the model
directory's per-user lists (:func:`write_prepared_user_lists`) are made from one shard at a time,
equal to what :func:`recfuse.training.validation.build_val_queries` and
:func:`recfuse.training.model_dir.write_model_dir` make of the whole training frame.

Example:
    >>> vq = stream_val_queries("runs/prepared", split.val, item_vocab, user_vocab, 20)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recfuse.data.prepare import load_manifest
from recfuse.data.vocab import IdVocab
from recfuse.training.examples import user_histories
from recfuse.training.validation import Ragged, ValQueries, build_val_queries

__all__ = ["stream_val_queries", "write_prepared_user_lists"]

_EMPTY = pd.DataFrame({"user_id": [], "item_id": [], "timestamp": []})


def _shard_rows_of(path: Path, users: Any) -> Any:
    """A shard's rows (user_id, item_id, timestamp; user- and time-sorted) whose user is in ``users``."""
    table = pq.read_table(path, columns=["user_id", "item_id", "timestamp"])
    return table.filter(pc.is_in(table.column("user_id"), value_set=pa.array(users, pa.string()))).to_pandas()


def stream_val_queries(
    folder: str | Path, heldout: pd.DataFrame, item_vocab: IdVocab, user_vocab: IdVocab, max_history: int
) -> ValQueries:
    """``build_val_queries(train, heldout, ...)`` with ``train`` the prepared folder's shards, streamed.

    Shard by shard, only the rows of ``heldout``'s users are read into memory and turned into their
    queries (history, training-item mask); the queries are then put in user order, as
    :func:`recfuse.training.validation.build_val_queries` orders them. Memory: one shard plus the
    queries (``[q, max_history]`` and each query user's distinct training items).
    """
    manifest = load_manifest(folder, verify=False)
    held_users = set(map(str, heldout["user_id"].unique()))
    parts: list[ValQueries] = []
    covered: set[str] = set()
    for entry in manifest["shards"]:
        train = _shard_rows_of(Path(folder) / entry["file"], sorted(held_users - covered))
        users = set(map(str, train["user_id"].unique()))
        if users:
            parts.append(build_val_queries(train, heldout[heldout["user_id"].isin(users)], item_vocab, user_vocab,
                                           max_history))  # fmt: skip
            covered |= users
    rest = heldout[~heldout["user_id"].isin(covered)]  # held-out users without a training row
    parts.append(build_val_queries(_EMPTY.astype({"user_id": str, "item_id": str}), rest, item_vocab, user_vocab,
                                   max_history))  # fmt: skip
    user_ids = [u for p in parts for u in p.user_ids]
    order = np.asarray(sorted(range(len(user_ids)), key=user_ids.__getitem__), np.int64)
    cat = {k: np.concatenate([getattr(p, k) for p in parts]) for k in ("user_idx", "hist_idx", "hist_pos")}
    return ValQueries(
        [user_ids[i] for i in order],
        cat["user_idx"][order],
        cat["hist_idx"][order],
        cat["hist_pos"][order],
        Ragged.concat([p.relevant for p in parts]).take(order),
        Ragged.concat([p.exclude for p in parts]).take(order),
    )


def write_prepared_user_lists(folder: str | Path, val: Any, history_path: Path, train_items_path: Path) -> None:
    """Write a model directory's ``user_history.parquet`` (train + val) and ``train_items.parquet`` shard by shard.

    Each user's lists equal what ``write_model_dir`` makes of ``split.train`` and ``split.val`` in
    memory (most recent first; a val row tied in time with a training row counts as the later one,
    as in the in-memory concatenation); users follow shard order, then val-only users.
    """
    schema = pa.schema([("user_id", pa.string()), ("items", pa.list_(pa.string()))])

    def table(hist: dict[str, list[str]]) -> Any:
        return pa.table([pa.array(list(hist), pa.string()), pa.array(list(hist.values()), pa.list_(pa.string()))],
                        schema=schema)  # fmt: skip

    manifest = load_manifest(folder, verify=False)
    val_users = set(map(str, val["user_id"].unique()))
    with pq.ParquetWriter(history_path, schema) as seen_out, pq.ParquetWriter(train_items_path, schema) as train_out:
        for entry in manifest["shards"]:
            train = pq.read_table(Path(folder) / entry["file"], columns=["user_id", "item_id", "timestamp"]).to_pandas()
            users = set(map(str, train["user_id"].unique()))
            held = val[val["user_id"].isin(users)]
            seen = pd.concat([train, held.loc[:, list(train.columns)]], ignore_index=True) if len(held) else train
            seen_out.write_table(table(user_histories(seen)))
            train_out.write_table(table(user_histories(train)))
            val_users -= users
        if val_users:
            seen_out.write_table(table(user_histories(val[val["user_id"].isin(val_users)])))
