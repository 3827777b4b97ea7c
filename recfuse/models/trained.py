"""Load a trained model directory: towers rebuilt from config + vocabularies, weights restored.

The directory is written by :func:`recfuse.training.model_dir.write_model_dir` (layout documented
there). Loading never re-derives state from a catalog: the candidate tower is rebuilt from the config
and the text/category vocabularies saved at training time (``candidate_vocabularies.json``), and the
weights come from the TF checkpoint — so embedding new items later gives the same token ids as in
training.

Example:
    >>> m = TrainedModel.load("runs/model")                               # doctest: +SKIP
    >>> q = m.query_embeddings(["u1", None], [m.user_histories["u1"], ["i3"]])  # doctest: +SKIP
    >>> scores = q @ m.item_embeddings.T                                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import tensorflow as tf

from recfuse.config import RecfuseConfig
from recfuse.data.vocab import IdVocab
from recfuse.errors import ArtifactError
from recfuse.forward.query import NumpyQueryTower
from recfuse.itemitem import HEAD_DIR, ItemHead, load_item_head
from recfuse.models.history import history_arrays
from recfuse.models.query_tower import QueryTower, build_query_tower
from recfuse.ranking import popularity_scale
from recfuse.types import FloatArray

logger = logging.getLogger(__name__)

MODEL_FORMAT = "recfuse.model/1"


@dataclass
class TrainedModel:
    """A trained two-tower model loaded from its directory.

    Attributes:
        config: the training configuration.
        item_vocab: catalog items (``num_oov=0``; row ``i`` of ``item_embeddings`` is ``item_vocab.ids[i]``).
        user_vocab: training users with hashed OOV buckets.
        category_vocab: vocabulary of the categorical lookup, when the tower has one.
        query_tower: numpy forward of the query tower (the serving path).
        item_ids: ``item_vocab.ids`` as a list.
        item_embeddings: ``[n, d]`` catalog embeddings at the end of training.
        user_histories: ``user_id -> [item_id…]`` most recent first (train + val interactions).
        train_items: ``user_id -> [item_id…]`` training interactions (the evaluation mask).
        popularity: ``item_id -> count`` in training interactions.
        warm_items: items seen in training.
        model_dir: where it was loaded from.
        item_head: the item-item head ``recfuse train`` fitted into ``item_head/`` (``[item_head]``), or None.
    """

    config: RecfuseConfig
    item_vocab: IdVocab
    user_vocab: IdVocab
    category_vocab: IdVocab | None
    query_tower: NumpyQueryTower
    item_ids: list[str]
    item_embeddings: FloatArray
    user_histories: dict[str, list[str]]
    train_items: dict[str, list[str]]
    popularity: dict[str, int]
    warm_items: frozenset[str]
    model_dir: Path
    info: dict[str, Any] = field(default_factory=dict)
    item_head: ItemHead | None = None
    _candidate_tower: Any = None
    _tf_query_tower: QueryTower | None = None

    @classmethod
    def load(cls, model_dir: str | Path) -> TrainedModel:
        """Load ``model_dir`` (raises :class:`ArtifactError` naming the file when something is wrong)."""
        d = Path(model_dir)
        info = _read_json(d / "model.json")
        if info.get("format") != MODEL_FORMAT:
            raise ArtifactError(f"{d / 'model.json'}: format {info.get('format')!r}, expected {MODEL_FORMAT!r}")
        missing = [f for f in info.get("files", []) if not (d / f).exists()]
        if missing:
            raise ArtifactError(f"model directory {str(d)!r} is incomplete: missing {missing[:5]}")
        cfg = RecfuseConfig.from_dict(_read_json(d / "config.json"))
        item_vocab = IdVocab.load(d / "vocab_items.json")
        user_vocab = IdVocab.load(d / "vocab_users.json")
        cat_path = d / "vocab_categories.json"
        category_vocab = IdVocab.load(cat_path) if cat_path.exists() else None
        qt = NumpyQueryTower.load(d / "query_tower")
        emb = pq.read_table(d / "item_embeddings.parquet")
        ids = [str(x) for x in emb.column("item_id").to_pylist()]
        matrix = np.asarray(emb.column("vector").combine_chunks().flatten().to_numpy(), np.float32)
        matrix = matrix.reshape(len(ids), -1) if ids else matrix.reshape(0, qt.dim)
        if ids != list(item_vocab.ids):
            raise ArtifactError(f"{d / 'item_embeddings.parquet'}: item ids differ from vocab_items.json")
        if matrix.shape[1] != qt.dim:
            raise ArtifactError(
                f"{d / 'item_embeddings.parquet'}: vectors have dim {matrix.shape[1]}, query tower has {qt.dim}"
            )
        pop = pq.read_table(d / "popularity.parquet").to_pandas()
        head = load_item_head(d / HEAD_DIR, len(ids)) if (d / HEAD_DIR).exists() else None
        return cls(
            config=cfg,
            item_vocab=item_vocab,
            user_vocab=user_vocab,
            category_vocab=category_vocab,
            query_tower=qt,
            item_ids=ids,
            item_embeddings=matrix,
            user_histories=_read_lists(d / "user_history.parquet"),
            train_items=_read_lists(d / "train_items.parquet"),
            popularity={str(k): int(v) for k, v in zip(pop["item_id"], pop["count"], strict=True)},
            warm_items=frozenset(_read_json(d / "warm_items.json")),
            model_dir=d,
            info=info,
            item_head=head,
        )

    @property
    def split_record(self) -> dict[str, Any] | None:
        """The split it was trained on (kind, seed, sizes, fingerprint), or None for older models."""
        record = self.info.get("split")
        return dict(record) if isinstance(record, dict) else None

    @property
    def ranking_embeddings(self) -> FloatArray:
        """``[n, d]`` the vectors items are ranked by: :attr:`item_embeddings` times the popularity
        prior's factor (``model.popularity_prior``, and ``model.new_item_scale`` for items with no
        training interactions; the embeddings themselves when neither is set).

        :attr:`item_embeddings` stay what the query tower reads a history from.
        """
        scale = self.ranking_scale
        return self.item_embeddings if scale is None else self.item_embeddings * scale[:, None]

    @property
    def ranking_scale(self) -> FloatArray | None:
        """``[n]`` each item's ranking factor (:attr:`ranking_embeddings` ÷ :attr:`item_embeddings`),
        or None when neither ``model.popularity_prior`` nor ``model.new_item_scale`` is set."""
        prior, new_scale = self.config.model.popularity_prior, self.config.model.new_item_scale
        if prior <= 0 and new_scale == 1.0:
            return None
        counts = np.array([self.popularity.get(i, 0) for i in self.item_ids], np.float64)
        return popularity_scale(counts, prior, new_scale).astype(np.float32)

    # --- query side (numpy) -------------------------------------------------------------------
    def user_indices(self, user_ids: Sequence[str | None]) -> np.ndarray:
        """``[b]`` user rows; unknown or anonymous (``None``) users get their hashed OOV bucket."""
        out = np.empty(len(user_ids), np.int64)
        for i, u in enumerate(user_ids):
            out[i] = self.user_vocab.lookup_one("" if u is None else u)
        return np.maximum(out, 0)

    def query_embeddings(
        self, user_ids: Sequence[str | None], histories: Sequence[Sequence[str]], item_matrix: FloatArray | None = None
    ) -> FloatArray:
        """``[b, d]`` query vectors for users (``None`` = anonymous) with the given histories.

        Histories are used as given (most recent first, unknown items skipped); pass
        ``self.user_histories[u]`` for a known user's stored history.
        """
        if len(user_ids) != len(histories):
            raise ValueError(f"`user_ids` ({len(user_ids)}) and `histories` ({len(histories)}) must have equal length")
        hist, pos = history_arrays(histories, self.item_vocab, self.config.data.max_history)
        matrix = self.item_embeddings if item_matrix is None else item_matrix
        return self.query_tower.encode(matrix, self.user_indices(user_ids), hist, pos)

    # --- TF side (lazy) -----------------------------------------------------------------------
    @property
    def candidate_tower(self) -> Any:
        """The TF candidate tower with restored weights (built on first use)."""
        if self._candidate_tower is None:
            self._build_tf()
        return self._candidate_tower

    def _build_tf(self) -> None:
        from recfuse.models.candidate_tower import build_candidate_tower

        d = self.model_dir
        vocabularies = _read_json(d / "candidate_vocabularies.json")
        candidate = build_candidate_tower(self.config, None, self.item_vocab, vocabularies=vocabularies)
        query = build_query_tower(self.config, self.user_vocab.size)
        query.build_for(self.query_tower.dim)
        status = tf.train.Checkpoint(query_tower=query, candidate_tower=candidate).read(str(d / "weights" / "ckpt"))
        status.assert_existing_objects_matched()
        self._candidate_tower, self._tf_query_tower = candidate, query

    def embed_items(
        self,
        items_df: pd.DataFrame,
        images_dir: str | Path,
        batch_size: int = 512,
        on_batch: Callable[[int], None] | None = None,
    ) -> FloatArray:
        """``[n, d]`` candidate-tower embeddings of catalog rows (new items embed from content alone).

        Items seen in training keep their item-id embedding; other items (cold or new) are embedded
        from their content with the id masked, as in training. ``on_batch`` gets each batch's row count.
        """
        from recfuse.data.item_features import build_item_features

        tower = self.candidate_tower
        ids = [str(x) for x in items_df["item_id"]]
        # new ids get rows past the trained vocabulary; their id is masked (not warm) and clipped
        vocab = IdVocab.build([*self.item_vocab.ids, *ids], num_oov=0)
        out = []
        for start in range(0, len(items_df), batch_size):
            chunk = items_df.iloc[start : start + batch_size]
            feats = build_item_features(chunk, self.config, images_dir, vocab, warm_items=set(self.warm_items))
            feats = {k: _clip_ids(k, v, len(self.item_vocab)) for k, v in feats.items()}
            out.append(tower(feats, training=False).numpy())
            if on_batch is not None:
                on_batch(len(chunk))
        if not out:
            return np.zeros((0, self.query_tower.dim), np.float32)
        return np.concatenate(out, axis=0).astype(np.float32)

    def export_query_savedmodel(self, path: str | Path) -> Path:
        """Write the query tower as a TF SavedModel with the item matrix baked in.

        Signature ``serving_default``: inputs ``user_idx`` int64 ``[b]``, ``hist_idx`` int64 ``[b, L]``
        (``-1`` padding, most recent first), ``hist_pos`` float32 ``[b, L]``; output ``query`` float32
        ``[b, d]`` — equal to :meth:`NumpyQueryTower.encode` with ``item_embeddings``.
        """
        if self._tf_query_tower is None:
            self._build_tf()
        module = QueryServingModule(self._tf_query_tower, self.item_embeddings)  # type: ignore[arg-type]
        p = Path(path)
        tf.saved_model.save(module, str(p), signatures={"serving_default": module.serve})
        return p


class QueryServingModule(tf.Module):
    """The exported query signature: ``serve(user_idx [b], hist_idx [b, L], hist_pos [b, L]) -> {"query": [b, d]}``
    with the item matrix ``[num_items, d]`` baked in as a variable (also used by bench/recommend_bench.py)."""

    def __init__(self, tower: QueryTower, item_matrix: np.ndarray) -> None:
        super().__init__()
        self.tower = tower
        self.item_matrix = tf.Variable(item_matrix, trainable=False, name="item_matrix")

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.int64, name="user_idx"),
            tf.TensorSpec([None, None], tf.int64, name="hist_idx"),
            tf.TensorSpec([None, None], tf.float32, name="hist_pos"),
        ]
    )
    def serve(self, user_idx: tf.Tensor, hist_idx: tf.Tensor, hist_pos: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"query": self.tower(self.item_matrix, user_idx, hist_idx, hist_pos)}


def _clip_ids(key: str, value: np.ndarray, n_known: int) -> np.ndarray:
    if key == "item_idx":
        return np.where((value >= 0) & (value < n_known), value, 0).astype(value.dtype)
    return value


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"cannot read {str(path)!r}: {err}") from None


def _read_lists(path: Path) -> dict[str, list[str]]:
    t = pq.read_table(path)
    return {
        str(u): [str(x) for x in items]
        for u, items in zip(t.column("user_id").to_pylist(), t.column("items").to_pylist(), strict=True)
    }
