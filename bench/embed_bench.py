"""Embedding-job benchmark: local engine items/s vs a bare loop calling the same encoder on the same batches.

Two encoders: the deterministic numpy encoder (``HashProjectionEncoder``, measures the job's own
overhead: reading, checks, Parquet shards, fsync) and the real candidate tower of a trained model
(``--model DIR``, or a tiny model trained here on synthetic data unless ``--no-model``).
Goal: job / bare >= 0.8. The bare loop reads the same record batches and calls ``encode`` but
writes nothing.

Usage:
    python bench/embed_bench.py [--rows 200000] [--model-rows 3000] [--model DIR] [--no-model]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from recfuse.embeddings import HashProjectionEncoder, run_embedding_job  # noqa: E402

BATCH = 512


def numpy_catalog(path: Path, rows: int, width: int = 64) -> Path:
    rng = np.random.default_rng(0)
    flat = pa.array(rng.standard_normal(rows * width).astype(np.float32))
    table = pa.table(
        {
            "item_id": [f"i{i}" for i in range(rows)],
            "title": [f"t{i % 97}" for i in range(rows)],
            "vec": pa.FixedSizeListArray.from_arrays(flat, width),
        }
    )
    pq.write_table(table, path)
    return path


def bare_loop(catalog: Path, factory, batch_size: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    enc = factory()
    n = 0
    for batch in pq.ParquetFile(catalog).iter_batches(batch_size=batch_size):
        n += len(enc.encode(batch).item_ids)
    return n / (time.perf_counter() - start)


def job(catalog: Path, out: Path, factory, batch_size: int) -> float:  # type: ignore[no-untyped-def]
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()  # the whole call: shards, rejects, manifest with sha256s
    report = run_embedding_job(catalog, out, factory, batch_size=batch_size, batches_per_shard=16)
    return report.rows / (time.perf_counter() - start)


def compare(name: str, catalog: Path, out: Path, factory, rows: int, batch_size: int) -> None:  # type: ignore[no-untyped-def]
    bare = [bare_loop(catalog, factory, batch_size) for _ in range(2)]
    ours = [job(catalog, out, factory, batch_size) for _ in range(2)]
    b, o = max(bare), max(ours)
    print(f"{name:<34} {rows:>8} {batch_size:>6} {b:>12,.0f} {o:>12,.0f} {o / b:>7.2f}", flush=True)


def train_tiny(root: Path) -> Path:
    from recfuse.cli.main import main
    from recfuse.data.synthetic import generate

    generate(root, n_items=3000, n_users=400, seed=1)
    cfg = root / "cfg.toml"
    cfg.write_text(
        f'[data]\nitems = "{root}/items.parquet"\ninteractions = "{root}/interactions.parquet"\n'
        "[model]\ndim = 32\n[train]\nepochs = 1\nbatch_size = 256\n"
    )
    main(["train", "--config", str(cfg), "--out", str(root / "model"), "--no-progress"])
    return root / "model"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--model", default="", help="trained model dir (default: train a tiny one on synthetic data)")
    ap.add_argument("--no-model", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="embed_bench_"))
    print(f"{'encoder':<34} {'rows':>8} {'batch':>6} {'bare items/s':>12} {'job items/s':>12} {'ratio':>7}")
    cat = numpy_catalog(tmp / "items.parquet", args.rows)
    compare("numpy HashProjection (64->32)", cat, tmp / "out", partial(HashProjectionEncoder, 32, "vec", 64), args.rows,
            BATCH)  # fmt: skip
    if not args.no_model:
        from recfuse.embeddings.model_encoder import ModelEncoder

        model = Path(args.model) if args.model else train_tiny(tmp / "tiny")
        data = model.parent if not args.model else Path(args.model).parent
        items = data / "items.parquet"
        rows = pq.read_metadata(items).num_rows
        compare("candidate tower (TrainedModel)", items, tmp / "out_model", partial(ModelEncoder, model, data), rows,
                BATCH)  # fmt: skip
    else:
        print("(real candidate tower skipped: --no-model)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
