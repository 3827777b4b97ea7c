"""recfuse.index: FAISS item index (numpy + faiss only, no TensorFlow).

``build_index(vectors, ids, cfg) -> ItemIndex``; ``ItemIndex.search/add/save/load``; ``measure_recall``.
A search returns a :class:`SearchResult` ``(scores, ids)``: faiss's order, fields read by name.
"""

from recfuse.index.build import build_index, measure_recall
from recfuse.index.factory import auto_factory
from recfuse.index.item_index import ItemIndex
from recfuse.index.result import SearchResult, SearchResultList

__all__ = ["ItemIndex", "SearchResult", "SearchResultList", "auto_factory", "build_index", "measure_recall"]
