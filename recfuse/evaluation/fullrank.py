"""Full-ranking evaluation: every user ranks the whole catalog, seen items masked, metrics per user.

Scoring and top-k go through :func:`recfuse.ranking.masked_topk` (the project's one top-k: batched
score matrices + ``argpartition``), so evaluation costs about one ``Q @ E.T`` pass. Within each
returned list, items of equal score are ordered by ascending item index (``np.lexsort``); which
of several tied items make the cut at rank k is decided by ``argpartition`` — deterministic for the
same inputs, so the same model and split always give the same numbers.

Protocol (:class:`recfuse.config.EvalConfig`, stored in the model's config): the ranking excludes
each user's training items (``eval.mask = "train"``, the MMRec / RecBole convention) or training and
validation items (``"train+valid"``), except items that are also in the user's test set (they stay
rankable, or they could never be hit). The query reads the user's training interactions, or training
and validation ones (``eval.history``; ``auto`` reads both for leave-one-out splits, where the valid
item is the one just before the test item, and train only for random per-user splits). Test items
the model cannot rank (not in its catalog) are counted in ``counts["unknown_test_rows"]`` and left
out of the relevant set.

Segments: ``all`` test items; ``warm`` (items seen in training) and ``cold`` (the split's cold items,
never in training) restrict the relevant set, while the ranking is always over the whole catalog.
Users with no relevant item in a segment are excluded from it and counted (``skipped_users``).

Example:
    >>> import numpy as np
    >>> res = evaluate_embeddings(
    ...     np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), ["u1", "u2"],
    ...     train_items=[[], []], test_items=[[0], [0]], ks=(1,))
    >>> res.means()["hit@1"]
    0.5
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from recfuse.config import EvalConfig
from recfuse.evaluation.eval_sets import EvalSets, SplitLike, build_eval_sets  # noqa: F401  (re-exported)
from recfuse.evaluation.metrics import aggregate_metrics, per_user_metrics_from_pairs, relevant_pairs
from recfuse.evaluation.result import EvalResult, SegmentResult
from recfuse.itemitem import history_rows
from recfuse.new_item_slots import check_share, topk_with_new_slots
from recfuse.ranking import masked_topk
from recfuse.types import FloatArray, Int64Array

logger = logging.getLogger(__name__)


class RankingModel(Protocol):
    """What evaluation needs from a trained model (``recfuse.models.trained.TrainedModel`` fits)."""

    @property
    def item_ids(self) -> Sequence[str]: ...

    @property
    def item_embeddings(self) -> FloatArray: ...

    @property
    def ranking_embeddings(self) -> FloatArray:
        """The vectors items are ranked by (``item_embeddings`` unless a popularity prior scales them)."""
        ...

    @property
    def user_histories(self) -> Mapping[str, Sequence[str]]: ...

    def query_embeddings(self, user_ids: Sequence[str | None], histories: Sequence[Sequence[str]]) -> FloatArray: ...


def ranked_topk(
    queries: FloatArray,
    items: FloatArray,
    k: int,
    exclude: Sequence[npt.ArrayLike] | None = None,
    block_size: int = 1024,
) -> Int64Array:
    """Top-k item indices per query ``[q, k]``, ties by ascending index, ``-1`` for empty slots.

    Args:
        queries: ``[q, d]`` query embeddings.
        items: ``[n, d]`` catalog embeddings.
        k: list length (clipped to ``n``; callers pad if they need exactly k columns).
        exclude: per-query item indices to mask.
        block_size: queries scored per block (memory ``block_size * n`` floats).
    """
    top = masked_topk(queries, items, k, exclude=exclude, block_size=block_size)
    idx = np.where(np.isfinite(top.scores), top.rows, -1)
    order = np.lexsort((idx, -top.scores.astype(np.float64)), axis=-1)
    return np.take_along_axis(idx, order, axis=1)


def evaluate_embeddings(
    queries: FloatArray,
    item_vectors: FloatArray,
    user_ids: Sequence[str],
    train_items: Sequence[npt.ArrayLike],
    test_items: Sequence[npt.ArrayLike],
    ks: Sequence[int] = (10, 20, 50),
    cold_mask: npt.ArrayLike | None = None,
    item_counts: npt.ArrayLike | None = None,
    block_size: int = 1024,
    counts: Mapping[str, Any] | None = None,
    *,
    new_items: npt.ArrayLike | None = None,
    new_item_share: float = 0.0,
) -> EvalResult:
    """Evaluate precomputed query/item embeddings with full ranking.

    Args:
        queries: ``[u, d]`` one query per user.
        item_vectors: ``[n, d]`` catalog embeddings (row = item index).
        user_ids: ``[u]`` user ids (any order; results are sorted by id).
        train_items: per user, item indices to mask (seen items).
        test_items: per user, held-out relevant item indices.
        ks: cut-offs.
        cold_mask: ``[n]`` bool, True for cold-start items (adds ``warm``/``cold`` segments).
        item_counts: ``[n]`` training counts (adds ``novelty@k``).
        block_size: users scored per block.
        counts: extra bookkeeping copied into :attr:`EvalResult.counts`.
        new_items: ``[n]`` bool, True for items the model never trained on; with ``new_item_share``
            > 0 every ranking holds that share of its positions for them
            (:func:`recfuse.new_item_slots.topk_with_new_slots`, ``model.new_item_share``).
        new_item_share: the share of positions held for new items (0: off).

    Returns:
        :class:`EvalResult` with segment ``all`` (and ``warm``/``cold`` when ``cold_mask`` is given).
    """
    vectors = np.asarray(item_vectors, dtype=np.float32)
    q = np.asarray(queries, dtype=np.float32)
    if len(q) != len(user_ids):
        raise ValueError(f"`queries` need one entry per user ({len(user_ids)}), got {len(q)}")

    def score(rows: Int64Array) -> FloatArray:
        return q[rows] @ vectors.T

    return evaluate_scores(
        score, int(vectors.shape[0]), user_ids, train_items, test_items, ks, cold_mask, item_counts, block_size, counts,
        new_items=new_items, new_item_share=new_item_share,
    )  # fmt: skip


ScoreFn = Callable[[Int64Array], FloatArray]


def evaluate_scores(
    score: ScoreFn,
    n_items: int,
    user_ids: Sequence[str],
    train_items: Sequence[npt.ArrayLike],
    test_items: Sequence[npt.ArrayLike],
    ks: Sequence[int] = (10, 20, 50),
    cold_mask: npt.ArrayLike | None = None,
    item_counts: npt.ArrayLike | None = None,
    block_size: int = 1024,
    counts: Mapping[str, Any] | None = None,
    *,
    new_items: npt.ArrayLike | None = None,
    new_item_share: float = 0.0,
) -> EvalResult:
    """Full-ranking evaluation of any scorer: ``score(user_positions [b]) -> [b, n_items]`` scores.

    The scorer receives positions into ``user_ids`` (as given, not sorted) and returns a fresh
    float32 block (it is modified in place). Masking, top-k, tie order and metrics are those of
    :func:`evaluate_embeddings`, which is this function with ``queries @ item_vectors.T`` as the
    scorer; baselines whose scores are not inner products (EASE, item-kNN) use it directly. With
    ``new_items`` and ``new_item_share`` > 0 each ranking holds that share of its positions for the
    new items (:mod:`recfuse.new_item_slots`, as served).
    """
    share = check_share(new_item_share)
    is_new = np.zeros(n_items, bool) if new_items is None else np.asarray(new_items, dtype=bool)
    if is_new.shape != (n_items,):
        raise ValueError(f"`new_items` must have shape ({n_items},), got {is_new.shape}")
    slots = share > 0 and 0 < int(is_new.sum()) < n_items
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ValueError(f"`ks` must be positive cut-offs, got {ks}")
    if ks[-1] > n_items:
        raise ValueError(f"`ks` max {ks[-1]} exceeds the catalog size {n_items}; use smaller cut-offs")
    n_users = len(user_ids)
    if not (len(train_items) == len(test_items) == n_users):
        raise ValueError(
            f"`train_items`, `test_items` and `user_ids` need one entry per user, got "
            f"{len(train_items)}, {len(test_items)}, {n_users}"
        )
    order = np.argsort(np.asarray(user_ids, dtype=object).astype(str), kind="stable")
    users = [str(user_ids[i]) for i in order]
    # (user_row, item) pairs, vectorised: one key per pair, no Python loop over users' arrays.
    t_users, t_items = relevant_pairs([test_items[i] for i in order])
    m_users, m_items = relevant_pairs([train_items[i] for i in order])
    width = n_items + 1
    t_keys = np.unique(t_users * width + t_items)
    t_users, t_items = t_keys // width, t_keys % width
    keep = ~np.isin(m_users * width + m_items, t_keys)  # a test item stays rankable even if seen before
    m_users, m_items = m_users[keep], m_items[keep]
    bounds = np.searchsorted(m_users, np.arange(1, n_users))
    masks = np.split(m_items, bounds)
    k_max = ks[-1]
    top = np.full((n_users, k_max), -1, dtype=np.int64)
    for start in range(0, n_users, block_size):
        stop = min(start + block_size, n_users)
        block = np.asarray(score(order[start:stop]), dtype=np.float32)
        if block.shape != (stop - start, n_items):
            raise ValueError(f"the scorer must return [{stop - start}, {n_items}] scores, got {block.shape}")
        ranked = topk_with_new_slots(block, k_max, is_new, share, masks[start:stop])
        vals = ranked.scores
        idx = np.where(np.isfinite(vals), ranked.rows, -1)
        if not slots:  # a merged list is in its own order (ties by index already; a held slot out of score order)
            idx = np.take_along_axis(idx, np.lexsort((idx, -vals.astype(np.float64)), axis=-1), axis=1)
        top[start:stop, : idx.shape[1]] = idx

    segment_masks: dict[str, npt.NDArray[np.bool_] | None] = {"all": None}
    if cold_mask is not None:
        cold = np.asarray(cold_mask, dtype=bool)
        if cold.shape != (n_items,):
            raise ValueError(f"`cold_mask` must have shape ({n_items},), got {cold.shape}")
        segment_masks["warm"] = ~cold
        segment_masks["cold"] = cold
    segments: dict[str, SegmentResult] = {}
    for name, seg in segment_masks.items():
        sel = np.ones(len(t_items), dtype=bool) if seg is None else seg[t_items]
        n_rel = np.bincount(t_users[sel], minlength=n_users)
        rows = np.flatnonzero(n_rel > 0)
        new_row = np.full(n_users, -1, dtype=np.int64)
        new_row[rows] = np.arange(len(rows))
        per_user = (
            per_user_metrics_from_pairs(top[rows], new_row[t_users[sel]], t_items[sel], ks, item_counts)
            if len(rows)
            else {}
        )
        skipped = n_users - len(rows)
        segments[name] = SegmentResult(
            users=[users[i] for i in rows],
            per_user=per_user,
            aggregate=aggregate_metrics(top[rows], n_items, ks) if len(rows) else {},
            skipped_users=int(skipped),
        )
        logger.info("segment %s: %d users evaluated, %d without test items skipped", name, len(rows), skipped)
    result = EvalResult(ks=ks, segments=segments, n_items=n_items, counts=dict(counts or {}))
    if slots:
        result.info["new_item_slots"] = {"share": share, "new_items": int(is_new.sum())}
    return result


def evaluate_model(
    model: RankingModel,
    split: SplitLike,
    ks: Sequence[int] = (10, 20, 50),
    cold_items: frozenset[str] | None = None,
    block_size: int = 1024,
    query_batch: int = 1024,
    protocol: EvalConfig | None = None,
    item_head: bool = True,
    new_item_share: float | None = None,
) -> EvalResult:
    """Full-ranking evaluation of a trained model on ``split.test``.

    Args:
        model: a trained model (``TrainedModel``): catalog embeddings, query tower.
        split: the split the model was trained on.
        ks: cut-offs.
        cold_items: cold-start item ids (default ``split.cold_items``); empty → no warm/cold segments.
        block_size: users ranked per block.
        query_batch: users per query-tower call.
        protocol: what each ranking excludes and what each query reads (default: the model's
            ``config.eval`` when it has one, else ``EvalConfig()``): see :class:`recfuse.config.EvalConfig`.
        item_head: rank with the model's item-item head when it has one (``model.item_head``, as
            served: ``q . v * factor + beta * head``, the head reading the query's history rows
            as :func:`history_rows` gives them); False scores the towers alone.
        new_item_share: the share of each ranking held for items the model never trained on
            (:mod:`recfuse.new_item_slots`; default: the model's ``config.model.new_item_share``).

    Returns:
        :class:`EvalResult` (per-user arrays, means via ``.means(segment)``, counts of unusable rows,
        ``info["protocol"]``).

    Example:
        >>> result = evaluate_model(TrainedModel.load("runs/model"), split)  # doctest: +SKIP
        >>> result.means("all")["recall@10"]  # doctest: +SKIP
    """
    item_ids = [str(i) for i in model.item_ids]
    vectors = np.asarray(model.ranking_embeddings, dtype=np.float32)
    if vectors.shape[0] != len(item_ids):
        raise ValueError(f"model has {len(item_ids)} item ids but {vectors.shape[0]} item embeddings")
    if protocol is None:
        config = getattr(model, "config", None)
        protocol = getattr(config, "eval", None) or EvalConfig()
    sets = build_eval_sets(split, item_ids, protocol, cold_items)
    users = sets.users
    queries = np.zeros((len(users), vectors.shape[1]), dtype=np.float32)
    for start in range(0, len(users), query_batch):
        stop = start + query_batch
        queries[start:stop] = model.query_embeddings(users[start:stop], sets.histories[start:stop])
    head = getattr(model, "item_head", None) if item_head else None
    head = head if head is not None and head.active else None
    if head is not None:
        index = {item: i for i, item in enumerate(item_ids)}
        max_history = int(model.config.data.max_history)  # type: ignore[attr-defined]
        profiles = head.profile_rows(history_rows(sets.histories, index, max_history))

    def score(rows: Int64Array) -> FloatArray:  # what evaluate_embeddings scores, plus the head's term
        out = queries[rows] @ vectors.T
        if head is not None:
            out += np.float32(head.beta) * head.scores(profiles[rows])
        return out

    if new_item_share is None:
        new_item_share = float(getattr(getattr(getattr(model, "config", None), "model", None), "new_item_share", 0.0))
    popularity = getattr(model, "popularity", {})
    is_new = np.array([popularity.get(i, 0) <= 0 for i in item_ids], bool) if new_item_share else None
    result = evaluate_scores(score, len(item_ids), users, sets.exclude, sets.test, ks, sets.cold_mask,
                             sets.item_counts, block_size, sets.counts, new_items=is_new,
                             new_item_share=new_item_share)  # fmt: skip
    if head is not None:
        result.info["item_head"] = {k: v for k, v in head.record().items() if k != "selection"}
    result.info.update(sets.info)
    return result
