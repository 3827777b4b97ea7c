"""The ONE table from errors to gRPC status codes, and the one place that aborts an RPC.

Handlers raise (library :class:`~recfuse.errors.RecfuseError` subclasses, or the serving-only errors
below); :func:`abort_with` — called only by the servicer's single wrapper and the interceptors —
looks the exception up here (most specific class first) and aborts the call. Unexpected exceptions
become ``INTERNAL`` with a generic message (details go to the log with the request id, not to clients).

| error                                   | status              |
|-----------------------------------------|---------------------|
| InvalidRequestError, ConfigError, SchemaError | INVALID_ARGUMENT |
| NotFoundError                           | NOT_FOUND           |
| ResourceExhaustedError                  | RESOURCE_EXHAUSTED  |
| DeadlineExceededError                   | DEADLINE_EXCEEDED   |
| UnauthenticatedError                    | UNAUTHENTICATED     |
| PermissionDeniedError                   | PERMISSION_DENIED   |
| UnavailableError, ArtifactError         | UNAVAILABLE         |
| other RecfuseError, any other exception | INTERNAL            |

Example:
    >>> code_for(NotFoundError("item 'x' is not in the catalog")).name
    'NOT_FOUND'
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from recfuse.errors import (
    ArtifactError,
    ConfigError,
    InvalidRequestError,
    NotFoundError,
    RecfuseError,
    ResourceExhaustedError,
    SchemaError,
)

logger = logging.getLogger(__name__)


class DeadlineExceededError(RecfuseError):
    """The client's deadline passed (or leaves too little time) before the work could finish."""


class UnauthenticatedError(RecfuseError):
    """Missing or wrong bearer token."""


class PermissionDeniedError(RecfuseError):
    """An authenticated caller asked for what its token does not allow (``RecommenderAdmin`` without an admin token)."""


class UnavailableError(RecfuseError):
    """Nothing to serve yet (no bundle loaded for the variant) or the server is shutting down."""


STATUS_TABLE: dict[type[BaseException], grpc.StatusCode] = {
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    SchemaError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    ArtifactError: grpc.StatusCode.UNAVAILABLE,
}


def code_for(error: BaseException) -> grpc.StatusCode:
    """Status code of an exception (most specific class in the table wins; INTERNAL otherwise)."""
    for cls in type(error).__mro__:
        code = STATUS_TABLE.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def abort_with(context: grpc.ServicerContext, error: BaseException, request_id: str = "") -> NoReturn:
    """Abort the RPC with the status of ``error`` (the message for domain errors, a generic one otherwise)."""
    code = code_for(error)
    if code is grpc.StatusCode.INTERNAL:
        logger.error("internal error in request %s", request_id or "-", exc_info=error)
        message = f"internal server error (request_id={request_id or '-'}); see server logs"
    else:
        message = str(error)
    context.abort(code, message)
    raise RuntimeError("context.abort returned")  # grpc's abort always raises; keeps NoReturn honest
