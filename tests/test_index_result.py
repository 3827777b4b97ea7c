"""Every search returns ``SearchResult(scores, ids)`` (faiss's order): exact values and dtypes per field.

Scores and ids have the same shape, so a call site that unpacks them in the wrong order swaps them
silently. A tiny Flat index with known vectors pins both fields by value and dtype on every path:
``ItemIndex.search`` (fast and checked paths, filters on both modes, ``l2``), ``search_one``, the
filtered-search helpers and an index built from shards.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recfuse.config import IndexConfig
from recfuse.index import ItemIndex, SearchResult, SearchResultList, build_index
from recfuse.index.filtered import Filter, exact_allowed, filtered_search
from recfuse.index.sharded import build_index_from_shards

VECS = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [2.0, 0.0]], np.float32)
IDS = np.array([100, 101, 102, 103], np.int64)
QUERY = np.array([[1.0, 0.25]], np.float32)
# QUERY . VECS = [1, 0.25, 0.625, 2] (exact in float32) -> best first:
WANT_SCORES = [2.0, 1.0, 0.625, 0.25]
WANT_IDS = [103, 100, 102, 101]


def check(res: object, scores: list[float], ids: list[int]) -> None:
    """``res`` is a SearchResult with exactly these scores (float32) and ids (int64), row 0 of a batch
    or a 1-D result; positional unpacking gives ``(scores, ids)``."""
    assert isinstance(res, SearchResult)
    assert res.scores.dtype == np.float32 and res.ids.dtype == np.int64
    got_scores, got_ids = res  # faiss's order
    assert got_scores is res.scores and got_ids is res.ids
    row_scores = res.scores[0] if res.scores.ndim == 2 else res.scores
    row_ids = res.ids[0] if res.ids.ndim == 2 else res.ids
    assert row_scores.tolist() == scores and row_ids.tolist() == ids


@pytest.fixture(scope="module")
def index() -> ItemIndex:
    return build_index(VECS, IDS, IndexConfig(factory="Flat", recall_queries=0))


def test_search_fast_and_checked_paths_return_scores_then_ids(index: ItemIndex) -> None:
    check(index.search(QUERY, 4), WANT_SCORES, WANT_IDS)  # fast path
    check(index.search(QUERY.astype(np.float64), 4), WANT_SCORES, WANT_IDS)  # checked path
    check(index.search(QUERY, 4, exclude=[None]), WANT_SCORES, WANT_IDS)  # filter lists, no filter
    padded = index.search(QUERY, 6)
    check(SearchResult(padded.scores[:, :4], padded.ids[:, :4]), WANT_SCORES, WANT_IDS)
    assert padded.ids[0, 4:].tolist() == [-1, -1] and np.isneginf(padded.scores[0, 4:]).all()


@pytest.mark.parametrize("mode", ["selector", "refill"])
def test_filtered_search_returns_scores_then_ids(index: ItemIndex, mode: str) -> None:
    index.filter_mode = mode
    check(index.search(QUERY, 3, exclude=[{103}]), [1.0, 0.625, 0.25], [100, 102, 101])
    check(index.search(QUERY, 2, allow=[{101, 102}]), [0.625, 0.25], [102, 101])
    batch = index.search(np.vstack([QUERY, QUERY]), 2, exclude=[{103}, None])  # one filtered, one plain row
    assert batch.scores.dtype == np.float32 and batch.ids.dtype == np.int64
    assert batch.scores.tolist() == [[1.0, 0.625], [2.0, 1.0]] and batch.ids.tolist() == [[100, 102], [103, 100]]
    flt = Filter(exclude=np.array([100], np.int64), allow=None)
    check(filtered_search(index.faiss_index, QUERY, 2, flt, mode, "ip"), [2.0, 0.625], [103, 102])


def test_exact_allowed_and_empty_filtered_search_return_scores_then_ids(index: ItemIndex) -> None:
    check(exact_allowed(index.faiss_index, QUERY, 2, np.array([101, 102], np.int64), "ip"), [0.625, 0.25], [102, 101])
    nothing = Filter(exclude=np.empty(0, np.int64), allow=np.empty(0, np.int64))
    check(filtered_search(index.faiss_index, QUERY, 2, nothing, "selector", "ip"), [], [])


def test_search_one_returns_score_and_id_lists(index: ItemIndex) -> None:
    res = index.search_one(QUERY, 3)
    assert isinstance(res, SearchResultList)
    assert res.scores == [2.0, 1.0, 0.625] and res.ids == [103, 100, 102]
    assert all(type(s) is float for s in res.scores) and all(type(i) is int for i in res.ids)
    scores, ids = res
    assert scores is res.scores and ids is res.ids


def test_l2_scores_are_ascending_squared_distances() -> None:
    index = build_index(VECS, IDS, IndexConfig(factory="Flat", metric="l2", recall_queries=0))
    # |QUERY - v|^2 = [0.0625, 1.5625, 0.3125, 1.0625]
    check(index.search(QUERY, 4), [0.0625, 0.3125, 1.0625, 1.5625], [100, 102, 103, 101])


def test_index_built_from_shards_returns_scores_then_ids(tmp_path: Path) -> None:
    flat = pa.array(VECS.reshape(-1), pa.float32())
    table = pa.table({"item_id": pa.array(["a", "b", "c", "d"]), "vector": pa.FixedSizeListArray.from_arrays(flat, 2)})
    pq.write_table(table, tmp_path / "part-00000.parquet")
    shards = [{"name": "part-00000.parquet", "rows": 4}]
    manifest = {"format": 1, "rows": 4, "embedded": 4, "rejects": 0, "dim": 2, "shards": shards}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "_SUCCESS").write_text("")
    # mips off: these exact scores pin the field order (an augmented index returns them within 1e-7,
    # tests/test_index_mips.py)
    cfg = IndexConfig(factory="IVF1,Flat", nprobe=1, recall_queries=0, mips="off")
    built = build_index_from_shards(tmp_path, cfg)
    check(built.index.search(QUERY, 4), WANT_SCORES, [3, 0, 2, 1])  # shard rows are the ids
    check(built.index.search(QUERY, 2, exclude=[{3}]), [1.0, 0.625], [0, 2])
