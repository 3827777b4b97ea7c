"""Bearer-token auth on/off and TLS with a certificate generated at test time."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recfuse_api.v1 import recommender_pb2 as pb
from recfuse_serving.client import RecfuseClient, RetryPolicy
from recfuse_serving.config import AuthConfig, TLSConfig
from serving_support import make_root, running, self_signed, stub

pytestmark = pytest.mark.slow

TOKEN = "test-token-0123456789"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("bundles"))


def test_auth_required_when_tokens_configured(root):
    with running(root, auth=AuthConfig(tokens=(TOKEN,)), reload_interval_s=0) as (server, channel):
        s = stub(channel)
        with pytest.raises(grpc.RpcError, match="missing `authorization` metadata") as e:
            s.Info(pb.InfoRequest(), timeout=5)
        assert e.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError, match="wrong bearer token") as e:
            s.Recommend(pb.RecommendRequest(user_id="u1"), metadata=(("authorization", "Bearer nope"),), timeout=5)
        assert e.value.code() is grpc.StatusCode.UNAUTHENTICATED
        ok = s.Recommend(pb.RecommendRequest(user_id="u1", k=2), metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert len(ok.items) == 2
        # health stays open (load balancers probe without credentials)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with RecfuseClient(f"127.0.0.1:{server.port}", token=TOKEN) as client:
            assert client.info().variants[0].variant == "attention"
        text = server.metrics.render().decode()
        assert 'recfuse_errors_total{code="UNAUTHENTICATED",rpc="Info"} 1.0' in text


def test_auth_off_accepts_calls_without_token(root):
    with running(root, reload_interval_s=0) as (_, channel):
        assert stub(channel).Info(pb.InfoRequest(), timeout=5).variants[0].variant == "attention"


def test_tls_with_generated_certificate(root, tmp_path):
    cert, key = self_signed(tmp_path)
    with running(root, tls=TLSConfig(cert_file=str(cert), key_file=str(key)), reload_interval_s=0) as (server, _):
        target = f"127.0.0.1:{server.port}"
        with RecfuseClient(target, root_cert=cert, server_name="localhost") as client:
            recs = client.recommend(user_id="u1", k=3)
            assert len(recs.items) == 3 and recs.items[0].title
            sim = client.similar_items("i4", k=2)
            assert len(sim.items) == 2 and "i4" not in sim.item_ids
        # A plaintext client cannot talk to the TLS port.
        with RecfuseClient(target, timeout=1.0, retry=RetryPolicy(attempts=1)) as plain:
            with pytest.raises(grpc.RpcError) as e:
                plain.info()
            assert e.value.code() is grpc.StatusCode.UNAVAILABLE
