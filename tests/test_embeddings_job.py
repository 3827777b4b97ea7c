"""run_embedding_job: shards, rejects, manifest, resume after SIGKILL (byte-identical), errors, Ray extra."""

from __future__ import annotations

import functools
import importlib.util
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recfuse.embeddings import EncodeResult, HashProjectionEncoder, Progress, run_embedding_job
from recfuse.errors import ConfigError, DataError, SchemaError

N, W = 1000, 8
BAD = {7: "short", 300: "null", 555: "nan", 901: "long"}


def write_catalog(path: Path) -> Path:
    rng = np.random.default_rng(0)
    vecs: list[list[float] | None] = [rng.standard_normal(W).tolist() for _ in range(N)]
    vecs[7] = vecs[7][:5]  # type: ignore[index]
    vecs[300] = None
    vecs[555] = [float("nan")] * W
    vecs[901] = vecs[901] + [1.0]  # type: ignore[operator]
    table = pa.table(
        {
            "item_id": [f"it{i:04d}" for i in range(N)],
            "title": [f"item {i % 37} colour {i % 5}" for i in range(N)],
            "vec": pa.array(vecs, type=pa.list_(pa.float32())),
        }
    )
    pq.write_table(table, path, row_group_size=250)
    return path


def factory() -> HashProjectionEncoder:
    return HashProjectionEncoder(dim=16, vector_column="vec", in_dim=W, seed=3)


def read_dir(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_job_writes_shards_rejects_and_manifest(tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path / "items.parquet")
    seen: list[Progress] = []
    report = run_embedding_job(catalog, tmp_path / "out", factory, batch_size=64, batches_per_shard=2,
                               progress=seen.append)
    out = tmp_path / "out"
    assert (report.rows, report.embedded, report.rejects, report.dim) == (N, N - 4, 4, 16)
    assert report.shards == [f"part-{i:05d}.parquet" for i in range(len(report.shards))]
    assert len(report.shards) >= 8 and (out / "_SUCCESS").exists()
    assert seen[-1].rows_done == N and seen[-1].rows_total == N and seen[-1].items_per_s > 0
    rej = pq.read_table(out / "rejects.parquet").to_pylist()
    assert [r["item_id"] for r in rej] == [f"it{i:04d}" for i in sorted(BAD)]
    assert "wrong vector width in 'vec': 5 != 8" in rej[0]["reason"] and "null" in rej[1]["reason"]
    assert "non-finite" in rej[2]["reason"]
    # the shards hold exactly what a bare loop over the same batches gives
    table = pa.concat_tables([pq.read_table(out / s) for s in report.shards])
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 16)
    enc = factory()
    want = [enc.encode(b) for b in pq.ParquetFile(catalog).iter_batches(batch_size=64)]
    assert table.column("item_id").to_pylist() == [str(i) for r in want for i in r.item_ids]
    np.testing.assert_array_equal(np.stack(table.column("vector").to_numpy(zero_copy_only=False)),
                                  np.concatenate([r.vectors for r in want]))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == N and sum(s["rows"] for s in manifest["shards"]) == N - 4
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])
    # a rerun over a finished directory reuses every shard and rewrites identical bytes
    before = read_dir(out)
    again = run_embedding_job(catalog, out, factory, batch_size=64, batches_per_shard=2)
    assert again.skipped_shards == len(report.shards) and read_dir(out) == before


SCRIPT = """
import sys, time
from recfuse.embeddings import HashProjectionEncoder, run_embedding_job
class Slow(HashProjectionEncoder):
    def encode(self, batch):
        time.sleep(0.15)
        return super().encode(batch)
run_embedding_job(sys.argv[1], sys.argv[2], lambda: Slow(dim=16, vector_column="vec", in_dim=8, seed=3),
                  batch_size=64, batches_per_shard=2)
"""


def test_killed_run_resumes_to_byte_identical_output(tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path / "items.parquet")
    run_embedding_job(catalog, tmp_path / "clean", factory, batch_size=64, batches_per_shard=2)
    killed = tmp_path / "killed"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(catalog), str(killed)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (killed / "part-00002.parquet").exists():
            assert proc.poll() is None, "the job finished or died before it could be killed"
            assert time.monotonic() < deadline, "no shard appeared within 60 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "_SUCCESS").exists()
    report = run_embedding_job(catalog, killed, factory, batch_size=64, batches_per_shard=2)
    assert report.skipped_shards >= 3
    clean, resumed = read_dir(tmp_path / "clean"), read_dir(killed)
    resumed = {k: v for k, v in resumed.items() if not k.split("/")[-1].startswith(".")}  # torn temp files
    assert resumed == clean


class Broken:
    def encode(self, batch: pa.RecordBatch) -> EncodeResult:
        return EncodeResult(["x"], np.zeros((2, 4), np.float32))


class Dropper:
    def encode(self, batch: pa.RecordBatch) -> EncodeResult:
        return EncodeResult([], np.zeros((0, 4), np.float32))


def test_job_errors(tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path / "items.parquet")
    with pytest.raises(ConfigError, match=r"`engine` must be one of \['local', 'ray'\], got 'spark'"):
        run_embedding_job(catalog, tmp_path / "o1", factory, engine="spark")
    with pytest.raises(ConfigError, match=r"`batch_size` and `batches_per_shard` must be >= 1, got 0 and 16"):
        run_embedding_job(catalog, tmp_path / "o1", factory, batch_size=0)
    with pytest.raises(SchemaError, match=r"catalog file '.*nope.parquet' does not exist"):
        run_embedding_job(tmp_path / "nope.parquet", tmp_path / "o1", factory)
    pq.write_table(pa.table({"id": [1]}), tmp_path / "noid.parquet")
    with pytest.raises(SchemaError, match=r"has no `item_id` column; columns: \['id'\]"):
        run_embedding_job(tmp_path / "noid.parquet", tmp_path / "o1", factory)
    with pytest.raises(DataError, match=r"encoder returned vectors of shape \(2, 4\) for 1 item ids"):
        run_embedding_job(catalog, tmp_path / "o2", Broken)
    with pytest.raises(DataError, match=r"accounted for 0 embedded \+ 0 rejected rows of a 64-row batch"):
        run_embedding_job(catalog, tmp_path / "o3", Dropper, batch_size=64)
    run_embedding_job(catalog, tmp_path / "o4", factory, batch_size=64, batches_per_shard=2)
    with pytest.raises(ConfigError, match=r"holds a partial run with .*'batch_size': 64.*rerun with the same --batch-size"):  # noqa: E501
        run_embedding_job(catalog, tmp_path / "o4", factory, batch_size=128, batches_per_shard=2)


def test_ray_engine_without_ray_names_the_extra(tmp_path: Path) -> None:
    if importlib.util.find_spec("ray") is not None:  # not imported: the Ray tests set env vars before that
        pytest.skip("ray is installed")
    catalog = write_catalog(tmp_path / "items.parquet")
    with pytest.raises(ConfigError, match=r"needs Ray, which is not installed; run `pip install 'recfuse\[ray\]'`"):
        run_embedding_job(catalog, tmp_path / "o", factory, engine="ray")


def _descendants(root: int) -> set[int]:
    """Pids of every process below ``root`` (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited meanwhile
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found.update(kids)
        todo += kids
    return found


def _listening(pids: set[int]) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by one of ``pids`` (Linux /proc)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            links = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        inodes.update(link[8:-1] for link in links if link.startswith("socket:["))
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A = LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = b"".join(bytes.fromhex(hex_ip[i : i + 8])[::-1] for i in range(0, len(hex_ip), 8))
            found.append((socket.inet_ntop(family, raw), int(hex_port, 16)))
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


@pytest.mark.ray
@pytest.mark.slow  # starts a local Ray session (~10 processes, 20-45 s on 2 busy cores)
@pytest.mark.timeout(300)
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from Linux /proc")
def test_ray_engine_matches_local_and_stays_on_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # read by ray once, at import: without it Ray maps 127.0.0.1 to eth0's address and listens everywhere
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = pytest.importorskip("ray")
    catalog = write_catalog(tmp_path / "items.parquet")
    # Ray workers import the factory by reference: it must live in an importable module, not this test file.
    lib_factory = functools.partial(HashProjectionEncoder, dim=16, vector_column="vec", in_dim=W, seed=3)
    local = run_embedding_job(catalog, tmp_path / "local", lib_factory, batch_size=64, batches_per_shard=2)
    ray_pids: set[int] = set()
    try:
        remote = run_embedding_job(catalog, tmp_path / "ray", lib_factory, batch_size=64, batches_per_shard=2,
                                   engine="ray")
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        (node,) = ray.nodes()
        assert node["NodeManagerAddress"] == "127.0.0.1"
        ray_pids = _descendants(os.getpid()) | {os.getpid()}
        sockets = _listening(ray_pids)
        # gcs, raylet, workers, agents: every listener is on loopback (the raylet's own port proves we saw Ray's)
        assert node["NodeManagerPort"] in {port for _, port in sockets}
        assert [s for s in sockets if not _is_loopback(s[0])] == []
    finally:
        ray.shutdown()
    deadline = time.monotonic() + 30
    while ray_pids & _descendants(os.getpid()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray_pids & _descendants(os.getpid()) == set(), "Ray processes still running after ray.shutdown()"
    assert (remote.rows, remote.embedded, remote.rejects) == (local.rows, local.embedded, local.rejects)
    assert remote.shards == local.shards
    for name in ("rejects.parquet",):
        assert pq.read_table(tmp_path / "ray" / name).equals(pq.read_table(tmp_path / "local" / name))
    a = pa.concat_tables([pq.read_table(tmp_path / "local" / s) for s in local.shards])
    b = pa.concat_tables([pq.read_table(tmp_path / "ray" / s) for s in remote.shards])
    assert a.equals(b)
    for s in local.shards:  # shard by shard, byte for byte
        assert (tmp_path / "ray" / s).read_bytes() == (tmp_path / "local" / s).read_bytes()


REFUSE = """
import sys
import ray  # imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: a local session would listen on eth0 too
from recfuse.embeddings import HashProjectionEncoder, run_embedding_job
run_embedding_job(sys.argv[1], sys.argv[2], HashProjectionEncoder, engine="ray")
"""


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_ray_engine_refuses_a_session_that_would_leave_loopback(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    catalog = write_catalog(tmp_path / "items.parquet")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    probe = "import ray; print(ray.util.get_node_ip_address())"
    ip = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    if ip.stdout.strip() in ("127.0.0.1", "::1"):
        pytest.skip("this host has no address but loopback")
    proc = subprocess.run([sys.executable, "-c", REFUSE, str(catalog), str(tmp_path / "o")], env=env,
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 1
    assert re.search(r"ConfigError: a local Ray session would bind to '.*' \(every interface\), not 127\.0\.0\.1: "
                     r"`ray` was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set", proc.stderr)
    assert not (tmp_path / "o" / "_SUCCESS").exists()
