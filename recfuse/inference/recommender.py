"""Recommender: a bundle → ranked items for a user, a history or an item (numpy + faiss, no TensorFlow).

Request path, per batch of queries:

1. validate every field (:class:`~recfuse.inference.limits.Limits`);
2. resolve ids to item rows: the request history (unknown ids skipped and counted) is merged in
   front of a known user's stored history (duplicates keep their most recent position) and cut to
   the model's ``max_history``;
3. one numpy query-tower forward for all queries that have a user signal (a history, or a known
   user when the tower has a user embedding) — the rest get the ``"popular"`` fallback;
4. one batched index search with per-query exclusions (explicit ids, seen items with
   ``exclude_seen``, excluded categories) and allow-lists (included categories), returning exactly
   ``k`` items whenever that many candidates pass the filters.

Everything is precomputed at load and never mutated, so one instance serves concurrent threads.

Example:
    >>> rec = Recommender.from_bundle("bundles/attention")              # doctest: +SKIP
    >>> r = rec.recommend(user_id="u42", k=5, exclude_seen=True)        # doctest: +SKIP
    >>> r.fallback, len(r.items)                                         # doctest: +SKIP
    ('', 5)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recfuse.bundle import LoadedBundle, load_bundle
from recfuse.errors import ArtifactError, InvalidRequestError, NotFoundError
from recfuse.index import ItemIndex
from recfuse.index.hugepages import advise_hugepages
from recfuse.index.served import tunable_param
from recfuse.inference.catalog import CatalogTables
from recfuse.inference.limits import Limits
from recfuse.inference.types import (
    FALLBACK_NONE,
    FALLBACK_POPULAR,
    BundleInfo,
    RankedRows,
    Recommendation,
    RecommendQuery,
    ScoredItem,
)
from recfuse.models.query_numpy import QueryEncoder
from recfuse.ranking import masked_topk
from recfuse.types import FloatArray, Int64Array

logger = logging.getLogger(__name__)

_EMPTY_ROWS = np.zeros(0, np.int64)
_EMPTY_ROWS.flags.writeable = False
_EMPTY_SCORES = np.zeros(0, np.float32)
_EMPTY_SCORES.flags.writeable = False
_EMPTY_RESULT = (_EMPTY_ROWS, _EMPTY_SCORES)


@dataclass(frozen=True)
class _Plan:
    """One validated query resolved to rows."""

    k: int
    user_idx: int
    hist: Int64Array  # rows, most recent first, <= max_history
    use_model: bool
    exclude: Int64Array  # rows never to return
    allow: Int64Array | None  # rows allowed (None: all)
    skipped_history: int
    skipped_exclusions: int
    vector_row: int = -1  # row of Recommender.user_vectors holding this query's vector (-1: encode it)


class Recommender:
    """Ranked recommendations from one loaded bundle.

    Args:
        bundle: a :class:`~recfuse.bundle.LoadedBundle` or a path accepted by ``load_bundle``.
        limits: request limits (``max_k`` etc.).
        exact_filter_max: allow-lists (category filters) up to this many items are ranked exactly
            by scoring their vectors directly instead of a filtered index search (``ip`` bundles).
        user_vectors_mb: when > 0, the query vector of every known user with no request history
            (their stored history and user embedding) is computed once at load, in one batched
            forward, if they fit in this many MiB (``users x dim x 4`` bytes: 20k users at 64-d are
            5 MiB, 1M are 256 MiB); a Recommend by user id then skips the query forward
            (bench/README.md, "Known users' query vectors at load"). Over the budget every request
            runs the forward. 0, the default, keeps start-up short for one-shot uses (``recfuse
            recommend``, ``bundle info``); the server turns it on (``ServerConfig.user_vectors_mb``,
            256).
        hugepages: back the index's large arrays with 2 MiB transparent huge pages at load (Linux;
            :func:`recfuse.index.hugepages.advise_hugepages`): a graph search's scattered reads then
            miss the TLB far less (-15% search CPU at 1M HNSW items, -6% at 100k), for ~1.2 s of
            start-up per 0.5 GB of index. A no-op where the kernel does not allow it. Off by default
            for one-shot uses; the server turns it on (``ServerConfig.hugepages``).
        search_threads: faiss OpenMP threads for this Recommender's searches. 1, the default, is
            right for single requests: with more, every small search pays thread wake-ups, which on
            a busy 2-core machine cost ~15 ms at p50 (bench/recommend_bench.py). OpenMP keeps this
            setting per calling thread (``omp_set_num_threads`` in one thread leaves the others at
            the default, all cores), so it is applied in every thread that searches — e.g. each
            gRPC worker thread, not only the thread that loaded the bundle. ``None`` leaves it
            alone (e.g. for large offline batches).

    Example:
        >>> rec = Recommender.from_bundle("bundles", variant="attention")   # doctest: +SKIP
        >>> rec.recommend(history=["i3", "i9"], k=3).item_ids                # doctest: +SKIP
        ['i4', 'i8', 'i2']
    """

    def __init__(
        self,
        bundle: LoadedBundle | str | Path,
        limits: Limits | None = None,
        search_threads: int | None = 1,
        exact_filter_max: int = 20_000,
        user_vectors_mb: float = 0.0,
        hugepages: bool = False,
    ) -> None:
        self._search_threads = None if search_threads is None else int(search_threads)
        if self._search_threads is not None:
            faiss.omp_set_num_threads(self._search_threads)
        self.bundle = bundle if isinstance(bundle, LoadedBundle) else load_bundle(bundle)
        self.limits = limits or Limits()
        self._tables = CatalogTables.from_bundle(self.bundle)
        self._tower = self.bundle.query_tower
        # the index's vectors: what items are ranked by (popularity prior applied at export)
        # what the index ranks by (exact filtered searches and similar-item queries use the same)
        self._vectors = self.bundle.ranked_vectors
        # Per-item attention logits etc. computed once here (cold items of an incremental bundle are
        # rows of this matrix, so they get theirs too); a request runs the short forward.
        self._encoder = QueryEncoder(self._tower, self.bundle.item_vectors)
        self._item_id_list: list[str] = [str(i) for i in self._tables.item_ids]
        #: id and title of each catalog row, for callers of :meth:`rank` (read-only tuples)
        self.item_id_of_row: tuple[str, ...] = tuple(self._item_id_list)
        self.title_of_row: tuple[str, ...] = tuple(self._tables.titles)
        self._user_vocab = self.bundle.user_vocab
        self._has_user_table = self._tower.user_embedding is not None
        self._index = self.bundle.index
        if hugepages:
            on_huge = advise_hugepages(self._index.faiss_index)
            logger.debug("%s: %.0f MiB of the index on huge pages", self.bundle.path, on_huge / 2**20)
        self._max_history = int(self.bundle.manifest.get("max_history", 20))
        self._exact_filter_max = int(exact_filter_max)
        self._exact_filters = self.bundle.index_config.metric == "ip"
        #: ``[known users, d]`` query vectors of the vocabulary's users (row = vocab index - num_oov)
        #: for requests without history rows; None when off or over budget (read-only)
        self.user_vectors: FloatArray | None = self._user_query_vectors(float(user_vectors_mb))
        m = self.bundle.manifest
        served = m.get("served_recall") or {}
        self._info = BundleInfo(
            variant=self.bundle.variant,
            version=self.bundle.version,
            model_version=self.bundle.model_version,
            created_at=str(m["created_at"]),
            item_count=int(m["item_count"]),
            user_count=len(self.bundle.user_vocab),
            dim=self.bundle.dim,
            metric=str(m["metric"]),
            index_factory=str(m["index_factory"]),
            ann_recall=None if m["ann_recall"] is None else float(m["ann_recall"]),
            format_version=int(m["format_version"]),
            recfuse_version=str(m["recfuse_version"]),
            path=str(self.bundle.path),
            max_k=self.limits.max_k,
            category_count=len(self._tables.category_rows),
            served_recall=None if served.get("recall") is None else float(served["recall"]),
            served_recall_queries=str(served.get("queries", "")),
            search_params=_search_params(self._index, served),
        )

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        variant: str | None = None,
        limits: Limits | None = None,
        verify: bool = True,
        search_threads: int | None = 1,
        user_vectors_mb: float = 0.0,
        hugepages: bool = False,
    ) -> Recommender:
        """Load (and verify) a bundle and build a Recommender over it."""
        return cls(
            load_bundle(path, variant=variant, verify=verify),
            limits,
            search_threads,
            user_vectors_mb=user_vectors_mb,
            hugepages=hugepages,
        )

    # ------------------------------------------------------------------ public API
    def info(self) -> BundleInfo:
        return self._info

    @property
    def variant(self) -> str:
        return self.bundle.variant

    @property
    def version(self) -> str:
        return self.bundle.version

    def item_title(self, item_id: str) -> str:
        """Title of a catalog item. Raises NotFoundError for an unknown id."""
        row = self._tables.row_of.get(item_id)  # inlined _row: called once per returned item
        return self._tables.titles[row] if row is not None else self._tables.titles[self._row(item_id, "item_id")]

    def has_item(self, item_id: str) -> bool:
        return item_id in self._tables.row_of

    def recommend(
        self,
        user_id: str | None = None,
        history: Sequence[str] = (),
        k: int = 10,
        exclude_item_ids: Sequence[str] = (),
        exclude_seen: bool = False,
        include_categories: Sequence[str] = (),
        exclude_categories: Sequence[str] = (),
    ) -> Recommendation:
        """Top-``k`` items for a user and/or a request-time history.

        Args:
            user_id: known user (stored history + embedding), unknown user, or None/"" (anonymous).
            history: item ids, most recent first; unknown ids are skipped and counted.
            k: number of items (``1..limits.max_k``).
            exclude_item_ids: never returned.
            exclude_seen: also exclude the stored history and the request history.
            include_categories: only items in one of these categories.
            exclude_categories: never items in these categories.

        Returns:
            :class:`Recommendation`; ``fallback="popular"`` when there is no user signal.

        Raises:
            InvalidRequestError: a field breaks a limit (message names it).
        """
        q = RecommendQuery(user_id, history, k, exclude_item_ids, exclude_seen, include_categories, exclude_categories)
        return self.recommend_batch([q])[0]

    def rank(self, user_id: str | None = None, history: Sequence[str] = (), k: int = 10) -> RankedRows:
        """The unfiltered single query of :meth:`recommend` (no exclusions, no category filters), as rows.

        The serving fast path: the same validation, history merge, query forward and search as
        ``recommend(user_id, history, k)`` (tested equal), without building a query, a plan or an
        object per returned item. Map rows to ids and titles with :attr:`item_id_of_row` and
        :attr:`title_of_row`.

        Raises:
            InvalidRequestError: a field breaks a limit (message names it).
        """
        lim = self.limits
        k = lim.check_k(k)
        user = lim.check_user(user_id)
        ids = lim.check_ids("history", history, lim.max_history) if history else ()
        t0 = time.perf_counter()
        hist, _, user_idx, skipped = self._history_rows(user, ids)
        if not self._uses_model(hist, user_idx):
            rows, scores = self._popular(_Plan(k, 0, hist, False, _EMPTY_ROWS, None, skipped, 0))
            return RankedRows(rows.tolist(), scores.tolist(), FALLBACK_POPULAR, 0.0, 0.0, skipped)
        vec_row = self._user_vector_row(user_idx, len(ids) - skipped)
        if vec_row >= 0:
            q = self.user_vectors[vec_row : vec_row + 1]  # type: ignore[index]  # finite (checked at load)
        else:
            q = self._finite(self._encoder.encode_one(max(user_idx, 0), hist)[None, :])
        t1 = time.perf_counter()
        self._apply_search_threads()
        row_list, score_list = self._index.search_one(q, min(k, self._tables.n))
        return RankedRows(
            row_list, score_list, FALLBACK_NONE, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3, skipped
        )

    def recommend_batch(self, queries: Sequence[RecommendQuery]) -> list[Recommendation]:
        """Answer many queries with one query-tower forward and one batched search.

        ``query_ms``/``search_ms`` of each answer are the times of the whole batch.
        """
        if len(queries) > self.limits.max_batch:
            raise InvalidRequestError(f"batch has {len(queries)} queries; at most {self.limits.max_batch} are allowed")
        plans = [self._plan(self.limits.check(q)) for q in queries]
        model_pos = [i for i, p in enumerate(plans) if p.use_model]
        results: list[tuple[Int64Array, FloatArray]] = [_EMPTY_RESULT] * len(plans)
        t0 = time.perf_counter()
        qvec = self._encode([plans[i] for i in model_pos]) if model_pos else None
        t1 = time.perf_counter()
        if qvec is not None:
            for i, res in zip(model_pos, self._search(qvec, [plans[i] for i in model_pos])):
                results[i] = res
        for i, p in enumerate(plans):
            if not p.use_model:
                results[i] = self._popular(p)
        t2 = time.perf_counter()
        query_ms, search_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3
        out = []
        for p, (rows, scores) in zip(plans, results):
            out.append(
                Recommendation(
                    items=self._scored(rows, scores),
                    fallback=FALLBACK_NONE if p.use_model else FALLBACK_POPULAR,
                    model_version=self.bundle.version,
                    variant=self.bundle.variant,
                    query_ms=query_ms,
                    search_ms=search_ms,
                    skipped_history=p.skipped_history,
                    skipped_exclusions=p.skipped_exclusions,
                )
            )
        return out

    def similar_items(
        self,
        item_id: str,
        k: int = 10,
        exclude_item_ids: Sequence[str] = (),
        include_categories: Sequence[str] = (),
        exclude_categories: Sequence[str] = (),
    ) -> Recommendation:
        """Nearest neighbours of an item's embedding, the item itself excluded.

        Raises:
            InvalidRequestError: bad ``k``/lists; NotFoundError: unknown ``item_id``.
        """
        self.limits.check_ids("item_id", [item_id], 1)
        q = self.limits.check(
            RecommendQuery(
                k=k,
                exclude_item_ids=exclude_item_ids,
                include_categories=include_categories,
                exclude_categories=exclude_categories,
            )
        )
        row = self._row(item_id, "item_id")
        base = self._plan(q)
        plan = _Plan(
            k=base.k,
            user_idx=0,
            hist=base.hist,
            use_model=True,
            exclude=np.union1d(base.exclude, [row]).astype(np.int64),
            allow=base.allow,
            skipped_history=0,
            skipped_exclusions=base.skipped_exclusions,
        )
        t0 = time.perf_counter()
        rows, scores = self._search(self._vectors[row : row + 1], [plan])[0]
        search_ms = (time.perf_counter() - t0) * 1e3
        return Recommendation(
            items=self._scored(rows, scores),
            fallback=FALLBACK_NONE,
            model_version=self.bundle.version,
            variant=self.bundle.variant,
            query_ms=0.0,
            search_ms=search_ms,
            skipped_exclusions=base.skipped_exclusions,
        )

    # ------------------------------------------------------------------ internals
    def _row(self, item_id: str, field: str) -> int:
        row = self._tables.row_of.get(item_id)
        if row is None:
            raise NotFoundError(
                f"`{field}` {item_id!r} is not in bundle {self.bundle.variant}/{self.bundle.version} "
                f"({self._tables.n} items)"
            )
        return row

    def _scored(self, rows: Int64Array, scores: FloatArray) -> list[ScoredItem]:
        ids = self._item_id_list
        return [ScoredItem(ids[r], s) for r, s in zip(rows.tolist(), scores.tolist())]

    def _history_rows(self, user_id: str | None, history: Sequence[str]) -> tuple[Int64Array, Int64Array, int, int]:
        """``(hist, merged, user_idx, skipped)``: the request history (unknown ids skipped, counted in
        front of the user's stored one, duplicates at their most recent position; ``hist`` is it cut
        to ``max_history``), and the user's vocabulary index (-1: anonymous)."""
        t = self._tables
        if history:
            req_rows, skipped = t.rows_of(history)
        else:
            req_rows, skipped = _EMPTY_ROWS, 0
        user_idx = -1
        stored = _EMPTY_ROWS
        if user_id is not None:
            stored = t.user_rows.get(user_id, _EMPTY_ROWS)
            user_idx = self._user_vocab.lookup_one(user_id)
        if len(req_rows) and len(stored):
            merged = np.concatenate([req_rows, stored])
        else:
            merged = req_rows if len(req_rows) else stored
        if len(merged) > 1:
            # Duplicates keep their first (most recent) position; dicts keep insertion order.
            uniq = dict.fromkeys(merged.tolist())
            if len(uniq) < len(merged):
                merged = np.fromiter(uniq, dtype=np.int64, count=len(uniq))
        return merged[: self._max_history], merged, int(user_idx), skipped

    def _uses_model(self, hist: Int64Array, user_idx: int) -> bool:
        """A query has a user signal: a history, or a known user (indices past the OOV buckets;
        unknown users hash into them or get -1) when the tower has a user embedding."""
        return len(hist) > 0 or (user_idx >= self._user_vocab.num_oov and self._has_user_table)

    def _plan(self, q: RecommendQuery) -> _Plan:
        t = self._tables
        hist, merged, user_idx, skipped = self._history_rows(q.user_id, q.history)
        use_model = self._uses_model(hist, user_idx)
        skipped_excl = 0
        allow: Int64Array | None = None
        exclude = _EMPTY_ROWS
        if q.exclude_item_ids or q.exclude_seen or q.include_categories or q.exclude_categories:
            excl_rows, skipped_excl = t.rows_of(q.exclude_item_ids)
            parts = [excl_rows]
            if q.exclude_seen:
                parts.append(merged)
            excl_cats = t.rows_in_categories(q.exclude_categories) if q.exclude_categories else None
            if q.include_categories:
                allow = t.rows_in_categories(q.include_categories)
                if excl_cats is not None:
                    allow = np.setdiff1d(allow, excl_cats, assume_unique=True)
            elif excl_cats is not None:
                parts.append(excl_cats)
            if any(len(p) for p in parts):
                exclude = np.unique(np.concatenate(parts)).astype(np.int64)
            if allow is None and len(exclude) > t.n // 2:
                # Mostly excluded (e.g. broad excluded categories): the complement is the smaller filter.
                allow = np.setdiff1d(np.arange(t.n, dtype=np.int64), exclude, assume_unique=True)
            if allow is not None and len(exclude):
                allow = np.setdiff1d(allow, exclude, assume_unique=True)
                exclude = _EMPTY_ROWS
        if skipped:
            logger.debug("request history: %d unknown item id(s) skipped", skipped)
        return _Plan(
            k=q.k,
            user_idx=max(user_idx, 0),
            hist=hist,
            use_model=bool(use_model),
            exclude=exclude,
            allow=allow,
            skipped_history=skipped,
            skipped_exclusions=skipped_excl,
            vector_row=self._user_vector_row(user_idx, len(q.history) - skipped),
        )

    def _encode(self, plans: Sequence[_Plan]) -> FloatArray:
        """Query vectors of ``plans``: precomputed rows of :attr:`user_vectors` where a plan has one,
        one forward for the rest."""
        vecs = self.user_vectors
        stored: list[int] = []
        rest: list[int] = []
        for j, p in enumerate(plans):
            (stored if p.vector_row >= 0 else rest).append(j)
        if not rest:
            return vecs[[p.vector_row for p in plans]]  # type: ignore[index]  # rows only when vecs is set
        encoded = self._finite(
            self._encoder.encode_many([plans[j].user_idx for j in rest], [plans[j].hist for j in rest])
        )
        if not stored:
            return encoded
        full = np.empty((len(plans), encoded.shape[1]), np.float32)
        full[stored] = vecs[[plans[j].vector_row for j in stored]]  # type: ignore[index]
        full[rest] = encoded
        return full

    def _finite(self, queries: FloatArray) -> FloatArray:
        """``queries`` from the query tower, or an ArtifactError: a tower giving NaN/inf is a broken
        bundle (the server's reload rejects it), not a bad request."""
        if not np.isfinite(queries).all():
            raise ArtifactError(
                f"the query tower of bundle {str(self.bundle.path)!r} gave a non-finite vector; re-export the "
                "bundle from a model trained without NaN weights"
            )
        return queries

    def _user_vector_row(self, user_idx: int, request_rows: int) -> int:
        """Row of :attr:`user_vectors` answering a query by a known user whose request adds no history
        rows (``request_rows``: known ids in the request history); -1 when it must be encoded."""
        if self.user_vectors is None or request_rows or user_idx < self._user_vocab.num_oov:
            return -1
        return user_idx - self._user_vocab.num_oov

    def _user_query_vectors(self, budget_mb: float) -> FloatArray | None:
        """Every vocabulary user's query vector with no request history, batched (see ``user_vectors_mb``)."""
        voc = self._user_vocab
        n, d = len(voc.ids), self._tower.dim
        if budget_mb < 0:
            raise ValueError(f"`user_vectors_mb` must be >= 0 MiB, got {budget_mb!r}")
        if n == 0 or budget_mb == 0:
            return None
        if n * d * 4 > budget_mb * 2**20:
            logger.info(
                "%d known users' query vectors (%.3g MiB) exceed user_vectors_mb=%g; they are encoded per request",
                n,
                n * d * 4 / 2**20,
                budget_mb,
            )
            return None
        out = np.zeros((n, d), np.float32)
        chunk = 4096
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            # The same history a request without one gets (stored, de-duplicated, cut to max_history).
            hists = [self._history_rows(u, ())[0] for u in voc.ids[start:stop]]
            # Rows with no history and no user table never use the model (popular fallback instead).
            out[start:stop] = self._encoder.encode_many(range(voc.num_oov + start, voc.num_oov + stop), hists)
        if not np.isfinite(out).all():
            bad = int((~np.isfinite(out).all(axis=1)).sum())
            raise ArtifactError(
                f"the query tower of bundle {str(self.bundle.path)!r} gives non-finite vectors for {bad} known "
                "user(s); re-export the bundle from a model trained without NaN weights"
            )
        out.flags.writeable = False
        return out

    def _apply_search_threads(self) -> None:
        """``search_threads`` for the calling thread (OpenMP keeps it per thread; see ``__init__``)."""
        if self._search_threads is not None and faiss.omp_get_max_threads() != self._search_threads:
            faiss.omp_set_num_threads(self._search_threads)

    def _search(self, queries: FloatArray, plans: Sequence[_Plan]) -> list[tuple[Int64Array, FloatArray]]:
        """Search with per-query exclusions and allow-lists (``None``: unrestricted).

        Queries whose allow-list is small (``<= exact_filter_max`` items, inner-product bundles) are
        ranked exactly over just those items with :func:`recfuse.ranking.masked_topk` — a sparse
        allow-list is the worst case of a graph index (it must wander far to find k allowed items),
        while scoring a few thousand vectors directly takes microseconds. The rest go to the index in
        one batched call.
        """
        self._apply_search_threads()
        out: list[tuple[Int64Array, FloatArray]] = [_EMPTY_RESULT] * len(plans)
        if len(plans) == 1 and plans[0].allow is None and not len(plans[0].exclude):
            # The common serving call: one unfiltered query straight to the index.
            ids, scores = self._index.search(queries, min(plans[0].k, self._tables.n))
            keep = ids[0] >= 0
            return [(ids[0], scores[0]) if keep.all() else (ids[0][keep], scores[0][keep])]
        rest = []
        for j, p in enumerate(plans):
            if p.allow is not None and len(p.allow) == 0:
                continue  # nothing may be returned
            if p.allow is not None and self._exact_filters and len(p.allow) <= self._exact_filter_max:
                idx, scores = masked_topk(queries[j : j + 1], self._vectors[p.allow], p.k)
                out[j] = (p.allow[idx[0]], scores[0])
            else:
                rest.append(j)
        if not rest:
            return out
        k = min(max(plans[j].k for j in rest), self._tables.n)
        # Lists, not arrays: ItemIndex tests emptiness with `not ids` (ambiguous for numpy arrays).
        excl = [plans[j].exclude.tolist() for j in rest]
        allow = [None if plans[j].allow is None else plans[j].allow.tolist() for j in rest]  # type: ignore[union-attr]
        ids, scores = self._index.search(
            queries if len(rest) == len(plans) else queries[rest],
            k,
            exclude=excl if any(len(e) for e in excl) else None,
            allow=allow if any(a is not None for a in allow) else None,
        )
        for r, j in enumerate(rest):
            keep = ids[r] >= 0
            out[j] = (ids[r][keep][: plans[j].k], scores[r][keep][: plans[j].k])
        return out

    def _popular(self, p: _Plan) -> tuple[Int64Array, FloatArray]:
        """Popularity order with the same filters as the model path."""
        t = self._tables
        if p.allow is None:
            # At most len(exclude) of the first k + len(exclude) popular rows can be excluded.
            cand = t.popular_rows[: p.k + len(p.exclude)]
            rows = cand[~np.isin(cand, p.exclude)][: p.k] if len(p.exclude) else cand
        else:
            allowed = np.setdiff1d(p.allow, p.exclude, assume_unique=True) if len(p.exclude) else p.allow
            rank = t.popular_rank[allowed]
            take = np.argsort(rank, kind="stable")[: p.k]
            rows = allowed[take]
        return rows.astype(np.int64), t.popular_counts[rows]


def _search_params(index: ItemIndex, served: Mapping[str, Any]) -> str:
    """``efSearch=48 (tuned to 0.95)``-style text of the search parameters in force ("" for exact)."""
    param = tunable_param(index)
    if not param:
        return ""
    ef, nprobe = index.config.search_params()
    text = f"efSearch={ef}" if param == "ef_search" else f"nprobe={nprobe}"
    return text + (f" (tuned to {served.get('target')})" if served.get("tuned") else "")
