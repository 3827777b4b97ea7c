"""``recfuse-serve`` as a real process: graceful SIGTERM with calls in flight (exit 0), client retries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recfuse_api.v1 import recommender_pb2 as pb
from recfuse_serving.client import RecfuseClient, RetryPolicy
from recfuse_serving.server import main
from serving_support import make_root, running, stub

from recfuse.variants import read_exposures

pytestmark = pytest.mark.slow

SERVE = Path(sys.executable).parent / "recfuse-serve"


def _wait_port(port_file: Path, proc: subprocess.Popen, timeout: float = 30.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if port_file.exists():
            return int(port_file.read_text())
        if proc.poll() is not None:
            raise AssertionError(f"recfuse-serve exited early with {proc.returncode}")
        time.sleep(0.05)
    raise AssertionError("recfuse-serve did not report its port")


def test_sigterm_drains_in_flight_calls_and_exits_zero(tmp_path):
    root = make_root(tmp_path / "bundles")
    exposures = tmp_path / "exposures"
    port_file = tmp_path / "port"
    log = tmp_path / "server.log"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen(
        [
            str(SERVE),
            "--bundles",
            str(root),
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--exposures",
            str(exposures),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        env=env,
    )
    try:
        port = _wait_port(port_file, proc)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        end = time.monotonic() + 30
        while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != 1 and time.monotonic() < end:
            time.sleep(0.05)
        s = stub(channel)
        batch = pb.RecommendBatchRequest(requests=[pb.RecommendRequest(user_id=f"u{i}", k=50) for i in range(200)])
        results: list[tuple[str, grpc.StatusCode]] = []
        started = threading.Barrier(5)

        def call(i: int) -> None:
            started.wait()
            request = pb.RecommendBatchRequest()
            request.CopyFrom(batch)
            request.requests[0].request_id = f"inflight-{i}"
            try:
                s.RecommendBatch(request, timeout=20)
                results.append((f"inflight-{i}", grpc.StatusCode.OK))
            except grpc.RpcError as exc:
                results.append((f"inflight-{i}", exc.code()))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        started.wait()
        time.sleep(0.005)  # the calls are on the wire
        proc.send_signal(signal.SIGTERM)
        statuses = set()
        end = time.monotonic() + 5
        while health_pb2.HealthCheckResponse.NOT_SERVING not in statuses and time.monotonic() < end:
            try:
                statuses.add(health.Check(health_pb2.HealthCheckRequest(), timeout=1).status)
            except grpc.RpcError:
                break
            time.sleep(0.01)
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses  # during the drain delay
        for t in threads:
            t.join(30)
        assert proc.wait(30) == 0
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert len(results) == 4 and {code for _, code in results} == {grpc.StatusCode.OK}, results
    logged = set(read_exposures(exposures).to_pandas().request_id)
    assert {rid for rid, _ in results} <= logged  # the exposure logger was flushed before exit
    stderr = log.read_text()
    assert '"msg": "signal 15: graceful shutdown (NOT_SERVING' in stderr


def test_client_retries_unavailable_until_a_bundle_is_published(tmp_path):
    root = tmp_path / "bundles"
    root.mkdir()
    with running(root, ready=False, reload_interval_s=0.05) as (server, _):
        timer = threading.Timer(0.3, make_root, args=(root,))
        timer.start()
        try:
            with RecfuseClient(
                f"127.0.0.1:{server.port}", retry=RetryPolicy(attempts=30, initial_s=0.05, max_s=0.2)
            ) as c:
                recs = c.recommend(user_id="u1", k=3)
        finally:
            timer.join()
        assert len(recs.items) == 3
        with RecfuseClient(f"127.0.0.1:{server.port}", retry=RetryPolicy(attempts=1)) as c:
            with pytest.raises(grpc.RpcError) as e:
                c.recommend(user_id="u1", k=10_000)
            assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # never retried


def test_main_rejects_missing_bundles_dir(tmp_path):
    assert main(["--bundles", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert main(["--bundles", str(tmp_path), "--workers", "2", "--port", "0"]) == 2


def test_workers_share_one_port_and_stop_on_sigterm(tmp_path):
    import socket

    root = make_root(tmp_path / "bundles")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        [SERVE, "--bundles", root, "--port", str(port), "--workers", "2", "--metrics-port", "-1"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    try:
        with RecfuseClient(f"127.0.0.1:{port}", retry=RetryPolicy(attempts=60, initial_s=0.1, max_s=0.5)) as c:
            assert len(c.recommend(user_id="u1", k=3).items) == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert log.read_text().count(f"recfuse server listening on 127.0.0.1:{port}") == 2
