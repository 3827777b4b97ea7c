"""A real server on 127.0.0.1:0 over real factory bundles: every RPC, every error code, health, reflection,
metrics, request ids, A/B routing with exposures."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
import urllib.request
from collections import Counter

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from recfuse_api.v1 import recommender_pb2 as pb
from recfuse_serving.client import Query, RecfuseClient
from recfuse_serving.config import ABConfig, ExposureConfig
from recfuse_serving.metrics import ServingMetrics
from serving_support import N_ITEMS, make_root, running, stub

from recfuse.variants import Exposure, ExposureLogger, assign_variant, read_exposures

pytestmark = pytest.mark.slow

SHARES = {"attention": 0.5, "concat": 0.5}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("bundles"), ("attention", "concat"))


@pytest.fixture(scope="module")
def served(root, tmp_path_factory):
    exposures = tmp_path_factory.mktemp("exposures")
    with running(
        root,
        metrics_port=0,
        max_k=50,
        max_batch=8,
        reload_interval_s=0,
        ab=ABConfig(salt="exp1", shares=SHARES, default_variant="attention"),
        exposures=ExposureConfig(directory=str(exposures), rotate_seconds=0.2),
    ) as (server, channel):
        yield server, channel, exposures


def test_recommend_known_user_history_and_popular_fallback(served):
    _, channel, _ = served
    s = stub(channel)
    r = s.Recommend(pb.RecommendRequest(user_id="u1", k=5, request_id="req-1"), timeout=5)
    assert len(r.items) == 5 and r.fallback == pb.FALLBACK_NONE and r.request_id == "req-1"
    assert r.variant == assign_variant("u1", "exp1", SHARES)
    assert r.bundle_version and r.timing.total_ms >= r.timing.search_ms > 0
    assert all(it.HasField("title") and it.title for it in r.items)
    scores = [it.score for it in r.items]
    assert scores == sorted(scores, reverse=True)
    # History from category c3 (items i3, i11, ...) -> recommendations mostly from c3 (factory semantics).
    hist = [f"i{3 + 8 * j}" for j in range(5)]
    r = s.Recommend(pb.RecommendRequest(history=hist, k=10, exclude_seen=True), timeout=5)
    assert not set(hist) & {it.item_id for it in r.items}
    assert sum(int(it.item_id[1:]) % 8 == 3 for it in r.items) >= 7
    assert r.variant == "attention"  # anonymous -> default variant
    anon = s.Recommend(pb.RecommendRequest(user_id="stranger-no-history", k=4, variant="concat"), timeout=5)
    assert anon.fallback == pb.FALLBACK_POPULAR and anon.fallback_reason == "popular" and anon.variant == "concat"
    assert len(anon.items) == 4


def test_recommend_filters_and_default_k(served):
    server, channel, _ = served
    s = stub(channel)
    r = s.Recommend(pb.RecommendRequest(user_id="u2", include_categories=["c5"]), timeout=5)
    assert len(r.items) == 10  # k=0 -> default_k
    plain = s.Recommend(pb.RecommendRequest(user_id="u2", variant="attention"), timeout=5)
    want = server.registry.get("attention").recommend(user_id="u2", k=10)
    assert [it.item_id for it in plain.items] == want.item_ids  # k=0 -> default_k without filters too
    assert all(int(it.item_id[1:]) % 8 == 5 for it in r.items)
    excluded = [it.item_id for it in r.items[:3]]
    r2 = s.Recommend(pb.RecommendRequest(user_id="u2", include_categories=["c5"], exclude_item_ids=excluded), timeout=5)
    assert not set(excluded) & {it.item_id for it in r2.items}


def test_recommend_answers_what_the_library_answers_and_logs_exposures(served):
    """Unfiltered and filtered calls, model answers and the popularity fallback all give the library's
    answer (ids, scores, titles, fallback, version) and log their exposures."""
    server, channel, exposures = served
    s = stub(channel)
    cases = [
        dict(user_id="u1", k=5),
        dict(user_id="u4", history=["i3", "ghost", "i3"], k=7),
        dict(history=["i9", "i17"], k=4),
        dict(user_id="stranger-2", k=3),  # popular fallback
        dict(user_id="u2", k=6, exclude_seen=True),  # filtered: the index's filtered search
        dict(user_id="u2", k=6, include_categories=["c1"]),  # an allow-list, ranked exactly
    ]
    for i, case in enumerate(cases):
        r = s.Recommend(pb.RecommendRequest(variant="concat", request_id=f"lib-{i}", **case), timeout=5)
        rec = server.registry.get("concat")
        want = rec.recommend(
            user_id=case.get("user_id"),
            history=case.get("history", ()),
            k=case["k"],
            exclude_seen=case.get("exclude_seen", False),
            include_categories=case.get("include_categories", ()),
        )
        assert [it.item_id for it in r.items] == want.item_ids, case
        assert [it.score for it in r.items] == pytest.approx([it.score for it in want.items], rel=1e-6)
        assert [it.title for it in r.items] == [rec.item_title(i) for i in want.item_ids]
        assert r.fallback_reason == want.fallback and r.bundle_version == want.bundle_version == rec.version
        assert r.fallback == (pb.FALLBACK_POPULAR if want.fallback else pb.FALLBACK_NONE)
        assert r.variant == "concat" and r.request_id == f"lib-{i}"
    server.exposures.flush()
    table = read_exposures(exposures).to_pandas()
    rows = table[table.request_id.str.startswith("lib-")].set_index("request_id")
    assert sorted(rows.index) == [f"lib-{i}" for i in range(len(cases))]
    assert list(rows.loc["lib-0"].item_ids) == [it.item_id for it in s.Recommend(
        pb.RecommendRequest(variant="concat", user_id="u1", k=5), timeout=5).items]  # fmt: skip
    assert rows.loc["lib-3"].user_id == "stranger-2" and len(rows.loc["lib-3"].scores) == 3


def test_precomputed_user_vectors_and_hugepages_are_server_settings(served, root):
    """`user_vectors_mb` and `hugepages` reach every loaded Recommender; turned off, the server
    encodes each known user per request and gives the same answers."""
    server, channel, _ = served
    on = server.registry.get("attention")
    assert on.user_vectors is not None and on.user_vectors.shape == (len(on.bundle.user_vocab.ids), 16)
    with running(root, reload_interval_s=0, user_vectors_mb=0, hugepages=False) as (plain, plain_channel):
        assert plain.registry.get("attention").user_vectors is None
        assert (plain.registry.user_vectors_mb, plain.registry.hugepages) == (0, False)
        for user in ("u1", "u7", "u30"):
            req = pb.RecommendRequest(variant="attention", user_id=user, k=8)
            want = stub(plain_channel).Recommend(req, timeout=5)
            got = stub(channel).Recommend(req, timeout=5)
            assert [it.item_id for it in got.items] == [it.item_id for it in want.items], user
            assert [it.score for it in got.items] == pytest.approx([it.score for it in want.items], abs=1e-5)


def test_recommend_batch_keeps_order_and_routes_per_user(served):
    _, channel, _ = served
    users = [f"u{i}" for i in range(6)]
    reqs = [pb.RecommendRequest(user_id=u, k=3) for u in users] + [pb.RecommendRequest(history=["i1"], k=2)]
    resp = stub(channel).RecommendBatch(pb.RecommendBatchRequest(requests=reqs), timeout=5)
    assert len(resp.responses) == 7
    for u, r in zip(users, resp.responses):
        assert r.variant == assign_variant(u, "exp1", SHARES) and len(r.items) == 3
    assert len(resp.responses[-1].items) == 2 and resp.responses[-1].variant == "attention"
    assert len({r.request_id for r in resp.responses}) == 7


def test_similar_items_and_info(served):
    server, channel, _ = served
    s = stub(channel)
    r = s.SimilarItems(pb.SimilarItemsRequest(item_id="i6", k=5), timeout=5)
    ids = [it.item_id for it in r.items]
    assert len(ids) == 5 and "i6" not in ids
    assert r.bundle_version == server.registry.get("attention").version
    assert sum(int(i[1:]) % 8 == 6 for i in ids) >= 4
    info = s.Info(pb.InfoRequest(), timeout=5)
    assert [v.variant for v in info.variants] == ["attention", "concat"]
    assert info.default_variant == "attention"
    # the salt stays on the server: with it any client could compute every user's arm
    assert "ab_salt" not in {f.name for f in pb.InfoResponse.DESCRIPTOR.fields} and "exp1" not in str(info)
    for seed, v in enumerate(info.variants):  # make_root: seed 0, 1 in variant order
        assert v.item_count == N_ITEMS and v.dim == 16 and v.index_type == "Flat" and v.traffic_share == 0.5
        bundle = server.registry.get(v.variant).bundle
        assert v.bundle_version == bundle.version and v.model_id == bundle.model_id == f"random-seed{seed}"
        # created_at is a Timestamp equal to the manifest's ISO text, to the microsecond
        assert v.HasField("created_at") and v.ann_recall == pytest.approx(1.0)
        written = dt.datetime.fromisoformat(bundle.manifest["created_at"])
        assert v.created_at.ToDatetime(tzinfo=dt.UTC) == written and written.tzinfo is not None
    with RecfuseClient(f"127.0.0.1:{server.port}") as client:
        first = client.info().variants[0]
    assert (first.bundle_version, first.model_id) == (info.variants[0].bundle_version, "random-seed0")
    assert first.created_at == info.variants[0].created_at.ToDatetime(tzinfo=dt.UTC)
    assert first.created_at.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (pb.RecommendRequest(user_id="u1", k=51), r"`k` must be in \[1, 50\], got 51"),
        (pb.RecommendRequest(user_id="u1", k=-1), r"`k` must be >= 0 \(0 = the server default of 10, .*got -1$"),
        (pb.RecommendRequest(user_id="u1", k=-(2**31), exclude_seen=True), r"`k` must be >= 0 .*got -2147483648$"),
        (pb.RecommendRequest(user_id="x" * 300), r"`user_id` is 300 characters long"),
        (pb.RecommendRequest(history=["i1"] * 1001), r"`history` has 1001 entries; at most 1000"),
        (pb.RecommendRequest(history=["i1", ""]), r"`history\[1\]` is an empty string"),
        (pb.RecommendRequest(user_id="u1", exclude_item_ids=["i1"] * 1001), "`exclude_item_ids` has 1001 entries"),
        (pb.RecommendRequest(user_id="u1", variant="nope"), r"`variant` 'nope' is not served here"),
        (pb.RecommendRequest(user_id="u1", include_categories=["c"] * 101), "`include_categories` has 101"),
    ],
)
def test_invalid_argument_names_the_field(served, request_, match):
    _, channel, _ = served
    with pytest.raises(grpc.RpcError) as info:
        stub(channel).Recommend(request_, timeout=5)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(match, info.value.details()), info.value.details()


def test_batch_and_similar_errors(served):
    _, channel, _ = served
    s = stub(channel)
    with pytest.raises(grpc.RpcError, match=r"`requests` has 9 entries; at most 8") as e:
        s.RecommendBatch(pb.RecommendBatchRequest(requests=[pb.RecommendRequest(user_id="u1")] * 9), timeout=5)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError, match=r"`requests\[1\]`: `variant` 'zzz' is not served") as e:
        s.RecommendBatch(
            pb.RecommendBatchRequest(requests=[pb.RecommendRequest(), pb.RecommendRequest(variant="zzz")]), timeout=5
        )
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError, match=r"`item_id` 'nope' is not in bundle attention/") as e:
        s.SimilarItems(pb.SimilarItemsRequest(item_id="nope"), timeout=5)
    assert e.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError, match=r"`k` must be >= 0 \(0 = the server default of 10, ") as e:
        s.SimilarItems(pb.SimilarItemsRequest(item_id="i6", k=-3), timeout=5)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT and e.value.details().endswith("got -3")
    negative = [pb.RecommendRequest(user_id="u1", k=2), pb.RecommendRequest(user_id="u2", k=-2)]
    with pytest.raises(grpc.RpcError, match=r"`requests\[1\]\.k` must be >= 0 ") as e:
        s.RecommendBatch(pb.RecommendBatchRequest(requests=negative), timeout=5)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT and e.value.details().endswith("got -2")


def test_deadline_exceeded(served):
    # A 1 us deadline races the answer: gRPC rounds the timeout it sends up, and a fast call on a warm
    # channel can complete before the client's deadline timer runs (about 3 calls in 10 on this
    # machine). What must hold: such a call ends with DEADLINE_EXCEEDED or a whole answer, never
    # another error, and the deadline wins often (all 20 answering would be ~0.3**20).
    _, channel, _ = served
    request = pb.RecommendBatchRequest(requests=[pb.RecommendRequest(user_id=f"u{i}", k=50) for i in range(8)])
    exceeded = 0
    for _ in range(20):
        try:
            resp = stub(channel).RecommendBatch(request, timeout=1e-6)
        except grpc.RpcError as e:
            assert e.code() is grpc.StatusCode.DEADLINE_EXCEEDED, e
            exceeded += 1
        else:
            assert len(resp.responses) == 8 and all(len(r.items) == 50 for r in resp.responses)
    assert exceeded >= 1


def test_request_id_in_trailing_metadata_and_generated(served):
    _, channel, _ = served
    resp, call = stub(channel).Recommend.with_call(
        pb.RecommendRequest(user_id="u1", k=1), metadata=(("x-request-id", "hdr-7"),), timeout=5
    )
    assert resp.request_id == "hdr-7" and ("x-request-id", "hdr-7") in call.trailing_metadata()
    resp = stub(channel).Recommend(pb.RecommendRequest(user_id="u1", k=1), timeout=5)
    assert len(resp.request_id) == 32


def test_health_serving_and_reflection_lists_services(served):
    _, channel, _ = served
    h = health_pb2_grpc.HealthStub(channel)
    for service in ("", "recfuse_api.v1.Recommender", "recfuse_api.v1.RecommenderAdmin"):
        assert h.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == 1  # SERVING
    r = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = list(r.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {
        "recfuse_api.v1.Recommender",
        "recfuse_api.v1.RecommenderAdmin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


def test_exposures_written_per_variant_and_metrics_scraped(served):
    server, _, exposures = served
    client = RecfuseClient(f"127.0.0.1:{server.port}")
    users = [f"user-{i}" for i in range(40)]
    queries = [Query(user_id=u, k=3, request_id=f"ab-{u}") for u in users]
    answers = [a for i in range(0, 40, 8) for a in client.recommend_batch(queries[i : i + 8])]
    client.close()
    server.exposures.flush()
    table = read_exposures(exposures).to_pandas()
    rows = table[table.request_id.str.startswith("ab-")].set_index("request_id")
    assert len(rows) == 40
    for u, a in zip(users, answers):
        row = rows.loc[f"ab-{u}"]
        assert row.user_id == u and row.variant == a.variant == assign_variant(u, "exp1", SHARES)
        assert list(row.item_ids) == a.item_ids and len(row.scores) == 3
    assert set(Counter(rows.variant)) == {"attention", "concat"}
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    assert 'recfuse_requests_total{code="OK",rpc="RecommendBatch"}' in text
    assert 'recfuse_errors_total{code="INVALID_ARGUMENT",rpc="Recommend"}' in text
    assert 'recfuse_request_latency_seconds_bucket{le="0.001",rpc="Recommend",variant="attention"}' in text
    assert 'recfuse_bundle_info{variant="concat",version=' in text
    assert "recfuse_exposures_dropped_total 0.0" in text and "recfuse_exposures_written_total" in text


def test_unavailable_then_serving_after_publish(root, tmp_path):
    empty = tmp_path / "bundles"
    empty.mkdir()
    with running(empty, ready=False, reload_interval_s=0) as (server, channel):
        h = health_pb2_grpc.HealthStub(channel)
        assert h.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 2  # NOT_SERVING
        admin = health_pb2.HealthCheckRequest(service="recfuse_api.v1.RecommenderAdmin")
        assert h.Check(admin, timeout=5).status == 1  # the admin service works before any bundle loads
        with pytest.raises(grpc.RpcError, match="no bundle is loaded yet") as e:
            stub(channel).Recommend(pb.RecommendRequest(user_id="u1"), timeout=5)
        assert e.value.code() is grpc.StatusCode.UNAVAILABLE
        make_root(empty, ("attention",))
        with RecfuseClient(f"127.0.0.1:{server.port}") as client:
            reloaded, rejected = client.reload()
        assert rejected == []
        assert len(reloaded) == 1 and reloaded[0].startswith("attention:")
        assert h.Check(health_pb2.HealthCheckRequest(service="recfuse_api.v1.Recommender"), timeout=5).status == 1
        assert len(stub(channel).Recommend(pb.RecommendRequest(user_id="u1", k=2), timeout=5).items) == 2


def test_rate_limit_resource_exhausted(root):
    with running(root, rate_limit_qps=0.5, reload_interval_s=0) as (_, channel):
        s = stub(channel)
        s.Info(pb.InfoRequest(), timeout=5)  # takes the one token
        with pytest.raises(grpc.RpcError, match=r"rate limit of 0.5 requests/s exceeded") as e:
            s.Info(pb.InfoRequest(), timeout=5)
        assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_per_connection_rate_limit(root):
    with running(root, peer_rate_limit_qps=0.5, reload_interval_s=0) as (server, channel):
        stub(channel).Info(pb.InfoRequest(), timeout=5)
        with pytest.raises(grpc.RpcError, match=r"per-connection rate limit of 0.5 requests/s") as e:
            stub(channel).Info(pb.InfoRequest(), timeout=5)
        assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        # a second connection (own subchannel pool, so not shared with `channel`) has its own budget
        other = grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)])
        try:
            assert stub(other).Info(pb.InfoRequest(), timeout=5).variants
        finally:
            other.close()


def test_concurrency_limit_resource_exhausted(root):
    """One slot, held by a RecommendBatch that takes a while; a second call finds no slot."""
    with running(root, max_concurrency=1, queue_timeout_s=0.0, max_batch=256, reload_interval_s=0) as (_, channel):
        s = stub(channel)
        big = pb.RecommendBatchRequest(
            requests=[pb.RecommendRequest(user_id=f"u{i % 50}", k=50, exclude_seen=True) for i in range(256)]
        )
        codes: list[grpc.StatusCode] = []
        stop = threading.Event()

        def hammer():
            while not stop.is_set():
                try:
                    s.RecommendBatch(big, timeout=10)
                except grpc.RpcError as exc:
                    codes.append(exc.code())

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while not codes and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join(10)
        assert codes and set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_exposure_drops_are_counted(tmp_path):
    m = ServingMetrics()
    log = ExposureLogger(tmp_path, queue_size=1, rotate_seconds=60)
    m.track_exposures(log.stats)
    log.close()
    assert not log.log(Exposure("r", "u", "a", ["i"], [1.0]))
    assert "recfuse_exposures_dropped_total 1.0" in m.render().decode()
