"""``recfuse-serve`` as a real process: graceful SIGTERM with calls in flight (exit 0), client retries."""

from __future__ import annotations

import json
import os
import re
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


def _requests(server, rpc: str, code: str) -> float:
    """``recfuse_requests_total{rpc, code}`` as the server's metrics render it (0 before the first)."""
    pattern = rf'recfuse_requests_total\{{code="{code}",rpc="{rpc}"\}} ([0-9.e+]+)'
    found = re.search(pattern, server.metrics.render().decode())
    return float(found.group(1)) if found else 0.0


def test_client_waits_until_a_bundle_is_published_then_recommends(tmp_path):
    root = tmp_path / "bundles"
    root.mkdir()
    with running(root, ready=False, reload_interval_s=0.05) as (server, _):
        with RecfuseClient(f"127.0.0.1:{server.port}") as c:
            with pytest.raises(TimeoutError, match="loaded no bundle"):
                c.wait_ready(timeout=0.3)
            timer = threading.Timer(0.3, make_root, args=(root,))
            timer.start()
            try:
                info = c.wait_ready(timeout=30)
            finally:
                timer.join()
            assert [v.variant for v in info.variants] == ["attention"]
            assert len(c.recommend(user_id="u1", k=3).items) == 3


def test_retry_policy_resends_unavailable_only_and_at_most_attempts(tmp_path):
    root = tmp_path / "bundles"
    root.mkdir()
    with running(root, ready=False, reload_interval_s=0.05) as (server, _):
        target = f"127.0.0.1:{server.port}"
        for attempts, total in ((3, 3.0), (1, 4.0)):
            with RecfuseClient(target, retry=RetryPolicy(attempts=attempts, initial_s=0.01, max_s=0.02)) as c:
                with pytest.raises(grpc.RpcError) as e:
                    c.recommend(user_id="u1", k=3)
            assert e.value.code() is grpc.StatusCode.UNAVAILABLE
            assert _requests(server, "Recommend", "UNAVAILABLE") == total  # gRPC sent it `attempts` times
        make_root(root)
        assert server.wait_ready(30)
        with RecfuseClient(target, retry=RetryPolicy(attempts=5, initial_s=0.01, max_s=0.02)) as c:
            with pytest.raises(grpc.RpcError) as e:
                c.recommend(user_id="u1", k=10_000)
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert _requests(server, "Recommend", "INVALID_ARGUMENT") == 1.0  # an answer, never retried


def test_retry_policy_is_grpcs_and_refuses_what_grpc_would():
    config = json.loads(RetryPolicy(attempts=4, initial_s=0.05, max_s=1.0).service_config())
    (method,) = config["methodConfig"]
    assert {n["service"] for n in method["name"]} == {"recfuse_api.v1.Recommender", "recfuse_api.v1.RecommenderAdmin"}
    assert method["retryPolicy"] == {"maxAttempts": 4, "initialBackoff": "0.050000s", "maxBackoff": "1.000000s",
                                     "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}  # fmt: skip
    assert "retryPolicy" not in json.loads(RetryPolicy(attempts=1).service_config())["methodConfig"][0]
    with pytest.raises(ValueError, match=r"`attempts` must be 1\.\.5 .* got 6.*wait_ready"):
        RetryPolicy(attempts=6)
    with pytest.raises(ValueError, match="`initial_s` must be > 0"):
        RetryPolicy(initial_s=0.0)


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
    listening = f"recfuse server listening on 127.0.0.1:{port}"
    try:
        with RecfuseClient(f"127.0.0.1:{port}") as c:
            c.wait_ready(timeout=60)
            assert len(c.recommend(user_id="u1", k=3).items) == 3
        # the first worker to listen answers the call; on a busy machine the second may still be
        # loading its bundle, so wait for it before the SIGTERM (both must have listened, see below)
        end = time.monotonic() + 60
        while log.read_text().count(listening) < 2 and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert log.read_text().count(listening) == 2
