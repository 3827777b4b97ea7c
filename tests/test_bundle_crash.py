"""A writer SIGKILLed at any point leaves the old or the new bundle visible, never a half one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bundle_factory import make_bundle

from recfuse.bundle import list_versions, load_bundle

TESTS_DIR = Path(__file__).parent

# Writes a bundle of seed argv[2]; kills itself with SIGKILL when the writer reports step argv[3]
# ("" = never: a time-based kill from outside instead).
WRITER = """
import os, signal, sys
from bundle_factory import make_contents
from recfuse.bundle import write_bundle

root, seed, target, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def hook(step):
    if step == target:
        os.kill(os.getpid(), signal.SIGKILL)

print("start", flush=True)
write_bundle(root, make_contents(n_items=n, dim=16, seed=seed), on_step=hook)
"""

STEPS = [
    "locked",
    "tmp_created",
    "wrote:embeddings.parquet",
    "wrote:user_history.parquet",
    "index_built",
    "manifest_written",
    "fsynced",
    "renamed",
    "published",
]


def _run_writer(root: Path, seed: int, target: str, n: int = 300) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), str(seed), target, str(n)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_sigkill_at_every_step_leaves_a_complete_bundle(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    make_bundle(root, n_items=300, dim=16, seed=0)
    procs = {}
    # One variant root per step so the kills can run in parallel (2 at a time keeps the machine usable).
    for i, step in enumerate(STEPS):
        step_root = tmp_path / f"r{i}"
        make_bundle(step_root, n_items=300, dim=16, seed=0)
        procs[step] = (step_root, _run_writer(step_root, 1, step))
        if i % 2 == 1:
            for _, p in list(procs.values())[-2:]:
                p.wait(timeout=120)
    for step, (step_root, p) in procs.items():
        assert p.wait(timeout=120) == -signal.SIGKILL, (step, p.stderr.read() if p.stderr else "")
        bundle = load_bundle(step_root)  # complete and verified (sha256 of every file)
        expected = "random-seed1" if step == "published" else "random-seed0"
        assert bundle.model_id == expected, step
        assert bundle.index.ntotal == 300
        # The next writer cleans whatever the killed one left behind.
        make_bundle(step_root, n_items=300, dim=16, seed=2)
        leftovers = [p.name for p in (step_root / "attention").iterdir() if p.name.startswith(".tmp-")]
        assert leftovers == [], step
        assert load_bundle(step_root).model_id == "random-seed2"
        assert len(list_versions(step_root / "attention")) == (3 if step in ("renamed", "published") else 2)


@pytest.mark.slow
def test_kill_after_random_delays_never_exposes_a_partial_bundle(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    make_bundle(root, n_items=300, dim=16, seed=0)
    seen = {"random-seed0"}
    for attempt, delay in enumerate([0.05, 0.2, 0.4, 0.6, 0.9, 1.3]):
        p = _run_writer(root, attempt + 1, "", n=20000)
        assert p.stdout is not None and p.stdout.readline().strip() == "start"  # imports done, writing begins
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        b = load_bundle(root)
        assert b.model_id in seen | {f"random-seed{attempt + 1}"}
        seen.add(b.model_id)
        assert b.index.ntotal == b.item_vectors.shape[0] == b.manifest["item_count"]
