"""Full-ranking metrics of what a bundle serves: its :class:`~recfuse.inference.Recommender`, its
FAISS index with the search parameters in force, k as served.

:func:`recfuse.evaluation.fullrank.evaluate_model` scores the trained model's exact ranking; a
bundle answers through an approximate index, so the two can differ. Here every test user's query
goes through :meth:`Recommender.recommend_batch` exactly as a request would (the user id, and the
history the protocol's query reads, most recent first), asking for enough items that the protocol's
masked items can be removed afterwards and ``max(ks)`` remain; the served items are then scored by
:func:`recfuse.evaluation.fullrank.evaluate_scores` with the same masks, tie order and metrics as the
exact evaluation, so the two tables compare directly. A bundle with an active item-item head is
ranked as served: the Recommender re-ranks each query's index candidates and head neighbours by
``q . v * factor + beta * head`` (:mod:`recfuse.inference.head_rerank`), the score
``evaluate_model`` ranks by, so on an exact (or high served-recall) index the two agree; the
head's record is in ``info["item_head"]``. Users whose mask is so long that the
bundle's ``max_k`` cannot cover it are counted (``counts["users_truncated_by_max_k"]``).

Example:
    >>> result = evaluate_bundle(Recommender.from_bundle("bundles/attention"), split)  # doctest: +SKIP
    >>> result.means("all")["recall@10"]                                              # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from recfuse.config import EvalConfig
from recfuse.errors import ConfigError
from recfuse.evaluation.fullrank import SplitLike, build_eval_sets, evaluate_scores
from recfuse.evaluation.result import EvalResult
from recfuse.inference import Recommender
from recfuse.inference.types import RecommendQuery

logger = logging.getLogger(__name__)


def evaluate_bundle(
    recommender: Recommender,
    split: SplitLike,
    ks: Sequence[int] = (10, 20, 50),
    protocol: EvalConfig | None = None,
    batch: int = 256,
) -> EvalResult:
    """Metrics of the served ranking of ``recommender`` on ``split.test`` under ``protocol``.

    Args:
        recommender: the bundle as served.
        split: the split the bundle's model was trained on.
        ks: cut-offs (the largest must not exceed the bundle's ``max_k``, else :class:`ConfigError`).
        protocol: masks and query history (default ``EvalConfig()``), as in ``evaluate_model``.
        batch: queries per ``recommend_batch`` call.

    Returns:
        :class:`EvalResult`; ``info["served"]`` names the bundle version and its search parameters.
    """
    info = recommender.info()
    k_max = max(ks)
    if k_max > info.max_k:
        raise ConfigError(f"`ks` max {k_max} exceeds the bundle's max_k {info.max_k}; use smaller cut-offs")
    item_ids = list(recommender.bundle.item_ids)
    sets = build_eval_sets(split, item_ids, protocol or EvalConfig())
    max_history = int(recommender.bundle.manifest.get("max_history", 20))
    row_of = {item: i for i, item in enumerate(item_ids)}
    truncated = 0
    served: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, len(sets.users), batch):
        queries = []
        for pos in range(start, min(start + batch, len(sets.users))):
            want = k_max + len(sets.exclude[pos])
            truncated += want > info.max_k
            history = list(sets.histories[pos][:max_history])
            queries.append(RecommendQuery(sets.users[pos], history, min(want, info.max_k)))
        for rec in recommender.recommend_batch(queries):
            rows = np.array([row_of[it.item_id] for it in rec.items], np.int64)
            served.append((rows, np.array([it.score for it in rec.items], np.float32)))
    if truncated:
        logger.warning("%d user(s) have more masked items than max_k leaves room for", truncated)

    def score(positions: np.ndarray) -> np.ndarray:
        block = np.full((len(positions), len(item_ids)), -np.inf, np.float32)
        for r, pos in enumerate(positions):
            rows, scores = served[pos]
            block[r, rows] = scores
        return block

    result = evaluate_scores(score, len(item_ids), sets.users, sets.exclude, sets.test, ks=ks,
                             cold_mask=sets.cold_mask, item_counts=sets.item_counts,
                             counts={**sets.counts, "users_truncated_by_max_k": truncated})  # fmt: skip
    result.info.update(sets.info)
    result.info["served"] = {"bundle": info.path, "version": info.version, "index": info.index_factory,
                             "search_params": info.search_params, "served_recall": info.served_recall}  # fmt: skip
    head = recommender.bundle.item_head
    if head is not None and recommender.head_rerank is not None:  # ranked with the head, as served
        result.info["item_head"] = {**{k: v for k, v in head.record().items() if k != "selection"},
                                    "candidates": recommender.bundle.item_head_candidates}  # fmt: skip
    return result
