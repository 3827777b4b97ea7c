"""ItemIndex.search with exclusions and allow-lists on both paths (selector, refill) vs numpy brute force."""

from __future__ import annotations

import numpy as np
import pytest

from recfuse.config import IndexConfig
from recfuse.errors import InvalidRequestError
from recfuse.index import build_index

N, D, K = 3000, 16, 10


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, d))
    x = centers[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


X = clustered(N, D)
IDS = np.arange(N, dtype=np.int64) * 3 + 100  # non-contiguous catalog ids


def brute(q: np.ndarray, k: int, exclude: set[int] | None, allow: set[int] | None) -> list[int]:
    scores = X @ q
    ok = np.ones(N, bool)
    if exclude:
        ok &= ~np.isin(IDS, list(exclude))
    if allow is not None:
        ok &= np.isin(IDS, list(allow))
    rows = np.flatnonzero(ok)
    return IDS[rows[np.argsort(-scores[rows], kind="stable")[:k]]].tolist()


def filters(seed: int) -> tuple[list[set[int]], list[set[int] | None], np.ndarray]:
    rng = np.random.default_rng(seed)
    q = X[rng.choice(N, 6, replace=False)] + 0.05 * rng.standard_normal((6, D)).astype(np.float32)
    near = [set(brute(qi, 30, None, None)[:20]) for qi in q]  # exclude most of each true top-30
    exclude = [near[0], near[1], set(), {int(IDS[0]), 999_999_999}, near[4], near[5]]
    allow_a = set(IDS[rng.choice(N, 400, replace=False)].tolist())
    allow_b = set(IDS[rng.choice(N, 40, replace=False)].tolist())
    allow: list[set[int] | None] = [None, allow_a, None, None, allow_b, None]
    return exclude, allow, q


@pytest.mark.parametrize("mode", ["selector", "refill"])
def test_flat_filtered_results_equal_brute_force(mode: str) -> None:
    index = build_index(X, IDS, IndexConfig(factory="Flat", filter_mode=mode, recall_queries=0))
    assert index.filter_mode == mode
    exclude, allow, q = filters(1)
    res = index.search(q, K, exclude=exclude, allow=allow)
    ids, scores = res.ids, res.scores
    for i in range(len(q)):
        assert ids[i].tolist() == brute(q[i], K, exclude[i], allow[i])
        np.testing.assert_allclose(scores[i], X[(ids[i] - 100) // 3] @ q[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factory", ["HNSW32", "IVF32,Flat", "IVF32,PQ8x4"])
@pytest.mark.parametrize("mode", ["selector", "refill"])
def test_ann_filtered_returns_exactly_k_valid_results(factory: str, mode: str) -> None:
    index = build_index(X, IDS, IndexConfig(factory=factory, filter_mode=mode, nprobe=4, recall_queries=0))
    exclude, allow, q = filters(2)
    res = index.search(q, K, exclude=exclude, allow=allow)
    ids, scores = res.ids, res.scores
    hits = 0
    for i in range(len(q)):
        row = ids[i].tolist()
        assert len(row) == K and -1 not in row and len(set(row)) == K  # exactly k, no duplicates
        assert not set(row) & exclude[i]
        if allow[i] is not None:
            assert set(row) <= allow[i]
        assert (np.diff(scores[i]) <= 1e-6).all()  # best first
        hits += len(set(row) & set(brute(q[i], K, exclude[i], allow[i])))
    floor = 0.25 if "PQ" in factory else 0.8
    assert hits / (K * len(q)) >= floor


def test_sparse_allow_list_on_narrow_ivf_still_returns_k() -> None:
    # nprobe=1 visits one list of 64; the allowed items live elsewhere -> widened / exact fallback
    index = build_index(X, IDS, IndexConfig(factory="IVF64,Flat", nprobe=1, recall_queries=0))
    q = X[:1]
    allow = set(brute(-q[0], 12, None, None))  # the 12 items farthest from q
    for mode in ("selector", "refill"):
        index.filter_mode = mode
        ids = index.search(q, K, allow=[allow]).ids
        assert ids[0].tolist() == brute(q[0], K, None, allow)


def test_padding_when_fewer_candidates_than_k() -> None:
    index = build_index(X, IDS, IndexConfig(factory="Flat", recall_queries=0))
    allow = {int(IDS[5]), int(IDS[6]), int(IDS[7]), 12345678}
    res = index.search(X[:2], K, allow=[allow, set()])
    ids, scores = res.ids, res.scores
    assert sorted(ids[0, :3].tolist()) == sorted(IDS[5:8].tolist())
    assert (ids[0, 3:] == -1).all() and np.isneginf(scores[0, 3:]).all()
    assert (ids[1] == -1).all()  # an empty allow-list allows nothing
    small = build_index(X[:4], IDS[:4], IndexConfig(metric="l2", recall_queries=0))
    res = small.search(X[:1], 6)
    ids, scores = res.ids, res.scores
    assert (ids[0, 4:] == -1).all() and np.isposinf(scores[0, 4:]).all()


def test_mixed_batch_filtered_and_plain_rows() -> None:
    index = build_index(X, IDS, IndexConfig(factory="HNSW32", recall_queries=0))
    plain_ids = index.search(X[:3], K).ids
    ids = index.search(X[:3], K, exclude=[set(), {int(plain_ids[1, 0])}, None]).ids
    assert ids[0].tolist() == plain_ids[0].tolist() and ids[2].tolist() == plain_ids[2].tolist()
    assert int(plain_ids[1, 0]) not in ids[1].tolist() and len(set(ids[1].tolist())) == K


def test_pq_index_without_selector_support_falls_back_to_refill() -> None:
    index = build_index(X, IDS, IndexConfig(factory="PQ8x4", filter_mode="selector", recall_queries=0))
    assert index.filter_mode == "refill"
    ids = index.search(X[:1], K, exclude=[set(IDS[:500].tolist())]).ids
    assert len(set(ids[0].tolist()) - set(IDS[:500].tolist()) - {-1}) == K


def test_search_rejects_bad_requests() -> None:
    index = build_index(X, IDS, IndexConfig(factory="Flat", recall_queries=0))
    with pytest.raises(InvalidRequestError, match=r"`queries` must have dim 16 \(the index's\), got shape \(1, 8\)"):
        index.search(np.zeros((1, 8), np.float32), K)
    with pytest.raises(InvalidRequestError, match=r"`queries` must be rank 2 \[n, dim\], got shape \(16,\)"):
        index.search(X[0], K)
    with pytest.raises(InvalidRequestError, match=r"`queries` has 1 row\(s\) with NaN/inf values"):
        index.search(np.full((1, D), np.nan, np.float32), K)
    with pytest.raises(InvalidRequestError, match=r"`k` must be a positive integer, got 0"):
        index.search(X[:1], 0)
    with pytest.raises(InvalidRequestError, match=r"`exclude` must have one entry per query \(2\), got 1"):
        index.search(X[:2], K, exclude=[{1}])
    with pytest.raises(InvalidRequestError, match=r"`allow` must have one entry per query \(1\), got 2"):
        index.search(X[:1], K, allow=[{1}, {2}])
