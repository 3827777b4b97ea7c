"""Export a really trained model, serve it, add new items without retraining (slow: trains a tiny model)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

tf = pytest.importorskip("tensorflow")

from recfuse.bundle import list_versions, load_bundle  # noqa: E402
from recfuse.bundle.export import export_model  # noqa: E402
from recfuse.bundle.incremental import add_items  # noqa: E402
from recfuse.cli.main import main  # noqa: E402
from recfuse.config import RecfuseConfig  # noqa: E402
from recfuse.errors import ArtifactError, DataError  # noqa: E402
from recfuse.fsio import sha256_file  # noqa: E402
from recfuse.inference import Recommender  # noqa: E402

pytestmark = pytest.mark.slow


def _cfg(data_dir: Path, **model: object) -> RecfuseConfig:
    raw = {
        "data": {
            "items": str(data_dir / "items.parquet"),
            "interactions": str(data_dir / "interactions.parquet"),
            "max_history": 8,
        },
        "modalities": [
            {"name": "image", "kind": "image", "source": "raw", "image_size": 16},
            {"name": "text", "kind": "text", "columns": ["title", "description"], "vocab_size": 500,
             "max_tokens": 16, "embedding_dim": 16},
            {"name": "categories", "kind": "categorical"},
        ],
        "model": {"dim": 16, "fusion": "attention", "query_hidden": [32], "fusion_hidden": [32], **model},
        "train": {"epochs": 1, "batch_size": 128, "learning_rate": 0.01, "seed": 3},
        "index": {"factory": "Flat", "recall_queries": 50},
    }  # fmt: skip
    return RecfuseConfig.from_dict(raw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    from recfuse.data.splits import split_interactions
    from recfuse.data.synthetic import generate
    from recfuse.data.validate import load_dataset
    from recfuse.training.trainer import train

    data_dir = tmp_path_factory.mktemp("syn")
    generate(data_dir, n_items=120, n_users=60, seed=1)
    cfg = _cfg(data_dir)
    ds = load_dataset(cfg.data, cfg.modalities)
    split = split_interactions(ds.interactions, "random", 42)
    out = tmp_path_factory.mktemp("run") / "model"
    train(cfg, ds, split, out, progress=False)
    return data_dir, out, pd.read_parquet(data_dir / "items.parquet")


@pytest.fixture(scope="module")
def exported(trained: tuple[Path, Path, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _data, model_dir, _items = trained
    return export_model(model_dir, tmp_path_factory.mktemp("bundles"))


def test_export_layout_and_manifest(exported: Path, trained: tuple[Path, Path, pd.DataFrame]) -> None:
    _data, model_dir, items = trained
    b = load_bundle(exported)
    m = b.manifest
    assert exported.parent.name == "default" and m["variant"] == "default"
    assert m["embedding_dim"] == 16 and m["item_count"] == len(items) and m["index_factory"] == "Flat"
    assert m["ann_recall"] == pytest.approx(1.0) and m["has_model"] and m["has_query_savedmodel"]
    assert m["model_version"].startswith("model-") and m["training_config"]["model"]["fusion"] == "attention"
    assert (exported / "query_tower_savedmodel" / "saved_model.pb").is_file()
    assert (exported / "model" / "model.json").is_file()
    assert not (exported / "model" / "checkpoints").exists() and not (exported / "model" / "tensorboard").exists()
    assert any(k.startswith("model/weights/") for k in m["files"])  # the model copy is checksummed too
    titles = dict(zip(items["item_id"].astype(str), items["title"]))
    first = b.item_ids[0]
    assert b.items["title"].iloc[0] == titles[first]
    assert list(b.items["categories"].iloc[0]) == list(
        items.set_index(items["item_id"].astype(str)).loc[first, "categories"]
    )


def test_numpy_query_forward_matches_the_savedmodel(exported: Path) -> None:
    b = load_bundle(exported)
    sig = tf.saved_model.load(str(exported / "query_tower_savedmodel")).signatures["serving_default"]
    rng = np.random.default_rng(0)
    bsz, length = 6, 8
    hist = rng.integers(0, len(b.item_ids), (bsz, length)).astype(np.int64)
    hist[1, 3:] = -1
    hist[2, :] = -1  # empty history
    pos = np.broadcast_to(np.arange(length, dtype=np.float32), (bsz, length)).copy()
    users = np.array([b.user_vocab.lookup_one(u) for u in ["u1", "u2", "nobody", "u3", "u4", "u5"]])
    tf_q = sig(user_idx=tf.constant(users), hist_idx=tf.constant(hist), hist_pos=tf.constant(pos))["query"].numpy()
    np_q = b.query_tower.encode(b.item_vectors, users, hist, pos)
    assert np.abs(tf_q - np_q).max() <= 1e-5


def test_recommender_over_the_exported_bundle(exported: Path) -> None:
    rec = Recommender.from_bundle(exported.parent)
    user = load_bundle(exported).user_history["user_id"].iloc[0]
    r = rec.recommend(user_id=user, k=10, exclude_seen=True)
    assert r.fallback == "" and len(r.items) == 10 and r.bundle_version == exported.name
    assert rec.recommend(k=3).fallback == "popular"


def test_popularity_prior_ranks_by_scaled_vectors_in_evaluation_and_serving(
    trained: tuple[Path, Path, pd.DataFrame], tmp_path: Path
) -> None:
    """With ``model.popularity_prior`` the model, its evaluation and the served bundle rank by
    ``v * (1 + γ·log(1 + count))`` (``v * new_item_scale`` for items never trained on) while the query
    tower reads histories from the plain vectors: the server's ids and scores equal an exact ranking
    of the trained model's own query vectors, for known users and for a history of a cold item."""
    from recfuse.data.splits import split_interactions
    from recfuse.data.validate import load_dataset
    from recfuse.evaluation.fullrank import evaluate_model
    from recfuse.models.trained import TrainedModel
    from recfuse.training.trainer import train

    data_dir, _model_dir, _items = trained
    cfg = _cfg(data_dir, popularity_prior=0.5, new_item_scale=1.7)
    ds = load_dataset(cfg.data, cfg.modalities)
    split = split_interactions(ds.interactions, "random", 42)
    train(cfg, ds, split, tmp_path / "model", progress=False)
    m = TrainedModel.load(tmp_path / "model")
    counts = np.array([m.popularity.get(i, 0) for i in m.item_ids], np.float64)
    factor = np.where(counts > 0, 1.0 + 0.5 * np.log1p(counts), 1.7)
    np.testing.assert_allclose(m.ranking_embeddings, m.item_embeddings * factor[:, None], rtol=1e-6)
    assert (counts == 0).any() and (counts > 2).any()  # cold rows get new_item_scale, warm ones grow
    # offline evaluation ranks by the scaled vectors: the same as a model whose plain vectors are those
    view = SimpleNamespace(
        item_ids=m.item_ids,
        item_embeddings=m.ranking_embeddings,
        ranking_embeddings=m.ranking_embeddings,
        user_histories=m.user_histories,
        query_embeddings=m.query_embeddings,  # histories still read from the plain vectors
    )
    plain = SimpleNamespace(**{**vars(view), "ranking_embeddings": m.item_embeddings})
    scaled_result = evaluate_model(m, split, ks=(10, 50)).means("all")
    assert scaled_result == evaluate_model(view, split, ks=(10, 50)).means("all")
    assert scaled_result != evaluate_model(plain, split, ks=(10, 50)).means("all")
    users = sorted(set(split.test["user_id"].astype(str)))

    bundle = export_model(tmp_path / "model", tmp_path / "bundles")
    b = load_bundle(bundle)
    # one representation on disk: the plain vectors and each item's factor; the index holds their product
    np.testing.assert_array_equal(b.item_vectors, m.item_embeddings)
    np.testing.assert_allclose(b.item_scale, factor, rtol=1e-6)
    np.testing.assert_allclose(b.ranked_vectors, m.ranking_embeddings, rtol=1e-6)
    stored = pq.read_table(bundle / "embeddings.parquet").column("rank_scale").to_numpy()
    np.testing.assert_allclose(stored, factor, rtol=1e-6)
    # a bundle written before the factors were stored (ranked vectors, no rank_scale) still loads as the same
    legacy = tmp_path / "legacy" / bundle.parent.name / bundle.name
    shutil.copytree(bundle, legacy)
    table = pq.read_table(legacy / "embeddings.parquet").drop(["rank_scale"])
    ranked = pa.FixedSizeListArray.from_arrays(pa.array(m.ranking_embeddings.reshape(-1), pa.float32()), 16)
    pq.write_table(table.set_column(table.schema.get_field_index("vector"), "vector", ranked),
                   legacy / "embeddings.parquet")  # fmt: skip
    manifest = json.loads((legacy / "manifest.json").read_text())
    entry = legacy / "embeddings.parquet"
    manifest["files"]["embeddings.parquet"] = {"sha256": sha256_file(entry), "size": entry.stat().st_size}
    (legacy / "manifest.json").write_text(json.dumps(manifest))
    old = load_bundle(legacy)
    np.testing.assert_allclose(old.item_vectors, m.item_embeddings, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(old.item_scale, factor, rtol=1e-6)
    then, now = Recommender.from_bundle(legacy), Recommender.from_bundle(bundle)
    assert then.recommend(user_id=users[0], k=10).item_ids == now.recommend(user_id=users[0], k=10).item_ids
    for mb in (0.0, 16.0):  # encoded per request, and precomputed at load
        rec = Recommender.from_bundle(bundle.parent, user_vectors_mb=mb)
        for user in users[:5]:
            got = rec.recommend(user_id=user, k=10)
            qu = m.query_embeddings([user], [m.user_histories.get(user, [])])
            scores = (qu @ m.ranking_embeddings.T)[0]
            top = np.argsort(-scores, kind="stable")[:10]
            assert [i.item_id for i in got.items] == [m.item_ids[j] for j in top]
            np.testing.assert_allclose([i.score for i in got.items], scores[top], rtol=1e-4, atol=1e-5)
    # a history holding a cold item reads its plain vector (the factor 1.7 only ranks it)
    cold = m.item_ids[int(np.flatnonzero(counts == 0)[0])]
    got = Recommender.from_bundle(bundle.parent).recommend(history=[cold], k=10)
    scores = (m.query_embeddings([None], [[cold]]) @ m.ranking_embeddings.T)[0]
    top = np.argsort(-scores, kind="stable")[:10]
    assert [i.item_id for i in got.items] == [m.item_ids[j] for j in top]
    np.testing.assert_allclose([i.score for i in got.items], scores[top], rtol=1e-4, atol=1e-5)
    # items added later are new items too: ranked with the same factor
    new = ds.items[ds.items["item_id"].astype(str) == cold].copy()
    new["item_id"] = ["added-1"]
    new["image"] = [str(data_dir / p) if isinstance(p, str) else p for p in new["image"]]
    new.to_parquet(tmp_path / "new.parquet")
    added = add_items(bundle.parent, tmp_path / "new.parquet", allow_external_images=True)
    assert added.added == 1
    extended = load_bundle(added.path)
    row = extended.item_ids.index("added-1")
    np.testing.assert_allclose(extended.item_vectors[row], m.item_embeddings[m.item_ids.index(cold)], atol=1e-5)
    assert extended.item_scale[row] == pytest.approx(1.7)
    np.testing.assert_allclose(extended.item_scale[: len(m.item_ids)], factor, rtol=1e-6)
    # the grown index holds the added item's scaled vector
    held = extended.index.faiss_index.reconstruct(row)
    np.testing.assert_allclose(held, 1.7 * m.item_embeddings[m.item_ids.index(cold)], atol=1e-5)


def test_export_measures_served_recall_on_model_queries_and_tunes_ef_search(
    trained: tuple[Path, Path, pd.DataFrame], tmp_path: Path
) -> None:
    from recfuse.config import IndexConfig
    from recfuse.index.factory import inner_index
    from recfuse.index.served import EF_SEARCH_GRID, served_recall
    from recfuse.models.trained import TrainedModel

    data_dir, model_dir, _items = trained
    cfg = IndexConfig(factory="HNSW4", ef_construction=8, target_recall=0.99, served_queries=50, recall_queries=50)
    path = export_model(model_dir, tmp_path / "b", cfg)
    b = load_bundle(path)
    served = b.manifest["served_recall"]
    model = TrainedModel.load(model_dir)
    # the queries: 40 known users' query vectors and 10 history-only ones, from the model's own tower
    queries = np.load(path / "served_queries.npy", allow_pickle=False)
    assert queries.shape == (50, 16) and served["n_queries"] == 50 and served["queries"].startswith("40 known")
    users = sorted(u for u, h in model.user_histories.items() if h)
    every = model.query_embeddings(users, [model.user_histories[u] for u in users])
    nearest = np.abs(queries[:40, None, :] - every[None, :, :]).max(axis=2).min(axis=1)
    assert nearest.max() < 1e-5  # each is a known user's query vector
    # tuned: the cheapest efSearch of the grid that meets the target, stored and applied at load
    ef = served["tuned"]["ef_search"]
    assert served["met"] and served["recall"] >= 0.99 and ef in EF_SEARCH_GRID
    assert all(r < 0.99 for v, r in served["tried"] if v < ef) and dict(served["tried"])[ef] == served["recall"]
    assert b.manifest["index_config"]["ef_search"] == ef and inner_index(b.index.faiss_index).hnsw.efSearch == ef
    assert served_recall(b.index, b.ranked_vectors, queries) == pytest.approx(served["recall"])
    info = Recommender.from_bundle(path).info()
    assert info.served_recall == pytest.approx(served["recall"])
    assert info.search_params == f"efSearch={ef} (tuned to 0.99)"
    # an efSearch the config sets wins: only measured, never tuned
    fixed = load_bundle(export_model(model_dir, tmp_path / "f", dataclasses.replace(cfg, ef_search=1)))
    assert fixed.manifest["served_recall"]["tuned"] is None and fixed.manifest["index_config"]["ef_search"] == 1
    assert Recommender.from_bundle(fixed.path).info().search_params == "efSearch=1"
    # an exact index serves exact results
    flat = load_bundle(export_model(model_dir, tmp_path / "x", dataclasses.replace(cfg, factory="Flat")))
    assert flat.manifest["served_recall"]["recall"] == pytest.approx(1.0)
    # add-items measures again on the stored queries and tunes again for the grown catalog
    new, _ = _new_items(_items, data_dir)
    new.to_parquet(tmp_path / "new.parquet")
    grown = load_bundle(add_items(path.parent, tmp_path / "new.parquet", allow_external_images=True).path)
    again = grown.manifest["served_recall"]
    assert again["n_queries"] == 50 and again["queries"] == served["queries"] and again["recall"] >= 0.99
    assert again["tuned"] is not None and grown.manifest["index_config"]["ef_search"] == again["tuned"]["ef_search"]
    np.testing.assert_array_equal(np.load(grown.path / "served_queries.npy", allow_pickle=False), queries)


def test_export_with_factory_auto_records_the_choice(
    trained: tuple[Path, Path, pd.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recfuse.config import IndexConfig

    _data, model_dir, _items = trained
    cfg = IndexConfig(factory="auto", served_queries=50, recall_queries=50)
    b = load_bundle(export_model(model_dir, tmp_path / "b", cfg))
    choice = b.manifest["index_choice"]
    # a 120-item catalog: the size rule's Flat meets any target within the latency bound, nothing else is built
    assert choice["chosen"] == b.manifest["index_factory"] == b.manifest["index_config"]["factory"] == "Flat"
    assert [r["factory"] for r in choice["candidates"]] == ["Flat"] and choice["candidates"][0]["recall"] == 1.0
    assert choice["n_queries"] == 50 and b.manifest["ann_recall"] == pytest.approx(1.0)
    assert Recommender.from_bundle(b.path).info().search_params == "factory auto: chosen of 1 candidate(s)"
    code = main(["export", "--model", str(model_dir), "--out", str(tmp_path / "c"), "--factory", "auto"])
    assert code == 0 and "factory auto chose Flat" in capsys.readouterr().out


def _new_items(items: pd.DataFrame, data_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Copies (under new ids) of catalog items never seen in training: embedded from content alone,
    exactly like their originals, so each copy must be its original's nearest neighbour."""
    cold = items[items["is_new"]].head(4)
    new = cold.copy()
    new["item_id"] = [f"new-{i}" for i in cold["item_id"].astype(str)]
    new["image"] = [str(data_dir / p) if isinstance(p, str) else p for p in cold["image"]]
    return new, [str(i) for i in cold["item_id"]]


def test_add_items_makes_new_items_recommendable(
    exported: Path, trained: tuple[Path, Path, pd.DataFrame], tmp_path: Path
) -> None:
    data_dir, _model_dir, items = trained
    new, originals = _new_items(items, data_dir)
    broken = new.iloc[:1].copy()
    broken["item_id"] = ["broken-image"]
    broken["image"] = [str(tmp_path / "missing.png")]
    catalog = pd.concat([new, broken, items.iloc[:2]], ignore_index=True)  # 4 new, 1 bad, 2 existing
    catalog.to_parquet(tmp_path / "new.parquet")
    before = load_bundle(exported)

    result = add_items(exported.parent, tmp_path / "new.parquet", allow_external_images=True)  # absolute paths
    assert (result.added, result.skipped_existing, result.rejected) == (4, 2, 1)
    assert result.rejects[0][0] == "broken-image" and "image" in result.rejects[0][1]
    after = load_bundle(result.path.parent)
    assert after.path == result.path and after.manifest["parent_version"] == before.version
    assert after.model_id == before.model_id and after.index.ntotal == len(before.item_ids) + 4
    assert after.item_ids[: len(before.item_ids)] == before.item_ids  # old rows keep their ids
    np.testing.assert_array_equal(after.item_vectors[: len(before.item_ids)], before.item_vectors)

    rec = Recommender.from_bundle(result.path.parent)
    for orig in originals:
        assert f"new-{orig}" in rec.similar_items(orig, k=3).item_ids
        assert rec.item_title(f"new-{orig}") == rec.item_title(orig)
    # A history made of a new item carries the same meaning as one made of its original.
    via_new = rec.recommend(history=[f"new-{originals[0]}"], k=10, exclude_item_ids=[originals[0]])
    via_old = rec.recommend(history=[originals[0]], k=10, exclude_item_ids=[f"new-{originals[0]}"])
    assert via_new.fallback == "" and len(set(via_new.item_ids) & set(via_old.item_ids)) >= 8


def test_add_items_errors(exported: Path, trained: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> None:
    from bundle_factory import make_bundle

    _data, _model_dir, items = trained
    with pytest.raises(DataError, match=r"2 catalog item id\(s\) are already in bundle .*on_existing='skip'"):
        add_items(exported, items.iloc[:2], on_existing="error")
    with pytest.raises(DataError, match=r"has no `item_id` column"):
        add_items(exported, items.drop(columns=["item_id"]))
    with pytest.raises(DataError, match=r"`on_existing` must be 'skip' or 'error', got 'merge'"):
        add_items(exported, items, on_existing="merge")
    bare = make_bundle(tmp_path, n_items=20, dim=4)
    with pytest.raises(ArtifactError, match=r"has no model/ directory.*re-export it"):
        add_items(bare, items.iloc[:2])
    nothing = add_items(exported, items.iloc[:3])
    assert (nothing.added, nothing.skipped_existing, nothing.path) == (0, 3, load_bundle(exported).path)


def test_cli_export_and_add_items(
    trained: tuple[Path, Path, pd.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir, model_dir, items = trained
    root = tmp_path / "bundles"
    assert main(["export", "--model", str(model_dir), "--out", str(root), "--factory", "HNSW16"]) == 0
    printed, progress = capsys.readouterr()
    # progress goes to stderr, one line per stage as it starts, each with the seconds since the start
    stages = [ln.rsplit(" (", 1)[0] for ln in progress.splitlines()]
    assert stages[0] == "loading model ..." and any(s.startswith("query vectors for served recall: ") for s in stages)
    order = ["building index ...", "measuring served recall ...", "publishing ..."]
    assert [s for s in stages if s in order] == order
    assert all(re.search(r" \(\d+\.\d s\)$", ln) for ln in progress.splitlines()), progress
    assert "loading model" not in printed and "building index" not in printed  # stdout: the result lines only
    served = load_bundle(root).manifest["served_recall"]
    assert "exported bundle" in printed and f"served recall@10 {served['recall']:.4f} on " in printed
    assert f"tuned ef_search={served['tuned']['ef_search']} to 0.95" in printed and "; target met" in printed
    assert "HNSW" in load_bundle(root).manifest["index_factory"]
    new, _ = _new_items(items, data_dir)
    relative = [str(Path(p).relative_to(data_dir)) if isinstance(p, str) else p for p in new["image"].iloc[:2]]
    new.iloc[:2].assign(image=relative).to_parquet(tmp_path / "n.parquet")  # image paths inside --images-dir
    catalog = ["--catalog", str(tmp_path / "n.parquet"), "--images-dir", str(data_dir)]
    assert main(["add-items", "--bundle", str(root / "default"), *catalog]) == 0
    printed, progress = capsys.readouterr()
    for stage in ("loading bundle ...", "embedding items: 2/2", "adding items to the index ...", "publishing ..."):
        assert f"\n{stage} (" in f"\n{progress}", (stage, progress)
    assert "added 2 item(s), skipped 0 already present, rejected 0" in printed and "served recall@10" in printed
    assert len(list_versions(root / "default")) == 2
    assert main(["export", "--model", str(tmp_path / "nope"), "--out", str(root)]) == 5
    assert "error:" in capsys.readouterr().err
