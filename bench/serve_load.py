"""Load benchmark of the gRPC service: echo ceiling vs real Recommend over 100k / 1M-item bundles.

One run, one machine, loopback only. Every server is its own process (``recfuse-serve`` for the real
service; an echo server built from the same pieces — ``grpc.server`` + thread pool + the same
interceptors and options, answering Recommend with an empty response — for the ceiling). Load comes
from 1 or 4 client processes (each one channel, one call at a time, for ``--duration`` seconds after a
warm-up), so clients never share the server's GIL. Reported: QPS, p50/p99 latency (client side, ms)
and QPS/p99 relative to the echo ceiling with the same number of clients and server processes.

Bundles are built once per size, ``--factory`` and vector source, and cached under ``runs/bench/``
(1M items with HNSW32: several minutes). Each is written as export writes one: served query vectors
(the load's users' own query vectors) go in, efSearch / nprobe is tuned to ``--target`` on them
(unless ``--ef-search`` fixes it), and ``--factory auto`` chooses the index type by measurement
(recfuse.index.choose). Every QPS row shows the served recall@10 of its server's bundle: what
Recommend returns for 500 of the load's users against exact search over the same item vectors.

Vector sources:

- default: random-but-structured (tests/bundle_factory.py: 64-d unit vectors near 8 category centres,
  users with histories inside one category, a real NumpyQueryTower pooling them);
- ``--vectors ITEMS.npy [--queries QUERIES.npy]``: item vectors from a file (``[n, d]``, tiled to the
  size when shorter); the users' query vectors from the file, else history-like queries (the
  normalised mean of 1-5 random items' vectors);
- ``--from-model MODEL_DIR``: a trained recfuse model (``recfuse train --config
  data_samples/recfuse.toml --out runs/bench/sample-model``). Its query vectors are the model's own
  (export's ``served_query_vectors``: known users' vectors and history-only queries through the
  query tower). Its item vectors, as the index ranks them (embeddings times the popularity prior's
  factor), are scaled up to the size by sampling a trained item and adding Gaussian noise of a
  quarter of the typical nearest-neighbour distance, norm kept: the catalog keeps the model's
  geometry (its clusters, densities and norms) at 100k / 1M items. Why not embed more items: the
  shipped sample has 1,500 items, and ``recfuse embed`` of synthesised catalog rows (or
  vector-only items through the candidate tower) would lay the new items out by whatever text and
  images were synthesised, not by what the model learned; the perturbed copies are denser than a
  real catalog of that size (each trained item has ~70 / ~700 near copies), which makes ANN search
  harder, not easier.

In both file and model modes the bundle's query tower hands each user its query vector (an
identity layer over a per-user embedding), so the load queries with exactly those vectors.

Usage:
    python bench/serve_load.py --quick            # 100k only, HNSW32 and factory auto
    python bench/serve_load.py --quick --workers 2 --clients 4 --from-model runs/bench/sample-model
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

import numpy as np

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
def ensure_bundle(
    out: Path, n_items: int, factory: str, target: float, ef_search: int | None, ef_construction: int = 80,
    source: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Build (once) a bundle of ``n_items`` under ``out`` as export builds one (see the module
    docstring); ``source``: ``(item vectors [n, d], user query vectors [m, d])`` instead of random ones."""
    from recfuse.bundle import write_bundle
    from recfuse.bundle.publish import list_variants
    from recfuse.config import IndexConfig
    from recfuse.forward.query import QueryEncoder
    from recfuse.index.choose import auto_index

    if list_variants(out):
        return out
    sys.path.insert(0, str(ROOT / "tests"))
    from bundle_factory import make_contents

    t0 = time.perf_counter()
    print(f"building {n_items:,}-item {factory} bundle in {out} (cached for later runs) ...", flush=True)
    cfg = IndexConfig(factory=factory, ef_search=ef_search, ef_construction=ef_construction, target_recall=target,
                      recall_queries=200, threads=0)  # fmt: skip
    dim = DIM if source is None else source[0].shape[1]
    contents = make_contents(n_items, dim, n_users=N_USERS, index_cfg=cfg)
    if source is not None:
        contents.item_vectors = np.ascontiguousarray(source[0], np.float32)
        contents.query_tower = passthrough_tower(dim, contents.user_vocab.size, contents.user_vocab.num_oov, source[1])
    users = [f"u{j}" for j in range(N_USERS)]
    enc = QueryEncoder(contents.query_tower, contents.item_vectors)
    voc = contents.user_vocab
    hists = [np.array([int(i[1:]) for i in contents.user_history[u]], np.int64) for u in users]
    contents.served_queries = enc.encode_many([voc.lookup_one(u) for u in users], hists)[:2000]
    contents.served_queries_about = "2000 of the load's users' query vectors"
    t1 = time.perf_counter()
    index, cfg = auto_index(contents.ranked_vectors, contents.served_queries, cfg)
    path = write_bundle(out, contents, cfg, index=index)
    m = json.loads((path / "manifest.json").read_text())
    served = m["served_recall"]
    done = time.perf_counter()
    print(f"  built in {done - t0:.0f} s (index choice + build + tuning {done - t1:.0f} s): {m['index_factory']} "
          f"{served['search_params']}, served recall@10 {served['recall']:.4f}", flush=True)  # fmt: skip
    for row in (m.get("index_choice") or {}).get("candidates", []):
        print(f"    candidate {row}", flush=True)
    return out


def passthrough_tower(dim: int, vocab_size: int, num_oov: int, queries: np.ndarray):  # type: ignore[no-untyped-def]
    """A NumpyQueryTower whose output for user row ``num_oov + j`` is ``queries[j % m]`` (normalised):
    the history weights are zero, the user block is the identity."""
    from recfuse.forward.query import NumpyQueryTower

    f32 = np.float32
    rng = np.random.default_rng(0)
    w = np.zeros((2 * dim + 1, dim), f32)
    w[dim : 2 * dim] = np.eye(dim, dtype=f32)
    users = np.zeros((vocab_size, dim), f32)
    users[num_oov:] = queries[np.arange(vocab_size - num_oov) % len(queries)]
    return NumpyQueryTower(
        attn_w=(0.1 * rng.standard_normal((dim, 16))).astype(f32), attn_b=np.zeros(16, f32),
        attn_v=(0.1 * rng.standard_normal(16)).astype(f32), recency=-0.1, mlp=((w, np.zeros(dim, f32)),),
        user_embedding=users, normalize=True,
    )  # fmt: skip


def history_like(x: np.ndarray, m: int, seed: int = 1) -> np.ndarray:
    """``m`` normalised means of 1-5 random rows of ``x`` (as a pooled history lies between items)."""
    rng = np.random.default_rng(seed)
    q = np.stack([x[rng.integers(0, len(x), s)].mean(axis=0) for s in rng.integers(1, 6, m)]).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def scale_up(base: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` vectors: random rows of ``base`` plus Gaussian noise of a quarter of the median
    nearest-neighbour distance among ``base``, each rescaled to its parent's norm."""
    rng = np.random.default_rng(seed)
    b = base.astype(np.float32)
    probe = b[rng.choice(len(b), min(2000, len(b)), replace=False)]
    d2 = (probe**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * probe @ b.T
    nn = np.sqrt(np.maximum(np.sort(d2, axis=1)[:, 1], 0))  # column 0: the row itself
    sigma = 0.25 * float(np.median(nn)) / np.sqrt(b.shape[1])
    rows = rng.integers(0, len(b), n)
    x = b[rows] + sigma * rng.standard_normal((n, b.shape[1])).astype(np.float32)
    x *= (np.linalg.norm(b[rows], axis=1) / np.maximum(np.linalg.norm(x, axis=1), 1e-12))[:, None]
    return x.astype(np.float32)


def model_source(model_dir: Path, n: int, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors scaled up to ``n`` from a trained model's ranked item vectors, and its own query
    vectors (export's served_query_vectors), cached as .npy under ``cache``."""
    items, queries = cache / f"items-{n}.npy", cache / "queries.npy"
    if not (items.is_file() and queries.is_file()):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from recfuse.bundle.export import served_query_vectors
        from recfuse.models.trained import TrainedModel

        model = TrainedModel.load(model_dir)
        base = np.asarray(model.item_embeddings, np.float32)
        if model.ranking_scale is not None:
            base = base * np.asarray(model.ranking_scale, np.float32)[:, None]
        q, about = served_query_vectors(model, N_USERS, seed=0)
        cache.mkdir(parents=True, exist_ok=True)
        np.save(items, scale_up(base, n))
        np.save(queries, q)
        print(f"model {model_dir}: {len(base)} trained items scaled up to {n:,}; {about}", flush=True)
    return np.load(items), np.load(queries)


def served_recall(bundles: Path, n_users: int = 500, k: int = 10) -> float:
    """Recall@k of what Recommend serves (index search) against exact search over every item vector,
    for ``n_users`` known users by id, as the load sends them. The index's build-time recall
    (manifest ``ann_recall``) uses item vectors as queries, which sit in sparser places than users'."""
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
            hits += len(set(rec.recommend(user_id=u, k=k).rows) & set(want.tolist()))
    return hits / (n_users * k)


def file_source(vectors: Path, queries: Path | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.load(vectors).astype(np.float32)
    x = x[np.arange(n) % len(x)] if len(x) != n else x
    return x, (np.load(queries).astype(np.float32) if queries else history_like(x, N_USERS))


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
    p.add_argument("--items", type=int, default=100_000, help="size of the smaller bundle (100k)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds of load per measurement")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="server processes (SO_REUSEPORT)")
    p.add_argument(
        "--factory", nargs="+", default=["HNSW32", "auto"],
        help="index factory of the Recommend bundles, one bundle each (auto: chosen by measurement as export does)",
    )  # fmt: skip
    p.add_argument("--target", type=float, default=0.95, help="index.target_recall the bundles are tuned to")
    p.add_argument("--ef-search", type=int, default=None, help="fix efSearch instead of tuning it to --target")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--vectors", type=Path, help="item vectors [n, d] .npy instead of random ones")
    src.add_argument("--from-model", type=Path, help="trained recfuse model directory: its vectors, scaled up")
    p.add_argument("--queries", type=Path, help="with --vectors: the users' query vectors [m, d] .npy")
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
    small = {f"{args.items // 1000}k" if args.items < 1_000_000 else f"{args.items / 1e6:g}M": args.items}
    sizes = small if args.quick else {**small, "1M": 1_000_000}
    fixed = f"ef{args.ef_search}" if args.ef_search else f"t{args.target:g}"
    if args.from_model:
        vectors_kind = f"model-{args.from_model.name}"
    elif args.vectors:
        vectors_kind = f"file-{args.vectors.stem}"
    else:
        vectors_kind = f"random-d{DIM}"
    bundles: dict[str, Path] = {}
    for name, n in sizes.items():
        source = None
        if args.from_model:
            source = model_source(args.from_model, n, out / f"{vectors_kind}-vectors")
        elif args.vectors:
            source = file_source(args.vectors, args.queries, n)
        for factory in args.factory:
            tag = f"{vectors_kind}-{factory.replace(',', '_')}-{fixed}-efc{args.ef_construction}"
            bundles[f"{name} {factory}"] = ensure_bundle(
                out / f"serve-{name}-{tag}", n, factory, args.target, args.ef_search, args.ef_construction, source
            )
    recall = {name: served_recall(path) for name, path in bundles.items()}
    chosen = {name: _index_text(path) for name, path in bundles.items()}
    print(
        "served recall@10 of Recommend vs exact search (500 of the load's users): "
        + ", ".join(f"{name} ({chosen[name]}) {r:.4f}" for name, r in recall.items()),
        flush=True,
    )
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    Target = tuple[str, str, Path | None, dict[str, str], bool, tuple[str, ...]]
    targets: list[Target] = [("echo", "echo", None, env, True, ())]
    bundle_of: dict[str, str] = {}  # target label -> its bundle's name (for the recall column)
    for name, path in bundles.items():
        for mode in args.batching:
            suffix = f", batching {mode}" if len(args.batching) > 1 else ""
            targets.append((f"Recommend {name}{suffix}", "real", path, env, mode == "on", ()))
            bundle_of[f"Recommend {name}{suffix}"] = name
            for line in args.also_set:  # the same server with one config line changed, same rounds
                lines = tuple(x.strip() for x in line.split(";"))
                targets.append((f"Recommend {name}{suffix}, {line}", "real", path, env, mode == "on", lines))
                bundle_of[f"Recommend {name}{suffix}, {line}"] = name
    if args.blas_default:
        blas = {k: v for k, v in env.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
        first = next(iter(bundles))
        targets.append((f"Recommend {first}, default BLAS/OMP threads", "real", bundles[first], blas, False, ()))
        bundle_of[f"Recommend {first}, default BLAS/OMP threads"] = first

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
                        r["recall"] = recall.get(bundle_of.get(label, ""), float("nan"))
                        print(
                            f"round {rnd + 1} {label:42s} procs={workers} clients={clients} qps={r['qps']:8.0f} "
                            f"p50={r['p50']:6.2f} ms p99={r['p99']:6.2f} ms  x echo {r['ratio']:.2f}  "
                            f"recall@10 {r['recall']:.4f}  "
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
        rows.append((label, workers, clients, med["qps"], med["p50"], med["p99"], med["ratio"], lo, hi, med["cpu_ms"],
                     rs[0]["recall"]))  # fmt: skip
    print()
    print(
        f"machine: {os.cpu_count()} cores, load average at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f}; "
        f"{args.duration:g} s per cell; batching {'/'.join(args.batching)}; {max(1, args.rounds)} round(s), medians"
        + (
            f"; servers pinned to CPU {sorted(PIN['server'] or ())}, clients to {sorted(PIN['client'] or ())}"
            if args.pin
            else ""
        )
        + f"; vectors: {vectors_kind}; indexes: "
        + ", ".join(f"{name} = {chosen[name]}" for name in bundles)
    )
    print("| target | server procs | clients | served recall@10 | QPS | p50 ms | p99 ms | QPS / echo | (min-max) "
          "| server CPU ms/call |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, workers, clients, qps, p50, p99, ratio, lo, hi, cpu_ms, rec in rows:
        print(
            f"| {label} | {workers} | {clients} | {'-' if rec != rec else f'{rec:.4f}'} | {qps:,.0f} | {p50:.2f} | "
            f"{p99:.2f} | {ratio:.2f} | {lo:.2f}-{hi:.2f} | {cpu_ms:.3f} |"
        )
    keys = ("target", "procs", "clients", "qps", "p50_ms", "p99_ms", "x_echo", "x_echo_min", "x_echo_max",
            "server_cpu_ms_per_call", "served_recall_at_10")  # fmt: skip
    (out / "serve_load.json").write_text(json.dumps([dict(zip(keys, r)) for r in rows], indent=1))
    return 0


def _index_text(bundles: Path) -> str:
    """``IVF1024,Flat nprobe=16`` of a bundle's manifest."""
    from recfuse.bundle.manifest import read_manifest

    variant = next(p for p in bundles.iterdir() if p.is_dir() and not p.name.startswith("."))
    m = read_manifest(variant / (variant / "CURRENT").read_text().strip())
    served = m.get("served_recall") or {}
    params = " ".join(f"{k}={v}" for k, v in (served.get("tuned") or served.get("search_params") or {}).items())
    return f"{m['index_factory']} {params}".strip()


if __name__ == "__main__":
    raise SystemExit(main())
