"""recfuse.inference: the TensorFlow-free Recommender over a bundle (numpy query tower + faiss).

Example:
    >>> from recfuse.inference import Recommender
    >>> rec = Recommender.from_bundle("bundles/attention")   # doctest: +SKIP
    >>> rec.recommend(user_id="u1", k=10).item_ids            # doctest: +SKIP
"""

from recfuse.inference.batch import BatchResult, known_users, read_user_ids, recommend_all
from recfuse.inference.limits import Limits
from recfuse.inference.recommender import Recommender
from recfuse.inference.types import BundleInfo, Recommendation, RecommendQuery, ScoredItem

__all__ = [
    "BatchResult",
    "BundleInfo",
    "Limits",
    "Recommendation",
    "RecommendQuery",
    "Recommender",
    "ScoredItem",
    "known_users",
    "read_user_ids",
    "recommend_all",
]
