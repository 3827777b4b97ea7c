"""Index from shards vs in memory: build time, peak RSS and Recall@10 against exact search.

Generates ``--items`` clustered unit vectors into ``--shards`` Parquet shards shaped like
``recfuse embed`` output (``item_id``, ``vector`` fixed_size_list<float32>[d], manifest.json),
one chunk at a time (never the whole matrix). Then, each build in its own subprocess so its peak
RSS is its own (``os.wait4`` of that child):

* ``memory``: read every shard into one ``[n, d]`` matrix, ``recfuse.index.build_index``;
* ``shards``: ``recfuse.index.sharded.build_index_from_shards`` on the directory.

Same factory, same seed, same ``IndexConfig`` (defaults: 100k training rows, recall measured on
200 item vectors). Builds alternate ``--repeat`` times; the table shows each kind's fastest time
and highest peak RSS. Each build writes its index; a last subprocess loads both, compares them byte
for byte and measures Recall@10 of ``--queries`` held-out query vectors against exact search (exact
top-10 computed shard by shard) at the same nprobe. Prints a table with the ratios shard ÷ memory.

Usage:
    python bench/index_shards.py [--items 2000000] [--shards 8] [--factory IVF1024,Flat] [--nprobe 8] [--repeat 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from recfuse.config import IndexConfig  # noqa: E402
from recfuse.index import ItemIndex, build_index  # noqa: E402
from recfuse.index.sharded import build_index_from_shards, read_shard_vectors, scan_shards  # noqa: E402

CHUNK = 100_000


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def centres(dim: int, n_clusters: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n_clusters, dim)).astype(np.float32)


def chunk_vectors(c: np.ndarray, n: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    return _unit(c[rng.integers(0, len(c), n)] + noise * rng.standard_normal((n, c.shape[1])).astype(np.float32))


def generate(out: Path, items: int, shards: int, dim: int, seed: int, noise: float) -> None:
    """Write ``shards`` part files of clustered vectors, ``CHUNK`` rows at a time, plus manifest.json."""
    c = centres(dim, max(10, items // 1000), seed)
    out.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("item_id", pa.string()), ("vector", pa.list_(pa.float32(), dim))])
    entries, row = [], 0
    for s in range(shards):
        rows = items // shards + (1 if s < items % shards else 0)
        path = out / f"part-{s:05d}.parquet"
        rng = np.random.default_rng([seed, s])
        with pq.ParquetWriter(path, schema, compression="zstd") as writer:
            for lo in range(0, rows, CHUNK):
                m = min(CHUNK, rows - lo)
                vec = pa.FixedSizeListArray.from_arrays(pa.array(chunk_vectors(c, m, rng, noise).reshape(-1)), dim)
                ids = pa.array([f"i{row + lo + j}" for j in range(m)], pa.string())
                writer.write_table(pa.table({"item_id": ids, "vector": vec}, schema=schema))
        row += rows
        entries.append({"name": path.name, "rows": rows, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
        print(f"  wrote {path.name} ({rows} rows)", file=sys.stderr)
    manifest = {"format": 1, "rows": items, "embedded": items, "rejects": 0, "dim": dim, "shards": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (out / "_SUCCESS").write_text("")


def _cfg(args: argparse.Namespace) -> IndexConfig:
    return IndexConfig(factory=args.factory, nprobe=args.nprobe, seed=args.seed, train_sample=args.sample)


def child_build(args: argparse.Namespace) -> None:
    """One build in this process; prints its seconds (total and per stage) as JSON."""
    shards, cfg = Path(args.work) / "shards", _cfg(args)
    t = time.perf_counter()
    if args.child == "memory":
        x = read_shard_vectors(scan_shards(shards))  # the matrix, filled shard by shard (no second copy)
        stages = {"read": time.perf_counter() - t}
        index = build_index(x, np.arange(len(x)), cfg)
        stages["build_index"] = time.perf_counter() - t - stages["read"]
        del x
    else:
        built = build_index_from_shards(shards, cfg)
        index, stages = built.index, built.seconds
    seconds = time.perf_counter() - t
    index.save(Path(args.work) / f"index-{args.child}.faiss")
    print(json.dumps({"seconds": seconds, "stages": stages, "recall_items": index.recall}))


def child_eval(args: argparse.Namespace) -> None:
    """Exact top-10 of held-out queries (shard by shard), then Recall@10 of both indexes."""
    work = Path(args.work)
    rng = np.random.default_rng([args.seed, 999])
    c = centres(args.dim, max(10, args.items // 1000), args.seed)
    queries = chunk_vectors(c, args.queries, rng, args.noise)
    scan = scan_shards(work / "shards")
    heap = faiss.ResultHeap(len(queries), 10, keep_max=True)
    start = 0
    for path in scan.shards:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK, columns=["vector"]):
            x = batch.column("vector").values.to_numpy().reshape(-1, args.dim)
            d, i = faiss.knn(queries, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(d, i + start)
            start += len(x)
    heap.finalize()
    out = {}
    for mode in ("memory", "shards"):
        path = work / f"index-{mode}.faiss"
        index = ItemIndex.load(path, _cfg(args))
        ann = index.search(queries, 10).ids
        hits = sum(len(np.intersect1d(a, e)) for a, e in zip(ann, heap.I))
        out[mode] = {"recall": hits / (10 * len(queries)), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    print(json.dumps(out))


def run_child(args: argparse.Namespace, mode: str) -> tuple[dict, float]:
    """Run ``--child mode`` in a subprocess; returns its JSON output and its own peak RSS in MiB."""
    argv = [sys.executable, __file__, "--child", mode, *sys.argv[1:]]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    text = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} failed with exit code {proc.returncode}")
    return json.loads(text), usage.ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=2_000_000)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--factory", default="IVF1024,Flat")
    p.add_argument("--nprobe", type=int, default=8)
    p.add_argument("--noise", type=float, default=1.0, help="per-dimension noise around a cluster centre")
    p.add_argument("--sample", type=int, default=100_000, help="IndexConfig.train_sample")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=2, help="builds of each kind (fastest time, highest peak RSS)")
    p.add_argument("--work", default=None, help="default: runs/bench/index_shards/<items>x<dim>")
    p.add_argument("--child", choices=("memory", "shards", "eval"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.work = args.work or f"runs/bench/index_shards/{args.items}x{args.dim}-{args.shards}-noise{args.noise}"
    if args.child == "eval":
        return child_eval(args)
    if args.child:
        return child_build(args)
    shards = Path(args.work) / "shards"
    if not (shards / "_SUCCESS").exists():
        t = time.perf_counter()
        generate(shards, args.items, args.shards, args.dim, args.seed, args.noise)
        print(f"generated {args.items} x {args.dim} in {args.shards} shards in {time.perf_counter() - t:.1f} s",
              file=sys.stderr)  # fmt: skip
    load = os.getloadavg()
    runs: dict[str, list[tuple[dict, float]]] = {"memory": [], "shards": []}
    for _ in range(args.repeat):  # alternating; the fastest run of each counts (a shared machine is noisy)
        for mode in runs:
            runs[mode].append(run_child(args, mode))
            print(f"  {mode}: {runs[mode][-1][0]['seconds']:.1f} s, peak RSS {runs[mode][-1][1]:.0f} MiB",
                  file=sys.stderr)  # fmt: skip
    rows = {m: (min(r, key=lambda o: o[0]["seconds"])[0], max(rss for _, rss in r)) for m, r in runs.items()}
    ev, _ = run_child(args, "eval")
    same = ev["memory"]["sha256"] == ev["shards"]["sha256"]
    print(f"\n{args.items:,} x {args.dim}-d clustered vectors (noise {args.noise}), {args.shards} shards, "
          f"{args.factory}, nprobe {args.nprobe}, train_sample {args.sample}, seed {args.seed}; {os.cpu_count()} "
          f"cores, load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"\n| build | seconds | peak RSS MiB | Recall@10 vs exact ({args.queries} held-out queries) |")
    print("|---|---:|---:|---:|")
    for mode, label in (("memory", "in memory (read all + build_index)"), ("shards", "from shards (streaming)")):
        print(f"| {label} | {rows[mode][0]['seconds']:.1f} | {rows[mode][1]:.0f} | {ev[mode]['recall']:.4f} |")
    t_ratio = rows["shards"][0]["seconds"] / rows["memory"][0]["seconds"]
    rss_ratio = rows["shards"][1] / rows["memory"][1]
    diff = ev["shards"]["recall"] - ev["memory"]["recall"]
    print(f"| ratio shard ÷ memory | {t_ratio:.2f} | {rss_ratio:.2f} | {diff:+.4f} (difference) |")
    for mode in ("memory", "shards"):
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in rows[mode][0]["stages"].items())
        print(f"\n{mode}: {stages}; recall@10 on 200 item vectors at build {rows[mode][0]['recall_items']:.4f}")
    print(f"\nindex files byte-identical: {same}")


if __name__ == "__main__":
    main()
