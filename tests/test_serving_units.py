"""Fast tests of the serving pieces that need no server: config, status table, conversion, logs, limits."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time

import grpc
import pytest
from recfuse_api.v1 import recommender_pb2 as pb
from recfuse_serving import convert
from recfuse_serving.config import ServerConfig
from recfuse_serving.interceptors import ADMIN_METHODS, ADMIN_PREFIX, AuthInterceptor, TokenBucket
from recfuse_serving.logs import REQUEST_ID, JsonFormatter
from recfuse_serving.metrics import ServingMetrics
from recfuse_serving.status import DeadlineExceededError, UnauthenticatedError, UnavailableError, code_for

from recfuse.errors import (
    ArtifactError,
    ConfigError,
    InvalidRequestError,
    NotFoundError,
    RecfuseError,
    ResourceExhaustedError,
)
from recfuse.inference import BundleInfo, Recommendation, ScoredItem


def test_config_from_toml_with_sections(tmp_path):
    path = tmp_path / "server.toml"
    path.write_text(
        'port = 0\nmax_k = 50\n[ab]\nsalt = "exp1"\nshares = { attention = 0.9, concat = 0.1 }\n'
        '[auth]\ntokens = ["0123456789"]\n'
    )
    cfg = ServerConfig.from_toml(path)
    assert cfg.max_k == 50 and cfg.ab.shares == {"attention": 0.9, "concat": 0.1}
    assert cfg.auth.tokens == ("0123456789",)
    assert cfg.with_overrides(port=7, host=None).port == 7


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"max_kk": 5}, r"unknown key\(s\) \['max_kk'\] in the top level \('max_kk' -> did you mean 'max_k'\?\)"),
        ({"max_k": 0}, r"`max_k` must be a positive integer, got 0"),
        ({"default_k": 20, "max_k": 10}, r"`default_k` \(20\) must be <= `max_k` \(10\)"),
        ({"port": 70000}, r"`port` must be in \[0, 65535\]"),
        ({"ab": {"shares": {"a": 0.5}}}, "`shares` must sum to 1"),
        ({"ab": {"shares": {"a": 1.0}, "default_variant": "b"}}, "`ab.default_variant` 'b' is not in"),
        ({"ab": {"salty": "x"}}, r"unknown key\(s\) \['salty'\] in `ab` \('salty' -> did you mean 'salt'\?\)"),
        ({"max_k": "50"}, r"`max_k` must be an integer, got '50' \(str\)"),
        ({"ab": {"shares": {"a": "all"}}}, r"`ab.shares.a` must be a number, got 'all' \(str\)"),
        ({"ab": []}, r"`ab` must be a table, got \[\] \(list\)"),
        ({"auth": {"tokens": "0123456789"}}, r"`auth.tokens` must be a list of strings, got '0123456789' \(str\)"),
        ({"tls": {"cert_file": "a.pem"}}, "must be set together"),
        ({"exposures": {"rotate_rows": 0}}, r"`exposures.rotate_rows` must be > 0, got 0"),
        ({"auth": {"tokens": ["short"]}}, r"`auth.tokens\[0\]` must be a string of at least 8"),
        ({"queue_timeout_s": -1}, "`queue_timeout_s` must be >= 0"),
        ({"batching": "yes"}, "`batching` must be true or false, got 'yes'"),
        ({"batch_max_size": 0}, r"`batch_max_size` must be a positive integer, got 0"),
        ({"user_vectors_mb": -1}, r"`user_vectors_mb` must be >= 0, got -1"),
        ({"hugepages": "yes"}, "`hugepages` must be true or false, got 'yes'"),
        ({"user_vectors_mb": "256"}, r"`user_vectors_mb` must be a number, got '256' \(str\)"),
    ],
)
def test_config_errors_name_the_field(data, match):
    with pytest.raises(ConfigError, match=match):
        ServerConfig.from_dict(data)


def test_config_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        ServerConfig.from_toml(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("port = [")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        ServerConfig.from_toml(bad)


def test_config_file_errors_name_the_file_and_the_key(tmp_path):
    path = tmp_path / "server.toml"
    path.write_text("max_k = 10\n[exposures]\nrotate_row = 5\n")
    with pytest.raises(ConfigError, match=r"^server config '.*server.toml': unknown key\(s\) \['rotate_row'\] in "
                       r"`exposures` \('rotate_row' -> did you mean 'rotate_rows'\?\)"):  # fmt: skip
        ServerConfig.from_toml(path)
    path.write_text('port = 0\n[exposures]\nrotate_seconds = "1m"\n')
    with pytest.raises(ConfigError, match=r"^server config '.*': `exposures.rotate_seconds` must be a number, "
                       r"got '1m' \(str\)$"):  # fmt: skip
        ServerConfig.from_toml(path)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidRequestError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (ConfigError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFoundError("x"), grpc.StatusCode.NOT_FOUND),
        (ResourceExhaustedError("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (DeadlineExceededError("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (UnauthenticatedError("x"), grpc.StatusCode.UNAUTHENTICATED),
        (UnavailableError("x"), grpc.StatusCode.UNAVAILABLE),
        (ArtifactError("x"), grpc.StatusCode.UNAVAILABLE),
        (RecfuseError("x"), grpc.StatusCode.INTERNAL),
        (ZeroDivisionError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_table(error, code):
    assert code_for(error) is code


def test_convert_query_defaults_and_response():
    q = convert.to_query(pb.RecommendRequest(user_id="", history=["i1"], k=0, exclude_seen=True), default_k=7)
    assert (q.user_id, list(q.history), q.k, q.exclude_seen) == (None, ["i1"], 7, True)
    rec = Recommendation(["i2", "i0"], [0.5, 0.25], [2, 0], "popular", "v1", "attention", 0.1, 0.2)
    assert rec.items == [ScoredItem("i2", 0.5), ScoredItem("i0", 0.25)]
    msg = convert.to_response(rec, "r1", 1.5, ("Zero", "One", "Two"))  # titles by catalog row
    assert msg.fallback == pb.FALLBACK_POPULAR and msg.fallback_reason == "popular"
    assert [(i.item_id, i.score, i.title) for i in msg.items] == [("i2", 0.5, "Two"), ("i0", 0.25, "Zero")]
    assert (msg.timing.query_ms, msg.timing.search_ms, msg.timing.total_ms) == pytest.approx((0.1, 0.2, 1.5))
    bare = convert.to_response(rec, "r0", 1.0)
    assert [(i.item_id, i.HasField("title")) for i in bare.items] == [("i2", False), ("i0", False)]
    other = convert.to_response(Recommendation([], [], [], "cold", "v1", "a", 0, 0), "r2", 0.0)
    assert other.fallback == pb.FALLBACK_OTHER and other.fallback_reason == "cold"
    model = convert.to_response(Recommendation([], [], [], "", "v7", "a", 0, 0), "r3", 0.0)
    assert model.fallback == pb.FALLBACK_NONE != pb.FALLBACK_UNSPECIFIED and model.bundle_version == "v7"
    similar = convert.to_similar_response(rec, "r4", 1.0, ("Zero", "One", "Two"))
    assert similar.bundle_version == "v1" and [i.title for i in similar.items] == ["Two", "Zero"]


def test_k_zero_is_the_default_and_negative_k_is_refused():
    assert (convert.k_of(0, 10), convert.k_of(3, 10)) == (10, 3)
    with pytest.raises(InvalidRequestError, match=r"^`k` must be >= 0 \(0 = the server default of 10, .*got -1$"):
        convert.k_of(-1, 10)
    with pytest.raises(InvalidRequestError, match=r"^`requests\[2\]\.k` must be >= 0 .*got -5$"):
        convert.k_of(-5, 10, "requests[2].k")
    with pytest.raises(InvalidRequestError, match=r"`k` must be >= 0 .*got -7$"):
        convert.to_query(pb.RecommendRequest(user_id="u1", k=-7), default_k=10)


def _bundle_info(created_at: str) -> BundleInfo:
    return BundleInfo("attention", "20260102T030405.000000Z-abc", "model-7", created_at, 300, 40, 16, "ip",
                      "HNSW32", 0.9, 3, "0.1.0", "/b", search_params="efSearch=48")  # fmt: skip


def test_variant_info_names_bundle_version_and_model_id_and_carries_a_timestamp():
    msg = convert.to_variant_info(_bundle_info("2026-01-02T03:04:05.123456Z"), 0.25)
    assert (msg.bundle_version, msg.model_id) == ("20260102T030405.000000Z-abc", "model-7")
    assert (msg.item_count, msg.dim, msg.traffic_share, msg.search_params) == (300, 16, 0.25, "efSearch=48")
    assert msg.created_at.ToDatetime(tzinfo=dt.UTC) == dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)
    assert msg.created_at.ToJsonString() == "2026-01-02T03:04:05.123456Z"
    # another offset is converted to UTC; no offset is read as UTC (bundles write UTC)
    east = convert.to_variant_info(_bundle_info("2026-01-02T05:04:05+02:00"), 1.0).created_at
    naive = convert.to_variant_info(_bundle_info("2026-01-02T03:04:05"), 1.0).created_at
    assert east.ToJsonString() == naive.ToJsonString() == "2026-01-02T03:04:05Z"


def test_variant_info_leaves_an_unparseable_created_at_unset(caplog):
    with caplog.at_level(logging.WARNING, logger="recfuse_serving.convert"):
        msg = convert.to_variant_info(_bundle_info("last tuesday"), 1.0)
    assert not msg.HasField("created_at")
    assert "created_at 'last tuesday' is not an ISO 8601 time" in caplog.text


def test_admin_guard_covers_the_whole_admin_service():
    assert ADMIN_PREFIX == "/recfuse_api.v1.RecommenderAdmin/"
    assert ADMIN_METHODS == ("/recfuse_api.v1.RecommenderAdmin/Reload",)


def test_json_log_lines_carry_request_id():
    token = REQUEST_ID.set("req-42")
    try:
        rec = logging.LogRecord("recfuse_serving.x", logging.INFO, __file__, 1, "%s done", ("Recommend",), None)
        rec.code = "OK"
        line = json.loads(JsonFormatter().format(rec))
    finally:
        REQUEST_ID.reset(token)
    assert line["msg"] == "Recommend done" and line["request_id"] == "req-42" and line["code"] == "OK"


def test_token_bucket_refills():
    bucket = TokenBucket(rate=50.0, burst=2)
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    time.sleep(0.05)
    assert bucket.take()
    with pytest.raises(ValueError, match="`rate` must be > 0"):
        TokenBucket(0)


def test_auth_interceptor_needs_tokens():
    with pytest.raises(ValueError, match="`tokens` must hold at least one token"):
        AuthInterceptor(())


def test_metrics_render_versions_and_errors():
    m = ServingMetrics()
    m.observe("Recommend", "INVALID_ARGUMENT", "", 0.001)
    m.set_bundle("attention", "v1")
    m.set_bundle("attention", "v2")
    text = m.render().decode()
    assert 'recfuse_errors_total{code="INVALID_ARGUMENT",rpc="Recommend"} 1.0' in text
    assert 'recfuse_bundle_info{variant="attention",version="v1"} 0.0' in text
    assert 'recfuse_bundle_info{variant="attention",version="v2"} 1.0' in text
