"""Recommender over real factory bundles: model path vs brute force, fallbacks, filters, batch, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import item_category, make_bundle, make_contents

from recfuse.errors import InvalidRequestError, NotFoundError
from recfuse.inference import Recommender, RecommendQuery
from recfuse.ranking import masked_topk


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    root = tmp_path_factory.mktemp("bundles")
    return Recommender.from_bundle(make_bundle(root, n_items=400, dim=16, n_users=60, seed=7))


@pytest.fixture(scope="module")
def rec_head(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    """``rec``'s bundle with an item-kNN head from its user histories (re-rank of k+20)."""
    import scipy.sparse as sp

    from recfuse.bundle import write_bundle
    from recfuse.itemitem import ItemHead, knn_weights

    contents = make_contents(400, 16, seed=7, n_users=60)
    row = {item: i for i, item in enumerate(contents.item_ids)}
    pairs = [(u, row[i]) for u, (_, h) in enumerate(sorted(contents.user_history.items())) for i in h]
    x = sp.csr_matrix((np.ones(len(pairs), np.float32), tuple(np.array(pairs).T)), shape=(60, 400))
    contents.item_head = ItemHead(knn_weights(x, neighbors=10), 0.5, "itemknn", {"neighbors": 10})
    contents.item_head_candidates = 20
    return Recommender.from_bundle(write_bundle(tmp_path_factory.mktemp("head"), contents))


def _rows(rec: Recommender, ids: list[str]) -> list[int]:
    return [rec.bundle.item_ids.index(i) for i in ids]


def _expected(rec: Recommender, user: str | None, history: list[str], k: int, exclude: list[int]) -> list[str]:
    """Brute force: the numpy tower by hand + full ranking with recfuse.ranking.masked_topk."""
    b = rec.bundle
    stored = []
    if user is not None:
        hist = dict(zip(b.user_history["user_id"], b.user_history["items"]))
        stored = list(hist.get(user, []))
    merged: list[str] = []
    for i in [h for h in history if h in b.item_ids] + stored:
        if i not in merged:
            merged.append(i)
    rows = np.full((1, 20), -1, np.int64)
    rows[0, : len(merged[:20])] = _rows(rec, merged[:20])
    user_idx = np.array([b.user_vocab.lookup_one(user) if user else 0])
    q = b.query_tower.encode(b.item_vectors, user_idx, rows)
    idx, _ = masked_topk(q, b.item_vectors, k, exclude=[np.array(exclude, np.int64)])
    return [b.item_ids[i] for i in idx[0]]


def test_known_user_matches_brute_force_and_its_taste(rec: Recommender) -> None:
    r = rec.recommend(user_id="u3", k=10)
    assert r.fallback == "" and len(r.items) == 10 and r.variant == "attention"
    assert r.bundle_version == rec.bundle.version and r.query_ms > 0 and r.search_ms > 0
    assert r.item_ids == _expected(rec, "u3", [], 10, [])
    scores = [it.score for it in r.items]
    assert scores == sorted(scores, reverse=True) and all(isinstance(s, float) for s in scores)
    hist = dict(zip(rec.bundle.user_history["user_id"], rec.bundle.user_history["items"]))["u3"]
    liked = item_category(int(hist[0][1:]))
    assert sum(item_category(int(i[1:])) == liked for i in r.item_ids) >= 8


def test_exclude_seen_and_explicit_exclusions(rec: Recommender) -> None:
    hist = list(dict(zip(rec.bundle.user_history["user_id"], rec.bundle.user_history["items"]))["u3"])
    plain = rec.recommend(user_id="u3", k=30)
    assert set(hist) & set(plain.item_ids)  # the stored history would otherwise be recommended
    drop = plain.item_ids[:3]
    r = rec.recommend(user_id="u3", k=30, exclude_seen=True, exclude_item_ids=[*drop, "nope"])
    assert len(r.items) == 30 and r.skipped_exclusions == 1
    assert not set(r.item_ids) & (set(hist) | set(drop))
    assert r.item_ids == _expected(rec, "u3", [], 30, _rows(rec, hist + drop))


def test_request_history_merged_in_front_unknown_ids_counted(rec: Recommender) -> None:
    r = rec.recommend(user_id="u3", history=["i5", "ghost", "i13", "ghost2"], k=10)
    assert r.skipped_history == 2 and r.fallback == ""
    assert r.item_ids == _expected(rec, "u3", ["i5", "i13"], 10, [])
    anon = rec.recommend(history=["i5", "i13", "i21"], k=10, exclude_seen=True)
    assert anon.fallback == "" and not {"i5", "i13", "i21"} & set(anon.item_ids)
    assert sum(item_category(int(i[1:])) == "c5" for i in anon.item_ids) >= 8  # i5, i13, i21 are all c5


def test_unknown_user_without_history_gets_popular_with_filters(rec: Recommender) -> None:
    pop = rec.bundle.popularity
    for user in (None, "", "stranger"):
        r = rec.recommend(user_id=user, k=5)
        assert r.fallback == "popular"
        assert r.item_ids == pop["item_id"].tolist()[:5]
        assert [it.score for it in r.items] == [float(c) for c in pop["count"].tolist()[:5]]
    top = pop["item_id"].tolist()
    r = rec.recommend(k=5, exclude_item_ids=top[:2])
    assert r.item_ids == top[2:7]
    r = rec.recommend(k=5, include_categories=["c2"])
    assert r.fallback == "popular" and all(item_category(int(i[1:])) == "c2" for i in r.item_ids) and len(r.items) == 5
    assert r.item_ids == [i for i in top if item_category(int(i[1:])) == "c2"][:5]
    r = rec.recommend(k=400, exclude_categories=["c0"])
    assert len(r.items) == 350 and not any(item_category(int(i[1:])) == "c0" for i in r.item_ids)


def test_known_user_without_user_embedding_or_history_falls_back(tmp_path: Path) -> None:
    r = Recommender.from_bundle(make_bundle(tmp_path, n_items=50, dim=4, user_embedding=False))
    assert r.recommend(user_id="u1", k=3).fallback == ""  # has a stored history
    assert r.recommend(user_id="zzz", k=3).fallback == "popular"


def test_category_filters_exactly_k_and_short_when_too_few(rec: Recommender) -> None:
    r = rec.recommend(user_id="u3", k=20, include_categories=["c1", "c2"], exclude_categories=["t0"])
    assert len(r.items) == 20
    for iid in r.item_ids:
        cats = rec.bundle.items["categories"].iloc[int(iid[1:])]
        assert {"c1", "c2"} & set(cats) and "t0" not in cats
    n_c1 = sum("c1" in c for c in rec.bundle.items["categories"])
    r = rec.recommend(user_id="u3", k=200, include_categories=["c1"])
    assert len(r.items) == n_c1 == 50
    assert rec.recommend(user_id="u3", k=5, include_categories=["no-such-category"]).items == []
    r = rec.recommend(user_id="u3", k=5, exclude_categories=["c0", "c1", "c2", "c3", "c4", "c5", "c6"])
    assert len(r.items) == 5 and all(item_category(int(i[1:])) == "c7" for i in r.item_ids)


def test_similar_items_nearest_neighbours_without_itself(rec: Recommender) -> None:
    r = rec.similar_items("i10", k=5)
    b = rec.bundle
    idx, _ = masked_topk(b.item_vectors[10:11], b.item_vectors, 5, exclude=[np.array([10])])
    assert r.item_ids == [b.item_ids[i] for i in idx[0]] and "i10" not in r.item_ids
    r = rec.similar_items("i10", k=5, include_categories=["c3"], exclude_item_ids=["i3"])
    assert len(r.items) == 5 and all(item_category(int(i[1:])) == "c3" for i in r.item_ids) and "i3" not in r.item_ids
    # within the item's own category (an allow-list ranked exactly) the item is still left out
    r = rec.similar_items("i10", k=5, include_categories=["c2"])
    outside_c2 = [i for i in range(400) if item_category(i) != "c2"]
    idx, _ = masked_topk(b.item_vectors[10:11], b.item_vectors, 5, exclude=[np.array([*outside_c2, 10])])
    assert r.item_ids == [b.item_ids[i] for i in idx[0]] and "i10" not in r.item_ids
    with pytest.raises(NotFoundError, match=r"`item_id` 'ghost' is not in bundle attention/.* \(400 items\)"):
        rec.similar_items("ghost")


def test_batch_equals_single_calls(rec: Recommender) -> None:
    queries = [
        RecommendQuery(user_id="u1", k=7),
        RecommendQuery(k=4),  # popular
        RecommendQuery(history=["i9", "i17"], k=5, include_categories=["c1"]),
        RecommendQuery(user_id="u2", k=6, exclude_seen=True, exclude_categories=["c0"]),
        RecommendQuery(user_id="stranger", history=["ghost"], k=3),  # popular, 1 skipped
    ]
    batch = rec.recommend_batch(queries)
    for q, got in zip(queries, batch):
        single = rec.recommend(
            q.user_id, q.history, q.k, q.exclude_item_ids, q.exclude_seen, q.include_categories, q.exclude_categories
        )
        assert got.item_ids == single.item_ids and got.fallback == single.fallback
        np.testing.assert_allclose([i.score for i in got.items], [i.score for i in single.items], rtol=1e-5)
    assert [r.fallback for r in batch] == ["", "popular", "", "", "popular"] and batch[4].skipped_history == 1
    assert len(batch[0].items) == 7 and len(batch[2].items) == 5
    assert rec.recommend_batch([]) == []


def test_one_path_answers_plain_filtered_and_allow_list_queries_exactly(rec: Recommender) -> None:
    """A query without filters, one excluding an item (the index's filtered search) and one whose
    allow-list is every category (ranked exactly over the allowed rows) are answered by the same code
    and all give the exact ranking on a Flat index; every answer's rows, ids and titles agree."""
    assert rec._searcher.exact_filters  # noqa: SLF001  (the allow-list below is ranked exactly)
    every_category = sorted(rec._tables.category_rows)  # noqa: SLF001
    hist = list(dict(zip(rec.bundle.user_history["user_id"], rec.bundle.user_history["items"]))["u5"])
    cases = [
        ("u3", [], 10),  # known user: stored history + user embedding
        ("u5", [hist[2], "i9", hist[2], "ghost"], 7),  # duplicates keep the first position, unknown id counted
        (None, ["i9", "i17", "i25"], 5),  # anonymous with a history
        ("stranger", ["i4"], 3),  # unknown user with a history
    ]
    for user, history, k in cases:
        want = _expected(rec, user, history, 400, [])
        plain = rec.recommend(user_id=user, history=history, k=k)
        filtered = rec.recommend(user_id=user, history=history, k=k, exclude_item_ids=[want[-1]])
        allowed = rec.recommend(user_id=user, history=history, k=k, include_categories=every_category)
        assert plain.item_ids == filtered.item_ids == allowed.item_ids == want[:k], (user, history, k)
        np.testing.assert_allclose(filtered.scores, plain.scores, rtol=1e-6)
        np.testing.assert_allclose(allowed.scores, plain.scores, rtol=1e-5)
        for r in (plain, filtered, allowed):
            assert r.fallback == "" and r.query_ms > 0 and r.search_ms > 0
            assert [rec.item_id_of_row[row] for row in r.rows] == r.item_ids
            assert [rec.title_of_row[row] for row in r.rows] == [rec.item_title(i) for i in r.item_ids]
            assert [(it.item_id, it.score) for it in r.items] == list(zip(r.item_ids, r.scores))
    assert rec.recommend(user_id="u5", history=[hist[2], "i9", hist[2], "ghost"], k=7).skipped_history == 1
    for user in ("stranger", None):  # no user signal: the popularity order through the same answer
        pop = rec.recommend(user_id=user, k=6)
        assert pop.fallback == "popular" and pop.item_ids == rec.bundle.popularity["item_id"].tolist()[:6]
        assert [rec.item_id_of_row[row] for row in pop.rows] == pop.item_ids


def test_k_is_checked_once_and_clipped_to_the_catalog(rec: Recommender) -> None:
    """``k`` is refused outside ``[1, max_k]`` with a message naming it (the plan's one check), and a
    ``k`` above the catalog's size is clipped to it (400 items here), on every kind of query."""
    full = rec.recommend(user_id="u1", k=1000)
    assert len(full.item_ids) == len(set(full.item_ids)) == 400
    assert full.item_ids[:30] == _expected(rec, "u1", [], 30, [])
    assert full.item_ids[:10] == rec.recommend(user_id="u1", k=10).item_ids
    assert len(rec.recommend(user_id="u1", k=1000, exclude_item_ids=["i1", "i2"]).item_ids) == 398
    assert len(rec.recommend(k=1000).item_ids) == 400  # popular
    assert rec.plan(RecommendQuery(user_id="u1", k=1000)).k == 400 and rec.plan(RecommendQuery(k=7)).k == 7
    assert rec.plan(RecommendQuery(user_id="u1")).k == 10  # the library's default k
    for bad in (0, -3, 1001):
        with pytest.raises(InvalidRequestError, match=rf"^`k` must be in \[1, 1000\], got {bad}$"):
            rec.recommend(user_id="u3", k=bad)
        with pytest.raises(InvalidRequestError, match=rf"^`k` must be in \[1, 1000\], got {bad}$"):
            rec.recommend(user_id="u3", k=bad, exclude_seen=True, include_categories=["c1"])
    with pytest.raises(InvalidRequestError, match=r"`history` has 1001 entries; at most 1000"):
        rec.recommend(user_id="u3", history=["i1"] * 1001, k=5)
    with pytest.raises(InvalidRequestError, match=r"`history\[1\]` is an empty string"):
        rec.recommend(history=["i1", ""], k=5)


def test_known_users_query_vectors_precomputed_same_answers_as_the_forward(
    rec: Recommender, caplog: pytest.LogCaptureFixture
) -> None:
    """Known users' query vectors are computed at load; every path that uses them answers what the
    per-request forward answers, and a request history with known items still runs the forward."""
    off = rec  # the library default: off (one-shot uses keep start-up short)
    assert off.user_vectors is None
    rec = Recommender(off.bundle, user_vectors_mb=256)
    voc = rec.bundle.user_vocab
    vecs = rec.user_vectors
    assert vecs is not None and vecs.shape == (len(voc.ids), 16) and not vecs.flags.writeable
    # Each row is that user's forward over their stored history (float32 rounding apart).
    stored = dict(zip(rec.bundle.user_history["user_id"], rec.bundle.user_history["items"]))
    for u in ("u0", "u3", "u59"):
        i = voc.lookup_one(u)
        hist = np.array(_rows(rec, list(dict.fromkeys(stored[u]))[:20]), np.int64)
        np.testing.assert_allclose(vecs[i - voc.num_oov], rec._encoder.encode_one(i, hist), atol=1e-6)
    for u in voc.ids:
        want, got = off.recommend(user_id=u, k=10), rec.recommend(user_id=u, k=10)
        assert got.item_ids == want.item_ids, u
        np.testing.assert_allclose([i.score for i in got.items], [i.score for i in want.items], atol=1e-5)
        assert [rec.item_id_of_row[r] for r in got.rows] == want.item_ids
    hist5 = list(stored["u5"])
    cases = [
        ("u5", ["ghost"]),  # only unknown ids: the stored history alone, the precomputed vector
        ("u5", ["i9"]),  # a known item in front: encoded per request
        ("u5", [hist5[3]]),  # a stored item moved to the front: encoded too (the order changed)
        (None, ["i9", "i17"]),
        ("stranger", ["i4"]),
    ]
    for user, history in cases:
        want, got = off.recommend(user, history, 8), rec.recommend(user, history, 8)
        assert got.rows == want.rows and got.skipped_history == want.skipped_history, (user, history)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    assert rec.recommend("u5", ["ghost"], 8).rows == rec.recommend("u5", [], 8).rows
    assert rec.recommend("u5", ["i9"], 8).rows != rec.recommend("u5", [], 8).rows
    # One batch mixing precomputed and encoded queries (and a popular fallback) keeps each answer.
    queries = [
        RecommendQuery(user_id="u1", k=5),
        RecommendQuery(user_id="u2", history=["i9"], k=5),
        RecommendQuery(k=5),
        RecommendQuery(user_id="u4", k=5, exclude_seen=True),
        RecommendQuery(history=["i30"], k=5),
    ]
    for got, want in zip(rec.recommend_batch(queries), off.recommend_batch(queries)):
        assert got.item_ids == want.item_ids and got.fallback == want.fallback
    # Over the memory budget (60 users x 16 x 4 bytes = 3.75 KiB): off, logged, same answers.
    with caplog.at_level("INFO", logger="recfuse.inference.query_vectors"):
        small = Recommender(rec.bundle, user_vectors_mb=0.001)
    assert small.user_vectors is None
    assert "60 known users' query vectors (0.00366 MiB) exceed user_vectors_mb=0.001" in caplog.text
    assert small.recommend(user_id="u3", k=10).item_ids == rec.recommend(user_id="u3", k=10).item_ids
    with pytest.raises(ValueError, match=r"`user_vectors_mb` must be >= 0 MiB, got -1"):
        Recommender(rec.bundle, user_vectors_mb=-1)


def test_non_finite_query_tower_output_is_an_artifact_error(tmp_path: Path) -> None:
    """A bundle whose query tower yields NaN (a broken export) fails loudly, naming the bundle: at load
    when known users' vectors are precomputed, per request when they are not."""
    from dataclasses import replace

    from bundle_factory import make_contents

    from recfuse.bundle import write_bundle
    from recfuse.errors import ArtifactError

    contents = make_contents(n_items=200, dim=16, n_users=30)
    ue = contents.query_tower.user_embedding.copy()
    ue[contents.user_vocab.lookup_one("u3")] = np.nan
    path = write_bundle(tmp_path, replace(contents, query_tower=replace(contents.query_tower, user_embedding=ue)))
    with pytest.raises(ArtifactError, match=r"non-finite vectors for 1 known user\(s\)"):
        Recommender.from_bundle(path, user_vectors_mb=256)
    lazy = Recommender.from_bundle(path)
    assert len(lazy.recommend(user_id="u4", k=5).rows) == 5
    # with or without filters, alone or in a batch: a broken bundle, not a bad request
    with pytest.raises(ArtifactError, match=r"query tower of bundle .* gave a non-finite vector; re-export"):
        lazy.recommend(user_id="u3", k=5)
    with pytest.raises(ArtifactError, match=r"gave a non-finite vector"):
        lazy.recommend(user_id="u3", k=5, exclude_seen=True)
    with pytest.raises(ArtifactError, match=r"gave a non-finite vector"):
        lazy.recommend_batch([RecommendQuery(user_id="u4", k=5), RecommendQuery(user_id="u3", k=5)])


def test_concurrent_reads_give_serial_results(rec: Recommender) -> None:
    users = [f"u{i}" for i in range(12)]
    expected = {u: rec.recommend(user_id=u, k=8, exclude_seen=True).item_ids for u in users}
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(40):
            u = users[int(rng.integers(len(users)))]
            got = rec.recommend(user_id=u, k=8, exclude_seen=True).item_ids
            if got != expected[u]:
                errors.append(f"{u}: {got} != {expected[u]}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors


def test_info_and_titles(rec: Recommender) -> None:
    info = rec.info()
    assert (info.variant, info.item_count, info.user_count, info.dim, info.metric) == ("attention", 400, 60, 16, "ip")
    assert info.version == rec.version and info.index_factory and info.ann_recall == pytest.approx(1.0)
    assert info.format_version == 1 and info.category_count == 12 and info.max_k == 1000
    assert rec.item_title("i12") == "Item 12 (c4)"
    with pytest.raises(NotFoundError, match=r"`item_id` 'i9999' is not in bundle"):
        rec.item_title("i9999")


def test_hnsw_bundle_exact_k_with_filters(tmp_path: Path) -> None:
    rec = Recommender.from_bundle(make_bundle(tmp_path, n_items=3000, dim=16, factory="HNSW32", n_users=50))
    assert "HNSW" in rec.info().index_factory
    r = rec.recommend(user_id="u1", k=50, exclude_seen=True, include_categories=["t1"], exclude_categories=["c0"])
    assert len(r.items) == 50
    cats = rec.bundle.items["categories"]
    assert all("t1" in cats.iloc[int(i[1:])] and "c0" not in cats.iloc[int(i[1:])] for i in r.item_ids)


def test_missing_index_slots_are_dropped_with_and_without_filters(tmp_path: Path) -> None:
    """An IVF index probing one of 16 lists finds fewer than k items: a plain query's answer is the
    short list of what was found (no -1 rows); a filtered one (the index's filtered search, which
    widens its probe until k items pass) is whole, and neither holds a missing slot."""
    from recfuse.config import IndexConfig

    cfg = IndexConfig(factory="IVF16,Flat", nprobe=1)
    rec = Recommender.from_bundle(make_bundle(tmp_path, n_items=400, dim=16, n_users=20, index_cfg=cfg))
    plain = rec.recommend(user_id="u1", k=200)
    assert 0 < len(plain.item_ids) < 200 and -1 not in plain.rows and len(plain.scores) == len(plain.rows)
    assert plain.scores == sorted(plain.scores, reverse=True)
    outside = next(i for i in rec.bundle.item_ids if i not in plain.item_ids)
    filtered = rec.recommend(user_id="u1", k=200, exclude_item_ids=[outside])
    assert len(filtered.item_ids) == 200 and -1 not in filtered.rows and outside not in filtered.item_ids
    assert filtered.scores == sorted(filtered.scores, reverse=True)
    assert [rec.item_id_of_row[r] for r in filtered.rows] == filtered.item_ids


def test_search_threads_set_for_single_requests(tmp_path: Path) -> None:
    import faiss

    path = make_bundle(tmp_path, n_items=30, dim=4)
    faiss.omp_set_num_threads(2)
    Recommender.from_bundle(path, search_threads=None)
    assert faiss.omp_get_max_threads() == 2
    rec = Recommender.from_bundle(path)
    assert faiss.omp_get_max_threads() == 1
    # OpenMP keeps the setting per thread: a thread that searches (a gRPC worker) gets it applied too.
    seen: list[tuple[int, int]] = []

    def worker() -> None:
        faiss.omp_set_num_threads(2)
        before = faiss.omp_get_max_threads()
        rec.recommend(user_id="u1", k=3)
        seen.append((before, faiss.omp_get_max_threads()))

    t = threading.Thread(target=worker)
    t.start()
    t.join(30)
    assert seen == [(2, 1)]


def test_small_allow_lists_ranked_exactly_same_as_index_path(rec: Recommender) -> None:
    via_index = Recommender(rec.bundle, exact_filter_max=0)  # every filter through ItemIndex.search
    assert rec._searcher.exact_filters and via_index._searcher.exact_filter_max == 0  # noqa: SLF001
    for user, cats, excl in [("u3", ["c1"], []), ("u7", ["c2", "t3"], ["t0"]), ("u9", ["t1"], ["c1"])]:
        a = rec.recommend(user_id=user, k=15, include_categories=cats, exclude_categories=excl, exclude_seen=True)
        b = via_index.recommend(user_id=user, k=15, include_categories=cats, exclude_categories=excl, exclude_seen=True)
        assert a.item_ids == b.item_ids and len(a.items) == 15
        np.testing.assert_allclose([i.score for i in a.items], [i.score for i in b.items], rtol=1e-5, atol=1e-6)
