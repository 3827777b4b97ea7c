"""ItemIndex save/load round trips, incremental add, and artifact errors."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from recfuse.config import IndexConfig
from recfuse.errors import ArtifactError, SchemaError
from recfuse.index import ItemIndex, build_index


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((10, d))
    x = centers[rng.integers(0, 10, n)] + 0.3 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


X = clustered(2000, 16)
IDS = np.arange(2000, dtype=np.int64) + 10_000


@pytest.mark.parametrize(
    ("factory", "described"), [("Flat", "Flat"), ("HNSW16", "HNSW16"), ("IVF16,PQ4x4", "IVF16,PQ4x4")]
)
def test_save_load_gives_identical_results(tmp_path: Path, factory: str, described: str) -> None:
    cfg = IndexConfig(factory=factory, nprobe=4, ef_search=40, recall_queries=50, recall_floor=0.0)
    index = build_index(X, IDS, cfg)
    path = index.save(tmp_path / "sub" / "index.faiss")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["index.faiss"]  # no temp left
    loaded = ItemIndex.load(path, cfg)
    assert (loaded.factory, loaded.metric, loaded.ntotal, loaded.dim) == (described, "ip", 2000, 16)
    assert loaded.recall is None
    np.testing.assert_array_equal(loaded.ids, IDS)
    q = X[:20] + 0.01
    ex = [set(IDS[i : i + 5].tolist()) for i in range(20)]
    before, after = index.search(q, 10, exclude=ex), loaded.search(q, 10, exclude=ex)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.scores, after.scores)


def test_load_applies_search_params_from_config(tmp_path: Path) -> None:
    path = build_index(X, IDS, IndexConfig(factory="IVF16,Flat", nprobe=2, recall_queries=0)).save(tmp_path / "i")
    loaded = ItemIndex.load(path, IndexConfig(factory="IVF16,Flat", nprobe=9))
    assert faiss.extract_index_ivf(loaded.faiss_index.index).nprobe == 9


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF16,Flat"])
def test_add_then_search_finds_new_ids(factory: str) -> None:
    index = build_index(X[:1500], IDS[:1500], IndexConfig(factory=factory, nprobe=16, recall_queries=0))
    index.add(X[1500:], IDS[1500:])
    assert index.ntotal == 2000 and 1999 + 10_000 in index and 5 not in index
    ids = index.search(X[1500:1510], 1).ids
    assert ids[:, 0].tolist() == IDS[1500:1510].tolist()
    with pytest.raises(SchemaError, match=r"`ids` must be new to the index, got 2 id\(s\) already present"):
        index.add(X[:2], IDS[:2])
    with pytest.raises(SchemaError, match=r"`vectors` must have dim 16 \(the index's\), got shape \(2, 4\)"):
        index.add(np.zeros((2, 4), np.float32), np.array([1, 2]))
    with pytest.raises(SchemaError, match=r"`ids` must be unique, got 1 duplicate id\(s\), e.g. \[7\]"):
        index.add(X[:2], np.array([7, 7]))


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"index file '.*missing.faiss' does not exist"):
        ItemIndex.load(tmp_path / "missing.faiss")
    bad = tmp_path / "bad.faiss"
    bad.write_bytes(b"not an index at all")
    with pytest.raises(ArtifactError, match=r"index file '.*bad.faiss' is not a readable faiss index"):
        ItemIndex.load(bad)
    plain = tmp_path / "plain.faiss"
    flat = faiss.IndexFlatIP(16)
    flat.add(X)
    faiss.write_index(flat, str(plain))
    with pytest.raises(ArtifactError, match=r"holds a IndexFlatIP, expected IDMap2; rebuild it with build_index"):
        ItemIndex.load(plain)
    path = build_index(X, IDS, IndexConfig(metric="l2", recall_queries=0)).save(tmp_path / "l2.faiss")
    with pytest.raises(ArtifactError, match=r"uses metric 'l2' but `index.metric` is 'ip'"):
        ItemIndex.load(path, IndexConfig(metric="ip"))


def test_save_error_is_artifact_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    index = build_index(X[:10], IDS[:10], IndexConfig(recall_queries=0))
    with pytest.raises(ArtifactError, match=r"could not write index file '.*file/index.faiss'"):
        index.save(blocker / "index.faiss")
