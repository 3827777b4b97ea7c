"""Micro-batching of concurrent Recommend calls: same answers as unbatched calls, errors and deadlines per call.

The batcher tests hold a real Recommender's first batch on a gate so that the next calls queue
deterministically (no sleeps decide anything); the server test runs concurrent clients against a
real server on 127.0.0.1:0 with batching on and compares every answer with the same server with
batching off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent import futures

import grpc
import pytest
from bundle_factory import make_bundle
from recfuse_api.v1 import recommender_pb2 as pb
from recfuse_serving.batcher import RecommendBatcher
from recfuse_serving.status import DeadlineExceededError
from serving_support import DIM, N_ITEMS, make_root, running, stub

from recfuse.errors import InvalidRequestError
from recfuse.inference import Recommendation, Recommender, RecommendQuery
from recfuse.inference.plan import QueryPlan


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    return Recommender.from_bundle(make_bundle(tmp_path_factory.mktemp("b"), n_items=N_ITEMS, dim=DIM, seed=3))


class GatedRecommender:
    """A real Recommender whose first ``answer`` waits for ``gate``; records batch sizes."""

    def __init__(self, rec: Recommender, fail_user: str | None = None) -> None:
        self.rec = rec
        self.plan = rec.plan
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.sizes: list[int] = []
        self.fail_user = fail_user
        self.fail_idx = None if fail_user is None else rec.bundle.user_vocab.lookup_one(fail_user)

    def answer(self, plans: Sequence[QueryPlan]) -> list[Recommendation]:
        self.sizes.append(len(plans))
        if len(self.sizes) == 1:
            self.entered.set()
            assert self.gate.wait(10)
        if self.fail_idx is not None and any(p.user_idx == self.fail_idx for p in plans):
            raise RuntimeError(f"cannot answer {self.fail_user}")
        return self.rec.answer(plans)


def _queued(batcher: RecommendBatcher, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(batcher._queue) < n:  # noqa: SLF001  (test waits for the queue it controls)
        assert time.monotonic() < deadline, "calls did not queue"
        time.sleep(0.001)


def test_concurrent_calls_share_one_batch_and_get_their_own_answers(rec: Recommender) -> None:
    gated = GatedRecommender(rec)
    batcher = RecommendBatcher(max_size=8)
    queries = [RecommendQuery(user_id=f"u{i}", k=5, exclude_seen=i % 2 == 0) for i in range(6)]
    queries.append(RecommendQuery(history=["i1", "i9"], k=3))
    with futures.ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.recommend, gated, queries[0])  # type: ignore[arg-type]
        assert gated.entered.wait(10)
        rest = [pool.submit(batcher.recommend, gated, q) for q in queries[1:]]  # type: ignore[arg-type]
        _queued(batcher, len(rest))
        gated.gate.set()
        answers = [first.result(10)] + [f.result(10) for f in rest]
    assert gated.sizes == [1, 6]  # the lone first call ran at once; the queued ones as one batch
    assert (batcher.batches, batcher.batched_queries) == (2, 7)
    for q, a in zip(queries, answers):
        alone = rec.recommend_batch([q])[0]
        assert a.item_ids == alone.item_ids and a.fallback == alone.fallback
        assert [it.score for it in a.items] == pytest.approx([it.score for it in alone.items], abs=1e-5)


def test_bad_query_fails_alone_and_failing_batch_is_retried_per_query(rec: Recommender) -> None:
    gated = GatedRecommender(rec, fail_user="u2")
    batcher = RecommendBatcher(max_size=8)
    with futures.ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.recommend, gated, RecommendQuery(user_id="u0", k=3))  # type: ignore[arg-type]
        assert gated.entered.wait(10)
        with pytest.raises(InvalidRequestError, match=r"`k` must be in \[1, 1000\], got 0"):
            batcher.recommend(gated, RecommendQuery(user_id="u1", k=0))  # type: ignore[arg-type]
        assert batcher._queue == []  # noqa: SLF001  (validated before it queued)
        ok = pool.submit(batcher.recommend, gated, RecommendQuery(user_id="u1", k=3))  # type: ignore[arg-type]
        bad = pool.submit(batcher.recommend, gated, RecommendQuery(user_id="u2", k=3))  # type: ignore[arg-type]
        _queued(batcher, 2)
        gated.gate.set()
        assert first.result(10).item_ids == rec.recommend(user_id="u0", k=3).item_ids
        assert ok.result(10).item_ids == rec.recommend(user_id="u1", k=3).item_ids
        with pytest.raises(RuntimeError, match="cannot answer u2"):
            bad.result(10)
    assert gated.sizes == [1, 2, 1, 1]  # the failed batch of 2, then each query alone
    with pytest.raises(InvalidRequestError, match=r"`k` must be in \[1, 1000\], got 0"):
        batcher.recommend(rec, RecommendQuery(user_id="u1", k=0))  # idle: the Recommender validates it
    assert (
        batcher.recommend(rec, RecommendQuery(user_id="u1", k=2)).item_ids == rec.recommend(user_id="u1", k=2).item_ids
    )


def test_deadline_passes_while_queued(rec: Recommender) -> None:
    gated = GatedRecommender(rec)
    batcher = RecommendBatcher(max_size=8)
    with futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(batcher.recommend, gated, RecommendQuery(user_id="u0", k=3))  # type: ignore[arg-type]
        assert gated.entered.wait(10)
        with pytest.raises(DeadlineExceededError, match="deadline exceeded while queued for a batch"):
            batcher.recommend(gated, RecommendQuery(user_id="u1", k=3), time_left=0.05)  # type: ignore[arg-type]
        assert batcher._queue == []  # noqa: SLF001  (dropped, not run later)
        gated.gate.set()
        assert len(first.result(10).items) == 3
    assert gated.sizes == [1]
    assert batcher.recommend(gated, RecommendQuery(user_id="u1", k=3)).item_ids  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`max_size` must be >= 1, got 0"):
        RecommendBatcher(max_size=0)


def _requests() -> list[pb.RecommendRequest]:
    reqs = []
    for i in range(48):
        if i % 4 == 0:
            reqs.append(pb.RecommendRequest(user_id=f"u{i}", k=7))
        elif i % 4 == 1:
            reqs.append(pb.RecommendRequest(user_id=f"u{i}", k=5, exclude_seen=True, include_categories=["c3"]))
        elif i % 4 == 2:
            reqs.append(pb.RecommendRequest(history=[f"i{i}", f"i{i + 8}", "nope"], k=4, exclude_item_ids=["i1"]))
        else:
            reqs.append(pb.RecommendRequest(user_id=f"stranger{i}", k=3))  # popular fallback
    return reqs


def _hammer(port: int, reqs: list[pb.RecommendRequest], clients: int = 6) -> list[pb.RecommendResponse]:
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(clients)]
    try:
        with futures.ThreadPoolExecutor(clients) as pool:
            calls = [
                pool.submit(stub(channels[i % clients]).Recommend, r, timeout=10)  # type: ignore[arg-type]
                for i, r in enumerate(reqs * 3)
            ]
            return [c.result(20) for c in calls]
    finally:
        for c in channels:
            c.close()


@pytest.mark.slow
def test_server_with_batching_answers_like_without(tmp_path) -> None:
    root = make_root(tmp_path / "bundles")
    reqs = _requests()
    with running(root, reload_interval_s=0) as (server, _):  # the default: off
        assert server.servicer.batcher is None
        plain = _hammer(server.port, reqs)
    with running(root, reload_interval_s=0, batching=True, batch_max_size=4) as (server, channel):
        batcher = server.servicer.batcher
        assert batcher is not None and batcher.max_size == 4
        batched = _hammer(server.port, reqs)
        with pytest.raises(grpc.RpcError) as e:  # a bad call among good ones fails alone
            stub(channel).Recommend(pb.RecommendRequest(user_id="u1", k=5000), timeout=5)
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert batcher.batched_queries >= len(reqs) * 3  # every call went through it
    for a, b in zip(plain, batched):
        assert [it.item_id for it in a.items] == [it.item_id for it in b.items]
        assert [it.score for it in a.items] == pytest.approx([it.score for it in b.items], abs=1e-5)
        assert (a.fallback, a.variant, a.bundle_version) == (b.fallback, b.variant, b.bundle_version)
        assert [it.title for it in a.items] == [it.title for it in b.items]
