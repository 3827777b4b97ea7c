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
   ``k`` items whenever that many candidates pass the filters;
5. with an active item-item head in the bundle (``LoadedBundle.item_head``), the search fetches
   ``k + candidates`` and every model query is re-ranked by ``q . v * factor + beta * head``
   (:mod:`recfuse.inference.head_rerank`), the same score ``recfuse evaluate --model`` ranks by;
6. with ``model.new_item_share`` > 0, that share of each model ranking is held for the best new
   items (:mod:`recfuse.inference.new_items`), as evaluation ranks.

:meth:`Recommender.recommend_batch` and :meth:`Recommender.rank` (the serving fast path) answer model
queries through :meth:`Recommender.search_model`, except that ``rank`` without a head or slots calls
the index's ``search_one`` directly (lists; ~5 µs a call less); the paths are tested equal.

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
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from recfuse.bundle import LoadedBundle, load_bundle
from recfuse.errors import InvalidRequestError, NotFoundError
from recfuse.forward.query import QueryEncoder
from recfuse.index import SearchResult
from recfuse.index.hugepages import advise_hugepages
from recfuse.inference.catalog import CatalogTables
from recfuse.inference.head_rerank import HeadRerank
from recfuse.inference.info import bundle_info
from recfuse.inference.limits import Limits
from recfuse.inference.new_items import NewItemSlots
from recfuse.inference.plan import EMPTY_RESULT, EMPTY_ROWS, QueryPlan, filter_rows, history_rows
from recfuse.inference.query_vectors import QueryVectors, known_user_vectors
from recfuse.inference.search import FilteredSearch, popular_rows
from recfuse.inference.types import (
    FALLBACK_NONE,
    FALLBACK_POPULAR,
    BundleInfo,
    RankedRows,
    Recommendation,
    RecommendQuery,
    ScoredItem,
)
from recfuse.types import FloatArray, Int64Array

logger = logging.getLogger(__name__)


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
            5 MiB, 1M are 256 MiB); a Recommend by user id then skips the query forward. Over the
            budget every request runs the forward. 0, the default, keeps start-up short for one-shot
            uses (``recfuse recommend``, ``bundle info``); the server turns it on
            (``ServerConfig.user_vectors_mb``, 256).
        hugepages: back the index's large arrays with 2 MiB transparent huge pages at load (Linux;
            :func:`recfuse.index.hugepages.advise_hugepages`): a graph search's scattered reads then
            miss the TLB far less, for some start-up time per GB of index. A no-op where the kernel
            does not allow it. Off by default for one-shot uses; the server turns it on
            (``ServerConfig.hugepages``).
        new_item_share: the share of each model ranking held for new items; None (the default)
            takes the bundle's ``model.new_item_share`` (:mod:`recfuse.inference.new_items`).
        search_threads: faiss OpenMP threads for this Recommender's searches. 1, the default, is
            right for single requests: with more, every small search pays thread wake-ups. OpenMP
            keeps this setting per calling thread (``omp_set_num_threads`` in one thread leaves the
            others at the default, all cores), so it is applied in every thread that searches — e.g.
            each gRPC worker thread, not only the thread that loaded the bundle. ``None`` leaves it
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
        new_item_share: float | None = None,
    ) -> None:
        self._search_threads = None if search_threads is None else int(search_threads)
        if self._search_threads is not None:
            faiss.omp_set_num_threads(self._search_threads)
        self.bundle = bundle if isinstance(bundle, LoadedBundle) else load_bundle(bundle)
        self.limits = limits or Limits()
        self._tables = CatalogTables.from_bundle(self.bundle)
        self._tower = self.bundle.query_tower
        # what the index ranks by (× each item's factor); exact filtered and similar-item searches too
        self._vectors = self.bundle.ranked_vectors
        # per-item attention logits etc. once here (added items too); a request runs the short forward
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
        self._searcher = FilteredSearch(
            self._index,
            self._vectors,
            self._tables.n,
            self._search_threads,
            exact_filter_max,
            exact_filters=self.bundle.index_config.metric == "ip",
        )
        #: ``[known users, d]`` query vectors of the vocabulary's users (row = vocab index - num_oov)
        #: for requests without history rows; None when off or over budget (read-only)
        self.user_vectors: FloatArray | None = known_user_vectors(
            self._encoder,
            self._user_vocab,
            self._tower.dim,
            lambda user: self._history_rows(user, ())[0],
            float(user_vectors_mb),
            self.bundle.path,
        )
        self._queries = QueryVectors(self._encoder, self.user_vectors, self._user_vocab.num_oov, self.bundle.path)
        #: the item-item head's re-rank of model queries, None without an active head
        self.head_rerank = HeadRerank.for_bundle(self.bundle, self._vectors, self._searcher)
        #: new-item slots of model rankings, None when off (or no item is new)
        self.new_slots = NewItemSlots.from_bundle(self.bundle, self._vectors, new_item_share)
        slots = self.new_slots.describe() if self.new_slots is not None else ""
        self._info = bundle_info(self.bundle, self.limits.max_k, len(self._tables.category_rows), slots)

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
        new_item_share: float | None = None,
    ) -> Recommender:
        """Load (and verify) a bundle and build a Recommender over it."""
        bundle = load_bundle(path, variant=variant, verify=verify)
        return cls(bundle, limits, search_threads, user_vectors_mb=user_vectors_mb, hugepages=hugepages,
                   new_item_share=new_item_share)  # fmt: skip

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
        object per returned item (with an active item-item head or new-item slots it goes through
        the same :meth:`search_model` as ``recommend``). Map rows to ids and titles with
        :attr:`item_id_of_row` and :attr:`title_of_row`.

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
            pop = popular_rows(self._tables, QueryPlan(k, 0, hist, False, EMPTY_ROWS, None, skipped, 0))
            return RankedRows(pop.ids.tolist(), pop.scores.tolist(), FALLBACK_POPULAR, 0.0, 0.0, skipped)
        vec_row = self._queries.vector_row(user_idx, len(ids) - skipped)
        if vec_row >= 0:
            q = self.user_vectors[vec_row : vec_row + 1]  # type: ignore[index]  # finite (checked at load)
        else:
            q = self._queries.finite(self._encoder.encode_one(max(user_idx, 0), hist)[None, :])
        t1 = time.perf_counter()
        if self.head_rerank is None and self.new_slots is None:
            found = self._searcher.search_one(q, k)  # = search_model's answer for an unfiltered plan, as lists
            rows, scores = found.ids, found.scores
        else:
            plan = QueryPlan(k, max(user_idx, 0), hist, True, EMPTY_ROWS, None, skipped, 0, vec_row)
            (res,) = self.search_model(q, [plan])
            rows, scores = res.ids.tolist(), res.scores.tolist()
        return RankedRows(rows, scores, FALLBACK_NONE, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3, skipped)

    def recommend_batch(self, queries: Sequence[RecommendQuery]) -> list[Recommendation]:
        """Answer many queries with one query-tower forward and one batched search.

        ``query_ms``/``search_ms`` of each answer are the times of the whole batch.
        """
        if len(queries) > self.limits.max_batch:
            raise InvalidRequestError(f"batch has {len(queries)} queries; at most {self.limits.max_batch} are allowed")
        plans = [self._plan(self.limits.check(q)) for q in queries]
        model_pos = [i for i, p in enumerate(plans) if p.use_model]
        results: list[SearchResult] = [EMPTY_RESULT] * len(plans)
        t0 = time.perf_counter()
        qvec = self._queries.encode([plans[i] for i in model_pos]) if model_pos else None
        t1 = time.perf_counter()
        if qvec is not None:
            for i, res in zip(model_pos, self.search_model(qvec, [plans[i] for i in model_pos])):
                results[i] = res
        for i, p in enumerate(plans):
            if not p.use_model:
                results[i] = popular_rows(self._tables, p)
        t2 = time.perf_counter()
        query_ms, search_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3
        out = []
        for p, res in zip(plans, results):
            out.append(
                Recommendation(
                    items=self._scored(res),
                    fallback=FALLBACK_NONE if p.use_model else FALLBACK_POPULAR,
                    bundle_version=self.bundle.version,
                    variant=self.bundle.variant,
                    query_ms=query_ms,
                    search_ms=search_ms,
                    skipped_history=p.skipped_history,
                    skipped_exclusions=p.skipped_exclusions,
                )
            )
        return out

    def search_model(self, queries: FloatArray, plans: Sequence[QueryPlan]) -> list[SearchResult]:
        """The ranking of model queries ``[b, d]`` under their plans: the filtered index search, re-ranked
        with the bundle's active item-item head, with new-item slots held when on. ``ids`` are catalog rows."""
        if self.head_rerank is not None:
            found = self.head_rerank.search(queries, plans)
        else:
            found = self._searcher.search(queries, plans)
        return found if self.new_slots is None else self.new_slots.apply(queries, plans, found)

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
        plan = QueryPlan(
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
        (res,) = self._searcher.search(self._vectors[row : row + 1], [plan])
        search_ms = (time.perf_counter() - t0) * 1e3
        return Recommendation(
            items=self._scored(res),
            fallback=FALLBACK_NONE,
            bundle_version=self.bundle.version,
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

    def _scored(self, res: SearchResult) -> list[ScoredItem]:
        """One :class:`ScoredItem` per result; ``res.ids`` are catalog rows."""
        ids = self._item_id_list
        return [ScoredItem(ids[r], s) for r, s in zip(res.ids.tolist(), res.scores.tolist())]

    def _history_rows(self, user_id: str | None, history: Sequence[str]) -> tuple[Int64Array, Int64Array, int, int]:
        """``(hist, merged, user_idx, skipped)`` of a query (:func:`recfuse.inference.plan.history_rows`)."""
        return history_rows(self._tables, self._user_vocab, self._max_history, user_id, history)

    def _uses_model(self, hist: Int64Array, user_idx: int) -> bool:
        """A query has a user signal: a history, or a known user (indices past the OOV buckets;
        unknown users hash into them or get -1) when the tower has a user embedding."""
        return len(hist) > 0 or (user_idx >= self._user_vocab.num_oov and self._has_user_table)

    def _plan(self, q: RecommendQuery) -> QueryPlan:
        hist, merged, user_idx, skipped = self._history_rows(q.user_id, q.history)
        use_model = self._uses_model(hist, user_idx)
        exclude, allow, skipped_excl = filter_rows(self._tables, q, merged)
        if skipped:
            logger.debug("request history: %d unknown item id(s) skipped", skipped)
        return QueryPlan(
            k=q.k,
            user_idx=max(user_idx, 0),
            hist=hist,
            use_model=bool(use_model),
            exclude=exclude,
            allow=allow,
            skipped_history=skipped,
            skipped_exclusions=skipped_excl,
            vector_row=self._queries.vector_row(user_idx, len(q.history) - skipped),
        )
