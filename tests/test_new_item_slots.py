"""New-item slots (``model.new_item_share``): the shared merge, evaluation, the Recommender and gRPC."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from bundle_factory import make_contents, oracle_scores

from recfuse.bundle import load_bundle, write_bundle
from recfuse.config import RecfuseConfig
from recfuse.errors import ConfigError
from recfuse.evaluation.fullrank import evaluate_embeddings, evaluate_model
from recfuse.inference import Recommender, RecommendQuery
from recfuse.inference.new_items import NewItemSlots, bundle_new_items, bundle_share
from recfuse.itemitem import ItemHead, knn_weights
from recfuse.new_item_slots import merge_new_items, quota, topk_with_new_slots
from recfuse.ranking import TopK

N_ITEMS = 400
NEW_SCALE = 0.6  # new items rank below warm ones, as content-only vectors do on real data


# ----------------------------------------------------------------------------------- the merge
def test_quota_holds_the_last_position_of_each_block() -> None:
    assert quota(20, 0.1).tolist() == [0] * 9 + [1] * 10 + [2]
    assert quota(20, 0.05).tolist()[-2:] == [0, 1]
    assert quota(10, 0.05).tolist() == [0] * 10  # 1 of 20: a top 10 holds none
    assert quota(10, 0.2, offset=0.5).tolist() == [0, 0, 1, 1, 1, 1, 1, 2, 2, 2]  # mid-block
    assert quota(5, 0.0).tolist() == [0] * 5


@pytest.mark.parametrize("share", [1.0, -0.1, float("nan"), True, "0.1"])
def test_a_bad_share_is_refused(share: object) -> None:
    with pytest.raises(ValueError, match=r"`new_item_share` must be a number in \[0, 1\)"):
        quota(10, share)  # type: ignore[arg-type]


def test_a_bad_offset_is_refused() -> None:
    with pytest.raises(ValueError, match=r"`offset` must be in \[0, 1\), got 1.0"):
        quota(10, 0.1, offset=1.0)


def test_merge_by_hand() -> None:
    # warm 10 > 9 > 8 > 7, new 8.5 > 1: share 0.5 wants one new item among 2, two among 4
    w_idx, w_sc = np.array([[0, 1, 2, 3]]), np.array([[10.0, 9.0, 8.0, 7.0]], np.float32)
    n_idx, n_sc = np.array([[7, 8]]), np.array([[8.5, 1.0]], np.float32)
    idx, sc = merge_new_items(w_idx, w_sc, n_idx, n_sc, 4, 0.5)
    assert idx.tolist() == [[0, 7, 1, 8]]  # 7 forced at 2 (it would have come 3rd), 8 forced at 4
    assert sc.tolist() == [[10.0, 8.5, 9.0, 1.0]]
    # with no quota the merge is the plain order; ties go to the smaller index
    idx, _ = merge_new_items(w_idx, w_sc, np.array([[5, 9]]), np.array([[9.0, 9.0]], np.float32), 4, 0.0)
    assert idx.tolist() == [[0, 1, 5, 9]]
    # a short new stream: the rest is warm; both dry: -1 / -inf
    idx, sc = merge_new_items(w_idx[:, :1], w_sc[:, :1], n_idx[:, :1], n_sc[:, :1], 3, 0.5)
    assert idx.tolist() == [[0, 7, -1]] and np.isneginf(sc[0, 2])


def test_merge_refuses_mismatched_lists() -> None:
    with pytest.raises(ValueError, match=r"must be \[b, n\] index/score pairs of equal shape"):
        merge_new_items(np.zeros((1, 3), int), np.zeros((1, 2)), np.zeros((1, 1), int), np.zeros((1, 1)), 2, 0.5)
    with pytest.raises(ValueError, match=r"need the same number of queries, got 2 and 1"):
        merge_new_items(np.zeros((2, 1), int), np.zeros((2, 1)), np.zeros((1, 1), int), np.zeros((1, 1)), 2, 0.5)


def test_topk_with_slots_meets_the_quota_keeps_prefixes_and_is_plain_at_zero() -> None:
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((50, 200)).astype(np.float32)
    is_new = np.zeros(200, bool)
    is_new[rng.choice(200, 30, replace=False)] = True
    scores[:, is_new] -= 2.0  # new items score low: rarely in a plain top 20
    exclude = [rng.choice(200, 5, replace=False) for _ in range(50)]
    plain = topk_with_new_slots(scores.copy(), 20, is_new, 0.0, exclude).rows
    assert is_new[plain].sum(axis=1).mean() < 1
    for share in (0.05, 0.1, 0.2):
        idx = topk_with_new_slots(scores.copy(), 20, is_new, share, exclude).rows
        need = quota(20, share)
        assert (np.cumsum(is_new[idx], axis=1) >= need).all()
        assert all(not set(row) & set(ex) for row, ex in zip(idx.tolist(), exclude))  # filters hold
        assert all(len(set(row)) == 20 for row in idx.tolist())
        short = topk_with_new_slots(scores.copy(), 10, is_new, share, exclude).rows
        assert (short == idx[:, :10]).all()  # a shorter list is a prefix of a longer one
        # the warm items kept are the plain ranking's best warm items, in order
        for r in range(50):
            warm = [i for i in idx[r] if not is_new[i]]
            assert warm == [i for i in plain[r] if not is_new[i]][: len(warm)]
    with pytest.raises(ValueError, match=r"`is_new` must have one flag per score column \(200\), got shape \(3,\)"):
        topk_with_new_slots(scores.copy(), 20, np.zeros(3, bool), 0.1)


def test_topk_with_slots_returns_the_named_result_on_every_branch() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.1]], np.float32)
    mixed = np.array([False, False, False, False, True])
    for share, is_new in ((0.25, mixed), (0.0, mixed), (0.25, np.zeros(5, bool)), (0.25, np.ones(5, bool))):
        top = topk_with_new_slots(scores.copy(), 4, is_new, share)
        assert isinstance(top, TopK) and top.rows.dtype == np.int64 and top.scores.dtype == np.float32
    assert topk_with_new_slots(scores.copy(), 4, mixed, 0.25).rows.tolist() == [[0, 1, 2, 4]]
    assert topk_with_new_slots(scores.copy(), 4, mixed, 0.25).scores[0, 3] == np.float32(0.1)


# ----------------------------------------------------------------------------------- config and evaluation
def test_config_key_validates_with_the_fix() -> None:
    assert RecfuseConfig().model.new_item_share == 0.0
    assert RecfuseConfig.from_dict({"modalities": [], "model": {"new_item_share": 0.1}}).model.new_item_share == 0.1
    for bad in (1.0, -0.5):
        with pytest.raises(ConfigError, match=r"`model.new_item_share` must be a number in \[0, 1\).*0 turns it off"):
            RecfuseConfig.from_dict({"modalities": [], "model": {"new_item_share": bad}})
    with pytest.raises(ConfigError, match=r"`model.new_item_share` must be a number, got '0.1' \(str\)"):
        RecfuseConfig.from_dict({"modalities": [], "model": {"new_item_share": "0.1"}})


ITEMS = np.array([[1, 0], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.2, 0.1]], np.float32)  # item 4: new, scores low


def test_evaluation_holds_the_slot_and_reports_it() -> None:
    q = np.array([[1.0, 0.0]], np.float32)
    is_new = np.array([False, False, False, False, True])
    plain = evaluate_embeddings(q, ITEMS, ["u"], [[]], [[4]], ks=(2, 4))
    assert plain.means()["recall@4"] == 0.0 and "new_item_slots" not in plain.info
    held = evaluate_embeddings(q, ITEMS, ["u"], [[]], [[4]], ks=(2, 4), new_items=is_new, new_item_share=0.25)
    # 0.25: item 4 at position 4 (k=4), not in the top 2
    assert held.means()["recall@4"] == 1.0 and held.means()["recall@2"] == 0.0
    assert held.means()["ndcg@4"] == pytest.approx(1 / np.log2(5))
    assert held.info["new_item_slots"] == {"share": 0.25, "new_items": 1}
    with pytest.raises(ValueError, match=r"`new_items` must have shape \(5,\), got \(2,\)"):
        evaluate_embeddings(q, ITEMS, ["u"], [[]], [[4]], ks=(2,), new_items=[True, False], new_item_share=0.5)
    with pytest.raises(ValueError, match=r"`new_item_share` must be a number in \[0, 1\)"):
        evaluate_embeddings(q, ITEMS, ["u"], [[]], [[4]], ks=(2,), new_items=is_new, new_item_share=1.5)


@dataclasses.dataclass
class _Model:
    item_ids: list[str]
    item_embeddings: np.ndarray
    user_histories: dict[str, list[str]]
    popularity: dict[str, int]
    config: RecfuseConfig

    @property
    def ranking_embeddings(self) -> np.ndarray:
        return self.item_embeddings

    def query_embeddings(self, user_ids: Sequence[str | None], histories: Sequence[Sequence[str]]) -> np.ndarray:
        return np.tile(np.array([[1.0, 0.0]], np.float32), (len(user_ids), 1))


@dataclasses.dataclass
class _Split:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    cold_items: frozenset[str] = frozenset()


def test_evaluate_model_reads_the_share_from_the_model_config_and_its_never_trained_items() -> None:
    ids = ["a", "b", "c", "d", "e"]
    split = _Split(
        train=pd.DataFrame({"user_id": ["u1"], "item_id": ["a"]}),
        val=pd.DataFrame({"user_id": [], "item_id": []}),
        test=pd.DataFrame({"user_id": ["u1"], "item_id": ["e"]}),
    )
    pop = {"a": 3, "b": 2, "c": 1, "d": 1}  # "e" was never trained on
    on = RecfuseConfig.from_dict({"modalities": [], "model": {"new_item_share": 0.34}})
    model = _Model(ids, ITEMS, {"u1": ["a"]}, pop, on)
    assert evaluate_model(model, split, ks=(3,)).means()["recall@3"] == 1.0  # b, c, then e held at 3
    assert evaluate_model(model, split, ks=(3,), new_item_share=0.0).means()["recall@3"] == 0.0
    off = dataclasses.replace(model, config=RecfuseConfig())
    assert evaluate_model(off, split, ks=(3,)).means()["recall@3"] == 0.0


# ----------------------------------------------------------------------------------- the Recommender
def _contents(share: float, head: bool = False):  # type: ignore[no-untyped-def]
    contents = make_contents(N_ITEMS, 16, seed=5, n_users=60)
    pop = contents.popularity
    is_new = np.array([pop.get(i, 0) == 0 for i in contents.item_ids])
    contents.item_scale = np.where(is_new, NEW_SCALE, 1.0).astype(np.float32)
    cfg = RecfuseConfig.from_dict(contents.config).with_overrides({"model.new_item_share": share})
    contents.config = cfg.to_dict()
    if head:
        row_of = {item: i for i, item in enumerate(contents.item_ids)}
        users = sorted(contents.user_history)
        rows = [r for r, u in enumerate(users) for _ in contents.user_history[u]]
        cols = [row_of[i] for u in users for i in contents.user_history[u]]
        x = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(users), len(row_of)))
        contents.item_head = ItemHead(knn_weights(x, neighbors=15), 0.4, "itemknn", {"neighbors": 15, "keep": 15})
        contents.item_head_candidates = 5
    return contents


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        "off": write_bundle(tmp_path_factory.mktemp("off"), _contents(0.0)),
        "on": write_bundle(tmp_path_factory.mktemp("on"), _contents(0.1)),
        "head": write_bundle(tmp_path_factory.mktemp("head"), _contents(0.1, head=True)),
    }


def _expected(rec: Recommender, user: str | None, history: list[str], k: int, share: float,
              mask: Sequence[int] = (), head: bool = False) -> list[str]:  # fmt: skip
    """The evaluation's ranking (topk_with_new_slots over every item's score) of the served query."""
    b = rec.bundle
    hist, flat = oracle_scores(b, user, history)
    scores = flat[None, :]
    if head and hist:
        scores += np.float32(b.item_head.beta) * b.item_head.scores(b.item_head.profile_rows([hist]))
    idx = topk_with_new_slots(scores, k, bundle_new_items(b), share, [np.asarray(mask, np.int64)]).rows
    return [b.item_ids[r] for r in idx[0] if r >= 0]


CASES = [("u3", [], 10), ("u7", ["i5", "i13"], 20), (None, ["i9", "i17", "i25"], 12), ("stranger", ["i4"], 5)]


def test_bundle_knows_its_new_items_and_the_setting(bundles: dict[str, Path]) -> None:
    b = load_bundle(bundles["on"])
    is_new = bundle_new_items(b)
    assert 20 < is_new.sum() < N_ITEMS // 2
    assert not is_new[[b.item_ids.index(i) for i in b.popularity["item_id"]]].any()
    assert bundle_share(b) == 0.1 and bundle_share(load_bundle(bundles["off"])) == 0.0


@pytest.mark.parametrize("which", ["on", "head"])
def test_served_ranking_equals_the_evaluations_and_all_paths_agree(bundles: dict[str, Path], which: str) -> None:
    rec = Recommender.from_bundle(bundles[which])
    is_new = bundle_new_items(rec.bundle)
    for user, history, k in CASES:
        want = _expected(rec, user, history, k, 0.1, head=which == "head")
        got = rec.recommend(user_id=user, history=history, k=k)
        assert got.item_ids == want, (user, history, k)
        assert [rec.item_id_of_row[r] for r in got.rows] == want
        filtered = rec.recommend(user_id=user, history=history, k=k, exclude_item_ids=["not-an-item"])
        assert filtered.item_ids == want and filtered.skipped_exclusions == 1
        np.testing.assert_allclose(filtered.scores, got.scores, rtol=1e-6)
        held = sum(is_new[rec.bundle.item_ids.index(i)] for i in want)
        assert held >= k // 10
    batch = rec.recommend_batch([RecommendQuery(u, h, k) for u, h, k in CASES])
    assert [r.item_ids for r in batch] == [rec.recommend(user_id=u, history=h, k=k).item_ids for u, h, k in CASES]


def test_slots_off_or_overridden(bundles: dict[str, Path]) -> None:
    off = Recommender.from_bundle(bundles["off"])
    assert off.new_slots is None and "new-item slots" not in off.info().search_params
    is_new = bundle_new_items(off.bundle)
    plain = off.recommend(user_id="u3", k=20).item_ids
    assert not any(is_new[off.bundle.item_ids.index(i)] for i in plain)  # new items never reach it alone
    on = Recommender.from_bundle(bundles["off"], new_item_share=0.1)
    got = on.recommend(user_id="u3", k=20).item_ids
    assert got == _expected(on, "u3", [], 20, 0.1)
    assert [is_new[on.bundle.item_ids.index(i)] for i in got].count(True) == 2
    assert got[:9] == plain[:9] and is_new[on.bundle.item_ids.index(got[9])]  # held at position 10
    assert "new-item slots: share 0.1 of each ranking held for" in on.info().search_params
    assert Recommender.from_bundle(bundles["on"], new_item_share=0.0).new_slots is None
    with pytest.raises(ValueError, match=r"`new_item_share` must be a number in \[0, 1\)"):
        Recommender.from_bundle(bundles["on"], new_item_share=2.0)


def test_filters_hold_with_slots(bundles: dict[str, Path]) -> None:
    rec = Recommender.from_bundle(bundles["on"])
    b = rec.bundle
    is_new = bundle_new_items(b)
    new_ids = [i for i, n in zip(b.item_ids, is_new) if n]
    first = rec.recommend(user_id="u3", k=20).item_ids
    first_new = [i for i in first if i in new_ids]
    got = rec.recommend(user_id="u3", k=20, exclude_item_ids=first_new, exclude_seen=True)
    assert not set(got.item_ids) & set(first_new)
    seen = dict(zip(b.user_history["user_id"], b.user_history["items"]))["u3"]
    assert not set(got.item_ids) & set(seen)
    mask = [b.item_ids.index(i) for i in [*first_new, *seen]]
    assert got.item_ids == _expected(rec, "u3", [], 20, 0.1, mask=mask)
    only = rec.recommend(user_id="u3", k=10, include_categories=["c2"])
    cats = dict(zip(b.items["item_id"], b.items["categories"]))
    assert only.item_ids and all("c2" in cats[i] for i in only.item_ids)
    assert any(i in new_ids for i in only.item_ids)


def test_slots_need_a_share_and_matching_flags() -> None:
    with pytest.raises(ValueError, match=r"`share` must be > 0 for NewItemSlots"):
        NewItemSlots(np.zeros((3, 2), np.float32), np.array([True, False, False]), 0.0)
    with pytest.raises(ValueError, match=r"`is_new` must have one flag per vector row \(3\), got shape \(2,\)"):
        NewItemSlots(np.zeros((3, 2), np.float32), np.array([True, False]), 0.1)
    with pytest.raises(ValueError, match=r"`metric` must be 'ip' or 'l2', got 'cos'"):
        NewItemSlots(np.zeros((3, 2), np.float32), np.array([True, False, False]), 0.1, "cos")


def test_l2_slots_rank_new_items_by_distance() -> None:
    from recfuse.index import SearchResult
    from recfuse.inference.plan import EMPTY_ROWS, QueryPlan

    vectors = np.array([[0, 0], [1, 0], [5, 5], [0.5, 0], [9, 9]], np.float32)
    slots = NewItemSlots(vectors, np.array([False, False, True, False, True]), 0.5, "l2")
    plan = QueryPlan(2, 0, EMPTY_ROWS, True, EMPTY_ROWS, None, 0, 0)
    found = SearchResult(np.array([0.0, 0.25], np.float32), np.array([0, 3]))  # squared distances to (0, 0)
    (res,) = slots.apply(np.zeros((1, 2), np.float32), [plan], [found])
    assert res.ids.tolist() == [0, 2] and res.scores.tolist() == pytest.approx([0.0, 50.0])


@pytest.mark.slow
def test_grpc_serves_a_new_item_with_slots_on_and_not_off(tmp_path: Path) -> None:
    from recfuse_api.v1 import recommender_pb2 as pb
    from serving_support import running, stub

    for share, root in ((0.1, tmp_path / "on"), (0.0, tmp_path / "off")):
        path = write_bundle(root, _contents(share))
        local = Recommender.from_bundle(path)
        is_new = dict(zip(local.bundle.item_ids, bundle_new_items(local.bundle)))
        with running(root, reload_interval_s=0) as (_server, channel):
            s = stub(channel)
            r = s.Recommend(pb.RecommendRequest(user_id="u3", k=20, exclude_seen=True), timeout=10)
            served = [it.item_id for it in r.items]
            assert served == local.recommend(user_id="u3", k=20, exclude_seen=True).item_ids
            assert sum(is_new[i] for i in served) == (2 if share else 0), share
            info = s.Info(pb.InfoRequest(), timeout=10)
            assert ("new-item slots: share 0.1" in info.variants[0].search_params) == bool(share)


def test_items_added_later_are_new_and_reach_the_ranking_through_a_slot(tmp_path: Path, bundles: dict[str, Path]):
    pytest.importorskip("tensorflow")  # recfuse.bundle.incremental loads TrainedModel
    from recfuse.bundle.incremental import _extended

    loaded = load_bundle(bundles["on"])
    rec = Recommender(loaded)
    q = rec._queries.encode([rec.plan(RecommendQuery("u3", (), 20))])[0]  # u3's query vector, as served
    new = pd.DataFrame({"item_id": ["n1", "n2"], "title": ["N1", "N2"], "categories": [["c1"], ["c2"]]})
    vectors = np.stack([0.7 * q / np.linalg.norm(q), -q / np.linalg.norm(q)]).astype(np.float32)
    contents, index = _extended(loaded, new, vectors, lambda stage, done, total: None)
    grown = load_bundle(write_bundle(tmp_path, contents, contents.index_config, index=index))
    is_new = dict(zip(grown.item_ids, bundle_new_items(grown)))
    assert is_new["n1"] and is_new["n2"] and sum(is_new.values()) == sum(bundle_new_items(loaded)) + 2
    assert bundle_share(grown) == 0.1  # the setting travels with the bundle's config
    served = Recommender(grown).recommend(user_id="u3", k=20).item_ids
    assert "n1" in served and "n2" not in served
    assert "n1" not in Recommender(grown, new_item_share=0.0).recommend(user_id="u3", k=20).item_ids
