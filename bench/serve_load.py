"""Load benchmark of the gRPC service: echo ceiling vs real Recommend over 100k / 1M-item HNSW bundles.

One run, one machine, loopback only. Every server is its own process (``recfuse-serve`` for the real
service; an echo server built from the same pieces — ``grpc.server`` + thread pool + the same
interceptors and options, answering Recommend with an empty response — for the ceiling). Load comes
from 1 or 4 client processes (each one channel, one call at a time, for ``--duration`` seconds after a
warm-up), so clients never share the server's GIL. Reported: QPS, p50/p99 latency (client side, ms)
and QPS/p99 relative to the echo ceiling with the same number of clients and server processes.

Bundles are random-but-structured (tests/bundle_factory.py: real NumpyQueryTower, 64-d unit vectors,
HNSW32 index), built once and cached under ``runs/bench/`` (1M items: several minutes).

Usage:
    python bench/serve_load.py --quick            # 100k only
    python bench/serve_load.py                    # 100k and 1M
    python bench/serve_load.py --workers 1 2      # also SO_REUSEPORT multi-process servers
    python bench/serve_load.py --quick --batching on off   # Recommend with and without micro-batching
    python bench/serve_load.py --quick --rounds 5          # 5 alternating rounds, medians (noisy machines)
    python bench/serve_load.py --quick --also-set 'user_vectors_mb=0;hugepages=false'   # paired: features off

With ``--rounds R`` every server is measured R times, the targets alternating within each round
(echo, Recommend, echo, Recommend, ...), and each cell reports the median over rounds of its QPS,
p50, p99 and ratio to the echo of the same round, with the ratio's min-max: on a shared 2-core VM
a single cell's QPS swings by tens of percent between runs, a paired ratio much less.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVE = Path(sys.executable).parent / "recfuse-serve"
DIM = 64
N_USERS = 20_000
# --pin: CPU sets of the server processes and of the load-generating clients (None: unpinned)
PIN: dict[str, set[int] | None] = {"server": None, "client": None}
CONFIG_DIR: list[str] = []  # the run's temporary folder of server configs (removed at the end)


def _affinity(role: str):  # type: ignore[no-untyped-def]
    """``preexec_fn`` pinning a child process (and whatever it forks) to the role's CPUs."""
    cpus = PIN[role]
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


# ------------------------------------------------------------------------------------ bundles
def ensure_bundle(out: Path, n_items: int, ef_search: int, ef_construction: int = 80) -> Path:
    """Build (once) a random HNSW32 bundle of ``n_items`` under ``out``; returns the bundles root."""
    from recfuse.bundle.publish import list_variants

    if list_variants(out):
        return out
    sys.path.insert(0, str(ROOT / "tests"))
    from bundle_factory import make_bundle

    from recfuse.config import IndexConfig

    t0 = time.perf_counter()
    print(f"building {n_items:,}-item HNSW32 bundle in {out} (cached for later runs) ...", flush=True)
    cfg = IndexConfig(
        factory="HNSW32", ef_search=ef_search, ef_construction=ef_construction, recall_queries=200, threads=0
    )
    make_bundle(out, n_items=n_items, dim=DIM, n_users=N_USERS, index_cfg=cfg)
    print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def served_recall(bundles: Path, n_users: int = 500, k: int = 10) -> float:
    """Recall@k of what Recommend serves (index search) against exact search over every item vector,
    for ``n_users`` known users by id, as the load sends them. The index's build-time recall
    (manifest ``ann_recall``) uses item vectors as queries, which sit in sparser places than users'."""
    import numpy as np

    from recfuse.inference import Recommender

    rec = Recommender.from_bundle(bundles, user_vectors_mb=256)
    voc = rec.bundle.user_vocab
    users = [f"u{j}" for j in np.random.default_rng(0).choice(N_USERS, n_users, replace=False)]
    vecs = np.asarray(rec.bundle.ranked_vectors, np.float32)
    assert rec.user_vectors is not None  # N_USERS x 64-d fits the default budget
    queries = rec.user_vectors[[voc.lookup_one(u) - voc.num_oov for u in users]]
    hits = 0
    for start in range(0, n_users, 50):
        block = queries[start : start + 50]
        exact = np.argpartition(-(vecs @ block.T), k, axis=0)[:k].T  # [b, k] rows of the true top k
        for u, want in zip(users[start : start + 50], exact):
            hits += len(set(rec.rank(u, (), k).rows) & set(want.tolist()))
    return hits / (n_users * k)


# ------------------------------------------------------------------------------------ echo server
def serve_echo(port: int, reuse_port: bool) -> int:
    """The ceiling: same gRPC stack (thread pool, interceptors, options), handler does nothing."""
    import threading

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from recfuse_api.v1 import recommender_pb2 as pb
    from recfuse_api.v1 import recommender_pb2_grpc as pb_grpc
    from recfuse_serving.config import ServerConfig
    from recfuse_serving.interceptors import LimitInterceptor, ObservabilityInterceptor
    from recfuse_serving.metrics import ServingMetrics
    from recfuse_serving.server import grpc_options

    class Echo(pb_grpc.RecommenderServicer):
        def Recommend(self, request, context):  # noqa: N802 (gRPC method name)
            return pb.RecommendResponse(request_id=request.request_id)

    cfg = ServerConfig(port=port)
    interceptors = [ObservabilityInterceptor(ServingMetrics()), LimitInterceptor(cfg.max_concurrency)]
    server = grpc.server(
        futures.ThreadPoolExecutor(cfg.max_concurrency + 4),
        interceptors=interceptors,
        options=grpc_options(cfg, reuse_port),
    )
    pb_grpc.add_RecommenderServicer_to_server(Echo(), server)
    h = health.HealthServicer()
    h.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(h, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    server.stop(1).wait()
    return 0


# ------------------------------------------------------------------------------------ client
def run_client(port: int, seconds: float, seed: int, out: str) -> int:
    """One client: one channel, sequential Recommend calls for ``seconds``; latencies (ms) to ``out``."""
    import grpc
    import numpy as np
    from recfuse_api.v1 import recommender_pb2 as pb
    from recfuse_api.v1 import recommender_pb2_grpc as pb_grpc

    rng = np.random.default_rng(seed)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.RecommenderStub(channel)
    users = [f"u{j}" for j in rng.integers(0, N_USERS, 4096)]
    ready_by = time.monotonic() + 60
    while True:  # this connection's worker may still be loading its bundle (SO_REUSEPORT)
        try:
            stub.Recommend(pb.RecommendRequest(user_id=users[0], k=10), timeout=10)
            break
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > ready_by:
                raise
            time.sleep(0.05)
    for u in users[1:100]:  # warm-up
        stub.Recommend(pb.RecommendRequest(user_id=u, k=10), timeout=10)
    lat = []
    end = time.perf_counter() + seconds
    i = 0
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        stub.Recommend(pb.RecommendRequest(user_id=users[i % len(users)], k=10), timeout=10)
        lat.append((time.perf_counter() - t0) * 1e3)
        i += 1
    np.save(out, np.asarray(lat, np.float64))
    channel.close()
    return 0


# ------------------------------------------------------------------------------------ driver
def cpu_seconds(root_pid: int) -> float:
    """User + system CPU seconds of ``root_pid`` and all its descendants (Linux ``/proc``; nan elsewhere).

    CPU time per call is the figure a busy shared machine disturbs least: wall-clock QPS also
    measures whoever else is running.
    """
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    stats: dict[int, tuple[int, float]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return float("nan")
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)  # ppid, utime+stime
    if root_pid not in stats:
        return float("nan")
    total, todo = 0.0, [root_pid]
    while todo:
        pid = todo.pop()
        total += stats[pid][1]
        todo += [c for c, (ppid, _) in stats.items() if ppid == pid]
    return total


def _pids(proc: subprocess.Popen | _Group) -> list[int]:
    return [p.pid for p in proc.procs] if isinstance(proc, _Group) else [proc.pid]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(port: int, proc: subprocess.Popen, timeout: float = 120.0, checks: int = 8) -> None:
    """Until ``checks`` fresh connections in a row find the server SERVING: with SO_REUSEPORT each new
    connection lands on one worker, so one check could pass while another worker is still loading
    (and its load would then be counted as server CPU of the first measurement)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    end = time.monotonic() + timeout
    in_a_row = 0
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        try:
            ok = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1
        except grpc.RpcError:
            ok = False
        finally:
            channel.close()
        in_a_row = in_a_row + 1 if ok else 0
        if in_a_row >= checks:
            return
        if not ok:
            time.sleep(0.1)
    raise SystemExit(f"server on port {port} not SERVING after {timeout:.0f} s")


def start_server(
    kind: str,
    bundles: Path | None,
    workers: int,
    env: dict[str, str],
    batching: bool = False,
    extra: Sequence[str] = (),
) -> tuple[subprocess.Popen, int]:
    port = free_port()
    if kind == "echo":
        cmd = [sys.executable, __file__, "--serve-echo", str(port)]
        if workers > 1:
            procs = [
                subprocess.Popen([*cmd, "--reuse-port"], env=env, preexec_fn=_affinity("server"))
                for _ in range(workers)
            ]
            return _Group(procs), port  # type: ignore[return-value]
    else:
        cmd = [str(SERVE), "--bundles", str(bundles), "--port", str(port), "--log-level", "WARNING"]
        cmd += ["--workers", str(workers), "--config", _bench_config(batching, extra)]
    return subprocess.Popen(cmd, env=env, preexec_fn=_affinity("server")), port


class _Group:
    """Several echo processes on one SO_REUSEPORT port, handled like one Popen."""

    def __init__(self, procs: list[subprocess.Popen]) -> None:
        self.procs = procs

    def poll(self) -> int | None:
        codes = [p.poll() for p in self.procs]
        return None if any(c is None for c in codes) else max(c or 0 for c in codes)

    def send_signal(self, sig: int) -> None:
        for p in self.procs:
            p.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        return max(p.wait(timeout) for p in self.procs)


def _bench_config(batching: bool = False, extra: Sequence[str] = ()) -> str:
    fd, name = tempfile.mkstemp(prefix="server-", suffix=".toml", dir=CONFIG_DIR[0])
    with os.fdopen(fd, "w") as fh:
        fh.write("reload_interval_s = 0\nshutdown_delay_s = 0\ngrace_s = 1\n")
        fh.write("batching = true\n" if batching else "")
        fh.write("".join(f"{line}\n" for line in extra))
    return name


def load(port: int, clients: int, seconds: float, env: dict[str, str]) -> dict[str, float]:
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        outs = [str(Path(tmp) / f"c{i}.npy") for i in range(clients)]
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--client", str(port), str(seconds), str(i), outs[i]],
                env=env,
                preexec_fn=_affinity("client"),
            )
            for i in range(clients)
        ]
        codes = [p.wait(seconds + 120) for p in procs]
        if any(codes):
            raise SystemExit(f"client failed: exit codes {codes}")
        lat = np.concatenate([np.load(o) for o in outs])
    return {
        "qps": len(lat) / seconds,
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "n": float(len(lat)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100k-item bundle only")
    p.add_argument("--duration", type=float, default=4.0, help="seconds of load per measurement")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="server processes (SO_REUSEPORT)")
    p.add_argument("--ef-search", type=int, default=64)
    p.add_argument(
        "--ef-construction", type=int, default=80, help="HNSW build effort (80: the library's default)"
    )
    p.add_argument("--rounds", type=int, default=1, help="alternating measurement rounds; medians reported")
    p.add_argument(
        "--server-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra line of the Recommend server's TOML config, e.g. max_concurrency=4",
    )
    p.add_argument(
        "--also-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also measure each Recommend server with these extra config lines (';' between lines), as its "
        "own row in the same rounds (a paired comparison), e.g. 'user_vectors_mb=0;hugepages=false'",
    )
    p.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    p.add_argument("--blas-default", action="store_true", help="also run 100k with numpy's default BLAS threads")
    p.add_argument(
        "--batching",
        nargs="+",
        choices=("on", "off"),
        default=["off"],
        help="server micro-batching of concurrent Recommend calls (server config `batching`, default off); "
        "both: a row each",
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="servers on the last CPU, clients on the others (as if the load came from another machine)",
    )
    p.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_echo is not None:
        return serve_echo(args.serve_echo, args.reuse_port)
    if args.client:
        port, seconds, seed, out = args.client
        return run_client(int(port), float(seconds), int(seed), out)

    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            p.error("--pin needs at least 2 CPUs")
        PIN["server"], PIN["client"] = {cpus[-1]}, set(cpus[:-1])
    CONFIG_DIR.append(tempfile.mkdtemp(prefix="recfuse-serve-load-"))
    try:
        return _run(args)
    finally:
        import shutil

        shutil.rmtree(CONFIG_DIR.pop(), ignore_errors=True)


def _run(args: argparse.Namespace) -> int:
    load_start = os.getloadavg()[0]
    out = Path(args.out)
    sizes = {"100k": 100_000} if args.quick else {"100k": 100_000, "1M": 1_000_000}
    tag = f"d{DIM}-ef{args.ef_search}-efc{args.ef_construction}"
    bundles = {
        name: ensure_bundle(out / f"hnsw-{name}-{tag}", n, args.ef_search, args.ef_construction)
        for name, n in sizes.items()
    }
    recall = {name: served_recall(path) for name, path in bundles.items()}
    print(
        f"recall@10 of Recommend vs exact search (500 known users, efSearch {args.ef_search}): "
        + ", ".join(f"{name} {r:.3f}" for name, r in recall.items()),
        flush=True,
    )
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    Target = tuple[str, str, Path | None, dict[str, str], bool, tuple[str, ...]]
    targets: list[Target] = [("echo", "echo", None, env, True, ())]
    for name, path in bundles.items():
        for mode in args.batching:
            suffix = f", batching {mode}" if len(args.batching) > 1 else ""
            targets.append((f"Recommend {name}{suffix}", "real", path, env, mode == "on", ()))
            for line in args.also_set:  # the same server with one config line changed, same rounds
                lines = tuple(x.strip() for x in line.split(";"))
                targets.append((f"Recommend {name}{suffix}, {line}", "real", path, env, mode == "on", lines))
    if args.blas_default:
        blas = {k: v for k, v in env.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
        targets.append(("Recommend 100k, default BLAS/OMP threads", "real", bundles["100k"], blas, False, ()))

    cells: dict[tuple[str, int, int], list[dict[str, float]]] = {}
    for rnd in range(max(1, args.rounds)):
        for workers in args.workers:
            ceiling: dict[int, dict[str, float]] = {}
            for label, kind, path, server_env, batching, also in targets:
                proc, port = start_server(kind, path, workers, server_env, batching, [*args.server_set, *also])
                try:
                    wait_serving(port, proc)
                    for clients in args.clients:
                        cpu0 = sum(cpu_seconds(pid) for pid in _pids(proc))
                        r = load(port, clients, args.duration, env)
                        cpu = sum(cpu_seconds(pid) for pid in _pids(proc)) - cpu0
                        # warm-up calls (100 per client) are served inside the window too
                        r["cpu_ms"] = cpu * 1e3 / (r["n"] + 100 * clients)
                        if kind == "echo":
                            ceiling[clients] = r
                        base = ceiling.get(clients)
                        r["ratio"] = r["qps"] / base["qps"] if base else float("nan")
                        cells.setdefault((label, workers, clients), []).append(r)
                        print(
                            f"round {rnd + 1} {label:42s} procs={workers} clients={clients} qps={r['qps']:8.0f} "
                            f"p50={r['p50']:6.2f} ms p99={r['p99']:6.2f} ms  x echo {r['ratio']:.2f}  "
                            f"server CPU {r['cpu_ms']:.3f} ms/call",
                            flush=True,
                        )
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(60)

    import numpy as np

    rows = []
    for (label, workers, clients), rs in cells.items():
        med = {key: float(np.median([r[key] for r in rs])) for key in ("qps", "p50", "p99", "ratio", "cpu_ms")}
        lo, hi = min(r["ratio"] for r in rs), max(r["ratio"] for r in rs)
        rows.append((label, workers, clients, med["qps"], med["p50"], med["p99"], med["ratio"], lo, hi, med["cpu_ms"]))
    print()
    print(
        f"machine: {os.cpu_count()} cores, load average at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f}; "
        f"{args.duration:g} s per cell; batching {'/'.join(args.batching)}; {max(1, args.rounds)} round(s), medians"
        + (
            f"; servers pinned to CPU {sorted(PIN['server'] or ())}, clients to {sorted(PIN['client'] or ())}"
            if args.pin
            else ""
        )
        + f"; recall@10 vs exact search (efSearch {args.ef_search}): "
        + ", ".join(f"{name} {r:.3f}" for name, r in recall.items())
    )
    print("| target | server procs | clients | QPS | p50 ms | p99 ms | QPS / echo | (min-max) | server CPU ms/call |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, workers, clients, qps, p50, p99, ratio, lo, hi, cpu_ms in rows:
        print(
            f"| {label} | {workers} | {clients} | {qps:,.0f} | {p50:.2f} | {p99:.2f} | {ratio:.2f} | "
            f"{lo:.2f}-{hi:.2f} | {cpu_ms:.3f} |"
        )
    keys = ("target", "procs", "clients", "qps", "p50_ms", "p99_ms", "x_echo", "x_echo_min", "x_echo_max",
            "server_cpu_ms_per_call")  # fmt: skip
    (out / "serve_load.json").write_text(json.dumps([dict(zip(keys, r)) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
