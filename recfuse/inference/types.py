"""Plain request/response dataclasses of :class:`recfuse.inference.Recommender` (what gRPC converts).

Example:
    >>> q = RecommendQuery(user_id="u1", k=5, exclude_seen=True)
    >>> q.k
    5
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

FALLBACK_NONE = ""
FALLBACK_POPULAR = "popular"


@dataclass(frozen=True)
class ScoredItem:
    """One recommended item: its id and score (inner product / negative L2, or popularity count)."""

    item_id: str
    score: float


@dataclass(frozen=True)
class RecommendQuery:
    """One recommendation request (the keyword arguments of ``Recommender.recommend``).

    Attributes:
        user_id: known user (stored history + user embedding), unknown user, or ``None``/``""`` (anonymous).
        history: request-time item ids, most recent first; merged in front of the stored history.
        k: number of items wanted.
        exclude_item_ids: items never to return.
        exclude_seen: also exclude the user's stored history and the request history.
        include_categories: only items in at least one of these categories (empty: no restriction).
        exclude_categories: never items in any of these categories.
    """

    user_id: str | None = None
    history: Sequence[str] = ()
    k: int = 10
    exclude_item_ids: Sequence[str] = ()
    exclude_seen: bool = False
    include_categories: Sequence[str] = ()
    exclude_categories: Sequence[str] = ()


@dataclass(frozen=True)
class Recommendation:
    """A ranked answer.

    Attributes:
        items: best first; exactly ``k`` unless fewer candidates pass the filters.
        fallback: ``""`` (model), ``"popular"`` (no user signal: popularity order).
        bundle_version: the bundle version that answered (changes on every publish, incl. incremental adds).
        variant: the bundle's fusion variant.
        query_ms: query-tower time; for a batch, the time of the whole batch's one forward.
        search_ms: index search + filtering time; for a batch, the whole batched search.
        skipped_history: request history ids not in the catalog (skipped, counted here).
        skipped_exclusions: ``exclude_item_ids`` not in the catalog (nothing to exclude).
    """

    items: list[ScoredItem]
    fallback: str
    bundle_version: str
    variant: str
    query_ms: float
    search_ms: float
    skipped_history: int = 0
    skipped_exclusions: int = 0

    @property
    def item_ids(self) -> list[str]:
        return [it.item_id for it in self.items]


class RankedRows(NamedTuple):
    """A ranked answer as catalog rows: what :meth:`Recommender.rank` returns for the serving fast path.

    ``rows[i]`` is a row of the bundle's catalog (``Recommender.item_id_of_row[rows[i]]`` is its id,
    ``Recommender.title_of_row[rows[i]]`` its title); no per-item objects are built. The other
    fields mean what they mean on :class:`Recommendation`.
    """

    rows: list[int]
    scores: list[float]
    fallback: str
    query_ms: float
    search_ms: float
    skipped_history: int


@dataclass(frozen=True)
class BundleInfo:
    """What is being served (for ``Info`` RPCs and ``recfuse recommend --json``).

    ``version`` is the bundle version (a new one on every publish, incremental adds included);
    ``model_id`` names the trained model the bundle was exported from (kept across incremental adds).
    """

    variant: str
    version: str
    model_id: str
    created_at: str
    item_count: int
    user_count: int
    dim: int
    metric: str
    index_factory: str
    ann_recall: float | None
    format_version: int
    recfuse_version: str
    path: str
    max_k: int = 1000
    category_count: int = 0
    # Recall@10 against exact search on query vectors like the served ones, measured at export /
    # add-items (None: not measured), what those queries were, and the search parameters in force
    served_recall: float | None = None
    served_recall_queries: str = ""
    search_params: str = ""
    # the item-item head as served ("itemknn beta=0.37 nnz=12000, re-rank of k+200"; "" without one;
    # Info shows it at the end of search_params)
    item_head: str = ""
