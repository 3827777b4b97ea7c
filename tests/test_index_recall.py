"""The one ANN-recall formula (faiss.contrib's knn_intersection_measure) against the hand-written ones it replaced."""

from __future__ import annotations

import numpy as np
import pytest

from recfuse.config import IndexConfig
from recfuse.index import build_index, measure_recall
from recfuse.index.recall import knn_recall
from recfuse.index.served import exact_topk, served_recall


def _old_served(ann: np.ndarray, exact: np.ndarray) -> float:
    """``served_recall``'s former count: -1 dropped from the ANN side only."""
    hits = sum(len(np.intersect1d(a[a >= 0], e)) for a, e in zip(ann, exact, strict=True))
    return float(hits / ann.size)


def _old_sharded(ann: np.ndarray, exact: np.ndarray) -> float:
    """The sharded build's former count: -1 dropped from both sides."""
    hits = sum(len(np.intersect1d(a[a >= 0], e[e >= 0])) for a, e in zip(ann, exact, strict=True))
    return float(hits / ann.size)


def _vectors(n: int = 3_000, d: int = 16, m: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.normal(size=(m, d)).astype(np.float32)
    return x, q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("factory", "ef_search", "nprobe"),
    [("HNSW4", 2, None), ("IVF512,Flat", None, 1), ("IVF64,Flat", None, 4)],
)
def test_new_figure_equals_the_old_one_on_a_real_index(factory: str, ef_search: int | None, nprobe: int | None) -> None:
    x, q = _vectors()
    ids = 1_000 + 7 * np.arange(len(x), dtype=np.int64)  # catalog ids, not row numbers
    cfg = IndexConfig(factory=factory, ef_search=ef_search, nprobe=nprobe, recall_queries=0)
    index = build_index(x, ids, cfg)
    k = 10
    ann = index.search(q, k).ids
    exact = exact_topk(index, x, q, k, ids)
    old = _old_served(ann, exact)
    assert 0.0 < old < 1.0  # an approximate index: neither trivial case
    assert knn_recall(ann, exact) == old
    assert knn_recall(ann, exact) == _old_sharded(ann, exact)
    assert served_recall(index, x, q, k, ids=ids) == old
    if factory == "IVF512,Flat":
        assert (ann < 0).any()  # 512 lists of ~6 vectors, one probed: short results padded with -1


def test_measure_recall_keeps_its_figure() -> None:
    x, _ = _vectors()
    index = build_index(x, np.arange(len(x)), IndexConfig(factory="HNSW4", ef_search=2, recall_queries=0))
    rows = np.random.default_rng(0).choice(len(x), 100, replace=False)
    ann = index.search(x[rows], 10).ids
    exact = exact_topk(index, x, x[rows], 10)
    assert measure_recall(index, x, np.arange(len(x)), 100, k=10, seed=0) == _old_served(ann, exact)


def test_padding_never_counts_as_a_hit() -> None:
    ann = np.array([[5, -1, -1], [1, 2, 3]])
    exact = np.array([[5, 6, -1], [3, 2, 1]])  # both sides padded in row 0
    assert knn_recall(ann, exact) == pytest.approx((1 + 3) / 6)
    assert knn_recall(ann, exact) == _old_sharded(ann, exact)
    assert np.isnan(knn_recall(np.zeros((0, 10), np.int64), np.zeros((0, 10), np.int64)))


def test_shape_mismatch_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"same shape, got \(2, 10\) and \(2, 5\); search both at the same k"):
        knn_recall(np.zeros((2, 10), np.int64), np.zeros((2, 5), np.int64))
    with pytest.raises(ValueError, match=r"must both be \[queries, k\].*got \(3,\) and \(3,\)"):
        knn_recall(np.zeros(3, np.int64), np.zeros(3, np.int64))
