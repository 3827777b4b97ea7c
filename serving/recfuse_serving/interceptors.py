"""Server interceptors: observability (request ids, JSON access log, metrics), bearer auth, limits.

Order (outermost first, as passed to ``grpc.server``): :class:`ObservabilityInterceptor` sees every
call, including ones the others reject; :class:`AuthInterceptor` rejects before any work;
:class:`LimitInterceptor` bounds concurrency and rate. All three wrap unary-unary methods only: the
health service (``Watch`` streams) and reflection (bidirectional) pass through untouched and stay
open without a token, so load balancers and ``grpcurl list`` work; they reveal no data.

Example:
    >>> interceptors = [ObservabilityInterceptor(ServingMetrics()), AuthInterceptor(("s3cret-token",))]
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from recfuse.errors import ResourceExhaustedError
from recfuse_serving.logs import REQUEST_ID
from recfuse_serving.metrics import ServingMetrics
from recfuse_serving.status import UnauthenticatedError, abort_with

logger = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID = 128

Behavior = Callable[[Any, grpc.ServicerContext], Any]


def _wrap_unary(handler: grpc.RpcMethodHandler | None, wrap: Callable[[Behavior], Behavior]) -> Any:
    if handler is None or handler.request_streaming or handler.response_streaming or handler.unary_unary is None:
        return handler
    return grpc.unary_unary_rpc_method_handler(
        wrap(handler.unary_unary),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _WrapCache:
    """Wrapped handlers per method, built once: grpc runs ``intercept_service`` on every call, and
    building a new handler and closures each time costs more than the interception itself. An entry
    is reused only while ``continuation`` returns the very handler it was built from."""

    def __init__(self, wrap: Callable[[str, Behavior], Behavior]) -> None:
        self._wrap = wrap
        self._entries: dict[str, tuple[Any, Any]] = {}

    def get(self, method: str, handler: grpc.RpcMethodHandler | None) -> Any:
        entry = self._entries.get(method)
        if entry is not None and entry[0] is handler:
            return entry[1]
        wrapped = _wrap_unary(handler, lambda behavior: self._wrap(method, behavior))
        self._entries[method] = (handler, wrapped)  # a racing rebuild is harmless (same result)
        return wrapped


def _metadata_value(metadata: Sequence[tuple[str, str | bytes]] | None, key: str) -> str:
    for k, v in metadata or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("utf-8", "replace")
    return ""


def _metadata(details: grpc.HandlerCallDetails, key: str) -> str:
    return _metadata_value(details.invocation_metadata, key)


def new_request_id() -> str:
    """A random 128-bit id as 32 hex characters (what a uuid4 ``.hex`` looks like, ~5x cheaper)."""
    return os.urandom(16).hex()


class ObservabilityInterceptor(grpc.ServerInterceptor):
    """Request id (request field > ``x-request-id`` header > new random id), metrics and a JSON access log line.

    The id is put in :data:`recfuse_serving.logs.REQUEST_ID` for the handler and returned as the
    ``x-request-id`` trailing metadata. The answering variant is read from the response's ``variant``.
    """

    def __init__(self, metrics: ServingMetrics, access_log: bool = True) -> None:
        self.metrics = metrics
        self.access_log = access_log
        self._cache = _WrapCache(self._observe)

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        return self._cache.get(handler_call_details.method, continuation(handler_call_details))

    def _observe(self, method: str, behavior: Behavior) -> Behavior:
        rpc = method.rsplit("/", 1)[-1]
        metrics = self.metrics
        inflight = metrics.inflight

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            request_id = getattr(request, "request_id", "") or _metadata_value(
                context.invocation_metadata(), REQUEST_ID_HEADER
            )
            request_id = request_id[:MAX_REQUEST_ID] or new_request_id()
            token = REQUEST_ID.set(request_id)
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
            inflight.inc()
            start = time.perf_counter()
            code, variant = "OK", ""
            try:
                response = behavior(request, context)
                variant = getattr(response, "variant", "")
                return response
            except BaseException:
                status = context.code() if hasattr(context, "code") else None
                code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
                raise
            finally:
                elapsed = time.perf_counter() - start
                inflight.dec()
                metrics.observe(rpc, code, variant, elapsed)
                if self.access_log and logger.isEnabledFor(logging.INFO):
                    logger.info(
                        "%s %s",
                        rpc,
                        code,
                        extra={"rpc": rpc, "code": code, "ms": round(elapsed * 1000, 3), "variant": variant},
                    )
                REQUEST_ID.reset(token)

        return observed


class AuthInterceptor(grpc.ServerInterceptor):
    """Bearer-token auth: ``authorization: Bearer <token>`` must match one of ``tokens`` (constant-time)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens:
            raise ValueError("`tokens` must hold at least one token; leave the interceptor out to disable auth")
        self._tokens = [t.encode() for t in tokens]

    def _ok(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        given = token.strip().encode()
        return any(hmac.compare_digest(given, t) for t in self._tokens)

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        header = _metadata(handler_call_details, "authorization")
        if self._ok(header):
            return handler
        reason = "missing `authorization` metadata" if not header else "wrong bearer token"

        def wrap(_behavior: Behavior) -> Behavior:
            def reject(_request: Any, context: grpc.ServicerContext) -> Any:
                abort_with(
                    context,
                    UnauthenticatedError(f"{reason}; send `authorization: Bearer <token>` with a configured token"),
                )

            return reject

        return _wrap_unary(handler, wrap)


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
        self._cache = _WrapCache(self._limit)

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
