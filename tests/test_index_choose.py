"""The factory choice by measurement (recfuse.index.choose) on small catalogs with real faiss."""

from __future__ import annotations

import dataclasses

import faiss
import numpy as np
import pytest

from recfuse.config import IndexConfig
from recfuse.errors import ConfigError
from recfuse.index import served
from recfuse.index.choose import _better, auto_index, candidate_factories, choose_index, pick, try_candidate
from recfuse.index.factory import inner_index, ivf_of


def _world(n: int, d: int = 16, m: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, d))
    x = centers[rng.integers(0, 20, n)] + 0.6 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, n, (m, 3))].mean(axis=1)  # pooled-history-like queries
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x.astype(np.float32), q.astype(np.float32)


def test_a_tiny_catalog_keeps_flat_and_tries_nothing_else() -> None:
    x, q = _world(1_000)
    index, choice = choose_index(x, q, IndexConfig(recall_queries=0))
    assert choice["chosen"] == "Flat" and index.factory == "Flat" and index.ntotal == 1_000
    (row,) = choice["candidates"]  # within the latency bound: nothing else is built
    assert row["factory"] == "Flat" and row["recall"] == 1.0 and row["met"] and row["param"] == ""
    assert row["latency_ms"] > 0 and row["build_s"] >= 0 and choice["tried_on"] == "all 1000 vectors"


def test_a_missed_target_leads_to_a_candidate_that_meets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    x, q = _world(5_000)
    monkeypatch.setattr(served, "EF_SEARCH_GRID", (1, 2))  # the configured HNSW cannot reach the target
    cfg = IndexConfig(target_recall=0.99, ef_construction=8, recall_queries=50)
    index, choice = choose_index(x, q, cfg, candidates=["HNSW4", "IVF32,Flat"])
    hnsw, ivf = choice["candidates"]
    assert hnsw["factory"] == "HNSW4" and not hnsw["met"] and hnsw["value"] == 2
    assert ivf["factory"] == "IVF32,Flat" and ivf["met"] and ivf["param"] == "nprobe" and ivf["recall"] >= 0.99
    assert choice["chosen"] == "IVF32,Flat" and index.factory == "IVF32,Flat"
    # the chosen index is tuned: its nprobe is the trial's, in force and in its config
    assert ivf_of(index.faiss_index).nprobe == ivf["value"] == index.config.nprobe
    assert index.config.factory == "IVF32,Flat" and index.config.recall_queries == 50 and index.recall is not None
    assert served.served_recall(index, x, q) == pytest.approx(ivf["recall"], abs=1e-4)


def test_no_candidate_meeting_the_target_picks_the_highest_recall(monkeypatch: pytest.MonkeyPatch) -> None:
    x, q = _world(3_000)
    monkeypatch.setattr(served, "EF_SEARCH_GRID", (1,))
    _, choice = choose_index(x, q, IndexConfig(target_recall=1.0, recall_queries=0), candidates=["HNSW4", "HNSW32"])
    recalls = {r["factory"]: r["recall"] for r in choice["candidates"]}
    assert not any(r["met"] for r in choice["candidates"]) and recalls[choice["chosen"]] == max(recalls.values())


def test_the_first_within_the_bound_else_the_fastest_meeting_the_target_wins() -> None:
    slow = {"met": True, "latency_ms": 0.9, "recall": 1.0}
    fast = {"met": True, "latency_ms": 0.2, "recall": 0.96}
    missed = {"met": False, "latency_ms": 0.01, "recall": 0.9}
    faster = {"met": True, "latency_ms": 0.1, "recall": 0.95}
    assert pick([missed, slow, fast, faster], latency_bound_ms=0.25) == 2  # the first within the bound
    assert pick([missed, slow, fast, faster], latency_bound_ms=0.05) == 3  # none within: the fastest
    assert pick([missed, {**missed, "recall": 0.92}], latency_bound_ms=1.0) == 1  # none met: best recall
    assert _better(fast, slow) and not _better(slow, fast)
    assert not _better(missed, slow) and _better(slow, missed) and _better(missed, None)
    assert _better({"met": False, "latency_ms": 5.0, "recall": 0.93}, missed)


def test_a_large_catalog_is_tried_on_a_sample_and_built_whole() -> None:
    x, q = _world(6_000)
    cfg = IndexConfig(choice_sample=2_000, recall_queries=0)
    index, choice = choose_index(x, q, cfg, candidates=["Flat", "HNSW8"])
    assert choice["tried_on"] == "sample of 2000 of 6000 vectors" and index.ntotal == 6_000
    assert index.factory == choice["chosen"]


@pytest.mark.parametrize("bound_ms", [1_000.0, 0.0])
def test_a_sampled_catalog_with_exact_truth_tries_its_first_candidate_on_every_vector(bound_ms: float) -> None:
    x, q = _world(6_000)
    cfg = IndexConfig(choice_sample=2_000, recall_queries=0, exact_max_items=1_000, latency_bound_ms=bound_ms)
    truth = served.served_truth("ip", x, q, 0, 0, 10)
    index, choice = choose_index(x, q, cfg, exact=truth.exact)
    first = choice["candidates"][0]
    assert first["factory"] == "HNSW32" and first["vectors"] == 6_000 and first["met"]
    assert index.ntotal == 6_000 and index.factory == choice["chosen"]
    if bound_ms:  # within the bound on every vector: kept, tuned, no sample trial
        assert len(choice["candidates"]) == 1 and choice["tried_on"] == "all 6000 vectors"
        assert choice["chosen"] == "HNSW32" and index.config.ef_search == first["value"]
        assert served.served_recall(index, x, q, exact=truth.exact) == pytest.approx(first["recall"])
    else:  # no candidate is within a 0 ms bound: the sample trial of every candidate follows
        assert choice["tried_on"] == "sample of 2000 of 6000 vectors"
        assert [r["vectors"] for r in choice["candidates"][1:]] == [2_000, 2_000]
        assert [r["factory"] for r in choice["candidates"][1:]] == ["HNSW32", "HNSW48"]


def test_export_truth_is_one_pass_over_served_queries_and_item_rows() -> None:
    x, q = _world(3_000)
    truth = served.served_truth("ip", x, q, 50, 7, 10)
    assert truth.exact.shape == (100, 10) and truth.exact_items.shape == (50, 10) and truth.fits(q, 50)
    assert not truth.fits(q, 49) and not truth.fits(q[::-1].copy(), 50)
    assert (truth.rows == served.item_query_rows(3_000, 50, 7)).all()  # the rows measure_recall draws
    drawn = np.random.default_rng(7).choice(3_000, 50, replace=False)
    assert served.item_query_rows(3_000, 50, 7).tolist() == drawn.tolist()
    assert (truth.exact[:, 0] == np.argmax(q @ x.T, axis=1)).all()
    assert (truth.exact_items[:, 0] == np.argmax(x[truth.rows] @ x.T, axis=1)).all()


def test_candidates_build_tune_and_refine() -> None:
    names = candidate_factories(100_000, 64, exact_max_items=50_000)
    assert names == ["IVF1024,Flat", "HNSW32", "IVF1024,PQ64x4fs,RFlat", "IVF4096,Flat", "HNSW48", "Flat"]
    assert candidate_factories(10_000, 16, exact_max_items=50_000)[:2] == ["Flat", "IVF512,Flat"]
    assert candidate_factories(2_000, 16, exact_max_items=50_000) == ["Flat", "HNSW48"]
    x, q = _world(10_000)
    index, row = try_candidate("IVF64,PQ16x4fs,RFlat", x, q, IndexConfig(target_recall=0.95))
    assert row["met"] and row["param"] == "nprobe" and row["recall"] >= 0.95
    assert isinstance(inner_index(index.faiss_index), faiss.IndexRefine)
    assert inner_index(index.faiss_index).k_factor == 8  # refines 8 x k approximate hits exactly


def test_auto_index_only_for_auto_with_queries_and_a_target() -> None:
    x, q = _world(1_000)
    for cfg, queries in (
        (IndexConfig(factory="HNSW32"), q),
        (IndexConfig(), None),
        (IndexConfig(), q[:0]),
        (IndexConfig(target_recall=0.0), q),
    ):
        assert auto_index(x, queries, cfg) == (None, cfg)
    index, cfg = auto_index(x, q, IndexConfig(recall_queries=0))
    assert index is not None and index.choice is not None and cfg.factory == index.choice["chosen"] == "Flat"
    assert cfg.ef_search is None and cfg.nprobe is None


def test_choice_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="index.choice_sample"):
        IndexConfig(choice_sample=10)
    with pytest.raises(ConfigError, match="index.latency_bound_ms"):
        dataclasses.replace(IndexConfig(), latency_bound_ms=-1.0)
