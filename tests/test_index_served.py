"""Served recall and efSearch / nprobe tuning on real faiss indexes (queries unlike the item vectors)."""

from __future__ import annotations

import numpy as np
import pytest

from recfuse.config import IndexConfig
from recfuse.index import build_index
from recfuse.index.factory import inner_index
from recfuse.index.served import EF_SEARCH_GRID, exact_topk, served_recall, tune_search


def _world(n: int = 20_000, d: int = 32, m: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, d))
    x = centers[rng.integers(0, 50, n)] + 0.6 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    # queries are means of a few items (as pooled histories are), not items themselves
    q = x[rng.integers(0, n, (m, 3))].mean(axis=1)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x.astype(np.float32), q.astype(np.float32)


def test_served_recall_against_a_hand_count() -> None:
    x, q = _world(2_000, 16, 50)
    flat = build_index(x, np.arange(len(x)), IndexConfig(factory="Flat", recall_queries=0))
    assert served_recall(flat, x, q, k=10) == pytest.approx(1.0)
    hnsw = build_index(x, np.arange(len(x)), IndexConfig(factory="HNSW4", ef_search=1, recall_queries=0))
    ann = hnsw.search(q, 10).ids
    truth = exact_topk(hnsw, x, q, 10)
    by_hand = np.mean([len(set(a.tolist()) & set(t.tolist())) / 10 for a, t in zip(ann, truth, strict=True)])
    assert served_recall(hnsw, x, q, k=10) == pytest.approx(by_hand)


def test_hnsw_is_tuned_to_the_smallest_ef_search_that_meets_the_target() -> None:
    x, q = _world()
    index = build_index(x, np.arange(len(x)), IndexConfig(factory="HNSW8", recall_queries=0))
    result = tune_search(index, x, q, target=0.95)
    assert result.param == "ef_search" and result.met and result.recall >= 0.95
    # walked up the grid cheapest first: every value up to the choice was tried, each below it
    # missed, and nothing more expensive than the choice was searched
    values = [v for v, _ in result.tried]
    assert values == list(EF_SEARCH_GRID[: EF_SEARCH_GRID.index(result.value) + 1])
    assert result.value > EF_SEARCH_GRID[0] and result.tried[-1] == (result.value, result.recall)
    assert all(r < 0.95 for _, r in result.tried[:-1])
    assert index.config.ef_search == result.value and inner_index(index.faiss_index).hnsw.efSearch == result.value
    assert served_recall(index, x, q) == pytest.approx(result.recall)


def test_ivf_is_tuned_by_nprobe_and_an_unreachable_target_keeps_the_best() -> None:
    x, q = _world(8_000, 16, 200)
    index = build_index(x, np.arange(len(x)), IndexConfig(factory="IVF64,Flat", recall_queries=0))
    result = tune_search(index, x, q, target=0.9)
    assert result.param == "nprobe" and result.met and 1 < result.value <= 64
    assert all(r < 0.9 for v, r in result.tried if v < result.value)
    # the chosen value is the one in force
    assert index.config.nprobe == result.value and served_recall(index, x, q) == pytest.approx(result.recall)
    # PQ codes cap what any nprobe reaches: the target is missed, and the best value found is kept
    pq = build_index(x, np.arange(len(x)), IndexConfig(factory="IVF16,PQ2x4", recall_queries=0))
    missed = tune_search(pq, x, q, target=0.99)
    assert not missed.met and missed.recall == max(r for _, r in missed.tried)
    # recall stopped rising: the walk ended on the plateau, before the grid's end (nprobe = nlist)
    assert len(missed.tried) < 6 and missed.tried[-1][0] < 16
    assert pq.config.nprobe == missed.value and served_recall(pq, x, q) == pytest.approx(missed.recall)
