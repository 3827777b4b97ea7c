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
from collections.abc import Sequence

from recfuse_api.v1 import recommender_pb2 as pb

from recfuse.errors import InvalidRequestError
from recfuse.inference import BundleInfo, Recommendation, RecommendQuery
from recfuse.inference.types import FALLBACK_NONE, FALLBACK_POPULAR

logger = logging.getLogger(__name__)

_FALLBACKS = {FALLBACK_NONE: pb.FALLBACK_NONE, FALLBACK_POPULAR: pb.FALLBACK_POPULAR}


def k_of(k: int, default_k: int, field: str = "k") -> int:
    """The ``k`` a request asks for: ``default_k`` for 0, ``k`` when positive (the one place a wire
    ``k`` is defaulted; its range is the library's to check, ``Limits.check``).

    Raises:
        InvalidRequestError: ``k`` is negative (the message names ``field`` and the value).
    """
    if k < 0:
        raise InvalidRequestError(
            f"`{field}` must be >= 0 (0 = the server default of {default_k}, else the number of items), got {k}"
        )
    return k or default_k


def to_query(request: pb.RecommendRequest, default_k: int, k_field: str = "k") -> RecommendQuery:
    """A library query from a ``RecommendRequest`` (``k=0`` means ``default_k``; "" user = anonymous).

    Raises:
        InvalidRequestError: ``k`` is negative (the message names ``k_field``).
    """
    # The repeated fields as they are (sequences of str): the Recommender reads them once, at once.
    return RecommendQuery(
        request.user_id or None,
        request.history,
        k_of(request.k, default_k, k_field),
        request.exclude_item_ids,
        request.exclude_seen,
        request.include_categories,
        request.exclude_categories,
    )


def to_response(
    rec: Recommendation,
    request_id: str,
    total_ms: float,
    title_of_row: Sequence[str] | None = None,
) -> pb.RecommendResponse:
    """The one ``RecommendResponse`` builder (Recommend, each answer of RecommendBatch, SimilarItems):
    who answered, the fallback, the timings and the items, titles by catalog row when
    ``title_of_row`` is given (``Recommendation.rows`` index it)."""
    out = pb.RecommendResponse(
        variant=rec.variant,
        bundle_version=rec.bundle_version,
        fallback=_FALLBACKS.get(rec.fallback, pb.FALLBACK_OTHER),
        fallback_reason=rec.fallback,
        request_id=request_id,
    )
    timing = out.timing
    timing.query_ms, timing.search_ms, timing.total_ms = rec.query_ms, rec.search_ms, total_ms
    add = out.items.add  # in-place adds: about half the cost of building ScoredItem messages and a list
    if title_of_row is not None:
        for item_id, score, row in zip(rec.item_ids, rec.scores, rec.rows):
            add(item_id=item_id, score=score, title=title_of_row[row])
    else:
        for item_id, score in zip(rec.item_ids, rec.scores):
            add(item_id=item_id, score=score)
    return out


def to_similar_response(
    rec: Recommendation, request_id: str, total_ms: float, title_of_row: Sequence[str] | None = None
) -> pb.SimilarItemsResponse:
    """A ``SimilarItemsResponse`` from a library answer (through :func:`to_response`)."""
    full = to_response(rec, request_id, total_ms, title_of_row)
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
