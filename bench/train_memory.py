"""Where ``recfuse train --prepared`` holds its memory: resident set size sampled through each step of the trainer.

Generates ``--interactions`` synthetic interactions as ``bench/train_stream.py --command`` does
(about ``--per-user`` per user, ``--items`` items, Zipf-like popularity), prepares them with
``recfuse prepare --config`` in a child process, deletes the generated files, and then runs
``recfuse train --prepared`` (the same ids-only config: dim 16, attention fusion, ``max_history =
20``, one epoch) in this process while a thread samples ``VmRSS`` from ``/proc/self/status`` every
0.25 s. The trainer's steps are marked by wrapping the functions that make them (split and
catalog loading, the streamed input, the model, writing the example files, the validation queries,
``fit``, ranking, the model directory), and ``fit`` records the RSS every ``--every`` steps with
the number of times Keras traced the train step. Prints, per step, the RSS when it started and
ended and the most seen during it, then the per-step figures during ``fit`` and the process's
peak (``getrusage``).

Usage:
    python bench/train_memory.py --interactions 2000000        # about 5 minutes on a loaded 2-core machine
    python bench/train_memory.py --interactions 20000000       # about 25 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_stream  # noqa: E402  (the generator and the config of the --command benchmark)

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Phases:
    """The current step's name and, per step, RSS at its start and end and the most sampled during it."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.rows: list[dict[str, Any]] = []
        self.fit_steps: list[tuple[int, float, int]] = []
        self.enter("start")
        threading.Thread(target=self._sample, args=(every_s,), daemon=True).start()

    def enter(self, name: str) -> None:
        now = rss_mb()
        if self.rows:
            self.rows[-1]["end"] = now
        self.rows.append({"phase": name, "start": now, "max": now, "end": now, "t": time.perf_counter()})

    def _sample(self, every_s: float) -> None:
        while True:
            row = self.rows[-1]
            row["max"] = max(row["max"], rss_mb())
            time.sleep(every_s)

    def wrap(self, module: Any, attr: str, name: str) -> None:
        fn = getattr(module, attr)

        def marked(*a: Any, **k: Any) -> Any:
            self.enter(name)
            try:
                return fn(*a, **k)
            finally:
                self.enter(f"after {name}")

        setattr(module, attr, marked)


def train_in_process(cfg: Path, prepared: Path, out: Path, every: int) -> tuple[Phases, int]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    phases = Phases()
    import importlib

    import recfuse  # noqa: F401  (Keras 2 before TensorFlow)
    import recfuse.data.catalog as catalog
    import recfuse.data.prepared_split as prepared_split
    import recfuse.training.trainer as trainer

    tf = importlib.import_module("tensorflow")

    phases.enter("imports done (TensorFlow, recfuse)")
    phases.wrap(prepared_split, "load_prepared_split", "load the split (val rows)")
    phases.wrap(catalog, "load_catalog", "load the catalog")
    for attr, name in (
        ("streamed_input", "streamed input, vocabularies"),
        ("build_model", "build the model"),
        ("_stream_input", "write the example files"),
        ("stream_val_queries", "validation queries"),
        ("recall_at_k", "rank (validation)"),
        ("write_model_dir", "write the model directory"),
    ):
        phases.wrap(trainer, attr, name)

    class Steps(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if batch % every == 0:
                traces = self.model.train_function.experimental_get_tracing_count()
                phases.fit_steps.append((batch, rss_mb(), traces))

    fit = tf.keras.Model.fit

    def marked_fit(self: Any, *a: Any, callbacks: Any = None, **k: Any) -> Any:
        phases.enter("fit")
        try:
            return fit(self, *a, callbacks=[Steps(), *(callbacks or [])], **k)
        finally:
            phases.enter("after fit")

    tf.keras.Model.fit = marked_fit
    from recfuse.cli.main import main

    code = main(["train", "--config", str(cfg), "--out", str(out), "--prepared", str(prepared), "--no-progress"])
    phases.enter("end")
    return phases, code


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interactions", type=int, default=2_000_000)
    p.add_argument("--per-user", type=int, default=100)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--history", type=int, default=20)
    p.add_argument("--every", type=int, default=100, help="fit steps between RSS records")
    p.add_argument("--work", default="/tmp/recfuse-train-memory")
    args = p.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    train_stream.generate(work / "raw", args.interactions, args.per_user, args.items, seed=7)
    train_stream._catalog(work / "items.parquet", args.items)
    cfg = work / "cfg.toml"
    text = train_stream.COMMAND_CONFIG.format(
        items=work / "items.parquet", interactions=work / "raw", history=args.history, batch=args.batch
    )
    cfg.write_text(text, encoding="utf-8")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-m", "recfuse", "prepare", "--config", str(cfg), "--out", str(work / "prepared")],
                   check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)  # fmt: skip
    split = json.loads((work / "prepared" / "manifest.json").read_text(encoding="utf-8"))["split"]
    shutil.rmtree(work / "raw")  # training must not need it
    load = os.getloadavg()[0]
    phases, code = train_in_process(cfg, work / "prepared", work / "model", args.every)
    if code:
        sys.exit(f"recfuse train exited with {code}")
    print(f"\n{args.interactions:,} interactions: {split['train']:,} train / {split['val']:,} val rows, "
          f"{split['train_users']:,} users; load average {load:.1f}-{os.getloadavg()[0]:.1f}")  # fmt: skip
    print("\n| step of the trainer | RSS at start MiB | most during it MiB | RSS at end MiB | seconds |")
    print("|---|---:|---:|---:|---:|")
    merged: list[dict[str, Any]] = []
    for i, row in enumerate(phases.rows[:-1]):
        row["s"] = phases.rows[i + 1]["t"] - row["t"]
        if row["phase"] == "rank (validation)" and merged and merged[-1]["phase"] == row["phase"]:
            merged[-1].update(max=max(merged[-1]["max"], row["max"]), end=row["end"], s=merged[-1]["s"] + row["s"])
        elif not (row["phase"] == "after rank (validation)" and row["s"] < 0.05):
            merged.append(row)
    for row in merged:
        print(f"| {row['phase']} | {row['start']:,.0f} | {row['max']:,.0f} | {row['end']:,.0f} | {row['s']:.1f} |")
    print("\n| fit step | RSS MiB | train-step traces |\n|---:|---:|---:|")
    for step, rss, traces in phases.fit_steps:
        print(f"| {step} | {rss:,.0f} | {traces} |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak:,.0f} MiB ({peak * 2**20 / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
