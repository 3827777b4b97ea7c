"""run_embedding_job: shards, rejects, manifest, resume after SIGKILL (byte-identical), errors, Ray extra."""

from __future__ import annotations

import json
import os
import signal
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
    try:
        import ray  # noqa: F401

        pytest.skip("ray is installed")
    except ImportError:
        pass
    catalog = write_catalog(tmp_path / "items.parquet")
    with pytest.raises(ConfigError, match=r"needs Ray, which is not installed; run `pip install 'recfuse\[ray\]'`"):
        run_embedding_job(catalog, tmp_path / "o", factory, engine="ray")


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_ray_engine_matches_local_and_stays_on_loopback(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    catalog = write_catalog(tmp_path / "items.parquet")
    local = run_embedding_job(catalog, tmp_path / "local", factory, batch_size=64, batches_per_shard=2)
    try:
        remote = run_embedding_job(catalog, tmp_path / "ray", factory, batch_size=64, batches_per_shard=2,
                                   engine="ray")
        assert ray.util.get_node_ip_address() == "127.0.0.1"
    finally:
        ray.shutdown()
    assert (remote.rows, remote.embedded, remote.rejects) == (local.rows, local.embedded, local.rejects)
    for name in ("rejects.parquet",):
        assert pq.read_table(tmp_path / "ray" / name).equals(pq.read_table(tmp_path / "local" / name))
    a = pa.concat_tables([pq.read_table(tmp_path / "local" / s) for s in local.shards])
    b = pa.concat_tables([pq.read_table(tmp_path / "ray" / s) for s in remote.shards])
    assert a.equals(b)
