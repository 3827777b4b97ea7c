"""Hot reload under concurrent load (zero failed calls) and rejection of a corrupted new bundle."""

from __future__ import annotations

import shutil
import threading
import time

import grpc
import pytest
from bundle_factory import make_bundle
from recfuse_api.v1 import recommender_pb2 as pb
from serving_support import DIM, N_ITEMS, admin_stub, running, stub

from recfuse.bundle.publish import publish_current

pytestmark = pytest.mark.slow


def test_hot_reload_under_load_has_zero_failures(tmp_path):
    root = tmp_path / "bundles"
    v1 = make_bundle(root, n_items=N_ITEMS, dim=DIM, seed=0).name
    with running(root, reload_interval_s=0.1) as (server, channel):
        s = stub(channel)
        seen: list[list[str]] = [[] for _ in range(4)]
        errors: list[BaseException] = []
        stop = threading.Event()

        def client(slot: int) -> None:
            while not stop.is_set():
                try:
                    r = s.Recommend(pb.RecommendRequest(user_id=f"u{slot}", k=5), timeout=5)
                    assert len(r.items) == 5
                    seen[slot].append(r.bundle_version)
                except BaseException as exc:  # any failure counts
                    errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        v2 = make_bundle(root, n_items=N_ITEMS, dim=DIM, seed=1).name  # published while clients run
        deadline = time.monotonic() + 20
        while not all(v2 in versions for versions in seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors[:3]
    for versions in seen:
        assert versions[0] == v1 and versions[-1] == v2
        switch = versions.index(v2)
        assert set(versions[switch:]) == {v2}, "a request went back to the old version after the swap"
    assert 'recfuse_reloads_total{result="ok",variant="attention"} 2.0' in server.metrics.render().decode()


def test_corrupted_new_bundle_is_rejected_and_old_keeps_serving(tmp_path):
    root = tmp_path / "bundles"
    v1 = make_bundle(root, n_items=N_ITEMS, dim=DIM, seed=0).name
    other = make_bundle(tmp_path / "other", n_items=N_ITEMS, dim=DIM, seed=1)
    with running(root, reload_interval_s=0) as (server, channel):
        s, admin = stub(channel), admin_stub(channel)
        before = s.Recommend(pb.RecommendRequest(user_id="u1", k=5), timeout=5)
        bad = root / "attention" / "20991231T000000.000000Z-badbad"
        shutil.copytree(other, bad)
        index = bad / "index.faiss"
        data = bytearray(index.read_bytes())
        data[len(data) // 2] ^= 0xFF
        index.write_bytes(bytes(data))
        publish_current(root / "attention", bad.name)
        first = admin.Reload(pb.ReloadRequest(), timeout=30)
        assert list(first.reloaded) == [] and len(first.rejected) == 1
        assert first.rejected[0].startswith(f"attention:{bad.name}: ") and "index.faiss" in first.rejected[0]
        # The next pass does not retry the same broken version.
        second = admin.Reload(pb.ReloadRequest(), timeout=30)
        assert list(second.reloaded) == [] and list(second.rejected) == []
        after = s.Recommend(pb.RecommendRequest(user_id="u1", k=5), timeout=5)
        assert after.bundle_version == v1 and [i.item_id for i in after.items] == [i.item_id for i in before.items]
        text = server.metrics.render().decode()
        assert 'recfuse_reloads_total{result="failed",variant="attention"} 1.0' in text
        assert f'recfuse_bundle_info{{variant="attention",version="{v1}"}} 1.0' in text
        # A fixed version published later is picked up.
        shutil.rmtree(bad)
        good = make_bundle(root, n_items=N_ITEMS, dim=DIM, seed=2).name
        assert list(admin.Reload(pb.ReloadRequest(), timeout=30).reloaded) == [f"attention:{good}"]
        assert s.Recommend(pb.RecommendRequest(user_id="u1"), timeout=5).bundle_version == good


def test_reload_reports_the_checksum_failure(tmp_path):
    root = tmp_path / "bundles"
    make_bundle(root, n_items=N_ITEMS, dim=DIM, seed=0)
    other = make_bundle(tmp_path / "other", n_items=N_ITEMS, dim=DIM, seed=1)
    with running(root, reload_interval_s=0) as (server, channel):
        bad = root / "attention" / "20991231T000000.000000Z-c0ffee"
        shutil.copytree(other, bad)
        (bad / "items.parquet").write_bytes(b"not parquet at all")
        publish_current(root / "attention", bad.name)
        result = server.reload()
        assert result.reloaded == []
        assert len(result.rejected) == 1 and result.rejected[0].startswith(f"attention:{bad.name}: ")
        assert "items.parquet" in result.rejected[0]
        with pytest.raises(grpc.RpcError) as e:
            stub(channel).SimilarItems(pb.SimilarItemsRequest(item_id="nope"), timeout=5)
        assert e.value.code() is grpc.StatusCode.NOT_FOUND  # still serving the old bundle
