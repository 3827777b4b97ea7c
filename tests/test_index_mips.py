"""Inner product over vectors of unequal norm served as L2 over augmented vectors (recfuse.index.mips).

Real faiss indexes on small data: the augmented index returns the items and the inner-product scores
of exact search, on every search path, survives save/load (its norm file beside it), fills its IVF
recall at the same nprobe where the inner-product quantizer misses long vectors, and is built the same from shards.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recfuse.config import IndexConfig
from recfuse.errors import ArtifactError, ConfigError
from recfuse.index import ItemIndex, build_index, mips
from recfuse.index.item_index import mips_file
from recfuse.index.served import served_recall
from recfuse.index.sharded import build_index_from_shards


def skewed(n: int = 4000, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors in a cone of directions (as trained embeddings are) with norms 1-2.5 (a popularity
    prior), and unit queries in the same cone."""
    rng = np.random.default_rng(seed)
    axis = np.eye(d)[0]
    x = axis + 0.5 * rng.standard_normal((n, d)) / np.sqrt(d)
    x *= (rng.uniform(1.0, 2.5, n) / np.linalg.norm(x, axis=1))[:, None]
    q = axis + 0.5 * rng.standard_normal((300, d)) / np.sqrt(d)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x.astype(np.float32), q.astype(np.float32)


def exact(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = q @ x.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def test_the_choice_follows_mode_metric_factory_and_norms() -> None:
    x, _ = skewed(200)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert mips.wanted("auto", "ip", "IVF64,Flat", x) == pytest.approx(float(np.linalg.norm(x, axis=1).max()))
    assert mips.wanted("auto", "ip", "IVF64,Flat", unit) is None  # cosine: nothing to fix
    assert mips.wanted("auto", "ip", "HNSW32", x) is None  # graphs rank better on inner product itself
    assert mips.wanted("auto", "ip", "IVF64,PQ16x4fs,RFlat", x) is None  # PQ16 cannot code 17 dimensions
    assert mips.wanted("on", "ip", "HNSW32", unit) == pytest.approx(1.0)
    assert mips.wanted("on", "ip", "Flat", x) is None  # exact search needs no reduction
    assert mips.wanted("auto", "l2", "IVF64,Flat", x) is None and mips.wanted("off", "ip", "IVF64,Flat", x) is None
    with pytest.raises(ConfigError, match="index.mips"):
        IndexConfig(mips="yes")


def test_a_wrong_augmented_index_or_width_is_refused_by_name() -> None:
    x, _ = skewed(1000)
    plain_ip = build_index(x, np.arange(1000), IndexConfig(factory="IVF8,Flat", mips="off", recall_queries=0))
    with pytest.raises(ArtifactError, match="augmented inner-product index must be L2 with a norm > 0, got 2.0"):
        ItemIndex(plain_ip.faiss_index, "IVF8,Flat", plain_ip.config, mips_norm=2.0)
    with pytest.raises(
        ConfigError, match=r"for dim 17 \(16 \+ 1: index.mips augments inner-product vectors; set it to 'off'\)"
    ):
        build_index(x, np.arange(1000), IndexConfig(factory="IVF8,PQ16x4fs", mips="on", recall_queries=0))


def test_augmented_rows_share_one_norm_and_distances_give_inner_products_back() -> None:
    x, q = skewed(500)
    norm = mips.norm_of(x)
    xa, qa = mips.augment(x, norm), mips.pad_queries(q)
    assert xa.shape == (500, 17) and qa.shape == (300, 17) and (qa[:, -1] == 0).all()
    assert np.allclose(np.linalg.norm(xa, axis=1), 1.0, atol=1e-6)  # unit rows and unit queries
    assert np.allclose(np.linalg.norm(qa, axis=1), 1.0, atol=1e-6)
    dist = ((qa[:, None, :] - xa[None, :, :]) ** 2).sum(axis=2)
    assert np.allclose(mips.to_scores(dist, q, norm), q @ x.T, atol=1e-5)
    assert mips.too_long(x * 1.01, norm) > 0 and mips.too_long(x, norm) == 0


def test_ivf_recall_at_the_same_nprobe_rises_from_augmenting() -> None:
    x, q = skewed()
    ids = np.arange(len(x))
    plain = build_index(x, ids, IndexConfig(factory="IVF64,Flat", nprobe=4, mips="off", recall_queries=0))
    aug = build_index(x, ids, IndexConfig(factory="IVF64,Flat", nprobe=4, recall_queries=0))
    assert plain.mips_norm is None and aug.mips_norm == pytest.approx(float(np.linalg.norm(x, axis=1).max()))
    assert aug.metric == "ip" and aug.dim == 16 and aug.faiss_index.d == 17
    # inner product probes the lists in the query's direction and misses the long vectors beside it
    r_plain, r_aug = served_recall(plain, x, q), served_recall(aug, x, q)
    assert r_aug >= 0.8 and r_aug > r_plain + 0.3, (r_plain, r_aug)


def test_scores_keep_their_order_far_from_unit_scale() -> None:
    """Unit rows keep float32 distances in [0, 4]: vectors 1,000 times longer or shorter than 1 rank
    and score as exact search does (an ``|q|² + M² - 2 q·x`` form loses the gaps to M²)."""
    x, q = skewed(2000)
    for scale in (1e-3, 1e3):
        xs, qs = x * scale, q * scale
        index = build_index(xs, np.arange(2000), IndexConfig(factory="IVF8,Flat", nprobe=8, recall_queries=0))
        res = index.search(qs[:20], 10)
        want_scores, want_rows = exact(xs, qs[:20], 10)
        assert (res.ids == want_rows).mean() > 0.98
        assert np.allclose(res.scores, want_scores, rtol=1e-4, atol=1e-4 * scale * scale)


def test_every_search_path_returns_exact_items_and_inner_product_scores(caplog: pytest.LogCaptureFixture) -> None:
    x, q = skewed(1000)
    ids = np.arange(1000, 2000, dtype=np.int64)
    index = build_index(x, ids, IndexConfig(factory="IVF8,Flat", nprobe=8, recall_queries=0))  # probes all
    assert index.mips_norm is not None
    want_scores, want_rows = exact(x, q[:4], 5)
    res = index.search(q[:4], 5)  # fast path
    assert (res.ids == ids[want_rows]).all() and np.allclose(res.scores, want_scores, atol=1e-5)
    checked = index.search(q[:4].astype(np.float64), 5)
    assert (checked.ids == res.ids).all() and np.allclose(checked.scores, res.scores)
    one = index.search_one(q[:1], 5)
    assert one.ids == res.ids[0].tolist() and np.allclose(one.scores, res.scores[0])
    padded = index.search(q[:1], 1005)
    assert (padded.ids[0, 1000:] == -1).all() and np.isneginf(padded.scores[0, 1000:]).all()
    allow = set(range(1000, 2000, 3))
    for mode in ("selector", "refill"):
        index.filter_mode = mode
        got = index.search(q[:2], 5, exclude=[set(res.ids[0, :2].tolist()), None], allow=[None, allow])
        assert got.ids[0].tolist() == res.ids[0, 2:].tolist() + ids[exact(x, q[:1], 7)[1][0, 5:7]].tolist()
        rows = np.array(sorted(allow)) - 1000
        s, r = exact(x[rows], q[1:2], 5)
        assert got.ids[1].tolist() == (rows[r[0]] + 1000).tolist() and np.allclose(got.scores[1], s[0], atol=1e-5)
    # added items: augmented with the index's norm; longer ones are reported
    with caplog.at_level(logging.WARNING, logger="recfuse.index.item_index"):
        index.add(x[:2] * 0.5, np.array([5000, 5001]))
        assert not caplog.records
        index.add(x[:1] * 10, np.array([5002]))
    assert "1 of 1 added vectors are longer" in caplog.text and "export again" in caplog.text
    every = index.search(q[:1], index.ntotal)  # all lists probed: every item comes back
    long_x, norm = x[0].astype(np.float64) * 10, index.mips_norm
    score = every.scores[0][every.ids[0].tolist().index(5002)]
    q_norm = float(np.linalg.norm(q[0]))
    want = q[0] @ long_x - q_norm * (long_x @ long_x - norm * norm) / (2 * norm)  # as warned
    assert score == pytest.approx(want, rel=1e-5)


def test_save_and_load_keep_the_norm_file_and_refuse_a_missing_or_bad_one(tmp_path: Path) -> None:
    x, q = skewed(1000)
    cfg = IndexConfig(factory="IVF8,Flat", nprobe=4, recall_queries=0)
    index = build_index(x, np.arange(1000), cfg)
    path = index.save(tmp_path / "index.faiss")
    side = mips_file(path)
    assert json.loads(side.read_text()) == {"norm": index.mips_norm, "dim": 16}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.faiss", "index.faiss.mips.json"]
    loaded = ItemIndex.load(path, cfg)
    assert loaded.mips_norm == index.mips_norm and loaded.dim == 16 and loaded.metric == "ip"
    a, b = index.search(q, 10), loaded.search(q, 10)
    assert (a.ids == b.ids).all() and np.array_equal(a.scores, b.scores)
    side.write_text('{"norm": -1, "dim": 16}')
    with pytest.raises(ArtifactError, match="norm -1.0"):
        ItemIndex.load(path, cfg)
    side.write_text("not json")
    with pytest.raises(ArtifactError, match=r"is not an index norm file \(\{'norm': float, 'dim': int\}\)"):
        ItemIndex.load(path, cfg)
    side.write_text('{"norm": 2.0, "dim": 15}')
    with pytest.raises(ArtifactError, match="dim 15 do not fit an augmented index of width 17"):
        ItemIndex.load(path, cfg)
    side.unlink()
    with pytest.raises(ArtifactError, match=r"metric 'l2'.*index\.faiss\.mips\.json"):
        ItemIndex.load(path, cfg)
    # a plain index saved over the same path removes the stale norm file
    side.write_text(json.dumps({"norm": 1.0, "dim": 16}))
    build_index(x, np.arange(1000), IndexConfig(factory="IVF8,Flat", mips="off", recall_queries=0)).save(path)
    assert not side.exists() and ItemIndex.load(path, cfg).mips_norm is None


def test_shards_build_the_same_augmented_index_as_memory(tmp_path: Path) -> None:
    x, q = skewed(3000)
    for i, part in enumerate(np.array_split(np.arange(3000), 3)):
        flat = pa.array(x[part].reshape(-1), pa.float32())
        ids = pa.array([f"i{j}" for j in part])
        table = pa.table({"item_id": ids, "vector": pa.FixedSizeListArray.from_arrays(flat, 16)})
        pq.write_table(table, tmp_path / f"part-{i:05d}.parquet", row_group_size=400)
    cfg = IndexConfig(factory="IVF16,Flat", recall_queries=50)
    built = build_index_from_shards(sorted(tmp_path.glob("part-*.parquet")), cfg)
    memory = build_index(x, np.arange(3000), cfg)
    assert built.index.mips_norm == memory.mips_norm is not None
    assert np.array_equal(faiss.serialize_index(built.index.faiss_index), faiss.serialize_index(memory.faiss_index))
    assert built.index.recall == pytest.approx(memory.recall, abs=0.02)


def test_a_bundle_carries_the_norm_file_and_its_recommender_ranks_as_exact_search(tmp_path: Path) -> None:
    from bundle_factory import make_contents

    from recfuse.bundle import load_bundle, write_bundle
    from recfuse.inference import Recommender

    x, _ = skewed(2000)
    recs = {}
    for factory in ("Flat", "IVF16,Flat"):  # nprobe 16 probes every list: exact, as Flat is
        cfg = IndexConfig(factory=factory, nprobe=16, recall_queries=0, target_recall=0.0)
        contents = make_contents(n_items=2000, dim=16, seed=1, index_cfg=cfg)
        contents.item_vectors, contents.item_scale = x, None
        vdir = write_bundle(tmp_path / factory, contents)
        recs[factory] = Recommender(load_bundle(vdir))
    files = json.loads((vdir / "manifest.json").read_text())["files"]
    assert "index.faiss.mips.json" in files  # listed and checksummed like every bundle file
    assert recs["IVF16,Flat"].bundle.index.mips_norm is not None and recs["Flat"].bundle.index.mips_norm is None
    users = list(contents.user_history)[:20]
    for user in users:
        want, got = recs["Flat"].recommend(user_id=user, k=10), recs["IVF16,Flat"].recommend(user_id=user, k=10)
        assert got.fallback == "" and got.item_ids == want.item_ids
        assert np.allclose(got.scores, want.scores, atol=1e-5)
    (vdir / "index.faiss.mips.json").write_text('{"norm": 1.0, "dim": 16}')
    with pytest.raises(ArtifactError, match="index.faiss.mips.json"):
        load_bundle(vdir)
