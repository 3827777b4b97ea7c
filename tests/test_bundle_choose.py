"""factory "auto" in a bundle: the chosen index, its trial table in the manifest, its parameter applied at load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_contents

from recfuse.bundle import load_bundle, write_bundle
from recfuse.config import IndexConfig
from recfuse.index import choose, served
from recfuse.index.choose import auto_index
from recfuse.index.factory import ivf_of
from recfuse.inference import Recommender


def _queries(contents_vectors: np.ndarray, m: int = 200) -> np.ndarray:
    rng = np.random.default_rng(5)
    q = contents_vectors[rng.integers(0, len(contents_vectors), (m, 3))].mean(axis=1)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _write(root: Path, cfg: IndexConfig, n_items: int = 3_000) -> Path:
    """What export does with a config: auto_index, then write_bundle with the chosen index."""
    contents = make_contents(n_items, 16, index_cfg=cfg)
    contents.served_queries = _queries(contents.item_vectors)
    contents.served_queries_about = "200 history-like queries"
    index, cfg = auto_index(contents.ranked_vectors, contents.served_queries, cfg)
    return write_bundle(root, contents, cfg, index=index)


def test_the_chosen_factory_is_recorded_and_its_tuned_parameter_applied_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(served, "EF_SEARCH_GRID", (1, 2))  # the HNSW candidate cannot meet the target
    monkeypatch.setattr(choose, "candidate_factories", lambda n, d, exact: ["HNSW4", "IVF16,Flat"])
    path = _write(tmp_path / "b", IndexConfig(target_recall=0.99, ef_construction=8, recall_queries=50))
    b = load_bundle(path)
    m = b.manifest
    choice = m["index_choice"]
    assert [r["factory"] for r in choice["candidates"]] == ["HNSW4", "IVF16,Flat"]
    assert not choice["candidates"][0]["met"] and choice["candidates"][1]["met"]
    for row in choice["candidates"]:
        assert set(row) >= {"factory", "param", "value", "recall", "met", "latency_ms", "build_s"}
    assert choice["chosen"] == m["index_factory"] == m["index_config"]["factory"] == "IVF16,Flat"
    # the writer tuned nprobe on the chosen index; the loader and the Recommender apply it
    nprobe = m["served_recall"]["tuned"]["nprobe"]
    assert m["served_recall"]["met"] and m["index_config"]["nprobe"] == nprobe
    assert ivf_of(b.index.faiss_index).nprobe == nprobe
    info = Recommender.from_bundle(path).info()
    assert info.index_factory == "IVF16,Flat" and info.search_params.startswith(f"nprobe={nprobe} (tuned")
    assert "auto" in info.search_params


def test_an_explicit_factory_is_kept_and_records_no_choice(tmp_path: Path) -> None:
    path = _write(tmp_path / "b", IndexConfig(factory="HNSW8", recall_queries=0), n_items=500)
    m = load_bundle(path).manifest
    assert m["index_choice"] is None and m["index_factory"] == "HNSW8" and m["served_recall"]["tuned"]


def test_a_small_catalog_under_auto_serves_flat(tmp_path: Path) -> None:
    path = _write(tmp_path / "b", IndexConfig(recall_queries=0), n_items=500)
    m = load_bundle(path).manifest
    assert m["index_factory"] == "Flat" and m["index_choice"]["chosen"] == "Flat"
    assert m["served_recall"]["recall"] == pytest.approx(1.0)


@pytest.mark.parametrize("factory", ["auto", "HNSW8"])
def test_item_vector_recall_is_measured_once_at_the_served_setting(tmp_path: Path, factory: str) -> None:
    """The manifest's ann_recall: item vectors as queries (the rows measure_recall draws), searched at
    the parameter the bundle serves (after tuning, not the build-time default); recall_queries kept."""
    cfg = IndexConfig(factory=factory, target_recall=0.9, recall_queries=60, ef_construction=16, exact_max_items=1000)
    path = _write(tmp_path / "b", cfg)
    b = load_bundle(path)
    m = b.manifest
    assert m["index_config"]["recall_queries"] == 60 and m["served_recall"]["tuned"]
    x = np.asarray(b.ranked_vectors, np.float32)
    rows = served.item_query_rows(len(x), 60, cfg.seed)
    assert m["ann_recall"] == pytest.approx(served.served_recall(b.index, x, x[rows], 10))
