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
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

from recfuse.config import EvalConfig
from recfuse.evaluation.metrics import aggregate_metrics, per_user_metrics_from_pairs, relevant_pairs
from recfuse.evaluation.result import EvalResult, SegmentResult
from recfuse.itemitem import history_rows
from recfuse.ranking import masked_topk, topk_of_scores
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


class SplitLike(Protocol):
    """What evaluation needs from a split (``recfuse.data.splits.Split`` fits)."""

    @property
    def train(self) -> pd.DataFrame: ...

    @property
    def val(self) -> pd.DataFrame: ...

    @property
    def test(self) -> pd.DataFrame: ...

    @property
    def cold_items(self) -> frozenset[str]: ...


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
    idx, scores = masked_topk(queries, items, k, exclude=exclude, block_size=block_size)
    idx = np.where(np.isfinite(scores), idx, -1)
    order = np.lexsort((idx, -scores.astype(np.float64)), axis=-1)
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
        score, int(vectors.shape[0]), user_ids, train_items, test_items, ks, cold_mask, item_counts, block_size, counts
    )


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
) -> EvalResult:
    """Full-ranking evaluation of any scorer: ``score(user_positions [b]) -> [b, n_items]`` scores.

    The scorer receives positions into ``user_ids`` (as given, not sorted) and returns a fresh
    float32 block (it is modified in place). Masking, top-k, tie order and metrics are those of
    :func:`evaluate_embeddings`, which is this function with ``queries @ item_vectors.T`` as the
    scorer; baselines whose scores are not inner products (EASE, item-kNN) use it directly.
    """
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
        idx, vals = topk_of_scores(block, k_max, masks[start:stop])
        idx = np.where(np.isfinite(vals), idx, -1)
        tie_order = np.lexsort((idx, -vals.astype(np.float64)), axis=-1)
        top[start:stop, : idx.shape[1]] = np.take_along_axis(idx, tie_order, axis=1)

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
    return EvalResult(ks=ks, segments=segments, n_items=n_items, counts=dict(counts or {}))


def _items_by_user(df: pd.DataFrame, index: Mapping[str, int]) -> tuple[dict[str, list[int]], int]:
    """user -> item indices of the rows of ``df``; also the number of rows whose item is unknown."""
    if df is None or df.empty:
        return {}, 0
    rows = df["item_id"].astype(str).map(index)
    unknown = int(rows.isna().sum())
    known = df.loc[rows.notna(), "user_id"].astype(str)
    grouped = pd.Series(rows[rows.notna()].astype(np.int64).to_numpy(), index=known.to_numpy()).groupby(level=0)
    return {str(u): list(v) for u, v in grouped}, unknown


def _histories(df: pd.DataFrame) -> dict[str, list[str]]:
    """``user -> [item_id, ...]`` most recent first (ordered by timestamp, ties in file order)."""
    if df is None or df.empty:
        return {}
    order = df.sort_values(["user_id", "timestamp"], kind="stable") if "timestamp" in df.columns else df
    out: dict[str, list[str]] = {}
    for user, group in order.groupby(order["user_id"].astype(str), sort=False):
        out[str(user)] = group["item_id"].astype(str).tolist()[::-1]
    return out


@dataclass(frozen=True)
class EvalSets:
    """Who is evaluated and how, under one protocol (:class:`recfuse.config.EvalConfig`).

    Attributes:
        users: test users with at least one rankable test item, sorted.
        histories: per user, the item ids the query reads (most recent first).
        exclude: per user, item indices removed from the ranking.
        test: per user, held-out item indices.
        item_counts: ``[n]`` training interactions per item.
        cold_mask: ``[n]`` True for the split's cold items, or None without cold items.
        counts: bookkeeping copied into the result.
        info: ``protocol`` and ``split`` descriptions for reports.
    """

    users: list[str]
    histories: list[list[str]]
    exclude: list[list[int]]
    test: list[list[int]]
    item_counts: Int64Array
    cold_mask: npt.NDArray[np.bool_] | None
    counts: dict[str, int]
    info: dict[str, Any]


def build_eval_sets(
    split: SplitLike,
    item_ids: Sequence[str],
    protocol: EvalConfig | None = None,
    cold_items: frozenset[str] | None = None,
) -> EvalSets:
    """Build the test users, their queries' histories and masks for ``protocol`` (default: ``EvalConfig()``).

    The split's kind (``split.kind`` when it has one) resolves ``protocol.history = "auto"``.
    """
    protocol = protocol or EvalConfig()
    kind = str(getattr(split, "kind", "random"))
    history = protocol.resolved_history(kind)
    index = {str(item): i for i, item in enumerate(item_ids)}
    test_by_user, unknown_test = _items_by_user(split.test, index)
    train_by_user = _items_by_user(split.train, index)[0]
    val_by_user = _items_by_user(split.val, index)[0]
    test_users = set(split.test["user_id"].astype(str)) if not split.test.empty else set()
    users = sorted(test_by_user)
    if unknown_test:
        logger.warning("%d test row(s) name items the model cannot rank; left out of the relevant sets", unknown_test)
    read = pd.concat([split.train, split.val], ignore_index=True) if history == "train+valid" else split.train
    by_user = _histories(read)
    histories = [by_user.get(u, []) for u in users]
    with_valid = protocol.mask == "train+valid"
    exclude = [train_by_user.get(u, []) + (val_by_user.get(u, []) if with_valid else []) for u in users]
    cold = frozenset(getattr(split, "cold_items", frozenset())) if cold_items is None else cold_items
    cold_mask = np.array([str(i) in cold for i in item_ids], dtype=bool) if cold else None
    train_idx = split.train["item_id"].astype(str).map(index).dropna().astype(np.int64).to_numpy()
    counts = {
        "test_rows": len(split.test),
        "unknown_test_rows": unknown_test,
        "users_only_unknown_test_items": len(test_users) - len(users),
        "users_without_history": sum(1 for h in histories if not h),
        "train_users_without_test_rows": len(set(split.train["user_id"].astype(str)) - test_users),
    }
    record = split.record() if hasattr(split, "record") else {}
    info = {"protocol": protocol.describe(kind), "mask": protocol.mask, "history": history, "split": record}
    return EvalSets(
        users=users,
        histories=histories,
        exclude=exclude,
        test=[test_by_user[u] for u in users],
        item_counts=np.bincount(train_idx, minlength=len(item_ids)).astype(np.int64),
        cold_mask=cold_mask,
        counts=counts,
        info=info,
    )


def evaluate_model(
    model: RankingModel,
    split: SplitLike,
    ks: Sequence[int] = (10, 20, 50),
    cold_items: frozenset[str] | None = None,
    block_size: int = 1024,
    query_batch: int = 1024,
    protocol: EvalConfig | None = None,
    item_head: bool = True,
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

    result = evaluate_scores(score, len(item_ids), users, sets.exclude, sets.test, ks, sets.cold_mask,
                             sets.item_counts, block_size, sets.counts)  # fmt: skip
    if head is not None:
        result.info["item_head"] = {k: v for k, v in head.record().items() if k != "selection"}
    result.info.update(sets.info)
    return result
