"""Full-ranking evaluation speed: 20k users x 10k items (64-d) by default, vs a bare baseline.

Measured in one process, same data, same block size (1024 users):

- ``baseline``: ``Q_block @ E.T`` + ``np.argpartition`` for the top K (no masking, no ordering, no metrics)
  — the least any full-ranking evaluation must do.
- ``ranked_topk``: :func:`recfuse.evaluation.fullrank.ranked_topk` (the shared ``masked_topk`` with each
  user's ~20 training items masked, sorted, ties by index).
- ``evaluate``: :func:`recfuse.evaluation.fullrank.evaluate_embeddings` — ranking plus every per-user
  metric at K in {10, 20, 50} for the all/warm/cold segments, novelty, coverage and Gini.
- ``compare``: :func:`recfuse.evaluation.compare.compare_runs` of 3 variants x 2 seeds on those users
  (paired bootstrap 2000 + permutation 5000 over all metrics).

Prints a table (median of ``--repeats`` runs; ratio = time / baseline time). No asserts.

Usage:
    python bench/eval_bench.py [--users 20000] [--items 10000] [--dim 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import recfuse  # noqa: E402,F401
from recfuse.evaluation.compare import compare_runs  # noqa: E402
from recfuse.evaluation.fullrank import evaluate_embeddings, ranked_topk  # noqa: E402

KS = (10, 20, 50)
BLOCK = 1024


def baseline(q: np.ndarray, e: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), BLOCK):
        scores = q[s : s + BLOCK] @ e.T
        out[s : s + BLOCK] = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return out


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    items = rng.normal(size=(args.items, args.dim)).astype(np.float32)
    queries = rng.normal(size=(args.users, args.dim)).astype(np.float32)
    users = [f"u{i}" for i in range(args.users)]
    train = [rng.choice(args.items, size=20, replace=False) for _ in range(args.users)]
    test = [rng.choice(args.items, size=5, replace=False) for _ in range(args.users)]
    cold = np.zeros(args.items, dtype=bool)
    cold[rng.choice(args.items, size=args.items // 10, replace=False)] = True
    counts = rng.zipf(1.5, size=args.items).clip(max=10_000)
    k = max(KS)

    rows = []
    t_base = _time(lambda: baseline(queries, items, k), args.repeats)
    rows.append(("baseline Q@E.T + argpartition", t_base))
    t_rank = _time(lambda: ranked_topk(queries, items, k, train, BLOCK), args.repeats)
    rows.append(("ranked_topk (masked_topk: ~20 seen items masked, sorted)", t_rank))
    result = None

    def full() -> None:
        nonlocal result
        result = evaluate_embeddings(queries, items, users, train, test, KS, cold, counts, BLOCK)

    rows.append(("evaluate_embeddings (all metrics, 3 segments)", _time(full, args.repeats)))

    print(f"full-ranking evaluation: {args.users} users x {args.items} items, dim {args.dim}, top-{k}, "
          f"block {BLOCK}, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
          f"median of {args.repeats}")  # fmt: skip
    print()
    print("| step | seconds | users/s | ratio vs baseline |")
    print("|---|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.2f} | {args.users / t:,.0f} | {t / t_base:.2f}x |")

    assert result is not None
    runs = {
        v: {s: evaluate_embeddings(queries + 0.1 * (v_i + s) * items[:1], items, users, train, test, KS, cold,
                                   counts, BLOCK) for s in (1, 2)}  # fmt: skip
        for v_i, v in enumerate(("control", "b", "c"))
    }
    t0 = time.perf_counter()
    analysis = compare_runs(runs, "control", "recall@10", n_boot=2000, n_perm=5000)
    t_cmp = time.perf_counter() - t0
    n_metrics = len(result.segment("all").per_user)
    print()
    print("| comparison | seconds |")
    print("|---|---|")
    print(f"| compare_runs: 3 variants x 2 seeds, {len(analysis.users)} segments x {n_metrics} per-user metrics, "
          f"{args.users} users, bootstrap 2000 + permutation 5000 | {t_cmp:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
