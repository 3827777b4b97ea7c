"""Proto messages <-> recfuse.inference dataclasses (field mapping, ``k`` defaulting, time formats).

``Recommendation.bundle_version`` / ``BundleInfo.version`` (the bundle version) is ``bundle_version``
on the wire; ``BundleInfo.model_id`` (the trained model) is ``model_id``.

Example:
    >>> q = to_query(pb.RecommendRequest(user_id="u1", k=0), default_k=10)
    >>> q.k, q.user_id
    (10, 'u1')
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from recfuse_api.v1 import recommender_pb2 as pb

from recfuse.errors import InvalidRequestError
from recfuse.inference import BundleInfo, RankedRows, Recommendation, RecommendQuery
from recfuse.inference.types import FALLBACK_NONE, FALLBACK_POPULAR

logger = logging.getLogger(__name__)

_FALLBACKS = {FALLBACK_NONE: pb.FALLBACK_NONE, FALLBACK_POPULAR: pb.FALLBACK_POPULAR}


def k_of(k: int, default_k: int, field: str = "k") -> int:
    """The ``k`` a request asks for: ``default_k`` for 0, ``k`` when positive.

    Raises:
        InvalidRequestError: ``k`` is negative (the message names ``field`` and the value).
    """
    if k < 0:
        raise InvalidRequestError(
            f"`{field}` must be >= 0 (0 = the server default of {default_k}, else the number of items), got {k}"
        )
    return k or default_k


def to_query(request: pb.RecommendRequest, default_k: int) -> RecommendQuery:
    """A library query from a ``RecommendRequest`` (``k=0`` means ``default_k``; "" user = anonymous).

    Raises:
        InvalidRequestError: ``k`` is negative.
    """
    return RecommendQuery(
        user_id=request.user_id or None,
        history=list(request.history),
        k=k_of(request.k, default_k),
        exclude_item_ids=list(request.exclude_item_ids),
        exclude_seen=bool(request.exclude_seen),
        include_categories=list(request.include_categories),
        exclude_categories=list(request.exclude_categories),
    )


def _header(
    variant: str,
    bundle_version: str,
    fallback: str,
    request_id: str,
    query_ms: float,
    search_ms: float,
    total_ms: float,
) -> pb.RecommendResponse:
    """A ``RecommendResponse`` without items: who answered, the fallback, the timings."""
    out = pb.RecommendResponse(
        variant=variant,
        bundle_version=bundle_version,
        fallback=_FALLBACKS.get(fallback, pb.FALLBACK_OTHER),
        fallback_reason=fallback,
        request_id=request_id,
    )
    timing = out.timing
    timing.query_ms, timing.search_ms, timing.total_ms = query_ms, search_ms, total_ms
    return out


def to_response(
    rec: Recommendation,
    request_id: str,
    total_ms: float,
    title_of: Callable[[str], str] | None = None,
) -> pb.RecommendResponse:
    """A ``RecommendResponse`` from a library answer (titles added when ``title_of`` is given)."""
    out = _header(rec.variant, rec.bundle_version, rec.fallback, request_id, rec.query_ms, rec.search_ms, total_ms)
    add = out.items.add  # in-place adds: about half the cost of building ScoredItem messages and a list
    if title_of is not None:
        for it in rec.items:
            add(item_id=it.item_id, score=it.score, title=title_of(it.item_id))
    else:
        for it in rec.items:
            add(item_id=it.item_id, score=it.score)
    return out


def ranked_to_response(
    ranked: RankedRows,
    variant: str,
    bundle_version: str,
    request_id: str,
    total_ms: float,
    item_id_of_row: tuple[str, ...],
    title_of_row: tuple[str, ...],
) -> pb.RecommendResponse:
    """A ``RecommendResponse`` from catalog rows (``Recommender.rank``): ids and titles by row."""
    out = _header(variant, bundle_version, ranked.fallback, request_id, ranked.query_ms, ranked.search_ms, total_ms)
    add = out.items.add
    for r, s in zip(ranked.rows, ranked.scores):
        add(item_id=item_id_of_row[r], score=s, title=title_of_row[r])
    return out


def to_similar_response(
    rec: Recommendation, request_id: str, total_ms: float, title_of: Callable[[str], str] | None = None
) -> pb.SimilarItemsResponse:
    """A ``SimilarItemsResponse`` from a library answer."""
    full = to_response(rec, request_id, total_ms, title_of)
    return pb.SimilarItemsResponse(
        items=full.items,
        variant=full.variant,
        bundle_version=full.bundle_version,
        timing=full.timing,
        request_id=request_id,
    )


def to_variant_info(info: BundleInfo, share: float) -> pb.VariantInfo:
    """``VariantInfo`` of one loaded bundle and its configured traffic share."""
    out = pb.VariantInfo(
        variant=info.variant,
        bundle_version=info.version,
        model_id=info.model_id,
        index_type=info.index_factory,
        item_count=info.item_count,
        dim=info.dim,
        ann_recall=info.ann_recall or 0.0,
        traffic_share=share,
        served_recall=info.served_recall or 0.0,
        search_params=info.search_params,
    )
    created = parse_utc(info.created_at)
    if created is not None:
        out.created_at.FromDatetime(created)
    else:
        logger.warning(
            "bundle %s/%s: created_at %r is not an ISO 8601 time; Info leaves it unset",
            info.variant,
            info.version,
            info.created_at,
        )
    return out


def parse_utc(text: str) -> dt.datetime | None:
    """An ISO 8601 time (``2026-01-02T03:04:05.123456Z``) as an aware UTC datetime; None when it does not parse.

    A time without an offset is taken as UTC (bundles write UTC).
    """
    try:
        when = dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
