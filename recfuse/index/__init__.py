"""recfuse.index: FAISS item index (numpy + faiss only, no TensorFlow).

``build_index(vectors, ids, cfg) -> ItemIndex``; ``ItemIndex.search/add/save/load``; ``measure_recall``.
"""

from recfuse.index.build import build_index, measure_recall
from recfuse.index.factory import auto_factory
from recfuse.index.item_index import ItemIndex

__all__ = ["ItemIndex", "auto_factory", "build_index", "measure_recall"]
