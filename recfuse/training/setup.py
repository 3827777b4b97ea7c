"""Assemble a :class:`TwoTowerModel` for a config and catalog (feature table, towers, item priors).

Example:
    >>> built = build_model(cfg, items, images_dir, item_vocab, user_vocab, warm, item_prob)  # doctest: +SKIP
    >>> built.model.compute_loss(batch)                                                     # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Set
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recfuse.config import RecfuseConfig
from recfuse.data.item_features import build_item_features
from recfuse.data.vocab import IdVocab
from recfuse.models.candidate_tower import build_candidate_tower
from recfuse.models.query_tower import build_query_tower
from recfuse.models.two_tower import TwoTowerModel
from recfuse.ranking import popularity_scale

logger = logging.getLogger(__name__)


@dataclass
class BuiltModel:
    """The model and what it was built from (needed to write the model directory)."""

    model: TwoTowerModel
    item_vocab: IdVocab
    user_vocab: IdVocab
    items: pd.DataFrame
    warm_items: frozenset[str]


def user_vocabulary(cfg: RecfuseConfig, train_users: Iterable[object]) -> IdVocab:
    """The user vocabulary of a training run (its indices are the user-id table's rows).

    ``model.user_id_buckets`` = ``B`` > 0: no ids and ``B`` hash buckets, so every user, in the
    training split or not, maps to ``crc32(user_id) % B`` here and in serving alike. Otherwise the
    training users after ``model.user_oov_buckets`` hashed rows for the others.
    """
    if cfg.model.user_id_buckets:
        return IdVocab.hashed(cfg.model.user_id_buckets)
    return IdVocab.build(train_users, num_oov=cfg.model.user_oov_buckets)


def build_model(
    cfg: RecfuseConfig,
    items: pd.DataFrame,
    images_dir: str | Path,
    item_vocab: IdVocab,
    user_vocab: IdVocab,
    warm_items: Set[str],
    item_prob: np.ndarray,
    item_counts: np.ndarray | None = None,
) -> BuiltModel:
    """Feature table over the whole catalog (images decoded once) + candidate and query towers."""
    table = build_item_features(items, cfg, images_dir, item_vocab, warm_items=set(warm_items))
    candidate = build_candidate_tower(cfg, items, item_vocab)
    query = build_query_tower(cfg, user_vocab.size)
    model = TwoTowerModel(
        query,
        candidate,
        table,
        item_prob,
        temperature=cfg.model.temperature,
        logq_correction=cfg.model.logq_correction,
        remove_accidental_hits=cfg.model.remove_accidental_hits,
        mixed_negatives=cfg.model.mixed_negatives,
        seed=cfg.train.seed,
        history_encoding=cfg.train.history_encoding,
        live_history_items=cfg.train.live_history_items,
        modality_loss_weight=cfg.model.modality_loss_weight,
        item_scale=(
            popularity_scale(item_counts, cfg.model.popularity_prior)
            if item_counts is not None and cfg.model.popularity_prior > 0
            else None
        ),
        targets=cfg.train.targets,
        softmax=cfg.model.softmax,
    )
    return BuiltModel(model, item_vocab, user_vocab, items, frozenset(warm_items))
