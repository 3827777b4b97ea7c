"""Multi-worker training: TF_CONFIG parsing, example sharding, and real two-worker runs on loopback.

The two-worker runs start real TensorFlow worker servers (MultiWorkerMirroredStrategy) and a real
Ray Train session. TensorFlow's worker servers listen on every interface whatever address TF_CONFIG
names, so the runs happen inside a private network namespace (``unshare -rn``) whose only interface
is loopback: nothing outside this machine can reach them, and they can reach nothing. Where the
machine does not allow an unprivileged namespace the runs are skipped, never run in the open.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from recfuse.errors import ConfigError
from recfuse.training.distribute import Cluster, cluster_from_env, shard_rows, worker_batch
from recfuse.training.examples import Examples

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_samples"


def _tf_config(workers: list[str], kind: str, index: int, chief: list[str] | None = None) -> dict[str, str]:
    cluster: dict[str, list[str]] = {"worker": workers}
    if chief:
        cluster["chief"] = chief
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})}


def test_no_tf_config_is_one_process() -> None:
    assert cluster_from_env({}) == Cluster(workers=1, index=0, is_chief=True, task=("worker", 0))
    assert not cluster_from_env({"TF_CONFIG": "  "}).distributed


def test_ranks_and_chief_from_tf_config() -> None:
    two = ["127.0.0.1:1", "127.0.0.1:2"]
    assert cluster_from_env(_tf_config(two, "worker", 0)) == Cluster(2, 0, True, ("worker", 0))
    assert cluster_from_env(_tf_config(two, "worker", 1)) == Cluster(2, 1, False, ("worker", 1))
    # with a chief task, the chief is rank 0 and worker 0 is not the chief
    with_chief = _tf_config(two, "worker", 0, chief=["127.0.0.1:3"])
    assert cluster_from_env(with_chief) == Cluster(3, 1, False, ("worker", 0))
    assert cluster_from_env(_tf_config(two, "chief", 0, chief=["127.0.0.1:3"])).is_chief
    # a single task is one process
    assert not cluster_from_env(_tf_config(["127.0.0.1:1"], "worker", 0)).distributed


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", r"TF_CONFIG is not JSON .*unset it to train in one process"),
        ("[1, 2]", r"TF_CONFIG must be a JSON object with 'cluster' and 'task'"),
        (
            json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}),
            r"names \['ps'\] tasks; .*ParameterServerStrategy is not supported",
        ),
        (
            json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}),
            r"TF_CONFIG.task \{'type': 'worker', 'index': 2\} is not in the cluster \(0 chief, 2 workers\)",
        ),
        (
            json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "evaluator", "index": 0}}),
            r"TF_CONFIG.task must be \{'type': 'chief'\|'worker', 'index': int\}",
        ),
        (
            json.dumps({"cluster": {"chief": ["a:1", "b:2"]}, "task": {"type": "chief", "index": 0}}),
            r"TF_CONFIG.cluster.chief lists 2 addresses; at most one chief",
        ),
    ],
)
def test_bad_tf_config_is_a_config_error(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cluster_from_env({"TF_CONFIG": raw})


def test_global_batch_is_split_evenly() -> None:
    assert worker_batch(256, Cluster(2, 0, True)) == 128
    assert worker_batch(256, Cluster()) == 256
    with pytest.raises(ConfigError, match=r"train.batch_size = 255 does not divide across 2 workers; .*multiple of 2"):
        worker_batch(255, Cluster(2, 1, False))


def test_shards_are_equal_disjoint_and_seeded() -> None:
    shards = [shard_rows(1001, Cluster(3, i, i == 0), seed=7) for i in range(3)]
    assert [len(s) for s in shards] == [333, 333, 333]  # equal steps on every worker; 2 rows left out
    union = np.concatenate(shards)
    assert len(np.unique(union)) == 999 and union.min() >= 0 and union.max() <= 1000
    np.testing.assert_array_equal(shards[1], shard_rows(1001, Cluster(3, 1, False), seed=7))
    assert not np.array_equal(shards[1], shard_rows(1001, Cluster(3, 1, False), seed=8))
    np.testing.assert_array_equal(shard_rows(5, Cluster(), seed=7), np.arange(5))
    with pytest.raises(ConfigError, match=r"3 training examples cannot be shared by 4 workers"):
        shard_rows(3, Cluster(4, 0, True), seed=0)


def test_a_shard_counts_its_own_targets() -> None:
    hist = np.array([[1, 2, -1], [3, -1, -1], [4, 5, 6]], np.int64)
    ex = Examples(np.arange(3), hist, np.zeros((3, 3), np.float32), np.arange(3), per_position=True, targets=6)
    part = ex.take(np.array([0, 2]))
    assert part.targets == 5 and len(part) == 2 and part.interactions == 3
    np.testing.assert_array_equal(part.hist_idx, hist[[0, 2]])
    assert Examples(np.arange(3), hist, np.zeros((3, 3), np.float32), np.arange(3)).take(np.array([1])).targets == 1


# ---- real two-worker runs ---------------------------------------------------------------------------


def _namespace_ok() -> str | None:
    """Why a private loopback-only network namespace cannot be made here (None: it can)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs `unshare` and `ip` (util-linux, iproute2)"
    probe = subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=30)
    if probe.returncode:
        return f"unprivileged network namespaces are not allowed here: {probe.stderr.decode()[:200]}"
    return None


def _small_config(tmp: Path, epochs: int) -> Path:
    """The sample with its text and category branches (no image or audio): seconds per epoch."""
    cfg = tmp / "small.toml"
    cfg.write_text(
        f"""
[data]
items = "{SAMPLE / "items.parquet"}"
interactions = "{SAMPLE / "interactions.parquet"}"
split = "random"

[model]
popularity_prior = 0.1

[train]
epochs = {epochs}
batch_size = 256
seed = 1
early_stopping_patience = 0

[[modalities]]
name = "text"
kind = "text"
columns = ["title", "description"]
min_item_count = 2
token_dropout = 0.2

[[modalities]]
name = "categories"
kind = "categorical"
""",
        encoding="utf-8",
    )
    return cfg


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """The runs' TMPDIR: short, because Ray's unix sockets live under it (107-byte path limit)."""
    path = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run_in_namespace(script: str, tmpdir: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a bash script inside a new user + network namespace with loopback up; kill it on timeout."""
    env = {**os.environ, "TMPDIR": str(tmpdir), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(
        ["unshare", "-rn", "bash", "-c", "ip link set lo up || exit 97\n" + script],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the run did not end within {timeout} s:\n{out[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def _val_recall(model_dir: Path) -> float:
    return float(json.loads((model_dir / "train_state.json").read_text(encoding="utf-8"))["best_metric"])


def _train_one_process(cfg: Path, out: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    run = subprocess.run(
        [sys.executable, "-m", "recfuse", "train", "--config", str(cfg), "--out", str(out), "--no-progress"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return _val_recall(out)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """The small config trained in one process: (config, model dir, validation Recall@10)."""
    tmp = tmp_path_factory.mktemp("one_process")
    cfg = _small_config(tmp, epochs=2)
    return cfg, tmp / "single", _train_one_process(cfg, tmp / "single")


# Seed noise of this config's validation Recall@10 (2 epochs, one process, seeds 1-3) is about
# ±0.005; two workers differ from one process by their in-batch negatives (half the batch each)
# and their example order, not by what they learn, so the bar is a few times that noise.
TOLERANCE = 0.02


@pytest.mark.slow
def test_two_workers_on_loopback_match_one_process(
    tmp_path: Path, short_tmp: Path, one_process: tuple[Path, Path, float]
) -> None:
    why = _namespace_ok()
    if why:
        pytest.skip(why)
    cfg, single_dir, single = one_process

    out = tmp_path / "multi"
    workers = ["127.0.0.1:23456", "127.0.0.1:23457"]
    lines = []
    for i in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
        lines.append(
            f"TF_CONFIG='{tf_config}' {sys.executable} -m recfuse train --config {cfg} --out {out} --no-progress "
            f"> {tmp_path}/worker{i}.log 2>&1 & p{i}=$!"
        )
    script = "\n".join(lines) + "\nwait $p0; r0=$?; wait $p1; r1=$?; exit $((r0 | r1))\n"
    run = _run_in_namespace(script, short_tmp, timeout=420)
    logs = {i: (tmp_path / f"worker{i}.log").read_text(encoding="utf-8") for i in range(2)}
    assert run.returncode == 0, run.stdout + logs[0][-3000:] + logs[1][-3000:]

    # the chief wrote a complete model directory; the other worker says so and writes nothing there
    assert f"model directory: {out}" in logs[0]
    assert f"worker of 2: trained; the chief writes the model directory {out}" in logs[1]
    from recfuse.models.trained import TrainedModel

    model, reference = TrainedModel.load(out), TrainedModel.load(single_dir)
    assert list(model.item_ids) == list(reference.item_ids)
    assert model.item_embeddings.shape == reference.item_embeddings.shape
    assert np.isfinite(model.item_embeddings).all()
    state = json.loads((out / "train_state.json").read_text(encoding="utf-8"))
    assert state["epoch"] == 2
    # both workers validated the same synchronised weights
    assert logs[0].count("val_recall@10 = ") == 2
    assert logs[0].split("val Recall@10: ")[1][:6] == logs[1].split("val Recall@10: ")[1][:6]
    # the non-chief's private work dir was removed
    assert not list(short_tmp.glob("recfuse-worker*"))

    multi = _val_recall(out)
    assert abs(multi - single) <= TOLERANCE, (multi, single)


@pytest.mark.slow
@pytest.mark.ray
def test_ray_train_two_workers_on_loopback(
    tmp_path: Path, short_tmp: Path, one_process: tuple[Path, Path, float]
) -> None:
    pytest.importorskip("ray.train.tensorflow")
    why = _namespace_ok()
    if why:
        pytest.skip(why)
    cfg, _, single = one_process
    out = tmp_path / "ray_model"
    script = f"{sys.executable} -m recfuse train --config {cfg} --out {out} --engine ray --workers 2 --no-progress\n"
    run = _run_in_namespace(script, short_tmp, timeout=420)
    assert run.returncode == 0, run.stdout[-5000:]
    assert f"model directory: {out}" in run.stdout
    assert "on Ray Train with 2 workers" in run.stdout
    from recfuse.models.trained import TrainedModel

    TrainedModel.load(out)
    assert abs(_val_recall(out) - single) <= TOLERANCE, (_val_recall(out), single)


@pytest.mark.slow
def test_two_workers_stream_their_own_prepared_shards(
    tmp_path: Path, short_tmp: Path, one_process: tuple[Path, Path, float]
) -> None:
    why = _namespace_ok()
    if why:
        pytest.skip(why)
    from recfuse.cli.main import main

    cfg, _, single = one_process
    # the split made while streaming: each worker loads only the catalog, and streams its own shards
    assert main(["prepare", "--config", str(cfg), "--out", str(tmp_path / "prepared"), "--buckets", "5"]) == 0
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text(encoding="utf-8"))
    assert len(manifest["shards"]) == 5 and manifest["split"]["kind"] == "random"  # 3 shards for worker 0, 2 for 1

    out = tmp_path / "multi"
    workers = ["127.0.0.1:23466", "127.0.0.1:23467"]
    lines = []
    for i in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
        lines.append(
            f"TF_CONFIG='{tf_config}' {sys.executable} -m recfuse train --config {cfg} --out {out} --no-progress "
            f"--prepared {tmp_path / 'prepared'} > {tmp_path}/worker{i}.log 2>&1 & p{i}=$!"
        )
    script = "\n".join(lines) + "\nwait $p0; r0=$?; wait $p1; r1=$?; exit $((r0 | r1))\n"
    run = _run_in_namespace(script, short_tmp, timeout=420)
    logs = {i: (tmp_path / f"worker{i}.log").read_text(encoding="utf-8") for i in range(2)}
    assert run.returncode == 0, run.stdout + logs[0][-3000:] + logs[1][-3000:]

    assert f"model directory: {out}" in logs[0] and "worker of 2: trained" in logs[1]
    assert json.loads((out / "train_state.json").read_text(encoding="utf-8"))["epoch"] == 2
    # the same synchronised weights on both workers (they took the same steps), and no streamed files left
    assert logs[0].split("val Recall@10: ")[1][:6] == logs[1].split("val Recall@10: ")[1][:6]
    assert not (out / "stream_examples").exists() and not list(short_tmp.glob("recfuse-worker*"))
    multi = _val_recall(out)
    assert abs(multi - single) <= TOLERANCE, (multi, single)
    # the chief records the split an in-memory run records
    split = json.loads((out / "model.json").read_text(encoding="utf-8"))["split"]
    assert split == {k: v for k, v in manifest["split"].items() if k != "cold_item_fraction"}
