"""Recommender: a bundle → ranked items for a user, a history or an item (numpy + faiss, no TensorFlow).

One request path, whatever the query (``recommend``, ``recommend_batch``, the server's Recommend and
RecommendBatch, ``recfuse recommend``, ``evaluate --bundle``):

1. :meth:`Recommender.plan` validates every field once (:class:`~recfuse.inference.limits.Limits`)
   and resolves the query to rows (:mod:`recfuse.inference.plan`): the request history (unknown
   ids skipped and counted) merged in front of a known user's stored history (duplicates keep
   their most recent position) and cut to the model's ``max_history``; exclusions (explicit ids,
   seen items with ``exclude_seen``, excluded categories) or an allow-list (included categories);
   ``k`` clipped to the catalog (the only clip of ``k``);
2. :meth:`Recommender.answer` ranks planned queries: one query-tower forward for all that have a
   user signal (a history, or a known user when the tower has a user embedding; a known user's
   precomputed vector when on), the rest get the ``"popular"`` fallback;
3. :meth:`Recommender.search_model`, the one ranking of model queries: the searcher
   (:class:`~recfuse.inference.search.FilteredSearch`) picks each query's strategy — the index's
   plain search, its filtered search, or an exact ranking of a small allow-list — and returns
   exactly ``k`` items whenever that many candidates pass the filters; with an active item-item
   head (``LoadedBundle.item_head``) the search fetches ``k + candidates`` and every model query is
   re-ranked by ``q . v * factor + beta * head`` (:mod:`recfuse.inference.head_rerank`), the score
   ``recfuse evaluate --model`` ranks by; with ``model.new_item_share`` > 0, that share of each
   ranking is held for the best new items (:mod:`recfuse.inference.new_items`), as evaluation ranks;
4. each answer is a :class:`Recommendation` of parallel lists (ids, scores, catalog rows): no object
   per item.

Everything is precomputed at load and never mutated, so one instance serves concurrent threads.

Example:
    >>> rec = Recommender.from_bundle("bundles/attention")              # doctest: +SKIP
    >>> r = rec.recommend(user_id="u42", k=5, exclude_seen=True)        # doctest: +SKIP
    >>> r.fallback, len(r.item_ids)                                      # doctest: +SKIP
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
from recfuse.index import SearchResultList
from recfuse.index.hugepages import advise_hugepages
from recfuse.inference.catalog import CatalogTables
from recfuse.inference.head_rerank import HeadRerank
from recfuse.inference.info import bundle_info
from recfuse.inference.limits import Limits
from recfuse.inference.new_items import NewItemSlots
from recfuse.inference.plan import QueryPlan, filter_rows, history_rows
from recfuse.inference.query_vectors import QueryVectors, known_user_vectors
from recfuse.inference.search import FilteredSearch, Found, popular_rows
from recfuse.inference.types import (
    DEFAULT_K,
    FALLBACK_NONE,
    FALLBACK_POPULAR,
    BundleInfo,
    Recommendation,
    RecommendQuery,
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
        #: id and title of each catalog row (``Recommendation.rows`` index them; read-only tuples)
        self.item_id_of_row: tuple[str, ...] = tuple(str(i) for i in self._tables.item_ids)
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
        return self._tables.titles[self._row(item_id, "item_id")]

    def has_item(self, item_id: str) -> bool:
        return item_id in self._tables.row_of

    def recommend(
        self,
        user_id: str | None = None,
        history: Sequence[str] = (),
        k: int = DEFAULT_K,
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
        return self.answer([self.plan(q)])[0]

    def recommend_batch(self, queries: Sequence[RecommendQuery]) -> list[Recommendation]:
        """Answer many queries with one query-tower forward and one batched search.

        ``query_ms``/``search_ms`` of each answer are the times of the whole batch.
        """
        if len(queries) > self.limits.max_batch:
            raise InvalidRequestError(f"batch has {len(queries)} queries; at most {self.limits.max_batch} are allowed")
        return self.answer([self.plan(q) for q in queries])

    def plan(self, query: RecommendQuery) -> QueryPlan:
        """A query validated (:meth:`Limits.check`) and resolved to rows: the one check of a request.

        ``k`` is clipped to the catalog here and nowhere else. Unknown history ids are skipped and
        counted (``skipped_history``), unknown excluded ids too (``skipped_exclusions``).

        Raises:
            InvalidRequestError: a field breaks a limit (message names it).
        """
        q = self.limits.check(query)
        hist, merged, user_idx, skipped = history_rows(
            self._tables, self._user_vocab, self._max_history, q.user_id, q.history
        )
        exclude, allow, skipped_excl = filter_rows(self._tables, q, merged)
        if skipped:
            logger.debug("request history: %d unknown item id(s) skipped", skipped)
        return QueryPlan(
            min(q.k, self._tables.n),
            max(user_idx, 0),
            hist,
            self._uses_model(hist, user_idx),
            exclude,
            allow,
            skipped,
            skipped_excl,
            self._queries.vector_row(user_idx, len(q.history) - skipped),
        )

    def answer(self, plans: Sequence[QueryPlan]) -> list[Recommendation]:
        """The answers to planned queries (from :meth:`plan`): one query-tower forward and one
        :meth:`search_model` for the model queries, the popularity order for the rest."""
        model = plans if all(p.use_model for p in plans) else [p for p in plans if p.use_model]
        t0 = time.perf_counter()
        qvec = self._queries.encode(model) if model else None
        t1 = time.perf_counter()
        found = iter(self.search_model(qvec, model) if qvec is not None else ())
        results = [next(found) if p.use_model else popular_rows(self._tables, p) for p in plans]
        t2 = time.perf_counter()
        query_ms, search_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3
        return [self._answer(p, res, query_ms, search_ms) for p, res in zip(plans, results)]

    def search_model(self, queries: FloatArray, plans: Sequence[QueryPlan]) -> list[Found]:
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
        k: int = DEFAULT_K,
        exclude_item_ids: Sequence[str] = (),
        include_categories: Sequence[str] = (),
        exclude_categories: Sequence[str] = (),
    ) -> Recommendation:
        """Nearest neighbours of an item's embedding, the item itself excluded.

        Raises:
            InvalidRequestError: bad ``k``/lists; NotFoundError: unknown ``item_id``.
        """
        self.limits.check_ids("item_id", [item_id], 1)
        base = self.plan(
            RecommendQuery(
                k=k,
                exclude_item_ids=exclude_item_ids,
                include_categories=include_categories,
                exclude_categories=exclude_categories,
            )
        )
        row = self._row(item_id, "item_id")
        if base.allow is not None:  # the plan holds one of the two row sets: drop the item where it is
            plan = base._replace(use_model=True, allow=base.allow[base.allow != row])
        else:
            plan = base._replace(use_model=True, exclude=np.union1d(base.exclude, [row]).astype(np.int64))
        t0 = time.perf_counter()
        (res,) = self._searcher.search(self._vectors[row : row + 1], [plan])
        return self._answer(plan, res, 0.0, (time.perf_counter() - t0) * 1e3)

    # ------------------------------------------------------------------ internals
    def _row(self, item_id: str, field: str) -> int:
        row = self._tables.row_of.get(item_id)
        if row is None:
            raise NotFoundError(
                f"`{field}` {item_id!r} is not in bundle {self.bundle.variant}/{self.bundle.version} "
                f"({self._tables.n} items)"
            )
        return row

    def _answer(self, plan: QueryPlan, res: Found, query_ms: float, search_ms: float) -> Recommendation:
        """The :class:`Recommendation` of a ranked plan; ``res.ids`` are catalog rows (arrays or lists)."""
        if isinstance(res, SearchResultList):
            scores, rows = res
        else:
            scores, rows = res.scores.tolist(), res.ids.tolist()
        ids = self.item_id_of_row
        return Recommendation(
            [ids[r] for r in rows],
            scores,
            rows,
            FALLBACK_NONE if plan.use_model else FALLBACK_POPULAR,
            self.bundle.version,
            self.bundle.variant,
            query_ms,
            search_ms,
            plan.skipped_history,
            plan.skipped_exclusions,
        )

    def _history_rows(self, user_id: str | None, history: Sequence[str]) -> tuple[Int64Array, Int64Array, int, int]:
        """``(hist, merged, user_idx, skipped)`` of a query (:func:`recfuse.inference.plan.history_rows`)."""
        return history_rows(self._tables, self._user_vocab, self._max_history, user_id, history)

    def _uses_model(self, hist: Int64Array, user_idx: int) -> bool:
        """A query has a user signal: a history, or a known user (indices past the OOV buckets;
        unknown users hash into them or get -1) when the tower has a user embedding."""
        return len(hist) > 0 or (user_idx >= self._user_vocab.num_oov and self._has_user_table)
