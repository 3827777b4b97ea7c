"""The gRPC servicers: route, call the library, convert; errors go through ONE wrapper.

:class:`RecommenderServicer` serves ``recfuse_api.v1.Recommender`` (the read methods);
:class:`RecommenderAdminServicer` serves ``recfuse_api.v1.RecommenderAdmin`` (``Reload``), whose
callers the admin interceptor restricts (``recfuse_serving.interceptors.auth``).

Every RPC method is ``return call(context, <handler>, request)``: :func:`call` checks the deadline
first, runs the handler and maps any exception through :func:`recfuse_serving.status.abort_with` — no
handler aborts on its own. Before any work each handler bounds its response
(``recfuse_serving.sizes``: ``k`` × the bundle's largest item, per sub-request of a batch) against
``max_message_bytes``, so no answer is computed that grpc could not send.

Example:
    >>> servicer = RecommenderServicer(registry, config, exposures=None)   # doctest: +SKIP
    >>> admin = RecommenderAdminServicer(registry.reload)                  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import grpc
from recfuse_api.v1 import recommender_pb2 as pb
from recfuse_api.v1 import recommender_pb2_grpc as pb_grpc

from recfuse.errors import InvalidRequestError
from recfuse.inference import Recommendation, RecommendQuery
from recfuse.variants import Exposure, ExposureLogger
from recfuse_serving import convert, sizes
from recfuse_serving.batcher import RecommendBatcher
from recfuse_serving.config import ServerConfig
from recfuse_serving.interceptors import clean_request_id
from recfuse_serving.logs import REQUEST_ID
from recfuse_serving.registry import ReloadResult, Served, VariantRegistry
from recfuse_serving.status import DeadlineExceededError, abort_with

logger = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")

# Below this much time left there is no point starting: the answer would arrive after the deadline.
MIN_TIME_LEFT_S = 0.0005
SERVER_VERSION = "recfuse-serving/0.1.0"


def _time_left(context: grpc.ServicerContext) -> float | None:
    try:
        return float(context.time_remaining())
    except (TypeError, AttributeError):  # no deadline set
        return None


def _check_deadline(context: grpc.ServicerContext, what: str) -> None:
    left = _time_left(context)
    if left is not None and left < MIN_TIME_LEFT_S:
        raise DeadlineExceededError(
            f"deadline exceeded {what} ({left * 1000:.2f} ms left); give the call a longer deadline"
        )


def call(context: grpc.ServicerContext, handler: Callable[[Req, str], Resp], request: Req) -> Resp:
    """The one error wrapper: deadline check, ``handler(request, request_id)``, any exception -> status."""
    request_id = REQUEST_ID.get() or getattr(request, "request_id", "")
    try:
        _check_deadline(context, "before the request started")
        return handler(request, request_id)
    except Exception as exc:
        abort_with(context, exc, request_id)


class RecommenderServicer(pb_grpc.RecommenderServicer):
    """Adapter from ``recfuse_api.v1.Recommender`` to :class:`recfuse.inference.Recommender` per variant.

    Args:
        registry: loaded variants and routing.
        config: limits (``default_k``, ``max_batch``).
        exposures: where each served Recommend is logged (None: not logged).
    """

    def __init__(
        self,
        registry: VariantRegistry,
        config: ServerConfig,
        exposures: ExposureLogger | None = None,
    ) -> None:
        self.registry = registry
        self.config = config
        self.exposures = exposures
        self.batcher = RecommendBatcher(min(config.batch_max_size, config.max_batch)) if config.batching else None

    # ---------------------------------------------------------------- RPCs
    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> pb.RecommendResponse:
        return call(context, lambda req, request_id: self._recommend(req, request_id, context), request)

    def RecommendBatch(
        self, request: pb.RecommendBatchRequest, context: grpc.ServicerContext
    ) -> pb.RecommendBatchResponse:
        return call(context, self._recommend_batch, request)

    def SimilarItems(self, request: pb.SimilarItemsRequest, context: grpc.ServicerContext) -> pb.SimilarItemsResponse:
        return call(context, self._similar, request)

    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoResponse:
        return call(context, self._info, request)

    # ---------------------------------------------------------------- handlers
    def _recommend(
        self, request: pb.RecommendRequest, request_id: str, context: grpc.ServicerContext
    ) -> pb.RecommendResponse:
        start = time.perf_counter()
        variant = self.registry.route(request.user_id, request.variant)
        served = self.registry.served(variant)
        query = convert.to_query(request, self.config.default_k)
        if query.k > served.fit_k:
            self._check_size("k", query.k, served)
        if self.batcher is not None:
            answer = self.batcher.recommend(served.rec, query, _time_left(context))
        else:
            answer = served.rec.recommend_batch([query])[0]
        self._log_exposure(request_id, request.user_id, answer)
        return convert.to_response(answer, request_id, (time.perf_counter() - start) * 1e3, served.title_of_row)

    def _check_size(self, field: str, k: int, served: Served) -> None:
        """Refuse a ``k`` whose answer could exceed the max message size (``k`` above ``max_k`` is left to the
        library's own check, which names the limit)."""
        if k <= self.config.max_k:
            sizes.check_response(field, k, served.item_bytes, served.header_bytes, self.config.max_message_bytes)

    def _recommend_batch(self, request: pb.RecommendBatchRequest, request_id: str) -> pb.RecommendBatchResponse:
        start = time.perf_counter()
        n = len(request.requests)
        if n > self.config.max_batch:
            raise InvalidRequestError(
                f"`requests` has {n} entries; at most {self.config.max_batch} per RecommendBatch are allowed"
            )
        # One library batch (one forward + one search) per variant, answers put back in request order.
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(request.requests):
            try:
                groups.setdefault(self.registry.route(r.user_id, r.variant), []).append(i)
            except InvalidRequestError as exc:
                raise InvalidRequestError(f"`requests[{i}]`: {exc}") from None
        views = {variant: self.registry.served(variant) for variant in groups}
        queries: dict[str, list[RecommendQuery]] = {}
        ks: list[int] = []
        item_bytes: list[int] = []
        header_bytes: list[int] = []
        for variant, rows in groups.items():
            view = views[variant]
            queries[variant] = group = []
            for i in rows:
                group.append(convert.to_query(request.requests[i], self.config.default_k, f"requests[{i}].k"))
                ks.append(group[-1].k)
                item_bytes.append(view.item_bytes)
                header_bytes.append(view.header_bytes)
        if max(ks, default=0) <= self.config.max_k:  # larger k: the library names the limit
            sizes.check_batch(ks, item_bytes, header_bytes, self.config.max_message_bytes)
        answers: list[tuple[Recommendation, tuple[str, ...]] | None] = [None] * n
        for variant, rows in groups.items():
            view = views[variant]
            for i, answer in zip(rows, view.rec.recommend_batch(queries[variant])):
                answers[i] = (answer, view.title_of_row)
        total_ms = (time.perf_counter() - start) * 1e3
        out = pb.RecommendBatchResponse()
        for i, slot in enumerate(answers):
            assert slot is not None  # every index is in exactly one group
            answer, title_of_row = slot
            sub = request.requests[i]
            sub_id = clean_request_id(sub.request_id) or f"{request_id}-{i}"
            self._log_exposure(sub_id, sub.user_id, answer)
            out.responses.append(convert.to_response(answer, sub_id, total_ms, title_of_row))
        return out

    def _similar(self, request: pb.SimilarItemsRequest, request_id: str) -> pb.SimilarItemsResponse:
        start = time.perf_counter()
        variant = self.registry.route("", request.variant)
        served = self.registry.served(variant)
        k = convert.k_of(request.k, self.config.default_k)
        if k > served.fit_k:
            self._check_size("k", k, served)
        answer = served.rec.similar_items(
            request.item_id,
            k=k,
            exclude_item_ids=list(request.exclude_item_ids),
            include_categories=list(request.include_categories),
            exclude_categories=list(request.exclude_categories),
        )
        return convert.to_similar_response(answer, request_id, (time.perf_counter() - start) * 1e3, served.title_of_row)

    def _info(self, request: pb.InfoRequest, request_id: str) -> pb.InfoResponse:
        recs = self.registry.recommenders
        default = self.registry.default_variant() if (recs or self.registry.ab.shares) else ""
        return pb.InfoResponse(
            variants=[convert.to_variant_info(recs[v].info(), self.registry.share_of(v)) for v in sorted(recs)],
            default_variant=default,
            server_version=SERVER_VERSION,
        )

    def _log_exposure(self, request_id: str, user_id: str, answer: Recommendation) -> None:
        if self.exposures is not None:
            self.exposures.log(
                Exposure(
                    request_id=request_id,
                    user_id=user_id,
                    variant=answer.variant,
                    item_ids=answer.item_ids,
                    scores=answer.scores,
                )
            )


class RecommenderAdminServicer(pb_grpc.RecommenderAdminServicer):
    """``recfuse_api.v1.RecommenderAdmin``: operator actions on the same server and port.

    Who may call it is decided before the call reaches here (``AdminInterceptor``: an admin token, or
    a connection from the server's own host when no admin tokens are configured).

    Args:
        reload: the reload action (the server passes ``registry.reload``); returns a
            :class:`~recfuse_serving.registry.ReloadResult`.
    """

    def __init__(self, reload: Callable[[], ReloadResult]) -> None:
        self._reload = reload

    def Reload(self, request: pb.ReloadRequest, context: grpc.ServicerContext) -> pb.ReloadResponse:
        return call(context, self._reload_rpc, request)

    def _reload_rpc(self, request: pb.ReloadRequest, request_id: str) -> pb.ReloadResponse:
        result = self._reload()
        return pb.ReloadResponse(reloaded=result.reloaded, rejected=result.rejected)
