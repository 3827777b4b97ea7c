"""Request ids, metrics and the JSON access log of every call (the outermost interceptor)."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import grpc

from recfuse_serving.interceptors.wrapping import (
    Behavior,
    Undecodable,
    WrapCache,
    guard_streaming,
    metadata_value,
    safe_deserializer,
    undecodable_error,
)
from recfuse_serving.logs import REQUEST_ID
from recfuse_serving.metrics import ServingMetrics
from recfuse_serving.status import abort_with

# The access log keeps the package's logger name, so filters on `recfuse_serving.interceptors` keep working.
logger = logging.getLogger("recfuse_serving.interceptors")

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID = 128


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
        self._cache = WrapCache(self._observe, build=self._build)

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        return self._cache.get(handler_call_details.method, continuation(handler_call_details))

    def _build(self, method: str, handler: grpc.RpcMethodHandler | None) -> Any:
        if handler is None:
            return None
        if handler.request_streaming or handler.response_streaming or handler.unary_unary is None:
            return guard_streaming(handler, method, self._log_undecodable)
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
                metadata_value(context.invocation_metadata(), REQUEST_ID_HEADER)
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
                    abort_with(context, undecodable_error(method, request.size))
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
