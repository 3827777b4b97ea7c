"""Served recall: what an ANN index gives the queries it serves, and what tuning efSearch to a target costs.

Over clustered unit vectors (as ``index_bench.py``), an HNSW32 index is built with recfuse's
``build_index``; its Recall@10 against exact search is measured two ways at each efSearch:

- with item vectors as queries (what ``ann_recall`` in a manifest reports), and
- with history-like queries: the normalised mean of 1–5 random items' vectors, as a pooled history
  or a user's query vector lies between items, not on one (what ``served_recall`` reports).

Then :func:`recfuse.index.served.tune_search` picks the cheapest efSearch reaching ``--target`` on
the history-like queries; its time is set beside the index build time measured in the same run
(export adds both). Batch-1 search latency (1 thread) is printed for the chosen efSearch and for
128 (``DEFAULT_EF_SEARCH``, what an index serves where nothing is tuned).

Last, what ``index.factory = "auto"`` chooses on the same vectors and history-like queries
(:func:`recfuse.index.choose.choose_index`, as export runs it): every candidate is tried (one row
each: tuned parameter, served recall, batch-1 latency, build and tuning seconds), the one that
export's default latency bound picks is marked, and the seconds export spends on the candidates up
to it are set beside the HNSW32 build + tuning above (what export with an explicit ``HNSW32``
spends). ``--no-auto`` skips it.

``--from-model DIR`` takes a trained model's ranked item vectors scaled up to ``--items`` and its own
query vectors instead (``bench/serve_load.py --from-model`` builds and caches them): vectors of
unequal norm. ``--mips`` then compares, at each nprobe / efSearch, an inner-product index with the
same index built as L2 over augmented vectors (``index.mips``, :mod:`recfuse.index.mips`):
IVF{4√n},Flat and HNSW32, served recall@10 and batch-1 p50.

Usage:
    python bench/served_recall.py [--items 100000] [--queries 2000] [--target 0.95] [--no-auto]
    python bench/served_recall.py --from-model runs/bench/sample-model --mips --no-auto
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from recfuse.config import DEFAULT_EF_SEARCH, IndexConfig  # noqa: E402
from recfuse.index import build_index  # noqa: E402
from recfuse.index.choose import choose_index, pick  # noqa: E402
from recfuse.index.factory import apply_search_params  # noqa: E402
from recfuse.index.served import EF_SEARCH_GRID, exact_topk, served_recall, tune_search  # noqa: E402

D = 64


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(10, n // 1000), D)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def history_queries(x: np.ndarray, m: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, m)
    q = np.stack([x[rng.integers(0, len(x), s)].mean(axis=0) for s in sizes]).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def p50_ms(index, queries: np.ndarray) -> float:
    faiss.omp_set_num_threads(1)
    out = []
    for i in range(min(500, len(queries))):
        t = time.perf_counter()
        index.search(queries[i : i + 1], 10)
        out.append(time.perf_counter() - t)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return float(np.median(out) * 1e3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--no-auto", action="store_true", help="skip the auto factory choice")
    p.add_argument("--from-model", type=Path, help="trained model directory: its vectors scaled up, its queries")
    p.add_argument("--mips", action="store_true", help="inner product vs augmented L2, IVF and HNSW")
    args = p.parse_args()
    if args.from_model is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from serve_load import model_source

        cache = Path(__file__).resolve().parent.parent / "runs" / "bench" / f"model-vectors-{args.from_model.name}"
        x, model_q = model_source(args.from_model, args.items, cache)
        model_q = np.ascontiguousarray(model_q[: args.queries], np.float32)
    else:
        x, model_q = clustered(args.items), None
    if args.mips:
        mips_rows(x, model_q if model_q is not None else history_queries(x, args.queries))
        return
    t0 = time.perf_counter()
    index = build_index(x, np.arange(len(x)), IndexConfig(factory="HNSW32", recall_queries=0))
    build_s = time.perf_counter() - t0
    items_q = x[np.random.default_rng(2).choice(len(x), args.queries, replace=False)]
    hist_q = history_queries(x, args.queries) if model_q is None else model_q
    exact_items = exact_topk(index, x, items_q, 10)
    exact_hist = exact_topk(index, x, hist_q, 10)
    print(f"HNSW32 over {args.items:,} clustered {D}-d vectors: built in {build_s:.1f} s; "
          f"{args.queries} queries each\n")  # fmt: skip
    print("| efSearch | Recall@10, item vectors as queries | Recall@10, history-like queries |")
    print("|---:|---:|---:|")
    for ef in EF_SEARCH_GRID[:9]:
        apply_search_params(index.faiss_index, ef, 1)
        r_items = served_recall(index, x, items_q, exact=exact_items)
        r_hist = served_recall(index, x, hist_q, exact=exact_hist)
        print(f"| {ef} | {r_items:.4f} | {r_hist:.4f} |")
    t1 = time.perf_counter()
    result = tune_search(index, x, hist_q, args.target)
    tune_s = time.perf_counter() - t1
    tuned_ms = p50_ms(index, hist_q)
    apply_search_params(index.faiss_index, DEFAULT_EF_SEARCH, 1)
    default_ms = p50_ms(index, hist_q)
    default_recall = served_recall(index, x, hist_q, exact=exact_hist)
    print(f"\ntuned to {args.target}: efSearch {result.value}, served recall {result.recall:.4f} "
          f"(met: {result.met}); tuning took {tune_s:.1f} s = {tune_s / build_s:.2f}x the build")  # fmt: skip
    print(f"batch-1 p50 (1 thread): {tuned_ms:.3f} ms at efSearch {result.value} vs {default_ms:.3f} ms at "
          f"{DEFAULT_EF_SEARCH} (served recall {default_recall:.4f}); ratio {tuned_ms / default_ms:.2f}")  # fmt: skip
    if not args.no_auto:
        auto_rows(x, hist_q, args.target, build_s + tune_s)


def mips_rows(x: np.ndarray, q: np.ndarray) -> None:
    """Served recall@10 and batch-1 p50 of each index on inner product and as augmented L2."""
    nlist = int(2 ** round(math.log2(4 * math.sqrt(len(x)))))
    norms = np.linalg.norm(x, axis=1)
    print(f"{len(x):,} vectors, norms {norms.min():.3f}-{norms.max():.3f}; {len(q)} queries\n")
    print("| index | parameter | inner product: recall@10 | p50 ms | augmented L2: recall@10 | p50 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    runs = ((f"IVF{nlist},Flat", (2, 4, 8, 16, 32, 64), "auto"), ("HNSW32", (64, 128, 256, 512), "on"))
    for factory, grid, on in runs:
        built = {mode: build_index(x, np.arange(len(x)), IndexConfig(factory=factory, mips=mode, recall_queries=0))
                 for mode in ("off", on)}  # fmt: skip
        exact = exact_topk(built["off"], x, q, 10)
        for value in grid:
            cells = []
            for index in built.values():
                apply_search_params(index.faiss_index, value, value)
                cells.append(f"{served_recall(index, x, q, exact=exact):.4f} | {p50_ms(index, q):.3f}")
            name = "nprobe" if factory.startswith("IVF") else "efSearch"
            print(f"| {factory} | {name} {value} | {cells[0]} | {cells[1]} |")


def auto_rows(x: np.ndarray, hist_q: np.ndarray, target: float, hnsw_s: float) -> None:
    """The ``auto`` factory choice on the same vectors and queries: every candidate tried (latency
    bound 0, so none stops the search), then which one the default bound picks and what export spends
    to get there (the candidates before it and itself: builds + tuning)."""
    bound = IndexConfig().latency_bound_ms
    _, choice = choose_index(x, hist_q, IndexConfig(target_recall=target, latency_bound_ms=0.0, recall_queries=0))
    rows = choice["candidates"]
    chosen = pick(rows, bound)
    print(f"\nfactory auto: every candidate (target {target}, tried on {choice['tried_on']}):\n")
    print("| factory | parameter | served recall@10 | met | batch-1 p50 ms (1 thread) | build s | tune s |")
    print("|---|---:|---:|:-:|---:|---:|---:|")
    for pos, row in enumerate(rows):
        param = f"{row['param']}={row['value']}" if row["param"] else "exact"
        mark = " **chosen**" if pos == chosen else ""
        print(f"| {row['factory']}{mark} | {param} | {row['recall']:.4f} | {'yes' if row['met'] else 'no'} | "
              f"{row['latency_ms']:.3f} | {row['build_s']:.1f} | {row['tune_s']:.1f} |")  # fmt: skip
    spent = sum(r["build_s"] + r["tune_s"] for r in rows[: chosen + 1])
    print(f"\nwith the default latency bound {bound} ms export tries {chosen + 1} candidate(s) and picks "
          f"{rows[chosen]['factory']}: {spent:.1f} s of builds + tuning = {spent / hnsw_s:.2f}x HNSW32's "
          f"build + tuning ({hnsw_s:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
