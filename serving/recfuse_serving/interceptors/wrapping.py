"""Handler plumbing shared by the interceptors: wrapping unary behaviours, guarding deserializers, metadata.

grpc runs ``intercept_service`` on every call; :class:`WrapCache` builds each method's wrapped handler
once. :func:`safe_deserializer` turns bytes that do not parse into :class:`Undecodable` instead of
grpc's INTERNAL "Exception deserializing request!".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc

from recfuse.errors import InvalidRequestError
from recfuse_serving.status import abort_with

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

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


def wrap_unary(handler: grpc.RpcMethodHandler | None, wrap: Callable[[Behavior], Behavior]) -> Any:
    """``handler`` with its unary-unary behaviour passed through ``wrap`` (other kinds unchanged)."""
    if handler is None or handler.request_streaming or handler.response_streaming or handler.unary_unary is None:
        return handler
    return grpc.unary_unary_rpc_method_handler(
        wrap(handler.unary_unary),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def undecodable_error(method: str, size: int) -> InvalidRequestError:
    """The INVALID_ARGUMENT error of a ``size``-byte request to ``method`` that does not parse."""
    return InvalidRequestError(
        f"the {size}-byte request to {method} does not parse as its protobuf request message; "
        "send a message serialized from recfuse_api.v1 (see proto/recfuse_api/v1/recommender.proto)"
    )


def guard_streaming(handler: grpc.RpcMethodHandler, method: str, on_bad: Callable[[str, int], None]) -> Any:
    """A streaming handler whose undecodable requests end the call with INVALID_ARGUMENT."""
    deserialize = safe_deserializer(handler.request_deserializer)
    serialize = handler.response_serializer

    def check(request: Any, context: grpc.ServicerContext) -> Any:
        if type(request) is Undecodable:
            on_bad(method, request.size)
            abort_with(context, undecodable_error(method, request.size))
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


class WrapCache:
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
            wrapped = wrap_unary(handler, lambda behavior: self._wrap(method, behavior))
        self._entries[method] = (handler, wrapped)  # a racing rebuild is harmless (same result)
        return wrapped


def metadata_value(metadata: Sequence[tuple[str, str | bytes]] | None, key: str) -> str:
    """The first value of ``key`` in call metadata as text (``""`` when absent)."""
    for k, v in metadata or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("utf-8", "replace")
    return ""


def metadata(details: grpc.HandlerCallDetails, key: str) -> str:
    """The first value of ``key`` in the call's invocation metadata (``""`` when absent)."""
    return metadata_value(details.invocation_metadata, key)


def reject_with(handler: grpc.RpcMethodHandler | None, error: Exception) -> Any:
    """``handler`` answering every unary call with ``error`` (through the status table) before any work."""

    def wrap(_behavior: Behavior) -> Behavior:
        def reject(_request: Any, context: grpc.ServicerContext) -> Any:
            abort_with(context, error)

        return reject

    return wrap_unary(handler, wrap)
