"""Bearer-token auth for every method but health and reflection, and the guard of the admin service.

The admin service (``recfuse_api.v1.RecommenderAdmin``: ``Reload``) shares the server and port with
the read service. :class:`AuthInterceptor` (on when ``auth.tokens`` is set) wants a configured read
or admin token on every call, the admin service included; :class:`AdminInterceptor` (always on) then
lets an admin-service call through only with an admin token (``auth.admin_tokens``), or, when none is
configured, only from the server's own host.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

import grpc
from recfuse_api.v1 import recommender_pb2 as pb

from recfuse_serving.interceptors.wrapping import OPEN_PREFIXES, Behavior, metadata, reject_with, wrap_unary
from recfuse_serving.status import PermissionDeniedError, UnauthenticatedError, abort_with

ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["RecommenderAdmin"].full_name
# Every method of the admin service is guarded, including ones added later.
ADMIN_PREFIX = f"/{ADMIN_SERVICE}/"
ADMIN_METHODS = tuple(f"{ADMIN_PREFIX}{m.name}" for m in pb.DESCRIPTOR.services_by_name["RecommenderAdmin"].methods)


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
        header = metadata(handler_call_details, "authorization")
        if token_ok(header, self._tokens):
            return handler
        reason = "missing `authorization` metadata" if not header else "wrong bearer token"
        return reject_with(
            handler, UnauthenticatedError(f"{reason}; send `authorization: Bearer <token>` with a configured token")
        )


def token_ok(header: str, tokens: Sequence[bytes]) -> bool:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    given = token.strip().encode("utf-8", "replace")
    return any(hmac.compare_digest(given, t) for t in tokens)


LOOPBACK_PEERS = ("ipv4:127.", "ipv6:[::1]", "ipv6:[::ffff:127.", "unix:", "unix-abstract:")


def is_loopback_peer(peer: str) -> bool:
    """Whether a ``context.peer()`` string is a connection from this host (127.0.0.0/8, ::1, unix socket)."""
    return peer.startswith(LOOPBACK_PEERS)


class AdminInterceptor(grpc.ServerInterceptor):
    """Guards every method of the admin service (:data:`ADMIN_PREFIX`; today ``Reload``).

    With ``admin_tokens``: the call must carry one of them as its bearer token (none: UNAUTHENTICATED;
    another token: PERMISSION_DENIED). Without: only connections from this host may call them
    (PERMISSION_DENIED otherwise), so nobody on the network can make the server reload.
    """

    def __init__(self, admin_tokens: Sequence[str] = ()) -> None:
        self._admin = [t.encode() for t in admin_tokens]

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if not method.startswith(ADMIN_PREFIX):
            return handler
        if self._admin:
            header = metadata(handler_call_details, "authorization")
            if token_ok(header, self._admin):
                return handler
            if not header:
                return reject_with(
                    handler,
                    UnauthenticatedError(f"{method} needs `authorization: Bearer <admin token>` (auth.admin_tokens)"),
                )
            return reject_with(
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

        return wrap_unary(handler, wrap)
