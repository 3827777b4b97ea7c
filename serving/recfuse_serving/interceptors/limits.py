"""Concurrency and rate limits: request slots with a short queue, a global and a per-connection token bucket."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc

from recfuse.errors import ResourceExhaustedError
from recfuse_serving.interceptors.wrapping import OPEN_PREFIXES, Behavior, WrapCache
from recfuse_serving.status import abort_with


class TokenBucket:
    """Thread-safe token bucket: ``rate`` tokens/s, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"`rate` must be > 0 tokens/s, got {rate!r}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate))
        self._tokens = self.burst
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class LimitInterceptor(grpc.ServerInterceptor):
    """At most ``max_concurrency`` RPCs in handlers; an RPC waits ``queue_timeout_s`` for a slot, then gets
    RESOURCE_EXHAUSTED. With ``rate_qps`` > 0 a global token bucket, and with ``peer_rate_qps`` > 0 one
    bucket per connection (``context.peer()``), also answer RESOURCE_EXHAUSTED."""

    MAX_PEERS = 10_000  # bound the per-connection table; it is cleared when full (buckets refill anyway)

    def __init__(
        self, max_concurrency: int, queue_timeout_s: float = 0.05, rate_qps: float = 0.0, peer_rate_qps: float = 0.0
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"`max_concurrency` must be >= 1, got {max_concurrency!r}")
        self.max_concurrency = max_concurrency
        self.queue_timeout_s = queue_timeout_s
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._bucket = TokenBucket(rate_qps) if rate_qps > 0 else None
        self.peer_rate_qps = peer_rate_qps
        self._peers: dict[str, TokenBucket] = {}
        self._peers_lock = threading.Lock()
        self._cache = WrapCache(self._limit)

    def _peer_ok(self, peer: str) -> bool:
        with self._peers_lock:
            bucket = self._peers.get(peer)
            if bucket is None:
                if len(self._peers) >= self.MAX_PEERS:
                    self._peers.clear()
                bucket = self._peers[peer] = TokenBucket(self.peer_rate_qps)
        return bucket.take()

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIXES):
            return handler
        return self._cache.get(method, handler)

    def _limit(self, _method: str, behavior: Behavior) -> Behavior:
        slots = self._slots

        def limited(request: Any, context: grpc.ServicerContext) -> Any:
            if self._bucket is not None and not self._bucket.take():
                abort_with(
                    context,
                    ResourceExhaustedError(
                        f"rate limit of {self._bucket.rate:g} requests/s exceeded; retry later with backoff"
                    ),
                )
            if self.peer_rate_qps > 0 and not self._peer_ok(context.peer()):
                abort_with(
                    context,
                    ResourceExhaustedError(
                        f"per-connection rate limit of {self.peer_rate_qps:g} requests/s exceeded; "
                        "retry later with backoff"
                    ),
                )
            # A free slot is taken without a timed wait (the common case; the timed path costs more).
            if not slots.acquire(blocking=False) and not slots.acquire(timeout=self.queue_timeout_s):
                abort_with(
                    context,
                    ResourceExhaustedError(
                        f"server busy: all {self.max_concurrency} request slots in use "
                        f"(waited {self.queue_timeout_s * 1000:.0f} ms); retry with backoff"
                    ),
                )
            try:
                return behavior(request, context)
            finally:
                slots.release()

        return limited
