"""Micro-batching: concurrent single Recommend calls share one query-tower forward and one index search.

No batcher thread and no timer: the first caller to find the batcher idle runs its own query at once
(batch of 1, nothing added to an idle server). Callers that arrive while a batch runs queue up; when
that batch ends, its runner hands the queue (up to ``max_size`` queries) to the first queued caller,
which runs them as one :meth:`recfuse.inference.Recommender.answer` per Recommender and wakes the
others. Each caller's answer comes back on its own thread, so response building, exposure
logging and the gRPC send stay parallel.

* Each query is validated and planned (:meth:`recfuse.inference.Recommender.plan`, the request
  path's one check) on its caller's thread before it runs or queues, so a bad request fails alone.
  Should a batch still raise, every query in it is retried alone and gets its own answer or error.
* A caller waits at most until its deadline; a query whose deadline passes while queued is dropped
  from the queue and the caller gets :class:`~recfuse_serving.status.DeadlineExceededError`.

Server config ``batching`` (default off). Measured on the 100k HNSW bench bundle, 2 cores: no
throughput gain with 4 concurrent callers (mean batch ~2): the HNSW search is most of a call, costs
the same per query in a batch, and faiss releases the GIL, so unbatched concurrent searches already
use both cores while a batch searches its queries on one. It pays where batching makes the model
call or the search cheaper per query (a TF forward, Flat/IVF with BLAS, more cores per process).

Example:
    >>> batcher = RecommendBatcher(max_size=32)                       # doctest: +SKIP
    >>> answer = batcher.recommend(rec, query, time_left=0.5)         # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading

from recfuse.inference import Recommendation, Recommender, RecommendQuery
from recfuse.inference.plan import QueryPlan
from recfuse_serving.status import DeadlineExceededError

logger = logging.getLogger(__name__)


class _Job:
    """One call: its planned query, and where its answer (or error) goes. ``done`` exists only once it queues."""

    __slots__ = ("answer", "batch", "done", "error", "plan", "rec")

    def __init__(self, rec: Recommender, plan: QueryPlan) -> None:
        self.rec = rec
        self.plan = plan
        self.done: threading.Event | None = None
        self.answer: Recommendation | None = None
        self.error: BaseException | None = None
        self.batch: list[_Job] | None = None  # set when this job's thread is handed a batch to run


class RecommendBatcher:
    """Coalesces concurrent Recommend calls (thread-safe; one per server).

    Args:
        max_size: most queries run as one batch.

    Attributes:
        batches, batched_queries: counts of batches run and the queries in them (mean batch size =
            ``batched_queries / batches``; read without a lock, for benchmarks and tests).
    """

    def __init__(self, max_size: int = 32) -> None:
        if max_size < 1:
            raise ValueError(f"`max_size` must be >= 1, got {max_size!r}")
        self.max_size = max_size
        self._lock = threading.Lock()
        self._busy = False
        self._queue: list[_Job] = []
        self.batches = 0
        self.batched_queries = 0

    def recommend(self, rec: Recommender, query: RecommendQuery, time_left: float | None = None) -> Recommendation:
        """The answer to ``query`` from ``rec``, computed alone or together with concurrent calls.

        Args:
            rec: the Recommender that must answer (queries for different ones share a batch run but
                not a forward).
            query: one query.
            time_left: seconds until the caller's deadline (None: no deadline).

        Raises:
            InvalidRequestError: the query breaks a limit (only this caller's call fails).
            DeadlineExceededError: the deadline passed while the query waited for its batch.
        """
        job = _Job(rec, rec.plan(query))  # validated before it can share a batch with others
        with self._lock:
            idle = not self._busy
            self._busy = True
        if idle:  # the common case on a quiet server: run at once, nothing allocated for waiting
            self._run_and_hand_over([job])
            return self._result(job)
        job.done = done = threading.Event()
        with self._lock:
            queued = self._busy
            if queued:
                self._queue.append(job)
            self._busy = True
        if not queued:  # the batch that was running ended meanwhile
            self._run_and_hand_over([job])
            return self._result(job)
        if not done.wait(time_left):
            with self._lock:
                if job in self._queue:  # never started: drop it and give up
                    self._queue.remove(job)
                    raise DeadlineExceededError(
                        f"deadline exceeded while queued for a batch ({(time_left or 0) * 1000:.1f} ms); "
                        "give the call a longer deadline"
                    )
            done.wait()  # already running (or handed to us): it finishes soon
        if job.batch is not None:
            self._run_and_hand_over(job.batch)
        return self._result(job)

    @staticmethod
    def _result(job: _Job) -> Recommendation:
        if job.error is not None:
            raise job.error
        assert job.answer is not None  # set by whoever ran the batch
        return job.answer

    # ------------------------------------------------------------------ internals
    def _run_and_hand_over(self, batch: list[_Job]) -> None:
        try:
            self._run(batch)
        finally:
            with self._lock:
                nxt = self._queue[: self.max_size]
                del self._queue[: self.max_size]
                if not nxt:
                    self._busy = False
            for j in batch:
                j.batch = None
                if j.done is not None:
                    j.done.set()
            if nxt:
                runner = nxt[0]
                runner.batch = nxt  # its thread wakes up as the next runner
                if runner.done is not None:  # always: queued jobs have an event
                    runner.done.set()

    def _run(self, batch: list[_Job]) -> None:
        self.batches += 1
        self.batched_queries += len(batch)
        if len(batch) == 1:
            job = batch[0]
            try:
                job.answer = job.rec.answer([job.plan])[0]
            except Exception as exc:
                job.error = exc
            return
        groups: dict[int, list[_Job]] = {}
        for j in batch:
            groups.setdefault(id(j.rec), []).append(j)
        for jobs in groups.values():
            try:
                answers = jobs[0].rec.answer([j.plan for j in jobs])
            except Exception as exc:
                if len(jobs) == 1:
                    jobs[0].error = exc
                    continue
                logger.debug("batch of %d failed (%s); answering its queries one by one", len(jobs), exc)
                for j in jobs:
                    try:
                        j.answer = j.rec.answer([j.plan])[0]
                    except Exception as one_exc:
                        j.error = one_exc
                continue
            for j, answer in zip(jobs, answers):
                j.answer = answer
