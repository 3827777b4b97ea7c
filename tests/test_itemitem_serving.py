"""The item-item head as served: bundle round trip, the Recommender's re-rank against a brute-force blend,
filters, damaged files, add-items, gRPC; and (slow) a really trained model whose bundle evaluates like the
model with its head."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from bundle_factory import make_contents, oracle_scores

from recfuse.bundle import load_bundle, write_bundle
from recfuse.bundle.item_head import HEAD_FILES, grown_head, reindexed_head
from recfuse.errors import ArtifactError
from recfuse.inference import Recommender, RecommendQuery
from recfuse.itemitem import ItemHead, knn_weights

N_ITEMS = 240
BETA = 0.4


def _head(contents: Any, beta: float = BETA) -> ItemHead:
    """An item-kNN head fitted on the factory bundle's user histories (nonzero for most items)."""
    row_of = {item: i for i, item in enumerate(contents.item_ids)}
    users = sorted(contents.user_history)
    rows = [r for r, u in enumerate(users) for _ in contents.user_history[u]]
    cols = [row_of[i] for u in users for i in contents.user_history[u]]
    x = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(users), len(row_of)))
    return ItemHead(knn_weights(x, neighbors=15), beta, "itemknn", {"neighbors": 15, "keep": 15})


def _publish(root: Path, head: ItemHead | None, candidates: int = 5, **kwargs: Any) -> Path:
    contents = make_contents(N_ITEMS, 16, seed=11, n_users=60, **kwargs)
    if head is not None:
        contents.item_head = head
        contents.item_head_candidates = candidates
    return write_bundle(root, contents)


@pytest.fixture(scope="module")
def head() -> ItemHead:
    return _head(make_contents(N_ITEMS, 16, seed=11, n_users=60))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, head: ItemHead) -> dict[str, Path]:
    """The same contents with a head (re-rank of k+5 and of the whole catalog), with none, with beta 0,
    with a history decay."""
    return {
        "head": _publish(tmp_path_factory.mktemp("h"), head, 5),
        "head_all": _publish(tmp_path_factory.mktemp("ha"), head, N_ITEMS),
        "none": _publish(tmp_path_factory.mktemp("n"), None),
        "inactive": _publish(tmp_path_factory.mktemp("i"), dataclasses.replace(head, beta=0.0)),
        # history items weighted decay ** position, most recent first: the served order must be the query's
        "head_decay": _publish(tmp_path_factory.mktemp("d"), dataclasses.replace(head, decay=0.6), 5),
    }


def _brute(
    rec: Recommender,
    user: str | None,
    history: list[str],
    k: int,
    mask: frozenset[int] | set[int] = frozenset(),
    allow: set[int] | None = None,
    head: bool = True,
) -> tuple[list[str], list[float]]:
    """Full ranking by hand: the numpy tower on the merged history, ``q . ranked_v + beta * sum W[hist]``."""
    b = rec.bundle
    hist, scores = oracle_scores(b, user, history)
    if head and b.item_head is not None and hist:
        head_scores = b.item_head.scores(b.item_head.profile_rows([hist]))[0]  # as evaluate_model scores it
        scores = scores + np.float32(b.item_head.beta) * head_scores
    ok = np.array([(r not in mask) and (allow is None or r in allow) for r in range(len(scores))])
    order = [r for r in np.lexsort((np.arange(len(scores)), -scores.astype(np.float64))) if ok[r]][:k]
    return [b.item_ids[r] for r in order], [float(scores[r]) for r in order]


CASES = [
    ("u3", [], 10),  # known user: stored history + user embedding
    ("u7", ["i5", "i13"], 8),  # request history in front of the stored one
    (None, ["i9", "i17", "i25"], 12),  # anonymous with a history
    (None, ["i2"], 5),
    ("stranger", ["i4", "i12", "ghost"], 6),  # unknown user, unknown id skipped
    ("u1", [], N_ITEMS),  # the whole catalog
]


def test_bundle_round_trips_the_head_with_checksums_and_a_manifest_record(bundles: dict[str, Path], head: ItemHead):
    b = load_bundle(bundles["head"])
    assert b.item_head is not None and b.item_head_candidates == 5
    assert (b.item_head.weights != head.weights).nnz == 0 and b.item_head.beta == pytest.approx(BETA)
    record = b.manifest["item_head"]
    assert {k: record[k] for k in ("method", "beta", "nnz", "candidates", "n_items")} == {
        "method": "itemknn", "beta": pytest.approx(BETA), "nnz": head.weights.nnz, "candidates": 5,
        "n_items": N_ITEMS}  # fmt: skip
    assert record["params"] == {"neighbors": 15, "keep": 15} and "selection" not in record
    for rel in HEAD_FILES:
        entry = b.manifest["files"][rel]
        assert entry["size"] == (b.path / rel).stat().st_size and len(entry["sha256"]) == 64
    assert not [p for p in b.path.rglob(".*")]  # the head's temp folder was renamed away inside the writer's
    none = load_bundle(bundles["none"])
    assert none.item_head is None and none.item_head_candidates == 0 and "item_head" not in none.manifest
    assert not (none.path / "item_head").exists()


@pytest.mark.parametrize("which", ["head", "head_all", "head_decay"])
def test_top_k_equals_brute_force_blend(bundles: dict[str, Path], which: str):
    """With an exact index the re-rank of k + candidates equals the full blended ranking, whatever
    ``candidates`` is (head weights are >= 0, so nothing outside the index's top can overtake)."""
    rec = Recommender.from_bundle(bundles[which])
    assert rec.head_rerank is not None
    for user, history, k in CASES:
        got = rec.recommend(user_id=user, history=history, k=k)
        want_ids, want_scores = _brute(rec, user, history, k)
        assert got.fallback == "" and got.item_ids == want_ids, (user, history, k)
        np.testing.assert_allclose([it.score for it in got.items], want_scores, rtol=1e-5, atol=1e-5)
    # the head changes rankings (else this test proves nothing)
    assert any(_brute(rec, u, h, k)[0] != _brute(rec, u, h, k, head=False)[0] for u, h, k in CASES)
    # no model signal: the popular fallback, untouched by the head
    plain = Recommender.from_bundle(bundles["none"])
    a, b = rec.recommend(user_id="stranger", k=7), plain.recommend(user_id="stranger", k=7)
    assert (a.fallback, a.items) == (b.fallback, b.items) == ("popular", b.items)


def test_filters_hold_under_the_head(bundles: dict[str, Path]):
    rec = Recommender.from_bundle(bundles["head"])
    b = rec.bundle
    row = {item: i for i, item in enumerate(b.item_ids)}
    stored = dict(zip(b.user_history["user_id"], b.user_history["items"]))
    cats = {i: set(c) for i, c in zip(b.item_ids, b.items["categories"])}
    for user, history in [("u3", []), ("u7", ["i5", "i13"]), (None, ["i9", "i17", "i25", "i33"])]:
        seen = {row[i] for i in list(history) + list(stored.get(user, []) if user else [])}
        plain = rec.recommend(user_id=user, history=history, k=10)
        # head neighbours are mostly the history's own items: exclude_seen must drop them all
        excl = plain.item_ids[:3]
        got = rec.recommend(user_id=user, history=history, k=10, exclude_seen=True, exclude_item_ids=excl)
        mask = seen | {row[i] for i in excl}
        assert len(got.items) == 10 and not {row[i] for i in got.item_ids} & mask
        assert got.item_ids == _brute(rec, user, history, 10, mask=mask)[0]
        allowed = {row[i] for i in b.item_ids if cats[i] & {"c2", "t1"}}
        got = rec.recommend(user_id=user, history=history, k=10, include_categories=["c2", "t1"])
        assert all(cats[i] & {"c2", "t1"} for i in got.item_ids)
        assert got.item_ids == _brute(rec, user, history, 10, allow=allowed)[0]
        denied = {row[i] for i in b.item_ids if "c3" in cats[i]}
        got = rec.recommend(user_id=user, history=history, k=10, exclude_categories=["c3"], exclude_seen=True)
        assert got.item_ids == _brute(rec, user, history, 10, mask=denied | seen)[0]
        # a broad exclusion becomes an allow-list inside the Recommender: same answer
        broad = [f"c{c}" for c in range(8) if c != 4]
        got = rec.recommend(user_id=user, history=history, k=10, exclude_categories=broad)
        assert got.item_ids == _brute(rec, user, history, 10, allow={r for r in range(N_ITEMS) if "c4" in cats[b.item_ids[r]]})[0]  # noqa: E501


def test_single_and_batched_queries_answer_alike_with_the_head(bundles: dict[str, Path]):
    """A lone query (the index's single-query search under the re-rank) and the same queries in one
    batch give the same blended ranking, its rows naming its ids."""
    rec = Recommender.from_bundle(bundles["head"], user_vectors_mb=1)  # known users' vectors precomputed
    queries = [RecommendQuery(u, h, k) for u, h, k in CASES]
    for q, want in zip(queries, rec.recommend_batch(queries)):
        got = rec.recommend(q.user_id, q.history, q.k)
        assert got.item_ids == want.item_ids and len(got.item_ids) == q.k
        assert [rec.item_id_of_row[r] for r in got.rows] == want.item_ids
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)


def test_without_an_active_head_serving_is_unchanged(bundles: dict[str, Path]):
    plain = Recommender.from_bundle(bundles["none"])
    inactive = Recommender.from_bundle(bundles["inactive"])
    assert plain.head_rerank is None and inactive.head_rerank is None
    assert plain.info().item_head == "" and "item head" not in plain.info().search_params
    assert inactive.info().item_head.endswith("(inactive)")
    for user, history, k in CASES:
        a = plain.recommend(user_id=user, history=history, k=k)
        b = inactive.recommend(user_id=user, history=history, k=k)
        assert a.item_ids == b.item_ids == _brute(plain, user, history, k)[0]
        assert [it.score for it in a.items] == [it.score for it in b.items]  # the index's own scores


def test_info_names_the_head(bundles: dict[str, Path], head: ItemHead):
    info = Recommender.from_bundle(bundles["head"]).info()
    assert info.item_head == f"itemknn beta=0.4 nnz={head.weights.nnz}, re-rank of k+5"  # bundle-info's line
    assert info.search_params == f"item head {info.item_head}"  # what the Info RPC shows (Flat: nothing else)
    assert Recommender.from_bundle(bundles["head_decay"]).info().item_head.startswith("itemknn beta=0.4 nnz=")
    assert " decay=0.6," in Recommender.from_bundle(bundles["head_decay"]).info().item_head


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_or_unlisted_head_files_fail_verification(tmp_path: Path, head: ItemHead):
    path = _publish(tmp_path / "a", head)
    _flip_byte(path / "item_head" / "data.npy")
    with pytest.raises(ArtifactError, match=r"file 'item_head/data\.npy' has sha256 .* the file was modified"):
        load_bundle(path)
    path = _publish(tmp_path / "b", head)
    (path / "item_head" / "indices.npy").unlink()
    with pytest.raises(ArtifactError, match=r"file 'item_head/indices\.npy' is missing"):
        load_bundle(path)
    path = _publish(tmp_path / "c", head)
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["files"]["item_head/head.json"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"records an item head but lists no \['item_head/head\.json'\]"):
        load_bundle(path)
    path = _publish(tmp_path / "e", head)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["item_head"]["candidates"] = 0
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"item_head\.candidates must be an integer >= 1, got 0"):
        load_bundle(path, verify=False)
    contents = make_contents(N_ITEMS + 1, 16, seed=11, n_users=60)
    contents.item_head = head
    with pytest.raises(ArtifactError, match=rf"`item_head` covers {N_ITEMS} items but the bundle has {N_ITEMS + 1}"):
        write_bundle(tmp_path / "d", contents)


def test_grown_and_reindexed_heads_keep_old_weights_and_add_empty_items(head: ItemHead):
    g = grown_head(head, N_ITEMS + 3)
    assert g.weights.shape == (N_ITEMS + 3, N_ITEMS + 3) and g.beta == head.beta
    assert (g.weights[:N_ITEMS, :N_ITEMS] != head.weights).nnz == 0 and g.weights[N_ITEMS:].nnz == 0
    assert g.weights[:, N_ITEMS:].nnz == 0
    with pytest.raises(ValueError, match=r"`n_items` must be >= the head's 240 items"):
        grown_head(head, 5)
    ids = [f"i{i}" for i in range(N_ITEMS)]
    new_ids = ["new"] + ids[::-1][:-10]  # reversed, 10 dropped, one unknown
    r = reindexed_head(head, ids, new_ids)
    dense, got = head.weights.toarray(), r.weights.toarray()
    pos = {item: p for p, item in enumerate(new_ids)}
    kept = [i for i in range(N_ITEMS) if ids[i] in pos]
    np.testing.assert_array_equal(got[np.ix_([pos[ids[i]] for i in kept], [pos[ids[i]] for i in kept])],
                                  dense[np.ix_(kept, kept)])  # fmt: skip
    assert got[0].sum() == 0 and got[:, 0].sum() == 0 and reindexed_head(head, ids, ids) is head


def test_add_items_carries_the_head_forward_resized(tmp_path: Path, head: ItemHead):
    pytest.importorskip("tensorflow")  # recfuse.bundle.incremental loads TrainedModel
    import pandas as pd

    from recfuse.bundle.incremental import _extended

    loaded = load_bundle(_publish(tmp_path, head, 7))
    new = pd.DataFrame({"item_id": ["n1", "n2"], "title": ["N1", "N2"], "categories": [["c1"], ["c2"]]})
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2, 16)).astype(np.float32)
    contents, index = _extended(loaded, new, vectors, lambda stage, done, total: None)
    grown = load_bundle(write_bundle(tmp_path, contents, contents.index_config, index=index))
    assert grown.manifest["parent_version"] == loaded.version
    h = grown.item_head
    assert h is not None and h.n_items == N_ITEMS + 2 and grown.item_head_candidates == 7
    assert (h.weights[:N_ITEMS, :N_ITEMS] != head.weights).nnz == 0 and h.weights[N_ITEMS:].nnz == 0
    assert grown.manifest["item_head"]["n_items"] == N_ITEMS + 2
    rec = Recommender(grown)
    got = rec.recommend(history=["n1", "i9"], k=10)  # a new item in a history: its (empty) head row is read
    assert got.item_ids == _brute(rec, None, ["n1", "i9"], 10)[0]


@pytest.mark.slow
def test_grpc_recommend_and_info_serve_the_head(tmp_path: Path, head: ItemHead):
    from recfuse_api.v1 import recommender_pb2 as pb
    from serving_support import running, stub

    path = _publish(tmp_path / "root", head, 5)
    local = Recommender.from_bundle(path)
    with running(tmp_path / "root", reload_interval_s=0) as (_server, channel):
        s = stub(channel)
        for user, history, k in CASES[:-1]:
            want = local.recommend(user_id=user, history=history, k=k)
            for extra in ({}, {"exclude_seen": True, "exclude_categories": ["c3"]}):
                if extra:
                    want = local.recommend(user_id=user, history=history, k=k, exclude_seen=True,
                                           exclude_categories=["c3"])  # fmt: skip
                r = s.Recommend(pb.RecommendRequest(user_id=user or "", history=history, k=k, **extra), timeout=10)
                assert [it.item_id for it in r.items] == want.item_ids, (user, history, extra)
                np.testing.assert_allclose([it.score for it in r.items], [it.score for it in want.items], rtol=1e-5)
        info = s.Info(pb.InfoRequest(), timeout=10)
        assert "item head itemknn beta=0.4" in info.variants[0].search_params


@pytest.mark.slow
def test_trained_bundle_evaluates_like_the_model_with_its_head(tmp_path: Path):
    """A really trained tiny model with an item-kNN head, exported with a Flat index: what the bundle
    serves (evaluate --bundle, through the Recommender) scores like evaluate --model with the head."""
    pytest.importorskip("tensorflow")
    from recfuse.bundle.export import export_model
    from recfuse.bundle.incremental import add_items
    from recfuse.config import ItemHeadConfig, RecfuseConfig
    from recfuse.data.splits import split_interactions
    from recfuse.data.synthetic import generate
    from recfuse.data.validate import load_dataset
    from recfuse.evaluation.bundle_eval import evaluate_bundle
    from recfuse.evaluation.fullrank import evaluate_model
    from recfuse.evaluation.item_head import fit_item_head
    from recfuse.itemitem import HEAD_DIR
    from recfuse.models.trained import TrainedModel
    from recfuse.training.trainer import train

    generate(tmp_path / "syn", n_items=120, n_users=80, seed=2)
    cfg = RecfuseConfig.from_dict({
        "data": {"items": str(tmp_path / "syn" / "items.parquet"),
                 "interactions": str(tmp_path / "syn" / "interactions.parquet"), "max_history": 8},
        "modalities": [],
        "model": {"dim": 16, "query_hidden": [16]},
        "train": {"epochs": 2, "batch_size": 128, "learning_rate": 0.01, "seed": 3},
        "item_head": {"method": "itemknn", "knn_neighbors": [20], "candidates": 30},
        "index": {"factory": "Flat"},
    })  # fmt: skip
    ds = load_dataset(cfg.data, cfg.modalities)
    split = split_interactions(ds.interactions, "random", 7)
    out = tmp_path / "model"
    train(cfg, ds, split, out, progress=False)
    head = fit_item_head(TrainedModel.load(out), split, cfg.item_head, 8)
    # beta fixed well inside the score range, so the head surely changes the ranking
    dataclasses.replace(head, beta=max(head.beta, 0.05)).save(out / HEAD_DIR)
    model = TrainedModel.load(out)
    assert model.item_head is not None and model.item_head.active
    path = export_model(out, tmp_path / "bundles", savedmodel=False)
    rec = Recommender.from_bundle(path)
    assert rec.head_rerank is not None and rec.bundle.item_head_candidates == 30
    assert rec.bundle.manifest["served_recall"]["recall"] >= 0.99 and rec.bundle.manifest["index_factory"] == "Flat"
    ks = (10, 20)
    exact = evaluate_model(model, split, ks=ks).means("all")
    towers = evaluate_model(model, split, ks=ks, item_head=False).means("all")
    served = evaluate_bundle(rec, split, ks=ks, protocol=model.config.eval)
    assert served.info["item_head"]["method"] == "itemknn"
    got = served.means("all")
    assert exact != towers  # the head changes the model's ranking
    for key, value in exact.items():
        assert got[key] == pytest.approx(value, rel=0.01, abs=1e-6), key
    assert ItemHeadConfig().candidates == 200  # the default a config without `candidates` exports

    # add-items on the real bundle: the head is carried forward, the new items have empty rows/columns
    items = load_dataset(cfg.data, cfg.modalities).items.head(2).assign(item_id=["new-a", "new-b"])
    result = add_items(path, items)
    grown = load_bundle(result.path)
    assert result.added == 2 and grown.item_head is not None and grown.item_head.n_items == len(grown.item_ids)
    assert grown.item_head.weights[-2:].nnz == 0 and grown.item_head.weights[:, -2:].nnz == 0
