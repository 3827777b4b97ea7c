"""The recfuse gRPC server: ``create_server(config, bundles_dir) -> (server, port)`` and ``recfuse-serve``.

What one server process runs: the Recommender service and the RecommenderAdmin service (``Reload``;
admin token, or the server's own host when no admin tokens are configured) behind interceptors (JSON
access log + metrics, bearer auth, the admin guard, concurrency/rate limits), grpc health
(overall and ``Recommender``: ``NOT_SERVING`` until every routed variant has a bundle, then
``SERVING``; ``RecommenderAdmin``: ``SERVING`` from the start) and reflection, a reload watcher
thread, an optional exposure logger and a Prometheus endpoint on 127.0.0.1. SIGTERM/SIGINT: health
goes ``NOT_SERVING`` (``enter_graceful_shutdown``), in-flight calls drain for ``grace_s``, the
exposure logger is flushed, exit 0. SIGHUP: reload bundles now.

``--workers N`` starts N such processes sharing one port through ``SO_REUSEPORT`` (the kernel spreads
connections), which is how a Python server uses more than one core.

Example:
    >>> server, port = create_server(ServerConfig(port=0), "bundles")   # doctest: +SKIP
    >>> server.start(); server.wait_ready(30)                           # doctest: +SKIP
    >>> server.stop(grace=1.0)                                          # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from recfuse_api.v1 import recommender_pb2 as pb
from recfuse_api.v1 import recommender_pb2_grpc as pb_grpc

from recfuse.errors import ArtifactError, ConfigError, RecfuseError, UsageError, exit_code_for
from recfuse.inference import Limits
from recfuse.variants import ExposureLogger
from recfuse_serving.config import ServerConfig
from recfuse_serving.interceptors import (
    AdminInterceptor,
    AuthInterceptor,
    LimitInterceptor,
    ObservabilityInterceptor,
)
from recfuse_serving.logs import configure_json_logging
from recfuse_serving.metrics import ServingMetrics
from recfuse_serving.registry import VariantRegistry
from recfuse_serving.reload import ReloadWatcher
from recfuse_serving.servicer import RecommenderAdminServicer, RecommenderServicer
from recfuse_serving.threads import limit_blas_threads

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name
ADMIN_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommenderAdmin"].full_name


def limits_of(config: ServerConfig) -> Limits:
    """The library request limits a server config implies."""
    return Limits(
        max_k=config.max_k,
        max_history=config.max_history,
        max_id_length=config.max_id_length,
        max_exclusions=config.max_exclusions,
        max_categories=config.max_categories,
        max_batch=config.max_batch,
    )


def grpc_options(config: ServerConfig, reuse_port: bool = False) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]


class RecfuseServer:
    """A started-or-not gRPC server plus what it owns (registry, watcher, exposures, metrics endpoint).

    Attributes:
        grpc_server: the underlying ``grpc.Server``.
        port: bound gRPC port. metrics_port: bound metrics port (None when off).
        registry, metrics, health, exposures, watcher: the parts (tests inspect them).
    """

    def __init__(self, config: ServerConfig, bundles_dir: str | Path, reuse_port: bool = False) -> None:
        self.config = config
        self.metrics = ServingMetrics()
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.registry = VariantRegistry(
            bundles_dir,
            limits_of(config),
            config.ab,
            self.metrics,
            on_change=self._update_health,
            user_vectors_mb=config.user_vectors_mb,
            hugepages=config.hugepages,
            fallback=config.fallback,
            max_title_chars=config.max_title_chars,
            max_message_bytes=config.max_message_bytes,
        )
        self.exposures: ExposureLogger | None = None
        if config.exposures.directory:
            e = config.exposures
            self.exposures = ExposureLogger(e.directory, e.rotate_rows, e.rotate_seconds, e.queue_size)
            self.metrics.track_exposures(self.exposures.stats)
        self.watcher = ReloadWatcher(self.registry, config.reload_interval_s)
        interceptors: list[grpc.ServerInterceptor] = [ObservabilityInterceptor(self.metrics)]
        if config.auth.tokens:
            interceptors.append(AuthInterceptor(config.auth.tokens, config.auth.admin_tokens))
        interceptors.append(AdminInterceptor(config.auth.admin_tokens))
        interceptors.append(
            LimitInterceptor(
                config.max_concurrency, config.queue_timeout_s, config.rate_limit_qps, config.peer_rate_limit_qps
            )
        )
        # A few threads beyond the limit so an over-limit call is answered RESOURCE_EXHAUSTED at once
        # instead of queueing invisibly in the executor.
        self._pool = futures.ThreadPoolExecutor(max_workers=config.max_concurrency + 4, thread_name_prefix="rpc")
        self.grpc_server = grpc.server(self._pool, interceptors=interceptors, options=grpc_options(config, reuse_port))
        self.servicer = RecommenderServicer(self.registry, config, self.exposures)
        pb_grpc.add_RecommenderServicer_to_server(self.servicer, self.grpc_server)
        self.admin = RecommenderAdminServicer(self.registry.reload)
        pb_grpc.add_RecommenderAdminServicer_to_server(self.admin, self.grpc_server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, ADMIN_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc_server
        )
        self._update_health()
        # Admin actions work before any bundle has loaded (a Reload is how an operator fixes that).
        self.health.set(ADMIN_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        address = f"{config.host}:{config.port}"
        if config.tls.enabled:
            creds = grpc.ssl_server_credentials(
                [(Path(config.tls.key_file).read_bytes(), Path(config.tls.cert_file).read_bytes())]
            )
            self.port = self.grpc_server.add_secure_port(address, creds)
        else:
            self.port = self.grpc_server.add_insecure_port(address)
        if self.port == 0:
            raise ConfigError(f"could not bind gRPC to {address!r} (in use or not allowed); pick another --port")
        self.metrics_port: int | None = None
        self._stopped = threading.Event()

    def _update_health(self) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.registry.ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set("", status)
        self.health.set(SERVICE_NAME, status)

    def start(self) -> RecfuseServer:
        """Start serving, the reload watcher (first load happens right away) and the metrics endpoint.

        Raises:
            ArtifactError: ``fallback = "none"`` and a variant's ``CURRENT`` names a version that does not
                load (the first load then runs here, before the watcher; the server is stopped again).
        """
        self.grpc_server.start()
        if self.config.fallback == "none":
            first = self.registry.reload()
            if first.rejected:
                self.stop(grace=0.0)
                raise ArtifactError(
                    f'refusing to start: {"; ".join(first.rejected)} (fallback = "none"); fix CURRENT or set '
                    'fallback = "newest" to serve the newest version that verifies'
                )
        self.watcher.start()
        if self.config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(self.config.metrics_port)
        logger.info(
            "recfuse server listening on %s:%d (tls=%s, auth=%s, admin tokens=%s, metrics port %s)",
            self.config.host,
            self.port,
            self.config.tls.enabled,
            bool(self.config.auth.tokens),
            bool(self.config.auth.admin_tokens),
            self.metrics_port,
        )
        if self.config.auth.enabled and not self.config.tls.enabled:
            logger.warning(
                "bearer tokens are accepted over plaintext on %s%s; configure [tls] before exposing this port",
                self.config.host,
                " (auth.allow_insecure = true)" if self.config.auth.allow_insecure else "",
            )
        return self

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Block until every routed variant is loaded (health SERVING); False on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.registry.ready:
                return True
            time.sleep(0.02)
        return self.registry.ready

    def reload(self) -> object:
        """Reload bundles now (synchronously); returns the :class:`ReloadResult`."""
        return self.registry.reload()

    def stop(self, grace: float | None = None, drain_delay_s: float = 0.0) -> None:
        """Graceful stop (idempotent): health NOT_SERVING, keep answering for ``drain_delay_s`` (so load
        balancers and calls already on the wire find their way in), stop accepting, drain in-flight calls
        for ``grace`` s, flush exposures."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.grace_s if grace is None else grace
        self.health.enter_graceful_shutdown()
        if drain_delay_s > 0:
            time.sleep(drain_delay_s)
        self.watcher.stop()
        self.grpc_server.stop(grace).wait(grace + 5.0)
        self._pool.shutdown(wait=False)
        if self.exposures is not None:
            stats = self.exposures.close()
            logger.info("exposure log closed: %d written, %d dropped", stats.written, stats.dropped)
        self.metrics.stop()
        logger.info("recfuse server on port %d stopped", self.port)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)


def create_server(
    config: ServerConfig, bundles_dir: str | Path, *, reuse_port: bool = False
) -> tuple[RecfuseServer, int]:
    """Build (not start) a server over ``bundles_dir``; returns it and the bound port (``port=0`` picks one).

    Raises:
        ConfigError: the address cannot be bound or the config is inconsistent.
    """
    server = RecfuseServer(config, bundles_dir, reuse_port=reuse_port)
    return server, server.port


# ---------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recfuse-serve", description="Serve recfuse bundles over gRPC.")
    p.add_argument("--bundles", required=True, help="bundles root (holds <variant>/CURRENT)")
    p.add_argument("--config", help="server.toml (flags below override it)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051; 0 = any free port)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port on 127.0.0.1 (-1 = off)")
    p.add_argument("--workers", type=int, help="server processes sharing the port with SO_REUSEPORT")
    p.add_argument("--exposures", help="directory for exposure Parquet files (overrides [exposures].directory)")
    p.add_argument("--log-level", default="INFO", help="log level (JSON lines on stderr)")
    p.add_argument("--port-file", help="write the bound gRPC port here once listening (for scripts/tests)")
    return p


def _run_one(config: ServerConfig, args: argparse.Namespace, reuse_port: bool) -> int:
    server, port = create_server(config, args.bundles, reuse_port=reuse_port)
    done = threading.Event()

    def on_term(signum: int, _frame: FrameType | None) -> None:
        logger.info(
            "signal %d: graceful shutdown (NOT_SERVING, %.1f s drain delay, %.1f s grace)",
            signum,
            config.shutdown_delay_s,
            config.grace_s,
        )
        done.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, lambda *_: server.watcher.trigger())
    server.start()
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, args.port_file)
    while not done.wait(0.5):
        pass
    server.stop(drain_delay_s=config.shutdown_delay_s)
    return 0


def _without_flags(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """``argv`` minus ``--flag VALUE`` / ``--flag=VALUE`` for each of ``flags``."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not a.startswith(tuple(f + "=" for f in flags)):
            out.append(a)
    return out


def _run_workers(config: ServerConfig, args: argparse.Namespace, argv: list[str]) -> int:
    """Supervise N single-worker processes on one SO_REUSEPORT port; forward signals; exit 0 when all do."""
    if config.port == 0:
        raise UsageError("`--workers` > 1 needs a fixed --port (each worker binds the same one with SO_REUSEPORT)")
    base = _without_flags(argv, ("--workers", "--metrics-port"))
    children = []
    for i in range(config.workers):
        child_argv = [*base, "--workers", "1"]
        env = dict(os.environ, RECFUSE_SERVE_REUSEPORT="1")
        if config.metrics_port > 0:
            child_argv += ["--metrics-port", str(config.metrics_port + i)]
        elif config.metrics_port == 0:
            child_argv += ["--metrics-port", "0"]
        children.append(subprocess.Popen([sys.executable, "-m", "recfuse_serving.server", *child_argv], env=env))

    def forward(signum: int, _frame: FrameType | None) -> None:
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    codes = [c.wait() for c in children]
    return max(codes)


def main(argv: list[str] | None = None) -> int:
    """``recfuse-serve`` entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    configure_json_logging(args.log_level.upper())
    wanted = os.environ.get("OPENBLAS_NUM_THREADS", "1")
    threads = limit_blas_threads(int(wanted) if wanted.isdigit() and int(wanted) > 0 else 1)
    logger.info("BLAS threads per library: %s", threads or "no OpenBLAS loaded")
    try:
        config = ServerConfig.from_toml(args.config) if args.config else ServerConfig()
        config = config.with_overrides(
            host=args.host, port=args.port, metrics_port=args.metrics_port, workers=args.workers
        )
        if args.exposures:
            from dataclasses import replace

            config = replace(config, exposures=replace(config.exposures, directory=args.exposures))
        if not Path(args.bundles).is_dir():
            raise UsageError(f"--bundles {args.bundles!r} is not a directory; pass the bundles root")
        if config.workers > 1:
            return _run_workers(config, args, argv)
        return _run_one(config, args, reuse_port=os.environ.get("RECFUSE_SERVE_REUSEPORT") == "1")
    except RecfuseError as exc:
        logger.error("recfuse-serve: %s", exc)
        return exit_code_for(exc)


if __name__ == "__main__":
    sys.exit(main())
