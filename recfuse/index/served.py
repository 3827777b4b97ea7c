"""Served recall: how close the index's answers are to exact search, for the queries it will serve.

Item vectors used as queries overstate an ANN index's recall (each is its own nearest neighbour, in
a dense region of the graph); the queries a recommender serves are users' query vectors, which sit
elsewhere. :func:`served_recall` measures Recall@k of the index against exact inner-product (or L2)
search over the same vectors with given query vectors, and :func:`tune_search` picks the smallest
efSearch (HNSW) or nprobe (IVF) of a grid whose served recall meets a target (cheapest first).

Example:
    >>> result = tune_search(index, vectors, queries, target=0.95)    # doctest: +SKIP
    >>> result.param, result.value, round(result.recall, 3)           # doctest: +SKIP
    ('ef_search', 48, 0.957)
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import faiss
import numpy as np

from recfuse.index.factory import apply_search_params, faiss_metric, inner_index, ivf_of
from recfuse.index.item_index import ItemIndex
from recfuse.index.recall import knn_recall
from recfuse.types import FloatArray

logger = logging.getLogger(__name__)

#: efSearch values tried for an HNSW index, cheapest first
EF_SEARCH_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
#: nprobe values tried for an IVF index (clipped to its number of lists), cheapest first
NPROBE_GRID = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 4096)
#: the walk up the grid stops below the target after this many values in a row that each add less
#: than PLATEAU_GAIN to the best recall so far (recall has stopped rising: a larger setting will not help)
PLATEAU_STEPS = 3
PLATEAU_GAIN = 0.001


@dataclass
class TuneResult:
    """What :func:`tune_search` chose.

    Attributes:
        param: ``ef_search``, ``nprobe`` or ``""`` (nothing to tune: an exact index).
        value: the chosen value (0 when nothing was tuned).
        recall: served Recall@k at that value.
        met: whether ``recall`` reaches the target.
        tried: ``[(value, recall)]`` of every value tried, in the order tried.
    """

    param: str
    value: int
    recall: float
    met: bool
    tried: list[tuple[int, float]] = field(default_factory=list)


def exact_topk(
    index: ItemIndex, vectors: FloatArray, queries: FloatArray, k: int, ids: np.ndarray | None = None
) -> np.ndarray:
    """``[m, k]`` ids of the ``vectors`` nearest each query by the index's metric (``ids[row]``, or
    the row itself when ``ids`` is None)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    _, rows = faiss.knn(q, x, min(k, len(x)), metric=faiss_metric(index.metric))
    return rows if ids is None else np.asarray(ids, dtype=np.int64)[rows]


@dataclass
class Truth:
    """The exact top-k of served queries and of sampled item rows over one set of vectors, found in
    one pass (:func:`served_truth`): exact search over 1M vectors costs about the same for 200
    queries as for 2,000, so export computes it once for the factory choice, the tuning and both
    recalls.

    Attributes:
        queries: the served query vectors ``[m, d]`` it was computed for.
        rows: ``[r]`` item rows used as queries (:func:`item_query_rows`).
        exact: ``[m, k]`` exact top-k rows of ``queries``.
        exact_items: ``[r, k]`` exact top-k rows of ``vectors[rows]``.
    """

    queries: np.ndarray
    rows: np.ndarray
    exact: np.ndarray
    exact_items: np.ndarray

    def fits(self, queries: np.ndarray, n_rows: int) -> bool:
        """Whether it was computed for these served queries and ``n_rows`` item rows."""
        return len(self.rows) == n_rows and np.array_equal(self.queries, queries)


def item_query_rows(n: int, count: int, seed: int) -> np.ndarray:
    """The ``min(count, n)`` item rows, seeded, whose vectors are the queries of ``ann_recall``
    (:func:`recfuse.index.build.measure_recall` and the bundle writer draw the same ones)."""
    return np.random.default_rng(seed).choice(n, min(count, n), replace=False)


def served_truth(
    metric: str, vectors: FloatArray, queries: FloatArray, recall_queries: int, seed: int, k: int
) -> Truth:
    """:class:`Truth` for ``queries`` and ``min(recall_queries, n)`` item rows over ``vectors [n, d]``."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    n = len(x)
    rows = item_query_rows(n, recall_queries, seed)
    _, both = faiss.knn(np.vstack([q, x[rows]]), x, min(k, n), metric=faiss_metric(metric))
    return Truth(q, rows, both[: len(q)], both[len(q) :])


def served_recall(
    index: ItemIndex,
    vectors: FloatArray,
    queries: FloatArray,
    k: int = 10,
    exact: np.ndarray | None = None,
    ids: np.ndarray | None = None,
) -> float:
    """Mean over ``queries`` of ``|index top-k ∩ exact top-k| / k`` (:func:`recfuse.index.recall.knn_recall`;
    ``vectors``: the indexed rows, held under ``ids``, default ``0..n-1``; ``k`` clipped to ``n``;
    ``exact``: ``[m, k]`` :func:`exact_topk`, computed when not given)."""
    k = min(k, len(vectors))
    if len(queries) == 0 or k == 0:
        return float("nan")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    truth = exact_topk(index, vectors, q, k, ids) if exact is None else exact
    return knn_recall(index.search(q, k).ids, truth)


def tunable_param(index: ItemIndex) -> str:
    """``ef_search`` (HNSW), ``nprobe`` (IVF) or ``""`` (nothing to tune)."""
    if isinstance(inner_index(index.faiss_index), faiss.IndexHNSW):
        return "ef_search"
    return "nprobe" if ivf_of(index.faiss_index) is not None else ""


def tune_search(
    index: ItemIndex,
    vectors: FloatArray,
    queries: FloatArray,
    target: float,
    k: int = 10,
    exact: np.ndarray | None = None,
) -> TuneResult:
    """Set ``index`` to the smallest efSearch / nprobe of the grid whose served recall meets ``target``.

    The grid is walked upwards, cheapest first, and the walk stops at the first value that meets the
    target, so no setting more expensive than the chosen one is ever searched: a search's cost grows
    about linearly with efSearch / nprobe and the grid about geometrically, so tuning costs about
    2-3 searches at the chosen setting (starting from the largest value, as a bisection does, costs
    an exhaustive scan at nprobe = nlist). Every value below the chosen one has been tried and missed.
    When recall stops rising (``PLATEAU_STEPS`` values in a row add less than ``PLATEAU_GAIN``: PQ
    codes cap it) or the grid ends below the target, the walk stops, the index keeps the value with
    the best recall and the result says ``met = False``: a bigger index (more HNSW links or IVF lists,
    or ``Flat``) is needed. ``index.config`` records the chosen value. ``exact``: :func:`exact_topk`
    of ``vectors`` and ``queries`` when the caller has it (computed here otherwise).
    """
    param = tunable_param(index)
    exact = exact_topk(index, vectors, queries, k) if exact is None else exact
    if not param:
        recall = served_recall(index, vectors, queries, k, exact)
        return TuneResult("", 0, recall, recall >= target)
    ef, nprobe = index.config.search_params()
    grid: tuple[int, ...] = EF_SEARCH_GRID if param == "ef_search" else NPROBE_GRID
    if param == "nprobe":
        nlist = int(ivf_of(index.faiss_index).nlist)  # type: ignore[union-attr]
        grid = tuple(sorted({min(v, nlist) for v in grid}))
    tried: list[tuple[int, float]] = []
    best, flat = (grid[0], -1.0), 0
    for value in grid:
        _apply(index, param, value, ef, nprobe)
        recall = served_recall(index, vectors, queries, k, exact)
        tried.append((value, recall))
        if recall >= target:
            return TuneResult(param, value, recall, True, tried)
        flat = flat + 1 if recall < best[1] + PLATEAU_GAIN else 0
        best = max(best, (value, recall), key=lambda vr: vr[1])
        if flat >= PLATEAU_STEPS:
            break
    logger.warning(
        "index %s: served recall@%d reaches %.3f (%s = %d) and no more up to %s = %d, below the target "
        "%.2f; use a larger index (more HNSW links or IVF lists, or Flat) or lower index.target_recall",
        index.factory, k, best[1], param, best[0], param, tried[-1][0], target,
    )  # fmt: skip
    _apply(index, param, best[0], ef, nprobe)
    return TuneResult(param, best[0], best[1], False, tried)


def _params(param: str, value: int, ef: int, nprobe: int) -> tuple[int, int]:
    return (value, nprobe) if param == "ef_search" else (ef, value)


def _apply(index: ItemIndex, param: str, value: int, ef: int, nprobe: int) -> None:
    apply_search_params(index.faiss_index, *_params(param, value, ef, nprobe))
    if param == "ef_search":
        index.config = dataclasses.replace(index.config, ef_search=value)
    else:
        index.config = dataclasses.replace(index.config, nprobe=value)
