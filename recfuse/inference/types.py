"""Plain request/response dataclasses of :class:`recfuse.inference.Recommender` (what gRPC converts).

Example:
    >>> q = RecommendQuery(user_id="u1", k=5, exclude_seen=True)
    >>> q.k
    5
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FALLBACK_NONE = ""
FALLBACK_POPULAR = "popular"
#: ``k`` of a query that names none (the server's ``default_k`` defaults ``k = 0`` on the wire)
DEFAULT_K = 10


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
    k: int = DEFAULT_K
    exclude_item_ids: Sequence[str] = ()
    exclude_seen: bool = False
    include_categories: Sequence[str] = ()
    exclude_categories: Sequence[str] = ()


@dataclass(frozen=True)
class Recommendation:
    """A ranked answer, best first, as parallel lists (no object per item).

    Attributes:
        item_ids: exactly ``k`` unless fewer candidates pass the filters.
        scores: one per item (inner product / negative L2 / blended with the item-item head, or the
            popularity count).
        rows: the items' rows in the bundle's catalog (``Recommender.title_of_row[row]`` is the title).
        fallback: ``""`` (model), ``"popular"`` (no user signal: popularity order).
        bundle_version: the bundle version that answered (changes on every publish, incl. incremental adds).
        variant: the bundle's fusion variant.
        query_ms: query-tower time; for a batch, the time of the whole batch's one forward.
        search_ms: index search + filtering time; for a batch, the whole batched search.
        skipped_history: request history ids not in the catalog (skipped, counted here).
        skipped_exclusions: ``exclude_item_ids`` not in the catalog (nothing to exclude).
    """

    item_ids: list[str]
    scores: list[float]
    rows: list[int]
    fallback: str
    bundle_version: str
    variant: str
    query_ms: float
    search_ms: float
    skipped_history: int = 0
    skipped_exclusions: int = 0

    @property
    def items(self) -> list[ScoredItem]:
        """One :class:`ScoredItem` per item (built on each access)."""
        return [ScoredItem(i, s) for i, s in zip(self.item_ids, self.scores)]


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
