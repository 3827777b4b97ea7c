"""``[index]``: the FAISS index type and how its search parameters are chosen."""

from __future__ import annotations

from dataclasses import dataclass

from recfuse.config.checks import check_choice, check_range
from recfuse.errors import ConfigError

#: efSearch / nprobe where neither the config nor export's tuning sets one
DEFAULT_EF_SEARCH = 128
DEFAULT_NPROBE = 32


@dataclass(frozen=True)
class IndexConfig:
    """FAISS index choice: the factory string is the index type (``auto`` picks by catalog size).

    Attributes:
        factory: faiss factory string (``Flat``, ``HNSW32``, ``IVF1024,PQ16``…) or ``auto``. An
            explicit string is kept and only its efSearch / nprobe tuned to ``target_recall``.
            ``auto`` with served query vectors (export, ``target_recall`` > 0) chooses by measurement
            (:mod:`recfuse.index.choose`): candidates, cheapest to build first: ``Flat`` up to
            ``exact_max_items``, ``IVF{4√n},Flat``, the size rule's pick (``HNSW32`` up to 2M,
            IVF-PQ above), ``IVF{4√n},PQ{d}x4fs,RFlat``, ``IVF{16√n},Flat``, ``HNSW48``, ``Flat``;
            each is tuned to ``target_recall`` and timed (batch-1, one thread); the first that meets
            the target within ``latency_bound_ms`` is chosen, else the fastest that meets it (the
            manifest's ``index_choice`` lists what was tried). Without query vectors ``auto`` is the
            size rule alone.
        metric: ``ip`` (inner product; cosine when vectors are normalised) or ``l2``.
        mips: how an ``ip`` index over vectors of unequal norm is built (:mod:`recfuse.index.mips`):
            ``auto`` builds inverted-file (``IVF…,Flat``) indexes as L2 search over vectors with one more
            dimension that makes every norm equal (the same ranking and scores; under inner product
            IVF probes by direction and misses long vectors), ``on`` does so for every index but
            ``Flat``, ``off`` never.
        recall_floor: minimum measured ANN Recall@10 vs exact search.
        on_low_recall: ``raise`` or ``warn`` when the measured recall is below the floor.
        filter_mode: how exclusions/allow-lists are applied: ``selector`` (faiss ID selectors, where
            the index type honours them), ``refill`` (over-fetch and refill) or ``auto`` (selector
            where honoured, else refill).
        train_sample: vectors sampled to train IVF/PQ indexes (all of them when the catalog is smaller).
        threads: faiss OpenMP threads set on build/load (``0`` leaves faiss's default; 1 suits
            single-query serving).
        seed: seed of the training sample and the recall queries.
        ef_construction: HNSW efConstruction: candidates kept while the graph is built (higher: better
            graph, slower build).
        recall_queries: queries whose Recall@10 against exact search is measured after a build and
            compared with ``recall_floor`` (0 skips the check).
        exact_max_items: ``auto``: catalogs up to this many items get an exact ``Flat`` index.
        ef_search / nprobe: HNSW efSearch / IVF nprobe. Unset, export picks the smallest value of a
            grid whose served recall meets ``target_recall`` (and stores it in the bundle), or uses
            :data:`DEFAULT_EF_SEARCH` / :data:`DEFAULT_NPROBE` where nothing is tuned; a value set
            here always wins and its served recall is only reported.
        target_recall: Recall@10 against exact search that export tunes efSearch / nprobe to, measured
            with the query vectors the index will see (``served_queries`` of them: known users' query
            vectors and history-only queries from the model's own query tower); 0 turns tuning off.
        latency_bound_ms: ``auto``: the batch-1 search latency (median, one faiss thread) within
            which a candidate that meets ``target_recall`` is taken without trying later ones.
        choice_sample: ``auto``: catalogs larger than this try the candidates on a random sample of
            this many vectors (bounding export time); the chosen one is then built on all of them.
        served_queries: how many such query vectors export draws (and stores in the bundle, so
            ``add-items`` measures and tunes on the same queries).
    """

    factory: str = "auto"
    metric: str = "ip"
    mips: str = "auto"
    ef_search: int | None = None
    ef_construction: int = 80
    nprobe: int | None = None
    target_recall: float = 0.95
    served_queries: int = 2000
    latency_bound_ms: float = 0.1
    choice_sample: int = 100_000
    recall_floor: float = 0.9
    on_low_recall: str = "warn"
    recall_queries: int = 200
    exact_max_items: int = 50_000
    filter_mode: str = "auto"
    train_sample: int = 100_000
    threads: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("index", "metric", self.metric, ("ip", "l2"))
        check_choice("index", "mips", self.mips, ("auto", "on", "off"))
        check_choice("index", "filter_mode", self.filter_mode, ("auto", "selector", "refill"))
        check_range("index", "train_sample", self.train_sample, 1_000, 100_000_000)
        check_range("index", "threads", self.threads, 0, 1024)
        check_range("index", "recall_queries", self.recall_queries, 0, 1_000_000)
        check_range("index", "ef_construction", self.ef_construction, 1, 100_000)
        check_choice("index", "on_low_recall", self.on_low_recall, ("raise", "warn"))
        check_range("index", "recall_floor", self.recall_floor, 0.0, 1.0)
        if self.ef_search is not None:
            check_range("index", "ef_search", self.ef_search, 1, 100_000)
        if self.nprobe is not None:
            check_range("index", "nprobe", self.nprobe, 1, 1_000_000)
        check_range("index", "target_recall", self.target_recall, 0.0, 1.0)
        check_range("index", "served_queries", self.served_queries, 0, 1_000_000)
        check_range("index", "latency_bound_ms", self.latency_bound_ms, 0.0, 10_000.0)
        check_range("index", "choice_sample", self.choice_sample, 1_000, 100_000_000)
        if not self.factory.strip():
            raise ConfigError("`index.factory` must be a faiss factory string or 'auto', got ''")

    def search_params(self) -> tuple[int, int]:
        """``(efSearch, nprobe)`` in force: the configured values, else the defaults."""
        ef = DEFAULT_EF_SEARCH if self.ef_search is None else self.ef_search
        return ef, DEFAULT_NPROBE if self.nprobe is None else self.nprobe
