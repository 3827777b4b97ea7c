"""Streamed training input (``recfuse prepare`` + :mod:`recfuse.training.stream`) vs the in-memory path.

Generates synthetic interactions into Parquet files chunk by chunk (never all in memory): a large set
of ``--rows`` and a set of ``--fits-rows`` that the in-memory path can hold, both with about
``--per-user`` interactions per user and Zipf-like item popularity. Then, each stage in its own
subprocess (peak RSS: that child's own ``getrusage`` maximum):

- ``prepare``: ``prepare_interactions`` of the data into user-sorted shards;
- ``stream``: user vocabulary from the prepared folder, then two epochs of
  :func:`make_stream_dataset` batches read through ``tf.data`` (examples built shard by shard);
- ``memory``: read the Parquet into pandas, ``build_examples``, then two epochs of ``make_dataset``.

Examples/s is given for the first epoch including setup (reading, vocabularies, building examples:
what a one-epoch run pays) and for the second epoch alone (what every later epoch of a training run
pays: the in-memory path reuses its arrays, the streamed one reads its int32 files back). These
are input-pipeline rates, with no model step. The streamed stage's first epoch includes writing the
examples as int32 files (``recfuse.training.stream.materialise``), what ``train()`` does before ``fit``.

First (``--train-users``, 0 skips it) the training comparison: ``train()`` on a synthetic catalog
(``recfuse.data.synthetic``, text modality) for ``--epochs`` epochs, from memory and with
``prepared=`` (the training split prepared into shards), each in its own subprocess: training
examples/s (``TrainResult.examples_per_second``, fit time only, model steps included), validation
Recall@10 and peak RSS.

Or (``--command``) the real commands at each size, each in its own subprocess (peak RSS of that child,
``os.wait4``): ``recfuse prepare --config`` (split while streaming, shards) on generated Parquet files
plus a catalog of ``--items`` ids, then ``recfuse train --prepared`` for one epoch of an ids-only
model (dim 16, batch ``--batch``), which loads only the catalog (the generated files are deleted
before it starts). Examples/s: prepare's input rows per second of wall time; train's fit
throughput as the command prints it (model steps included, setup excluded).

Usage:
    python bench/train_stream.py --command 2000000,5000000,20000000 --per-user 100 --items 20000 --batch 4096
    python bench/train_stream.py --quick   # the training comparison only (120k interactions, 2 rounds), about 3 minutes
    python bench/train_stream.py --rows 20000000 --fits-rows 2000000 [--work /tmp/recfuse-stream-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def generate(out: Path, rows: int, per_user: int, items: int, seed: int, chunk: int = 1_000_000) -> None:
    """``rows`` interactions in files of ``chunk`` rows (int64 ids; users ~ rows / per_user)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    users = max(1, rows // per_user)
    for k, start in enumerate(range(0, rows, chunk)):
        n = min(chunk, rows - start)
        item = np.minimum((items * rng.random(n) ** 3).astype(np.int64), items - 1)  # popular head, long tail
        table = pa.table({
            "user_id": rng.integers(0, users, n, dtype=np.int64),
            "item_id": item,
            "timestamp": rng.integers(1_600_000_000, 1_700_000_000, n, dtype=np.int64),
        })  # fmt: skip
        pq.write_table(table, out / f"part-{k:05d}.parquet")


def _item_vocab(items: int) -> Any:
    from recfuse.data.vocab import IdVocab

    return IdVocab.build([str(i) for i in range(items)], num_oov=0)


def _epochs(ds: Any, t0: float) -> dict[str, float]:
    times, counts = [], []
    for _ in range(2):
        n = 0
        for batch in ds:
            n += int(batch["item_idx"].shape[0])
        counts.append(n)
        times.append(time.perf_counter())
    return {"examples": counts[0], "first_s": times[0] - t0, "second_s": times[1] - times[0]}


def train_stage(args: argparse.Namespace) -> dict[str, Any]:
    """``train()`` for ``--epochs`` on the synthetic catalog in ``--data``: from memory or streamed."""
    import recfuse  # noqa: F401  (Keras 2 before TensorFlow)
    from recfuse.config import RecfuseConfig
    from recfuse.data.splits import split_interactions
    from recfuse.data.validate import load_dataset
    from recfuse.training.trainer import train

    root = Path(args.data)
    cfg = RecfuseConfig.from_dict({
        "data": {"items": str(root / "items.parquet"), "interactions": str(root / "interactions.parquet"),
                 "max_history": args.history},
        "modalities": [{"name": "text", "kind": "text", "columns": ["title"], "vocab_size": 2000, "max_tokens": 16,
                        "embedding_dim": 32}],
        "model": {"dim": 64, "fusion": "concat", "query_hidden": [64], "fusion_hidden": [64]},
        "train": {"epochs": args.epochs, "batch_size": args.batch, "seed": 3, "early_stopping_patience": 0},
    })  # fmt: skip
    ds = load_dataset(cfg.data, cfg.modalities)
    split = split_interactions(ds.interactions, "random", 42)
    prepared = args.prepared if args.stage == "train-stream" else None
    shutil.rmtree(root / args.stage, ignore_errors=True)  # a fresh run each round, not a resumed one
    r = train(cfg, ds, split, root / args.stage, progress=False, prepared=prepared)
    return {"examples": r.examples, "eps": r.examples_per_second, "recall": r.best_metric, "seconds": r.seconds}


def stage(args: argparse.Namespace) -> dict[str, Any]:
    if args.stage.startswith("train-"):
        return train_stage(args)
    t0 = time.perf_counter()
    if args.stage == "prepare":
        from recfuse.data.prepare import prepare_interactions

        m = prepare_interactions(args.data, args.prepared, rows_per_shard=args.rows_per_shard)
        return {"rows": m["rows"], "shards": len(m["shards"]), "seconds": time.perf_counter() - t0}
    import importlib

    import recfuse  # noqa: F401  (Keras 2 before TensorFlow)
    from recfuse.data.vocab import IdVocab

    importlib.import_module("tensorflow")  # its import (~5 s) is not the input pipeline's time

    t0 = time.perf_counter()

    items = _item_vocab(args.items)
    if args.stage == "stream":
        from recfuse.training.stream import StreamedExamples, make_stream_dataset, prepared_user_ids

        users = IdVocab.build(prepared_user_ids(args.prepared), num_oov=1)
        src = StreamedExamples(args.prepared, items, users, args.history, verify=False)
        ds = make_stream_dataset(
            src,
            users,
            args.batch,
            seed=1,
            cache_dir=Path(args.prepared).parent / "stream-cache",
        )
        return _epochs(ds, t0)
    import pandas as pd

    from recfuse.training.examples import build_examples
    from recfuse.training.pipeline import make_dataset

    df = pd.read_parquet(args.data)
    users = IdVocab.build(sorted(set(map(str, df["user_id"]))), num_oov=1)
    ex = build_examples(df, items, users, args.history)
    del df
    return _epochs(make_dataset(ex, users, args.batch, seed=1), t0)


def run_stage(name: str, data: Path, prepared: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--stage", name, "--data", str(data), "--prepared", str(prepared),
           "--items", str(args.items), "--history", str(args.history), "--batch", str(args.batch),
           "--rows-per-shard", str(args.rows_per_shard),
           "--epochs", str(args.epochs)]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OPENBLAS_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, cwd=REPO, env=env, text=True, check=False)
    if run.returncode:
        sys.exit(f"stage {name} failed:\n{run.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    result["rss_mb"] = result.pop("rss_kb") / 1024  # the child's own getrusage peak (Linux: KiB)
    return result


def train_table(root: Path, args: argparse.Namespace) -> None:
    """Training examples/s (model steps included) from memory vs streamed, same data, config and seed."""
    import pandas as pd

    from recfuse.data.prepare import prepare_interactions
    from recfuse.data.splits import split_interactions
    from recfuse.data.synthetic import generate

    generate(root, n_items=1500, n_users=args.train_users, seed=7)
    split = split_interactions(pd.read_parquet(root / "interactions.parquet"), "random", 42)
    split.train.to_parquet(root / "train.parquet")
    prepare_interactions(root / "train.parquet", root / "prepared", rows_per_shard=args.rows_per_shard)
    # ABBA order over --repeats repeats, so a load that drifts on a shared machine weighs on both paths alike
    names = ("train-memory", "train-stream")
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for k in range(args.repeats):
        for name in names if k % 2 == 0 else names[::-1]:
            runs[name].append(run_stage(name, root, root / "prepared", args))
            print(f"{name} round {k + 1}: {runs[name][-1]['eps']:,.0f} examples/s", flush=True)
    res = {n: {**r[0], "eps": float(np.median([x["eps"] for x in r])),
               "rss_mb": max(x["rss_mb"] for x in r)} for n, r in runs.items()}  # fmt: skip
    base = res["train-memory"]["eps"]
    print(f"\n| training ({len(split.train):,} train interactions, {args.epochs} epochs, batch {args.batch}, "
          f"median of {args.repeats}) | examples/s | ratio vs memory | val Recall@10 | peak RSS MB |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, r in res.items():
        print(
            f"| {name} | {r['eps']:,.0f} | {r['eps'] / base:.2f} | {r['recall']:.4f} | {r['rss_mb']:.0f} |", flush=True
        )


# ---------------------------------------------------------------------------------------------------
# --command: the real commands, `recfuse prepare --config` then `recfuse train --prepared`, at each size

COMMAND_CONFIG = """\
# ids only, small dims, a large batch: the point is memory and throughput of the streamed path
modalities = []

[data]
items = "{items}"
interactions = "{interactions}"
split = "random"
max_history = {history}

[model]
dim = 16
query_hidden = [32]
fusion_hidden = [32]

[train]
epochs = 1
batch_size = {batch}
seed = 3
early_stopping_patience = 0
"""


def _catalog(path: Path, items: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [str(i) for i in range(items)]
    pq.write_table(pa.table({"item_id": ids, "title": [f"item {i}" for i in ids]}), path)


def run_command(argv: list[str], log: Path) -> dict[str, Any]:
    """``recfuse ARGV`` in a child process: wall seconds and that child's own peak RSS (``wait4``)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OPENBLAS_NUM_THREADS": "1"}
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen([sys.executable, "-m", "recfuse", *argv], stdout=out, stderr=subprocess.STDOUT,
                                cwd=REPO, env=env)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"`recfuse {' '.join(argv)}` failed ({proc.returncode}), see {log}:\n{log.read_text()[-3000:]}")
    load = f"{load0:.1f}-{os.getloadavg()[0]:.1f}"  # 1-minute load average at the start and at the end
    return {"seconds": seconds, "rss_mb": usage.ru_maxrss / 1024, "load": load, "log": log.read_text()}


def command_table(root: Path, sizes: list[int], args: argparse.Namespace) -> None:
    """Peak RSS, examples/s and wall time of the real prepare and train commands at each size."""
    import re

    rows = []
    for n in sizes:
        work = root / f"n{n}"
        shutil.rmtree(work, ignore_errors=True)
        t = time.perf_counter()
        generate(work / "raw", n, args.per_user, args.items, seed=7)
        _catalog(work / "items.parquet", args.items)
        cfg = work / "cfg.toml"
        cfg.write_text(COMMAND_CONFIG.format(items=work / "items.parquet", interactions=work / "raw",
                                             history=args.history, batch=args.batch), encoding="utf-8")  # fmt: skip
        print(f"{n:,} interactions generated in {time.perf_counter() - t:.0f} s", flush=True)
        prep = run_command(["prepare", "--config", str(cfg), "--out", str(work / "prepared"),
                            "--rows-per-shard", str(args.rows_per_shard)], work / "prepare.log")  # fmt: skip
        m = json.loads((work / "prepared" / "manifest.json").read_text())
        prep["eps"] = m["input_rows"] / prep["seconds"]
        print(f"  prepare: {prep['seconds']:.0f} s, peak RSS {prep['rss_mb']:.0f} MB, load {prep['load']}",
              flush=True)  # fmt: skip
        shutil.rmtree(work / "raw")  # the train command must not need it
        train = run_command(["train", "--config", str(cfg), "--out", str(work / "model"), "--prepared",
                             str(work / "prepared"), "--no-progress"], work / "train.log")  # fmt: skip
        found = re.search(r"throughput: ([0-9.]+) examples/s", train["log"])
        recall = re.search(r"val Recall@10: ([0-9.]+)", train["log"])
        train["eps"] = float(found.group(1)) if found else float("nan")
        train["recall"] = float(recall.group(1)) if recall else float("nan")
        print(f"  train: {train['seconds']:.0f} s, {train['eps']:,.0f} examples/s (fit), peak RSS "
              f"{train['rss_mb']:.0f} MB, load {train['load']}, val Recall@10 {train['recall']:.4f}",
              flush=True)  # fmt: skip
        rows.append((n, m, prep, train))
        shutil.rmtree(work, ignore_errors=True)
    print("\n| interactions | stage | peak RSS MB | examples/s | wall s | load (1-min average, start-end) |")
    print("|---|---|---|---|---|---|")
    for n, m, prep, train in rows:
        split = m["split"]
        print(f"| {n:,} | prepare ({split['train']:,} train / {split['val']:,} val / {split['test']:,} test, "
              f"{len(m['shards'])} shards) | {prep['rss_mb']:.0f} | {prep['eps']:,.0f} | {prep['seconds']:.0f} | "
              f"{prep['load']} |")  # fmt: skip
        print(f"| {n:,} | train, 1 epoch (val Recall@10 {train['recall']:.4f}) | {train['rss_mb']:.0f} | "
              f"{train['eps']:,.0f} | {train['seconds']:.0f} | {train['load']} |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20_000_000)
    p.add_argument("--fits-rows", type=int, default=2_000_000)
    p.add_argument("--per-user", type=int, default=20)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--history", type=int, default=20)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--rows-per-shard", type=int, default=1_000_000)
    p.add_argument("--work", default="/tmp/recfuse-stream-bench")
    p.add_argument("--train-users", type=int, default=2000, help="users of the training comparison (0: skip it)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of the training comparison")
    p.add_argument("--skip-input", action="store_true", help="only the training comparison")
    p.add_argument("--repeats", type=int, default=1, help="repeats of the training comparison (median, ABBA order)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="only the training comparison at 5000 users (120k training interactions), 2 epochs, 2 rounds: "
        "about 3 minutes",
    )
    p.add_argument(
        "--command",
        default="",
        metavar="N[,N...]",
        help="run the real `recfuse prepare --config` and `recfuse train --prepared` (ids-only model, one epoch) at "
        "each size (e.g. 2000000,5000000,20000000) and print their peak RSS, examples/s and wall time; nothing else",
    )
    p.add_argument("--stage", default="", help=argparse.SUPPRESS)
    p.add_argument("--data", default="", help=argparse.SUPPRESS)
    p.add_argument("--prepared", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.train_users, args.epochs, args.repeats, args.skip_input = 5000, 2, 2, True
    if args.stage:
        import resource

        result = stage(args)
        result["rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(result))
        return
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    if args.command:
        command_table(work / "command", [int(x) for x in args.command.split(",")], args)
        return
    if args.train_users:
        train_table(work / "train", args)
    if args.skip_input:
        return
    rows: list[tuple[str, dict[str, Any]]] = []
    for label, n in (("fits", args.fits_rows), ("large", args.rows)):
        t = time.perf_counter()
        generate(work / label / "raw", n, args.per_user, args.items, seed=7)
        print(f"generated {n} rows ({label}) in {time.perf_counter() - t:.1f} s", flush=True)
        raw, prepared = work / label / "raw", work / label / "prepared"
        for name in ("prepare", "stream", "memory") if label == "fits" else ("prepare", "stream"):
            res = run_stage(name, raw, prepared, args)
            rows.append((f"{label} {n:,} {name}", res))
            print(f"{label} {name}: {json.dumps(res)}", flush=True)
        shutil.rmtree(work / label / "raw")
    mem = dict(rows)[f"fits {args.fits_rows:,} memory"]
    print("\n| run | examples | seconds (1st epoch incl. setup) | examples/s 1st | examples/s 2nd epoch | "
          "2nd-epoch ratio vs memory | peak RSS MB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for label, r in rows:
        if "examples" not in r:
            shards = f"{label} ({r['shards']} shards)"
            print(f"| {shards} | {r['rows']:,} rows | {r['seconds']:.1f} | | | | {r['rss_mb']:.0f} |")
            continue
        e1, e2 = r["examples"] / r["first_s"], r["examples"] / r["second_s"]
        ratio = e2 / (mem["examples"] / mem["second_s"])
        rates = f"{e1:,.0f} | {e2:,.0f} | {ratio:.2f}"
        print(f"| {label} | {r['examples']:,} | {r['first_s']:.1f} | {rates} | {r['rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
