"""Serving hardening: no INTERNAL on any input (seeded fuzz), clean request ids, bounded responses,
start-up fallback, admin-only Reload, plaintext-token refusal, BLAS threads read back."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from bundle_factory import make_bundle, make_contents
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recfuse_api.v1 import recommender_pb2 as pb
from recfuse_serving import sizes
from recfuse_serving.config import AuthConfig, ServerConfig, TLSConfig
from recfuse_serving.interceptors import AdminInterceptor, clean_request_id, is_loopback_peer
from recfuse_serving.server import create_server
from serving_support import DIM, N_ITEMS, admin_stub, make_root, running, stub

from recfuse.bundle.publish import list_versions
from recfuse.bundle.writer import write_bundle
from recfuse.errors import ArtifactError, ConfigError, InvalidRequestError

pytestmark = pytest.mark.slow

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
SERVICE = "/recfuse_api.v1.Recommender/"
ADMIN_SERVICE = "/recfuse_api.v1.RecommenderAdmin/"
METHODS = [SERVICE + m for m in ("Recommend", "RecommendBatch", "SimilarItems", "Info")] + [
    "/grpc.health.v1.Health/Check"
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("bundles"))


def _raw(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def _status(call: grpc.UnaryUnaryMultiCallable, payload: bytes, **kw: object) -> grpc.StatusCode:
    try:
        call.with_call(payload, timeout=10, **kw)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


# ----------------------------------------------------------------------------------- the fuzz test
ids = st.one_of(
    st.sampled_from(["u1", "u7", "i3", "i42", "i299", "", "nobody", "c0"]),
    st.text(max_size=40),
    st.text(alphabet="ab\t\n\x00é日", max_size=300),
)
recommend = st.builds(
    pb.RecommendRequest,
    user_id=ids,
    history=st.lists(ids, max_size=5),
    k=st.one_of(st.integers(0, 30), st.integers(-(2**31), 2**31 - 1)),
    exclude_item_ids=st.lists(ids, max_size=3),
    exclude_seen=st.booleans(),
    include_categories=st.lists(ids, max_size=2),
    exclude_categories=st.lists(ids, max_size=2),
    variant=st.one_of(st.just(""), st.just("attention"), ids),
    request_id=ids,
)
similar = st.builds(
    pb.SimilarItemsRequest,
    item_id=ids,
    k=st.one_of(st.integers(0, 30), st.integers(-(2**31), 2**31 - 1)),
    exclude_item_ids=st.lists(ids, max_size=3),
    variant=st.one_of(st.just(""), ids),
    request_id=ids,
)
batch = st.builds(pb.RecommendBatchRequest, requests=st.lists(recommend, max_size=4))
cases = st.one_of(
    st.tuples(st.just(SERVICE + "Recommend"), recommend.map(lambda m: m.SerializeToString())),
    st.tuples(st.just(SERVICE + "SimilarItems"), similar.map(lambda m: m.SerializeToString())),
    st.tuples(st.just(SERVICE + "RecommendBatch"), batch.map(lambda m: m.SerializeToString())),
    st.tuples(st.sampled_from(METHODS), st.binary(max_size=64)),
    # valid messages with a few bytes flipped or cut: mostly undecodable, sometimes odd but valid
    st.tuples(
        st.sampled_from(METHODS[:3]),
        st.tuples(recommend, st.integers(0, 200), st.integers(0, 255)).map(
            lambda t: bytes((b ^ t[2]) if i == t[1] else b for i, b in enumerate(t[0].SerializeToString()[: t[1] + 2]))
        ),
    ),
)


def test_fuzzed_requests_get_only_allowed_statuses_and_metrics_agree(root, caplog):
    """>= 2,000 seeded cases over the request messages and raw bytes: never INTERNAL/UNKNOWN."""
    seen: Counter[grpc.StatusCode] = Counter()
    caplog.set_level(logging.WARNING)
    with running(root, reload_interval_s=0) as (server, channel):
        calls = {m: _raw(channel, m) for m in METHODS}

        @settings(
            max_examples=2000,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(cases)
        def fuzz(case: tuple[str, bytes]) -> None:
            method, payload = case
            code = _status(calls[method], payload)
            seen[code] += 1
            assert code in ALLOWED, (method, payload[:80], code)

        fuzz()
        text = server.metrics.render().decode()
    assert sum(seen.values()) >= 2000
    assert seen[grpc.StatusCode.OK] > 100 and seen[grpc.StatusCode.INVALID_ARGUMENT] > 100, seen
    assert 'code="INTERNAL"' not in text and 'code="UNKNOWN"' not in text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    undecodable = [r for r in caplog.records if "undecodable request" in r.getMessage()]
    assert 1 <= len(undecodable) <= 2  # one line per 10 s, however many such requests


# ----------------------------------------------------------------------------------- item 1
@pytest.mark.parametrize("bad_id", ["tab\there", "new\nline", "café", "日本", "x" * 129, "\x7f"])
def test_unprintable_request_ids_are_replaced_and_the_call_succeeds(root, bad_id):
    with running(root, reload_interval_s=0) as (server, channel):
        resp, call = stub(channel).Recommend.with_call(pb.RecommendRequest(user_id="u1", k=3, request_id=bad_id))
        trailer = dict(call.trailing_metadata())["x-request-id"]
        assert len(resp.items) == 3 and resp.request_id == trailer != bad_id
        assert len(trailer) == 32 and int(trailer, 16) >= 0
        sub = stub(channel).RecommendBatch(
            pb.RecommendBatchRequest(requests=[pb.RecommendRequest(user_id="u1", k=1, request_id=bad_id)])
        )
        assert sub.responses[0].request_id.endswith("-0")
        text = server.metrics.render().decode()
        assert 'recfuse_requests_total{code="OK",rpc="Recommend"} 1.0' in text


def test_printable_request_ids_are_kept():
    assert clean_request_id("req-123 ok/~") == "req-123 ok/~"
    assert clean_request_id("a" * 128) == "a" * 128
    assert clean_request_id("a" * 129) == "" and clean_request_id("é") == "" and clean_request_id("") == ""


def test_undecodable_bytes_are_invalid_argument_with_one_log_line(root, caplog):
    caplog.set_level(logging.INFO)
    with running(root, reload_interval_s=0) as (server, channel):
        call = _raw(channel, SERVICE + "Recommend")
        try:
            call(b"\xff\xff\xff", timeout=5)
        except grpc.RpcError as e:
            assert e.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "does not parse as its protobuf request message" in e.details()
        codes = {_status(call, b"\x0a\x05ab") for _ in range(300)}  # truncated string field
        codes.add(_status(_raw(channel, "/grpc.health.v1.Health/Check"), b"\xff"))
        watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
        with pytest.raises(grpc.RpcError) as e:
            list(watch(b"\xff\x01", timeout=5))
        codes.add(e.value.code())
        assert codes == {grpc.StatusCode.INVALID_ARGUMENT}
        text = server.metrics.render().decode()
    assert 'recfuse_requests_total{code="INVALID_ARGUMENT",rpc="Recommend"} 301.0' in text
    lines = [r for r in caplog.records if "undecodable request" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert not [r for r in caplog.records if "Exception deserializing" in r.getMessage()]


# ----------------------------------------------------------------------------------- item 2
def test_huge_title_is_capped_and_responses_stay_under_the_cap(tmp_path):
    contents = make_contents(N_ITEMS, DIM, "attention", 0)
    items = contents.items.copy()
    items["title"] = ["T" * 10_000_000 if i % 50 == 0 else t for i, t in enumerate(items["title"])]
    write_bundle(tmp_path, dataclasses.replace(contents, items=items))
    with running(tmp_path, reload_interval_s=0) as (server, channel):
        s = stub(channel)
        for user in ("u1", "u2", "u3"):
            resp = s.Recommend(pb.RecommendRequest(user_id=user, k=100), timeout=30)
            assert len(resp.items) == 100 and max(len(it.title) for it in resp.items) <= 256
            assert resp.ByteSize() < server.config.max_message_bytes
        sim = s.SimilarItems(pb.SimilarItemsRequest(item_id="i0", k=100, exclude_categories=["nope"]), timeout=30)
        assert max(len(it.title) for it in sim.items) <= 256
        assert any(it.title == "T" * 256 for it in resp.items) or any(it.title == "T" * 256 for it in sim.items)


def test_batch_whose_answer_cannot_fit_is_refused_before_work(root):
    with running(root, reload_interval_s=0) as (server, channel):
        big = pb.RecommendBatchRequest(requests=[pb.RecommendRequest(user_id=f"u{i}", k=1000) for i in range(256)])
        with pytest.raises(grpc.RpcError) as e:
            stub(channel).RecommendBatch(big, timeout=30)
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "`requests` (256 entries) × `requests[*].k` (256000 items in all)" in e.value.details()
        assert "max message size 4194304" in e.value.details()
        ok = stub(channel).RecommendBatch(
            pb.RecommendBatchRequest(requests=[pb.RecommendRequest(user_id=f"u{i}", k=100) for i in range(40)])
        )
        assert len(ok.responses) == 40 and ok.ByteSize() < server.config.max_message_bytes


def test_single_k_over_what_fits_is_named(tmp_path):
    contents = make_contents(N_ITEMS, DIM, "attention", 0)
    items = contents.items.copy()
    items["title"] = ["é" * 300] * len(items)  # 600 bytes each, capped to 200 characters = 400 bytes
    write_bundle(tmp_path, dataclasses.replace(contents, items=items))
    with running(tmp_path, reload_interval_s=0, max_title_chars=200) as (server, channel):
        view = server.registry.served("attention")
        assert view.item_bytes == sizes.item_bound(len("i299"), 400) and view.fit_k > 1000
        resp = stub(channel).Recommend(pb.RecommendRequest(user_id="u1", k=300), timeout=30)
        assert {it.title for it in resp.items} == {"é" * 200} and resp.ByteSize() <= 300 * view.item_bytes
    # ids longer than the config's bound can make one request too big: refused by name, before work
    with pytest.raises(InvalidRequestError, match=r"`k` = 900: the answer could take .* ask for at most 419 items"):
        sizes.check_response("k", 900, 10_000, 320, 4 * 1024 * 1024)


def test_config_worst_case_must_fit():
    with pytest.raises(ConfigError, match=r"`max_k` = 1000 items of up to 2068 bytes .* `max_message_bytes` = 1048576"):
        ServerConfig(max_message_bytes=1024 * 1024)
    ServerConfig()  # the defaults fit


# ----------------------------------------------------------------------------------- item 5
def _two_versions_newest_broken(root: Path) -> tuple[str, str]:
    good = make_bundle(root, n_items=N_ITEMS, dim=DIM, seed=0, version="20260101T000000.000000Z-aaaaaa")
    bad = make_bundle(root, n_items=N_ITEMS, dim=DIM, seed=1, version="20260102T000000.000000Z-bbbbbb")
    (bad / "index.faiss").write_bytes(b"corrupt")
    return good.name, bad.name


def test_start_with_corrupt_current_serves_newest_good_version(tmp_path, caplog):
    good, bad = _two_versions_newest_broken(tmp_path)
    assert list_versions(tmp_path / "attention") == [good, bad]
    caplog.set_level(logging.ERROR)
    with running(tmp_path, reload_interval_s=0) as (server, channel):
        assert server.registry.get("attention").version == good
        assert stub(channel).Recommend(pb.RecommendRequest(user_id="u1", k=2)).bundle_version == good
        text = server.metrics.render().decode()
        assert 'recfuse_reloads_total{result="fallback",variant="attention"} 1.0' in text
        assert server.reload().rejected == []  # the broken CURRENT is not retried until it changes
    assert any("serving the newest version that verifies" in r.getMessage() for r in caplog.records)


def test_start_with_corrupt_current_and_fallback_none_refuses(tmp_path):
    _two_versions_newest_broken(tmp_path)
    server, _ = create_server(ServerConfig(port=0, fallback="none", reload_interval_s=0), tmp_path)
    with pytest.raises(ArtifactError, match=r'refusing to start: attention:20260102T000000.000000Z-bbbbbb: .*"none"'):
        server.start()
    with pytest.raises(ConfigError, match=r"`fallback` must be one of \['newest', 'none'\], got 'latest'"):
        ServerConfig(fallback="latest")


# ----------------------------------------------------------------------------------- item 6
ADMIN, READ = "admin-token-0123456789", "read-token-0123456789"


def test_tokens_over_plaintext_on_a_public_address_refuse_to_start(tmp_path):
    with pytest.raises(ConfigError, match=r"`host` '0.0.0.0' is not a loopback address and TLS is off"):
        ServerConfig(host="0.0.0.0", auth=AuthConfig(tokens=(READ,)))
    with pytest.raises(ConfigError, match="allow_insecure"):
        ServerConfig().with_overrides(host="10.0.0.5", auth=AuthConfig(admin_tokens=(ADMIN,)))
    ServerConfig(host="0.0.0.0", auth=AuthConfig(tokens=(READ,), allow_insecure=True))
    ServerConfig(host="0.0.0.0", auth=AuthConfig(tokens=(READ,)), tls=TLSConfig("c.pem", "k.pem"))
    ServerConfig(host="::1", auth=AuthConfig(tokens=(READ,)))
    assert ServerConfig.from_dict({"auth": {"admin_tokens": [ADMIN], "allow_insecure": False}}).auth.admin_tokens == (
        ADMIN,
    )


def test_reload_needs_an_admin_token(root):
    auth = AuthConfig(tokens=(READ,), admin_tokens=(ADMIN,))
    with running(root, auth=auth, reload_interval_s=0) as (_, channel):
        s, admin = stub(channel), admin_stub(channel)
        with pytest.raises(grpc.RpcError) as e:
            admin.Reload(pb.ReloadRequest(), metadata=(("authorization", f"Bearer {READ}"),), timeout=10)
        assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED and "admin token" in e.value.details()
        assert "/recfuse_api.v1.RecommenderAdmin/Reload" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            admin.Reload(pb.ReloadRequest(), timeout=10)
        assert e.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert admin.Reload(pb.ReloadRequest(), metadata=(("authorization", f"Bearer {ADMIN}"),), timeout=30)
        assert s.Info(pb.InfoRequest(), metadata=(("authorization", f"Bearer {ADMIN}"),)).variants
        assert s.Info(pb.InfoRequest(), metadata=(("authorization", f"Bearer {READ}"),)).variants
    with running(root, auth=AuthConfig(admin_tokens=(ADMIN,)), reload_interval_s=0) as (_, channel):
        with pytest.raises(grpc.RpcError) as e:
            admin_stub(channel).Reload(pb.ReloadRequest(), timeout=10)
        assert e.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert stub(channel).Info(pb.InfoRequest()).variants  # read methods stay open without [auth] tokens


def test_admin_service_needs_a_read_token_when_auth_is_on_without_admin_tokens(root):
    """`auth.tokens` without `auth.admin_tokens`: the admin service wants a configured token (from loopback)."""
    with running(root, auth=AuthConfig(tokens=(READ,)), reload_interval_s=0) as (server, channel):
        admin = admin_stub(channel)
        with pytest.raises(grpc.RpcError, match="missing `authorization` metadata") as e:
            admin.Reload(pb.ReloadRequest(), timeout=10)
        assert e.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError, match="wrong bearer token") as e:
            admin.Reload(pb.ReloadRequest(), metadata=(("authorization", "Bearer not-a-token"),), timeout=10)
        assert e.value.code() is grpc.StatusCode.UNAUTHENTICATED
        # this test's channel comes from 127.0.0.1, which is what lets a read token through here
        reloaded = admin.Reload(pb.ReloadRequest(), metadata=(("authorization", f"Bearer {READ}"),), timeout=30)
        assert list(reloaded.reloaded) == [] and list(reloaded.rejected) == []
        text = server.metrics.render().decode()
        assert 'recfuse_errors_total{code="UNAUTHENTICATED",rpc="Reload"} 2.0' in text


def test_reload_is_not_on_the_public_service(root):
    with running(root, reload_interval_s=0) as (_, channel):
        with pytest.raises(grpc.RpcError) as e:
            _raw(channel, SERVICE + "Reload")(pb.ReloadRequest().SerializeToString(), timeout=10)
        assert e.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert _status(_raw(channel, ADMIN_SERVICE + "Reload"), b"") is grpc.StatusCode.OK


class _Aborted(Exception):
    pass


class _Ctx:
    def __init__(self, peer: str) -> None:
        self._peer = peer
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def peer(self) -> str:
        return self._peer

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise _Aborted


def test_reload_without_admin_tokens_only_from_loopback():
    class Details:
        method, invocation_metadata = ADMIN_SERVICE + "Reload", ()

    handler = grpc.unary_unary_rpc_method_handler(lambda req, ctx: "reloaded")
    guarded = AdminInterceptor(()).intercept_service(lambda _d: handler, Details())
    assert guarded.unary_unary(None, _Ctx("ipv4:127.0.0.1:5555")) == "reloaded"
    assert guarded.unary_unary(None, _Ctx("ipv6:[::1]:5555")) == "reloaded"
    ctx = _Ctx("ipv4:10.1.2.3:5555")
    with pytest.raises(_Aborted):
        guarded.unary_unary(None, ctx)
    assert ctx.aborted is not None and ctx.aborted[0] is grpc.StatusCode.PERMISSION_DENIED
    assert "only from the server's own host" in ctx.aborted[1]
    assert not is_loopback_peer("ipv4:10.0.0.1:1") and is_loopback_peer("unix:/tmp/s")


# ----------------------------------------------------------------------------------- item 7
def test_server_process_runs_blas_single_threaded(tmp_path):
    root = make_root(tmp_path / "bundles")
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "recfuse_serving.server", "--bundles", str(root), "--port", "0",
         "--port-file", str(port_file), "--metrics-port", "-1"],
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in __import__("os").environ.items() if k not in ("OPENBLAS_NUM_THREADS",)},
    )  # fmt: skip
    try:
        end = time.monotonic() + 60
        while not port_file.exists() and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        assert port_file.exists(), "server did not start"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    blas = [rec["msg"] for rec in lines if rec["msg"].startswith("BLAS threads per library")]
    assert blas and "openblas" in blas[0], blas
    counts = [int(x) for x in __import__("re").findall(r"': (\d+)", blas[0])]
    assert counts and set(counts) == {1}, blas[0]
