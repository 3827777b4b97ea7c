"""Server interceptors: observability (request ids, JSON access log, metrics), bearer auth, limits.

Order (outermost first, as passed to ``grpc.server``): :class:`ObservabilityInterceptor` sees every
call, including ones the others reject; :class:`AuthInterceptor` rejects before any work;
:class:`AdminInterceptor` keeps the admin service (``RecommenderAdmin``) to admin tokens or, without
any, to the server's own host; :class:`LimitInterceptor` bounds concurrency and rate. They wrap
unary-unary methods: the health service (``Watch`` streams) and reflection (bidirectional) stay open
without a token, so load balancers and ``grpcurl list`` work; they reveal no data.

Bytes that do not parse as the method's request message never reach a handler: the observability
interceptor wraps every method's deserializer (streaming ones too), so such a call is answered
INVALID_ARGUMENT (before auth: nothing is read from the bytes) with one rate-limited WARNING line,
instead of grpc's INTERNAL "Exception deserializing request!" and a traceback per request.

Example:
    >>> interceptors = [ObservabilityInterceptor(ServingMetrics()), AuthInterceptor(("s3cret-token",))]
"""

from __future__ import annotations

from recfuse_serving.interceptors.auth import (
    ADMIN_METHODS,
    ADMIN_PREFIX,
    ADMIN_SERVICE,
    LOOPBACK_PEERS,
    AdminInterceptor,
    AuthInterceptor,
    is_loopback_peer,
)
from recfuse_serving.interceptors.limits import LimitInterceptor, TokenBucket
from recfuse_serving.interceptors.observability import (
    MAX_REQUEST_ID,
    REQUEST_ID_HEADER,
    ObservabilityInterceptor,
    RateLimitedLog,
    clean_request_id,
    new_request_id,
)
from recfuse_serving.interceptors.wrapping import OPEN_PREFIXES, Undecodable, safe_deserializer

__all__ = [
    "ADMIN_METHODS",
    "ADMIN_PREFIX",
    "ADMIN_SERVICE",
    "LOOPBACK_PEERS",
    "MAX_REQUEST_ID",
    "OPEN_PREFIXES",
    "REQUEST_ID_HEADER",
    "AdminInterceptor",
    "AuthInterceptor",
    "LimitInterceptor",
    "ObservabilityInterceptor",
    "RateLimitedLog",
    "TokenBucket",
    "Undecodable",
    "clean_request_id",
    "is_loopback_peer",
    "new_request_id",
    "safe_deserializer",
]
