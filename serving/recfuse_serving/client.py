"""Python client for the recfuse service: plain dataclasses out, deadlines on every call, retries on UNAVAILABLE.

Retries are gRPC's own (the channel's service config ``retryPolicy``, see :class:`RetryPolicy`): a
call that gets UNAVAILABLE (no bundle loaded yet, a worker restarting, a connection refused) is sent
again with jittered exponential backoff, at most 5 attempts, all inside the call's one deadline.
Waiting for a server that is still starting is a separate, explicit step: :meth:`RecfuseClient.wait_ready`.

Imports neither TensorFlow nor the library's heavy modules (only grpc and the generated stubs).

Example:
    >>> with RecfuseClient("127.0.0.1:50051") as client:                  # doctest: +SKIP
    ...     recs = client.recommend(user_id="u42", k=5, exclude_seen=True)
    ...     [(it.item_id, it.title) for it in recs.items]
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from recfuse_api.v1 import recommender_pb2 as pb
from recfuse_api.v1 import recommender_pb2_grpc as pb_grpc

T = TypeVar("T")

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
# FALLBACK_UNSPECIFIED is never sent by the server; a message that lacks the field says so rather than "".
_FALLBACK_NAMES = {pb.FALLBACK_NONE: "", pb.FALLBACK_POPULAR: "popular", pb.FALLBACK_UNSPECIFIED: "unspecified"}


@dataclass(frozen=True)
class Item:
    """One returned item (``title`` is "" when the bundle has none)."""

    item_id: str
    score: float
    title: str = ""


@dataclass(frozen=True)
class Recommendations:
    """A Recommend/SimilarItems answer.

    Attributes:
        items: best first. variant / bundle_version: who answered. fallback: "" (model) or e.g. "popular".
        query_ms / search_ms / total_ms: server-side timings. request_id: the id the server logged.
    """

    items: list[Item]
    variant: str
    bundle_version: str
    fallback: str
    query_ms: float
    search_ms: float
    total_ms: float
    request_id: str

    @property
    def item_ids(self) -> list[str]:
        return [it.item_id for it in self.items]


@dataclass(frozen=True)
class VariantInfo:
    """One served variant (``Info``).

    Attributes:
        bundle_version: the bundle version serving now. model_id: the trained model it was exported from.
        created_at: when the bundle was written (aware UTC; None when the server does not know).
        ann_recall / served_recall: recall@10 vs exact search (0 = unknown).
    """

    variant: str
    bundle_version: str
    index_type: str
    item_count: int
    dim: int
    ann_recall: float
    created_at: dt.datetime | None
    traffic_share: float
    served_recall: float = 0.0
    search_params: str = ""
    model_id: str = ""


@dataclass(frozen=True)
class ServerInfo:
    variants: list[VariantInfo]
    default_variant: str
    server_version: str


@dataclass(frozen=True)
class Query:
    """One query of :meth:`RecfuseClient.recommend_batch` (same fields as :meth:`RecfuseClient.recommend`)."""

    user_id: str = ""
    history: Sequence[str] = ()
    k: int = 0
    exclude_item_ids: Sequence[str] = ()
    exclude_seen: bool = False
    include_categories: Sequence[str] = ()
    exclude_categories: Sequence[str] = ()
    variant: str = ""
    request_id: str = ""

    def to_proto(self) -> pb.RecommendRequest:
        return pb.RecommendRequest(
            user_id=self.user_id,
            history=list(self.history),
            k=self.k,
            exclude_item_ids=list(self.exclude_item_ids),
            exclude_seen=self.exclude_seen,
            include_categories=list(self.include_categories),
            exclude_categories=list(self.exclude_categories),
            variant=self.variant,
            request_id=self.request_id,
        )


def _items(msg: Any) -> list[Item]:
    return [Item(it.item_id, float(it.score), it.title if it.HasField("title") else "") for it in msg.items]


def _recs(msg: pb.RecommendResponse) -> Recommendations:
    return Recommendations(
        items=_items(msg),
        variant=msg.variant,
        bundle_version=msg.bundle_version,
        fallback=msg.fallback_reason or _FALLBACK_NAMES.get(msg.fallback, "other"),
        query_ms=msg.timing.query_ms,
        search_ms=msg.timing.search_ms,
        total_ms=msg.timing.total_ms,
        request_id=msg.request_id,
    )


# gRPC refuses a retryPolicy with more attempts than this (grpc/doc/service_config.md, A6 retries)
MAX_ATTEMPTS = 5
SERVICES = ("recfuse_api.v1.Recommender", "recfuse_api.v1.RecommenderAdmin")


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's ``retryPolicy`` for the client's channel: which codes are retried and how.

    Attributes:
        attempts: calls sent at most, the first included (1 = no retry; gRPC's limit is 5).
        initial_s: backoff before the first retry; each retry waits a random share of the current
            backoff, which doubles up to ``max_s`` (gRPC's jittered exponential backoff).
        max_s: largest backoff.
        codes: status codes retried (default UNAVAILABLE only: every other code is an answer).

    Raises:
        ValueError: ``attempts`` outside 1..5 or a backoff that is not positive (the field is named).
    """

    attempts: int = 4
    initial_s: float = 0.05
    max_s: float = 1.0
    codes: frozenset[grpc.StatusCode] = field(default_factory=lambda: RETRYABLE)

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= MAX_ATTEMPTS:
            raise ValueError(
                f"`attempts` must be 1..{MAX_ATTEMPTS} (gRPC's retry limit), got {self.attempts}; to wait for a "
                "server that is starting, call RecfuseClient.wait_ready(timeout) first"
            )
        if not (self.initial_s > 0 and self.max_s >= self.initial_s):
            raise ValueError(f"`initial_s` must be > 0 and `max_s` >= it, got {self.initial_s} and {self.max_s}")

    def service_config(self) -> str:
        """The channel's ``grpc.service_config`` JSON (no ``retryPolicy`` when ``attempts`` is 1)."""
        method: dict[str, Any] = {"name": [{"service": s} for s in SERVICES]}
        if self.attempts > 1:
            method["retryPolicy"] = {
                "maxAttempts": self.attempts,
                "initialBackoff": f"{self.initial_s:.6f}s",
                "maxBackoff": f"{self.max_s:.6f}s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": sorted(c.name for c in self.codes),
            }
        return json.dumps({"methodConfig": [method]})


class RecfuseClient:
    """Blocking client of ``recfuse_api.v1.Recommender`` and (:meth:`reload`) ``recfuse_api.v1.RecommenderAdmin``.

    Args:
        target: ``host:port``.
        token: bearer token sent as ``authorization: Bearer <token>`` on every call (None: none); an
            admin token (server ``auth.admin_tokens``) is accepted by the read methods too.
        root_cert: PEM file (or bytes) of the CA/server certificate; given -> TLS channel.
        timeout: default deadline per call in seconds (one deadline spans the call's retries).
        retry: gRPC retry policy for UNAVAILABLE (no bundle loaded yet, a worker restarting); a
            server that is still starting is waited for with :meth:`wait_ready`.
        server_name: TLS name override (tests with a cert for "localhost" while dialing 127.0.0.1).

    Raises (from calls):
        grpc.RpcError: the final status after retries (``.code()``, ``.details()``).
    """

    def __init__(
        self,
        target: str,
        token: str | None = None,
        root_cert: str | Path | bytes | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        server_name: str | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 1 if self.retry.attempts > 1 else 0),
            ("grpc.service_config", self.retry.service_config()),
        ]
        if root_cert is not None:
            pem = root_cert if isinstance(root_cert, bytes) else Path(root_cert).read_bytes()
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(pem), options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.RecommenderStub(self._channel)
        self._admin = pb_grpc.RecommenderAdminStub(self._channel)

    # ---------------------------------------------------------------- plumbing
    def _invoke(self, method: Callable[..., T], request: Any, timeout: float | None) -> T:
        # retries (UNAVAILABLE) are the channel's: see RetryPolicy.service_config
        return method(request, timeout=timeout or self.timeout, metadata=self._metadata)  # type: ignore[no-any-return]

    def wait_ready(self, timeout: float = 30.0, poll_s: float = 0.1) -> ServerInfo:
        """Block until the server answers Info listing at least one loaded bundle; returns that Info.

        A server opens its port before its first bundle has loaded, and a process that is starting
        refuses connections: both are waited out here (the connection with gRPC's
        ``wait_for_ready``), up to ``timeout`` seconds in all.

        Raises:
            TimeoutError: nothing loaded within ``timeout`` (the last state seen is in the message).
        """
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.target}: no bundle loaded within {timeout:g} s ({last})")
            try:
                msg = self._stub.Info(pb.InfoRequest(), timeout=left, metadata=self._metadata, wait_for_ready=True)
            except grpc.RpcError as exc:
                if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                    raise TimeoutError(f"{self.target}: no bundle loaded within {timeout:g} s ({last})") from exc
                if exc.code() not in self.retry.codes:  # type: ignore[attr-defined]
                    raise
                last = f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
            else:
                if msg.variants:
                    return self._server_info(msg)
                last = "the server answers but has loaded no bundle yet"
            time.sleep(min(poll_s, max(deadline - time.monotonic(), 0)))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RecfuseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- RPCs
    def recommend(
        self,
        user_id: str = "",
        history: Sequence[str] = (),
        k: int = 0,
        exclude_item_ids: Sequence[str] = (),
        exclude_seen: bool = False,
        include_categories: Sequence[str] = (),
        exclude_categories: Sequence[str] = (),
        variant: str = "",
        request_id: str = "",
        timeout: float | None = None,
    ) -> Recommendations:
        """Top-k items for a user and/or history (``k=0``: the server default)."""
        q = Query(
            user_id,
            history,
            k,
            exclude_item_ids,
            exclude_seen,
            include_categories,
            exclude_categories,
            variant,
            request_id,
        )
        return _recs(self._invoke(self._stub.Recommend, q.to_proto(), timeout))

    def recommend_batch(self, queries: Sequence[Query], timeout: float | None = None) -> list[Recommendations]:
        """Many queries in one call; answers in the same order."""
        request = pb.RecommendBatchRequest(requests=[q.to_proto() for q in queries])
        response = self._invoke(self._stub.RecommendBatch, request, timeout)
        return [_recs(r) for r in response.responses]

    def similar_items(
        self,
        item_id: str,
        k: int = 0,
        exclude_item_ids: Sequence[str] = (),
        include_categories: Sequence[str] = (),
        exclude_categories: Sequence[str] = (),
        variant: str = "",
        timeout: float | None = None,
    ) -> Recommendations:
        """Items nearest to ``item_id`` (NOT_FOUND when the item is unknown)."""
        request = pb.SimilarItemsRequest(
            item_id=item_id,
            k=k,
            exclude_item_ids=list(exclude_item_ids),
            include_categories=list(include_categories),
            exclude_categories=list(exclude_categories),
            variant=variant,
        )
        msg = self._invoke(self._stub.SimilarItems, request, timeout)
        return Recommendations(
            _items(msg),
            msg.variant,
            msg.bundle_version,
            "",
            0.0,
            msg.timing.search_ms,
            msg.timing.total_ms,
            msg.request_id,
        )

    def info(self, timeout: float | None = None) -> ServerInfo:
        """Variants, versions, index types and sizes being served."""
        return self._server_info(self._invoke(self._stub.Info, pb.InfoRequest(), timeout))

    @staticmethod
    def _server_info(msg: pb.InfoResponse) -> ServerInfo:
        return ServerInfo(
            variants=[
                VariantInfo(
                    v.variant,
                    v.bundle_version,
                    v.index_type,
                    v.item_count,
                    v.dim,
                    v.ann_recall,
                    v.created_at.ToDatetime(tzinfo=dt.UTC) if v.HasField("created_at") else None,
                    v.traffic_share,
                    v.served_recall,
                    v.search_params,
                    v.model_id,
                )
                for v in msg.variants
            ],
            default_variant=msg.default_variant,
            server_version=msg.server_version,
        )

    def reload(self, timeout: float | None = None) -> tuple[list[str], list[str]]:
        """``RecommenderAdmin.Reload``: reload bundles now; returns (reloaded, rejected).

        Needs an admin token (``token``) when the server has ``auth.admin_tokens``; without them the
        server accepts it only from its own host (PERMISSION_DENIED otherwise).
        """
        msg = self._invoke(self._admin.Reload, pb.ReloadRequest(), timeout)
        return list(msg.reloaded), list(msg.rejected)
