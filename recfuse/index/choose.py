"""Choose the index type by measurement: the fastest candidate whose served recall meets the target.

``index.factory = "auto"`` with served query vectors (export has them: the model's own query tower)
runs this rule; an explicit factory is kept and only its efSearch / nprobe tuned, and without
queries ``auto`` falls back to the size rule of :func:`recfuse.index.factory.auto_factory`.

The rule:

1. Candidates, cheapest to build first (:func:`candidate_factories`): ``Flat`` when the size rule
   picks it (up to ``exact_max_items``), ``IVF{4√n},Flat``, the size rule's pick (``HNSW32``, or
   IVF-PQ above 2M items), ``IVF{4√n},PQ{d}x4fs,RFlat`` (4-bit fast-scan PQ, one code per
   dimension, whose top ``REFINE_K_FACTOR * k`` hits are re-ranked with the exact vectors),
   ``IVF{16√n},Flat``, ``HNSW48`` and ``Flat`` (``nlist`` rounded to a power of two; IVF only from
   ``IVF_MIN_ITEMS``).
2. Each candidate is built, its cheapest efSearch / nprobe meeting ``target_recall`` found by
   :func:`recfuse.index.served.tune_search` (Recall@10 against exact search on the served queries),
   and its batch-1 latency measured: the median of up to ``LATENCY_QUERIES`` single-query searches
   with one faiss thread (what a serving process does per request).
3. The first candidate that meets the target within ``latency_bound_ms`` is chosen and nothing
   after it is built. When none does, the fastest candidate that meets the target wins; when none
   meets it, the highest recall.
4. Catalogs above ``choice_sample`` items (``Flat`` is then not a candidate, its cost grows with n):
   when the caller has the queries' exact top k over every vector (export does), the first
   candidate is built and tuned on every vector and kept when it meets the target within the bound.
   Otherwise the candidates are tried on a random sample of that many vectors (bounding export's
   added time): the sample picks the candidate, the full catalog is then built with the same rule
   for ``nlist`` (or the first candidate's full build reused) and its parameter tuned again by export.

The returned record (``index_choice`` in the bundle manifest) lists every candidate tried with its
parameter, recall, latency and build seconds, and the chosen factory.

Example:
    >>> index, choice = choose_index(vectors, queries, IndexConfig())      # doctest: +SKIP
    >>> choice["chosen"], [c["factory"] for c in choice["candidates"]]      # doctest: +SKIP
    ('IVF1024,Flat', ['IVF1024,Flat'])
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import faiss
import numpy as np

from recfuse.config import IndexConfig
from recfuse.index.build import build_index, measure_recall
from recfuse.index.factory import auto_factory, faiss_metric
from recfuse.index.item_index import ItemIndex
from recfuse.index.served import served_truth, tune_search
from recfuse.types import FloatArray

logger = logging.getLogger(__name__)

#: single-query searches timed per candidate (the median is its latency)
LATENCY_QUERIES = 300
#: smallest catalog an IVF candidate is tried on (k-means needs ~39 vectors per list)
IVF_MIN_ITEMS = 10_000


def _pow2(x: float) -> int:
    return int(2 ** round(math.log2(max(x, 1.0))))


def candidate_factories(n: int, dim: int, exact_max_items: int) -> list[str]:
    """The candidates for ``n`` vectors of width ``dim``, cheapest to build first (see the module)."""
    size_pick = auto_factory(n, dim, exact_max_items)
    out = [size_pick] if size_pick == "Flat" else []
    if n >= IVF_MIN_ITEMS:
        small, big = _pow2(4 * math.sqrt(n)), _pow2(16 * math.sqrt(n))
        # IVF{4√n},Flat builds in a third to a half of HNSW32's time (k-means on a sample, one pass)
        out += [f"IVF{small},Flat", size_pick]
        # one 4-bit code per dimension (d/2 bytes a vector): coarser codes (2 dims a code) lost a third
        # of the recall at 16-d that the refinement could not win back
        out += [f"IVF{small},PQ{dim}x4fs,RFlat", f"IVF{big},Flat"]
    out += [size_pick, "HNSW48", "Flat"]
    return list(dict.fromkeys(out))  # the size rule's pick may be Flat already


def batch1_latency_ms(index: ItemIndex, queries: FloatArray, k: int = 10, n: int = LATENCY_QUERIES) -> float:
    """Median milliseconds of one single-query ``index.search`` over up to ``n`` of ``queries``, one
    faiss thread (restored afterwards)."""
    q = np.ascontiguousarray(queries[:n], dtype=np.float32)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for row in q[: min(10, len(q))]:  # warm caches
            index.search(row[None, :], k)
        times = []
        for i in range(len(q)):
            start = time.perf_counter()
            index.search(q[i : i + 1], k)
            times.append(time.perf_counter() - start)
    finally:
        faiss.omp_set_num_threads(threads)
    return float(np.median(times) * 1e3) if times else float("nan")


def try_candidate(
    factory: str,
    vectors: FloatArray,
    queries: FloatArray,
    cfg: IndexConfig,
    k: int = 10,
    exact: np.ndarray | None = None,
) -> tuple[ItemIndex, dict[str, Any]]:
    """Build ``factory`` over ``vectors`` (ids ``0..n-1``), tune it to ``cfg.target_recall`` on
    ``queries`` and time it; returns the tuned index and its row of the trial table (``exact``: the
    exact top-k rows of ``queries``, shared by the candidates; computed when None)."""
    trial_cfg = dataclasses.replace(cfg, factory=factory, ef_search=None, nprobe=None, recall_queries=0)
    start = time.perf_counter()
    index = build_index(vectors, np.arange(len(vectors), dtype=np.int64), trial_cfg)
    build_s = time.perf_counter() - start
    tuned = tune_search(index, vectors, queries, cfg.target_recall, k=k, exact=exact)
    tune_s = time.perf_counter() - start - build_s
    row = {
        "factory": factory,
        "param": tuned.param,
        "value": tuned.value,
        "recall": round(tuned.recall, 4),
        "met": tuned.met,
        "latency_ms": round(batch1_latency_ms(index, queries, k), 4),
        "build_s": round(build_s, 2),
        "tune_s": round(tune_s, 2),
    }
    logger.info("index candidate %s: %s", factory, row)
    return index, row


def choose_index(
    vectors: FloatArray,
    queries: FloatArray,
    cfg: IndexConfig,
    *,
    k: int = 10,
    candidates: list[str] | None = None,
    exact: np.ndarray | None = None,
) -> tuple[ItemIndex, dict[str, Any]]:
    """Pick and build the index for ``vectors [n, d]`` (ids ``0..n-1``) by the module's rule.

    Args:
        vectors: the vectors the index ranks (``BundleContents.ranked_vectors``).
        queries: ``[m, d]`` query vectors like the served ones (``m >= 1``).
        cfg: the index config (``target_recall``, ``latency_bound_ms``, ``choice_sample``, build settings).
        k: the recall cut-off.
        candidates: factory strings to try instead of :func:`candidate_factories` (for a sampled
            catalog they are used as given on the sample and on the full catalog).
        exact: ``[m, k]`` rows of each query's exact top ``k`` over all of ``vectors``, when the
            caller has them. A sampled catalog then first tries its first candidate on every vector
            and keeps it, with no sample trial, when it meets the target within the bound (rule 4).

    Returns:
        ``(index, choice)``: the chosen index over all of ``vectors`` (its parameter tuned when it was
        tried on the full catalog, at :class:`IndexConfig`'s defaults when it was built after a
        sampled trial) and the trial record.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    n, dim = x.shape
    sampled = n > cfg.choice_sample
    if sampled:
        rng = np.random.default_rng(cfg.seed)
        trial_x = x[np.sort(rng.choice(n, cfg.choice_sample, replace=False))]
    else:
        trial_x = x
    names = candidates or candidate_factories(len(trial_x), dim, cfg.exact_max_items)
    full_names = candidates or candidate_factories(n, dim, cfg.exact_max_items)
    if sampled and not candidates:  # exact search's cost grows with n: a sample's latency says nothing
        keep = [i for i, name in enumerate(full_names) if name != "Flat"]
        names, full_names = [names[i] for i in keep], [full_names[i] for i in keep]
    start = time.perf_counter()
    first: tuple[ItemIndex, dict[str, Any]] | None = None
    if sampled and not candidates and exact is not None and full_names:
        first = try_candidate(full_names[0], x, q, cfg, k, exact)
        first[1]["vectors"] = n
        if _within(first[1], cfg.latency_bound_ms):
            return _keep_tuned(first[0], cfg, full_names[0]), _record(cfg, k, n, n, q, [first[1]], full_names[0], start)
    rows: list[dict[str, Any]] = []
    best: tuple[int, ItemIndex | None] = (-1, None)
    trial_exact = None if sampled else exact
    for pos, name in enumerate(names):
        if trial_exact is None and len(trial_x):
            _, trial_exact = faiss.knn(q, trial_x, min(k, len(trial_x)), metric=faiss_metric(cfg.metric))
        index, row = try_candidate(name, trial_x, q, cfg, k, trial_exact)
        row["vectors"] = len(trial_x)
        rows.append(row)
        if pick(rows, cfg.latency_bound_ms) == pos:
            best = (pos, index)
        del index
        if _within(row, cfg.latency_bound_ms):
            break
    pos, chosen = best
    assert chosen is not None  # at least one candidate ran
    if sampled and pos == 0 and first is not None:  # the sample agrees: keep the one built on every vector
        chosen = _keep_tuned(first[0], cfg, full_names[0])
    elif sampled:
        chosen = build_index(x, np.arange(n, dtype=np.int64), dataclasses.replace(cfg, factory=full_names[pos]))
    else:  # the trial's config, with the caller's settings back and the tuned parameter kept
        chosen = _keep_tuned(chosen, cfg, full_names[pos])
        if cfg.recall_queries > 0:
            chosen.recall = measure_recall(chosen, x, np.arange(n), cfg.recall_queries, k=k, seed=cfg.seed)
    tried = ([first[1]] if first is not None else []) + rows
    return chosen, _record(cfg, k, len(trial_x), n, q, tried, full_names[pos], start)


def _keep_tuned(index: ItemIndex, cfg: IndexConfig, factory: str) -> ItemIndex:
    """``index`` with the caller's settings back in its config and the tuned parameter kept."""
    tuned = index.config
    index.config = dataclasses.replace(cfg, factory=factory, ef_search=tuned.ef_search, nprobe=tuned.nprobe)
    return index


def _record(
    cfg: IndexConfig, k: int, tried_n: int, n: int, q: np.ndarray, rows: list[dict[str, Any]], chosen: str, start: float
) -> dict[str, Any]:
    """The trial record (the manifest's ``index_choice``); each row's ``vectors`` says what it was tried on."""
    choice = {
        "rule": "the first candidate meeting target_recall within latency_bound_ms, else the fastest "
        "meeting it, else the highest recall",
        "target_recall": cfg.target_recall,
        "k": k,
        "latency_bound_ms": cfg.latency_bound_ms,
        "tried_on": f"sample of {tried_n} of {n} vectors" if tried_n < n else f"all {n} vectors",
        "n_queries": len(q),
        "candidates": rows,
        "chosen": chosen,
        "seconds": round(time.perf_counter() - start, 2),
    }
    logger.info("index choice: %s of %d candidate(s) in %.1fs", chosen, len(rows), choice["seconds"])
    return choice


def auto_index(
    vectors: FloatArray, queries: FloatArray | None, cfg: IndexConfig
) -> tuple[ItemIndex | None, IndexConfig]:
    """Export's use of the rule: with ``index.factory = "auto"``, a recall target and query vectors,
    the chosen index (its :attr:`ItemIndex.choice` set) and ``cfg`` naming the chosen factory with its
    parameter unset, so that the bundle writer tunes it (again, on the full catalog after a sampled
    trial) and add-items tunes it as the catalog grows; otherwise ``(None, cfg)``."""
    if cfg.factory.strip() != "auto" or cfg.target_recall <= 0 or queries is None or len(queries) == 0:
        return None, cfg
    # one exact pass over every vector for the served queries and the item rows of ann_recall: the
    # choice uses it, and the bundle writer tunes and measures both recalls with it (at the served setting)
    truth = served_truth(cfg.metric, vectors, queries, cfg.recall_queries, cfg.seed, 10)
    index, choice = choose_index(vectors, queries, dataclasses.replace(cfg, recall_queries=0), exact=truth.exact)
    index.config = dataclasses.replace(index.config, recall_queries=cfg.recall_queries)
    index.choice, index.truth = choice, truth
    return index, dataclasses.replace(cfg, factory=choice["chosen"])


def pick(rows: list[dict[str, Any]], latency_bound_ms: float) -> int:
    """The position of the chosen row of a trial table (rule 3 of the module docstring)."""
    for pos, row in enumerate(rows):
        if _within(row, latency_bound_ms):
            return pos
    best = 0
    for pos, row in enumerate(rows):
        if _better(row, rows[best]):
            best = pos
    return best


def _within(row: dict[str, Any], latency_bound_ms: float) -> bool:
    return bool(row["met"] and row["latency_ms"] <= latency_bound_ms)


def _better(row: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Meeting the target beats missing it; among those meeting it the faster wins, else the higher recall."""
    if best is None:
        return True
    if row["met"] != best["met"]:
        return bool(row["met"])
    if row["met"]:
        return bool(row["latency_ms"] < best["latency_ms"])
    return bool(row["recall"] > best["recall"])
