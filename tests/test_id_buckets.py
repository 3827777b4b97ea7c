"""Hashed id tables, `model.item_id_buckets` and `model.user_id_buckets`: config, feature table, and
real training on the shipped sample (one small epoch each)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

tf = pytest.importorskip("tensorflow")

from recfuse.config import RecfuseConfig  # noqa: E402
from recfuse.data.item_features import build_item_features  # noqa: E402
from recfuse.data.vocab import IdVocab, hash_buckets  # noqa: E402
from recfuse.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).resolve().parents[1] / "data_samples"
AUDIO = {"name": "audio", "kind": "vector", "columns": ["audio_vec"], "dim": 8}


def _cfg(modalities: list[dict[str, object]], **model: object) -> RecfuseConfig:
    raw = {
        "data": {"items": str(SAMPLE / "items.parquet"), "interactions": str(SAMPLE / "interactions.parquet"),
                 "max_history": 8},
        "modalities": modalities,
        "model": {"dim": 16, "query_hidden": [32], "fusion_hidden": [32], **model},
        "train": {"epochs": 1, "batch_size": 512, "learning_rate": 0.01, "seed": 3},
        "index": {"factory": "Flat", "recall_queries": 50},
    }  # fmt: skip
    return RecfuseConfig.from_dict(raw)


def _train(cfg: RecfuseConfig, out: Path):  # type: ignore[no-untyped-def]
    from recfuse.data.splits import split_interactions
    from recfuse.data.validate import load_dataset
    from recfuse.models.trained import TrainedModel
    from recfuse.training.trainer import train

    ds = load_dataset(cfg.data, cfg.modalities)
    train(cfg, ds, split_interactions(ds.interactions, "random", 42), out, progress=False)
    return ds, TrainedModel.load(out)


@pytest.mark.parametrize("key", ["item_id_buckets", "user_id_buckets"])
def test_negative_bucket_counts_are_rejected(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"`model\.{key}` must be an integer in \[0, 2147483647\].*got -1"):
        _cfg([AUDIO], **{key: -1})


def test_buckets_without_their_id_table_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"`model\.item_id_buckets` = 7 has no effect"):
        _cfg([AUDIO], item_id_buckets=7, item_id_embedding=False)
    with pytest.raises(ConfigError, match=r"`model\.user_id_buckets` = 5 has no effect"):
        _cfg([AUDIO], user_id_buckets=5, user_id_embedding=False)


def test_auto_user_table_turned_off_drops_the_user_buckets() -> None:
    from recfuse.training.checks import resolve_auto_settings

    sparse = pd.DataFrame({"user_id": ["a", "b", "c"], "item_id": ["x", "y", "z"]})
    cfg = resolve_auto_settings(_cfg([AUDIO], user_id_buckets=5), sparse)
    assert (cfg.model.user_id_embedding, cfg.model.user_id_buckets) == (False, 0)


def test_item_id_row_is_the_crc32_bucket_of_the_id_for_catalog_and_new_items() -> None:
    cfg = _cfg([AUDIO], item_id_buckets=7)
    items = pd.DataFrame({"item_id": ["a", "b", "new"], "audio_vec": [np.ones(8, np.float32)] * 3})
    table = build_item_features(items, cfg, SAMPLE, IdVocab.build(["a", "b"], num_oov=0))
    assert table["item_id_row"].tolist() == [zlib.crc32(s.encode()) % 7 for s in ("a", "b", "new")]
    assert table["item_idx"].tolist() == [0, 1, -1]  # the catalog row is unchanged
    assert "item_id_row" not in build_item_features(items, _cfg([AUDIO]), SAMPLE, IdVocab.build(["a"], num_oov=0))


@pytest.fixture(scope="module")
def item_buckets(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    # no content modality: an item's vector is a function of its id row alone
    return _train(_cfg([], item_id_buckets=7, user_id_embedding=False), tmp_path_factory.mktemp("items") / "m")


def test_items_in_one_bucket_share_the_id_row_and_its_trained_vector(item_buckets) -> None:  # type: ignore[no-untyped-def]
    ds, m = item_buckets
    assert m.candidate_tower.id_embedding.embeddings.shape == (7, 16)
    buckets = hash_buckets(m.item_ids, 7)
    warm = np.array([i in m.warm_items for i in m.item_ids])
    assert warm.sum() > 1000 and len(set(buckets[warm].tolist())) == 7
    vecs = m.item_embeddings[warm]
    for b in range(7):
        same = vecs[buckets[warm] == b]
        np.testing.assert_allclose(same, np.broadcast_to(same[0], same.shape), atol=1e-6)
    firsts = np.stack([vecs[buckets[warm] == b][0] for b in range(7)])
    assert np.linalg.matrix_rank(firsts, tol=1e-3) > 1  # the rows were trained apart
    # embed (and add-items, through the same call) reproduce the exported vectors from the same rows
    np.testing.assert_allclose(m.embed_items(ds.items, ds.images_dir), m.item_embeddings, atol=1e-5)


@pytest.fixture(scope="module")
def user_buckets(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    cfg = _cfg([AUDIO], user_id_embedding=True, user_id_buckets=5)
    return _train(cfg, tmp_path_factory.mktemp("users") / "m")


def test_every_user_reads_its_bucket_and_the_numpy_forward_equals_tensorflow(user_buckets, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from recfuse.models.history import history_arrays

    _ds, m = user_buckets
    assert m.config.model.user_id_buckets == 5
    assert m.user_vocab == IdVocab.hashed(5) and m.query_tower.user_embedding.shape[0] == 5
    known = sorted(m.user_histories)[:6]
    users = [*known, "never-seen", None]
    hists = [*(m.user_histories[u] for u in known), m.user_histories[known[0]][:3], []]
    uidx = m.user_indices(users)
    assert uidx[:-1].tolist() == [zlib.crc32(u.encode()) % 5 for u in users[:-1]]  # type: ignore[union-attr]
    q = m.query_embeddings(users, hists)
    loaded = tf.saved_model.load(str(m.export_query_savedmodel(tmp_path / "qsm")))
    hist, pos = history_arrays(hists, m.item_vocab, m.config.data.max_history)
    got = loaded.signatures["serving_default"](user_idx=tf.constant(uidx), hist_idx=tf.constant(hist),
                                               hist_pos=tf.constant(pos))["query"].numpy()  # fmt: skip
    np.testing.assert_allclose(got, q, atol=1e-5)


def test_served_known_user_keeps_its_history_and_reads_its_bucket_row(user_buckets, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from recfuse.bundle.export import export_model
    from recfuse.inference import Recommender

    _ds, m = user_buckets
    rec = Recommender.from_bundle(export_model(m.model_dir, tmp_path / "bundles").parent)
    user = sorted(m.user_histories)[0]
    bucket = zlib.crc32(user.encode()) % 5
    twin = next(f"new{k}" for k in range(1000) if zlib.crc32(f"new{k}".encode()) % 5 == bucket)
    other = next(f"new{k}" for k in range(1000) if zlib.crc32(f"new{k}".encode()) % 5 != bucket)
    stored = m.user_histories[user][: m.config.data.max_history]
    served = rec.recommend(user_id=user, k=10)
    assert served.fallback == ""
    # an unknown user in the same bucket, sent the known user's history, gets the same query
    same = rec.recommend(user_id=twin, history=stored, k=10)
    assert same.item_ids == served.item_ids
    np.testing.assert_allclose(same.scores, served.scores, atol=1e-5)
    assert not np.allclose(rec.recommend(user_id=other, history=stored, k=10).scores, served.scores, atol=1e-5)
    # a bucket row is shared, not personal: a user with no history at all gets the popular fallback
    assert rec.recommend(user_id=twin, k=10).fallback == "popular"
