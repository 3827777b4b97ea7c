"""Server interceptors: observability (request ids, JSON access log, metrics), bearer auth, limits.

Order (outermost first, as passed to ``grpc.server``): :class:`ObservabilityInterceptor` sees every
call, including ones the others reject; :class:`AuthInterceptor` rejects before any work;
:class:`LimitInterceptor` bounds concurrency and rate. All three wrap unary-unary methods: the
health service (``Watch`` streams) and reflection (bidirectional) stay open without a token, so load
balancers and ``grpcurl list`` work; they reveal no data.

Bytes that do not parse as the method's request message never reach a handler: the observability
interceptor wraps every method's deserializer (streaming ones too), so such a call is answered
INVALID_ARGUMENT (before auth: nothing is read from the bytes) with one rate-limited WARNING line,
instead of grpc's INTERNAL "Exception deserializing request!" and a traceback per request.

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

from recfuse.errors import InvalidRequestError, ResourceExhaustedError
from recfuse_serving.logs import REQUEST_ID
from recfuse_serving.metrics import ServingMetrics
from recfuse_serving.status import PermissionDeniedError, UnauthenticatedError, abort_with

logger = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID = 128

ADMIN_METHODS = ("/recfuse_api.v1.Recommender/Reload",)

Behavior = Callable[[Any, grpc.ServicerContext], Any]


class Undecodable:
    """What a wrapped deserializer returns for bytes that do not parse (grpc would answer INTERNAL)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


def safe_deserializer(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserialize`` that returns :class:`Undecodable` instead of raising (one extra frame per call)."""
    if deserialize is None:
        return None

    def safe(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # DecodeError, invalid UTF-8 in a string field, recursion limits…
            return Undecodable(len(data))

    return safe


class RateLimitedLog:
    """At most one log line per ``interval_s``; the line counts the events it stands for."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last = -float("inf")
        self._suppressed = 0
        self.lines = 0
        self._lock = threading.Lock()

    def hit(self) -> int | None:
        """Record one event; returns the number of events since the last line when one is due now."""
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.interval_s:
                self._suppressed += 1
                return None
            self._last, count, self._suppressed = now, self._suppressed + 1, 0
            self.lines += 1
            return count


def _wrap_unary(handler: grpc.RpcMethodHandler | None, wrap: Callable[[Behavior], Behavior]) -> Any:
    if handler is None or handler.request_streaming or handler.response_streaming or handler.unary_unary is None:
        return handler
    return grpc.unary_unary_rpc_method_handler(
        wrap(handler.unary_unary),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _undecodable_error(method: str, size: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"the {size}-byte request to {method} does not parse as its protobuf request message; "
        "send a message serialized from recfuse_api.v1 (see proto/recfuse_api/v1/recommender.proto)"
    )


def _guard_streaming(handler: grpc.RpcMethodHandler, method: str, on_bad: Callable[[str, int], None]) -> Any:
    """A streaming handler whose undecodable requests end the call with INVALID_ARGUMENT."""
    deserialize = safe_deserializer(handler.request_deserializer)
    serialize = handler.response_serializer

    def check(request: Any, context: grpc.ServicerContext) -> Any:
        if type(request) is Undecodable:
            on_bad(method, request.size)
            abort_with(context, _undecodable_error(method, request.size))
        return request

    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Any:
            return inner_us(check(request, context), context)

        return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, serialize)
    if handler.stream_stream is not None or handler.stream_unary is not None:
        inner = handler.stream_stream or handler.stream_unary

        def streaming(requests: Any, context: grpc.ServicerContext) -> Any:
            return inner((check(r, context) for r in requests), context)

        make = grpc.stream_stream_rpc_method_handler if handler.stream_stream else grpc.stream_unary_rpc_method_handler
        return make(streaming, deserialize, serialize)
    return handler


class _WrapCache:
    """Wrapped handlers per method, built once: grpc runs ``intercept_service`` on every call, and
    building a new handler and closures each time costs more than the interception itself. An entry
    is reused only while ``continuation`` returns the very handler it was built from."""

    def __init__(self, wrap: Callable[[str, Behavior], Behavior], build: Callable[..., Any] | None = None) -> None:
        self._wrap = wrap
        self._build = build
        self._entries: dict[str, tuple[Any, Any]] = {}

    def get(self, method: str, handler: grpc.RpcMethodHandler | None) -> Any:
        entry = self._entries.get(method)
        if entry is not None and entry[0] is handler:
            return entry[1]
        if self._build is not None:
            wrapped = self._build(method, handler)
        else:
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


def clean_request_id(value: str) -> str:
    """``value`` when it is 1..128 printable ASCII characters, else ``""`` (the caller makes a new id).

    Anything else cannot be sent back as ``x-request-id`` metadata (grpc fails the call *after* the
    work with "Invalid metadata") and would smuggle control characters into logs.
    """
    if value and len(value) <= MAX_REQUEST_ID and value.isascii() and value.isprintable():
        return value
    return ""


class ObservabilityInterceptor(grpc.ServerInterceptor):
    """Request id (request field > ``x-request-id`` header > new random id), metrics and a JSON access log line.

    The id is put in :data:`recfuse_serving.logs.REQUEST_ID` for the handler and returned as the
    ``x-request-id`` trailing metadata; a client id is used only when :func:`clean_request_id` keeps
    it. The answering variant is read from the response's ``variant``. Every method's deserializer
    is wrapped (:func:`safe_deserializer`): undecodable bytes are answered INVALID_ARGUMENT, logged at
    most once per ``undecodable_log_interval_s``, and counted like any other call.
    """

    def __init__(
        self, metrics: ServingMetrics, access_log: bool = True, undecodable_log_interval_s: float = 10.0
    ) -> None:
        self.metrics = metrics
        self.access_log = access_log
        self.undecodable_log = RateLimitedLog(undecodable_log_interval_s)
        self._cache = _WrapCache(self._observe, build=self._build)

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        return self._cache.get(handler_call_details.method, continuation(handler_call_details))

    def _build(self, method: str, handler: grpc.RpcMethodHandler | None) -> Any:
        if handler is None:
            return None
        if handler.request_streaming or handler.response_streaming or handler.unary_unary is None:
            return _guard_streaming(handler, method, self._log_undecodable)
        return grpc.unary_unary_rpc_method_handler(
            self._observe(method, handler.unary_unary),
            request_deserializer=safe_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _log_undecodable(self, method: str, size: int) -> None:
        count = self.undecodable_log.hit()
        if count is not None:
            logger.warning(
                "undecodable request to %s (%d bytes): answered INVALID_ARGUMENT; %d such request(s) since the "
                "last line of this kind (at most one line per %.0f s)",
                method,
                size,
                count,
                self.undecodable_log.interval_s,
            )

    def _observe(self, method: str, behavior: Behavior) -> Behavior:
        rpc = method.rsplit("/", 1)[-1]
        metrics = self.metrics
        inflight = metrics.inflight

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            request_id = clean_request_id(getattr(request, "request_id", "")) or clean_request_id(
                _metadata_value(context.invocation_metadata(), REQUEST_ID_HEADER)
            )
            request_id = request_id or new_request_id()
            token = REQUEST_ID.set(request_id)
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
            inflight.inc()
            start = time.perf_counter()
            code, variant = "OK", ""
            try:
                if type(request) is Undecodable:
                    self._log_undecodable(method, request.size)
                    abort_with(context, _undecodable_error(method, request.size))
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
    """Bearer-token auth: ``authorization: Bearer <token>`` must match one of ``tokens`` (constant-time).

    ``admin_tokens`` are accepted too (an admin may call everything); whether a caller may call an
    admin method is :class:`AdminInterceptor`'s decision.
    """

    def __init__(self, tokens: Sequence[str], admin_tokens: Sequence[str] = ()) -> None:
        if not tokens:
            raise ValueError("`tokens` must hold at least one token; leave the interceptor out to disable auth")
        self._tokens = [t.encode() for t in (*tokens, *admin_tokens)]

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        header = _metadata(handler_call_details, "authorization")
        if _token_ok(header, self._tokens):
            return handler
        reason = "missing `authorization` metadata" if not header else "wrong bearer token"
        return _reject(
            handler, UnauthenticatedError(f"{reason}; send `authorization: Bearer <token>` with a configured token")
        )


def _token_ok(header: str, tokens: Sequence[bytes]) -> bool:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    given = token.strip().encode("utf-8", "replace")
    return any(hmac.compare_digest(given, t) for t in tokens)


def _reject(handler: grpc.RpcMethodHandler | None, error: Exception) -> Any:
    def wrap(_behavior: Behavior) -> Behavior:
        def reject(_request: Any, context: grpc.ServicerContext) -> Any:
            abort_with(context, error)

        return reject

    return _wrap_unary(handler, wrap)


LOOPBACK_PEERS = ("ipv4:127.", "ipv6:[::1]", "ipv6:[::ffff:127.", "unix:", "unix-abstract:")


def is_loopback_peer(peer: str) -> bool:
    """Whether a ``context.peer()`` string is a connection from this host (127.0.0.0/8, ::1, unix socket)."""
    return peer.startswith(LOOPBACK_PEERS)


class AdminInterceptor(grpc.ServerInterceptor):
    """Guards the admin methods (:data:`ADMIN_METHODS`: ``Reload``).

    With ``admin_tokens``: the call must carry one of them as its bearer token (none: UNAUTHENTICATED;
    another token: PERMISSION_DENIED). Without: only connections from this host may call them
    (PERMISSION_DENIED otherwise), so nobody on the network can make the server reload.
    """

    def __init__(self, admin_tokens: Sequence[str] = ()) -> None:
        self._admin = [t.encode() for t in admin_tokens]

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if method not in ADMIN_METHODS:
            return handler
        if self._admin:
            header = _metadata(handler_call_details, "authorization")
            if _token_ok(header, self._admin):
                return handler
            if not header:
                return _reject(
                    handler,
                    UnauthenticatedError(f"{method} needs `authorization: Bearer <admin token>` (auth.admin_tokens)"),
                )
            return _reject(
                handler,
                PermissionDeniedError(
                    f"{method} needs an admin token (one of auth.admin_tokens); this token may only call the "
                    "read methods"
                ),
            )

        def wrap(behavior: Behavior) -> Behavior:
            def local_only(request: Any, context: grpc.ServicerContext) -> Any:
                if not is_loopback_peer(context.peer()):
                    abort_with(
                        context,
                        PermissionDeniedError(
                            f"{method} is accepted only from the server's own host unless auth.admin_tokens is "
                            "set; call it on 127.0.0.1 or send the server SIGHUP"
                        ),
                    )
                return behavior(request, context)

            return local_only

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
