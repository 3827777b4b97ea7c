"""Index benchmark: build time, batch-1 search QPS/p50/p99 (1 thread) and Recall@10 vs exact.

For Flat, HNSW32 and IVF-PQ over clustered 64-d vectors, recfuse's ``build_index``/``ItemIndex.search``
side by side with bare faiss on the same vectors and parameters (overhead ratio; goal <= 1.10).
Indexes built by recfuse are cached under ``runs/bench/index/`` keyed by their parameters (HNSW at 1M
takes minutes to build); a cached row reports the build time recorded when it was built.

Usage:
    python bench/index_bench.py [--sizes 100000,1000000] [--quick] [--queries 1000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from recfuse.config import IndexConfig  # noqa: E402
from recfuse.index import ItemIndex, build_index, measure_recall  # noqa: E402

D = 64
CACHE = Path("runs/bench/index")


def clustered(n: int, d: int = D, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(10, n // 1000), d)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def factories(n: int) -> list[str]:
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    return ["Flat", f"IVF{nlist},PQ32x4", "HNSW32"]  # HNSW last: the slowest build at 1M


def latencies(search, queries: np.ndarray) -> np.ndarray:
    out = np.empty(len(queries))
    for i in range(len(queries)):
        t = time.perf_counter()
        search(queries[i : i + 1], 10)
        out[i] = time.perf_counter() - t
    return out * 1e3


def bare_build(x: np.ndarray, ids: np.ndarray, factory: str, cfg: IndexConfig) -> tuple[faiss.Index, float]:
    t = time.perf_counter()
    index = faiss.index_factory(D, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efConstruction = cfg.ef_construction
    if not index.is_trained:
        rng = np.random.default_rng(0)
        index.train(x[np.sort(rng.choice(len(x), min(len(x), cfg.train_sample), replace=False))])
    index.add_with_ids(x, ids)
    return index, time.perf_counter() - t


def run(n: int, n_queries: int, bare_builds: bool) -> list[dict[str, object]]:
    x = clustered(n)
    ids = np.arange(n, dtype=np.int64)
    queries = clustered(n_queries, seed=1)
    rows = []
    for factory in factories(n):
        cfg = IndexConfig(factory=factory, recall_queries=0, ef_search=64, nprobe=16, train_sample=50_000)
        key = f"n{n}_d{D}_{factory.replace(',', '_')}_efc{cfg.ef_construction}"
        path, meta_path = CACHE / f"{key}.faiss", CACHE / f"{key}.json"
        if path.is_file() and meta_path.is_file():
            index = ItemIndex.load(path, cfg)
            build_s = float(json.loads(meta_path.read_text())["build_s"])
        else:
            faiss.omp_set_num_threads(2)
            t = time.perf_counter()
            index = build_index(x, ids, cfg)
            build_s = time.perf_counter() - t
            index.save(path)
            meta_path.write_text(json.dumps({"build_s": build_s}))
        bare_s = float("nan")
        if bare_builds:
            faiss.omp_set_num_threads(2)
            _, bare_s = bare_build(x, ids, factory, cfg)
        faiss.omp_set_num_threads(1)
        recall = measure_recall(index, x, ids, 200, k=10, seed=0)
        raw = index.faiss_index  # same index object, same params: isolates recfuse's wrapper cost
        # interleave to share the machine's noise fairly
        ours, bare = [], []
        for rep in range(2):
            half = queries[rep::2]
            bare.append(latencies(raw.search, half))
            ours.append(latencies(index.search, half))
        o, b = np.concatenate(ours), np.concatenate(bare)
        rows.append(
            dict(n=n, factory=factory, build_s=build_s, bare_build_s=bare_s, recall=recall,
                 p50=np.median(o), p99=np.percentile(o, 99), qps=1e3 / o.mean(),
                 bare_p50=np.median(b), bare_p99=np.percentile(b, 99), bare_qps=1e3 / b.mean())
        )
        print_row(rows[-1])
    return rows


HEADER = (
    f"{'n':>8} {'factory':<16} {'build s':>8} {'bare s':>7} {'R@10':>5} {'p50 ms':>7} {'p99 ms':>7} "
    f"{'QPS':>7} {'bare p50':>8} {'bare QPS':>8} {'overhead':>8}"
)


def print_row(r: dict) -> None:
    print(
        f"{r['n']:>8} {r['factory']:<16} {r['build_s']:>8.1f} {r['bare_build_s']:>7.1f} {r['recall']:>5.3f} "
        f"{r['p50']:>7.3f} {r['p99']:>7.3f} {r['qps']:>7.0f} {r['bare_p50']:>8.3f} {r['bare_qps']:>8.0f} "
        f"{r['bare_qps'] / r['qps']:>8.3f}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--quick", action="store_true", help="20k items only")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--no-bare-build", action="store_true", help="skip the bare faiss build-time column")
    args = ap.parse_args()
    sizes = [20_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    CACHE.mkdir(parents=True, exist_ok=True)
    print("overhead = bare QPS / recfuse QPS (1.00 = none; goal <= 1.10); batch 1, 1 search thread; 64-d")
    print(HEADER)
    for n in sizes:
        run(n, args.queries, not args.no_bare_build)


if __name__ == "__main__":
    main()
