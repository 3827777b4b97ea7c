"""Training on several workers (MultiWorkerMirroredStrategy via TF_CONFIG) vs one process, same config.

Each run is ``recfuse train`` as a user starts it: once in one process, then ``--workers`` processes
on this machine, each with its own ``TF_CONFIG``, inside a private network namespace whose only
interface is loopback (TensorFlow's worker servers listen on every interface; ``unshare -rn`` keeps
them off the network). Every process's peak RSS comes from ``/usr/bin/time``. The one-process run is
the baseline: the table gives examples/s summed over workers and its ratio to the baseline, the
validation Recall@10 of each, and wall time (examples/s of several workers = workers × the slowest
worker's rate, since they step together). On one machine the workers share its cores, so the
ratio measures the cost of the strategy (gradient all-reduce each step, every worker validating),
not the speed-up of adding machines.

Usage:
    python bench/train_workers.py [--config data_samples/recfuse.toml] [--epochs 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _parse(log: str) -> dict[str, float]:
    out: dict[str, float] = {}
    if m := re.search(r"throughput: (\d+) examples/s", log):
        out["eps"] = float(m.group(1))
    if m := re.search(r"val Recall@10: ([0-9.]+)", log):
        out["recall"] = float(m.group(1))
    if m := re.search(r"^RSS_KB (\d+)$", log, re.M):
        out["rss_mb"] = int(m.group(1)) / 1024
    return out


def _cmd(config: str, out: Path, epochs: int) -> str:
    return (
        f"/usr/bin/time -f 'RSS_KB %M' {sys.executable} -m recfuse train --config {config} --out {out} "
        f"--epochs {epochs} --set train.early_stopping_patience=0 --no-progress"
    )


def one_process(config: str, work: Path, epochs: int) -> tuple[dict[str, float], float]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    t = time.perf_counter()
    run = subprocess.run(["bash", "-c", _cmd(config, work / "one", epochs)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1800)  # fmt: skip
    if run.returncode:
        sys.exit(f"one-process run failed:\n{run.stdout[-2000:]}{run.stderr[-3000:]}")
    return _parse(run.stdout + run.stderr), time.perf_counter() - t


def workers_run(config: str, work: Path, epochs: int, n: int) -> tuple[list[dict[str, float]], float]:
    addrs = [f"127.0.0.1:{23456 + i}" for i in range(n)]
    lines = ["ip link set lo up || exit 97"]
    for i in range(n):
        tf_config = json.dumps({"cluster": {"worker": addrs}, "task": {"type": "worker", "index": i}})
        lines.append(f"TF_CONFIG='{tf_config}' {_cmd(config, work / 'multi', epochs)} > {work}/w{i}.log 2>&1 &")
    lines.append("wait")
    t = time.perf_counter()
    run = subprocess.run(["unshare", "-rn", "bash", "-c", "\n".join(lines)], cwd=REPO, capture_output=True,
                         text=True, timeout=3600)  # fmt: skip
    wall = time.perf_counter() - t
    logs = [(work / f"w{i}.log").read_text(encoding="utf-8") for i in range(n)]
    if run.returncode or not (work / "multi" / "model.json").exists():
        sys.exit(f"{n}-worker run failed:\n{run.stdout}{run.stderr}\n" + "\n".join(x[-2000:] for x in logs))
    return [_parse(x) for x in logs], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="data_samples/recfuse.toml")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if shutil.which("unshare") is None:
        sys.exit("needs `unshare` (util-linux) for a private loopback-only network namespace")
    with tempfile.TemporaryDirectory(prefix="rf-tw-", dir="/tmp") as td:
        work = Path(td)
        base, base_wall = one_process(args.config, work, args.epochs)
        per, wall = workers_run(args.config, work, args.epochs, args.workers)
    # the workers step together: the run goes at its slowest worker's pace, on every worker
    total = args.workers * min(p.get("eps", 0.0) for p in per)
    print(f"config {args.config}, {args.epochs} epochs, {os.cpu_count()} cores on this machine\n")
    print("| run | examples/s | ÷ one process | val Recall@10 | peak RSS per process MB | wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| one process | {base.get('eps', 0):.0f} | 1.00× | {base.get('recall', float('nan')):.4f} | "
          f"{base.get('rss_mb', 0):.0f} | {base_wall:.0f} |")  # fmt: skip
    rss = max(p.get("rss_mb", 0.0) for p in per)
    print(f"| {args.workers} workers | {total:.0f} | {total / max(base.get('eps', 1.0), 1.0):.2f}× | "
          f"{per[0].get('recall', float('nan')):.4f} | {rss:.0f} | {wall:.0f} |")  # fmt: skip
    for i, p in enumerate(per):
        print(f"|  worker {i} | {p.get('eps', 0):.0f} | | {p.get('recall', float('nan')):.4f} | "
              f"{p.get('rss_mb', 0):.0f} | |")  # fmt: skip


if __name__ == "__main__":
    main()
