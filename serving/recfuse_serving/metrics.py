"""Prometheus metrics of one server process, on its own registry, served on a 127.0.0.1 port.

Names (all prefixed ``recfuse_``): ``requests_total{rpc,code}``, ``errors_total{rpc,code}``,
``request_latency_seconds{rpc,variant}`` (histogram), ``inflight_requests``,
``bundle_info{variant,version}`` (1 for the version serving now), ``reloads_total{variant,result}``
(result ok/failed), ``exposures_logged_total``/``exposures_dropped_total``/``exposures_failed_total``
(read from the exposure logger at scrape time, so drops are never silent).

Example:
    >>> m = ServingMetrics()
    >>> m.observe("Recommend", "OK", "attention", 0.002)
    >>> b"recfuse_requests_total" in m.render()
    True
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from recfuse.variants import ExposureStats

# 0.25 ms .. 2.5 s: the request path is ~1 ms, batches and 1M-item searches reach tens of ms.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.5)


class _ExposureCollector(Collector):
    def __init__(self) -> None:
        self.source: Callable[[], ExposureStats] | None = None

    def collect(self):  # type: ignore[no-untyped-def]
        if self.source is None:
            return
        stats = self.source()
        for name, value, doc in (
            ("recfuse_exposures_logged", stats.logged, "Exposure rows accepted for writing"),
            ("recfuse_exposures_dropped", stats.dropped, "Exposure rows dropped (queue full): A/B data lost"),
            ("recfuse_exposures_failed", stats.failed, "Exposure rows lost to failed file writes"),
            ("recfuse_exposures_written", stats.written, "Exposure rows written to Parquet"),
        ):
            fam = CounterMetricFamily(name, doc)
            fam.add_metric([], float(value))
            yield fam


class ServingMetrics:
    """The server's metrics (one instance per server; thread-safe, as prometheus_client is)."""

    MAX_CACHED_LABELS = 4096  # label tuples whose children are cached (rpc x code x variant is small)

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "recfuse_requests", "RPCs handled, by method and status code", ["rpc", "code"], registry=r
        )
        self.errors = Counter(
            "recfuse_errors", "RPCs that failed, by method and status code", ["rpc", "code"], registry=r
        )
        self.latency = Histogram(
            "recfuse_request_latency_seconds",
            "Server-side RPC latency by method and answering variant",
            ["rpc", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge("recfuse_inflight_requests", "RPCs being handled now", registry=r)
        self.bundle = Gauge(
            "recfuse_bundle_info", "1 for the bundle version serving each variant", ["variant", "version"], registry=r
        )
        self.reloads = Counter("recfuse_reloads", "Bundle reload attempts by result", ["variant", "result"], registry=r)
        self._exposures = _ExposureCollector()
        r.register(self._exposures)
        self._lock = threading.Lock()
        self._versions: dict[str, str] = {}
        self._http: WSGIServer | None = None
        self._children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}

    def observe(self, rpc: str, code: str, variant: str, seconds: float) -> None:
        """Record one finished RPC."""
        # Labelled children cached per label tuple: ``labels()`` costs more than the update itself.
        key = (rpc, code, variant)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(rpc, code),
                self.errors.labels(rpc, code) if code != "OK" else None,
                self.latency.labels(rpc, variant or "-"),
            )
            if len(self._children) < self.MAX_CACHED_LABELS:
                self._children[key] = children
        requests, errors, latency = children
        requests.inc()
        if errors is not None:
            errors.inc()
        latency.observe(seconds)

    def set_bundle(self, variant: str, version: str) -> None:
        """Mark ``version`` as serving ``variant`` (the previous version's series goes to 0)."""
        with self._lock:
            old = self._versions.get(variant)
            if old is not None and old != version:
                self.bundle.labels(variant, old).set(0)
            self._versions[variant] = version
            self.bundle.labels(variant, version).set(1)

    def track_exposures(self, source: Callable[[], ExposureStats]) -> None:
        """Read exposure counters from ``source`` at every scrape."""
        self._exposures.source = source

    def render(self) -> bytes:
        """The text exposition (what the endpoint serves)."""
        return generate_latest(self.registry)

    def serve(self, port: int) -> int:
        """Start the HTTP endpoint on 127.0.0.1:``port`` (0 = a free port); returns the bound port."""
        httpd, _thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        self._http = httpd
        return int(httpd.server_address[1])

    def stop(self) -> None:
        """Stop the HTTP endpoint (idempotent)."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
