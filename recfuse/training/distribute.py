"""Where a training run executes: one process, or one worker of a multi-worker cluster.

The cluster is read from ``TF_CONFIG``, the variable that Kubernetes operators (a TFJob), Ray Train's
``TensorflowTrainer`` and hand-started workers all set. Without it (or with a single task in it),
training runs in this process under TensorFlow's default strategy. With two or
more workers it runs under ``tf.distribute.MultiWorkerMirroredStrategy``: every worker holds a full
copy of the towers, reads its own shard of the training examples, and gradients are summed across
workers after every step (the loss is a sum over the batch, so the sum over workers is the gradient
of the global batch).

Explicit scaling rules (:func:`worker_batch`):

* ``train.batch_size`` is the **global** batch: each of ``W`` workers trains on
  ``batch_size / W`` examples per step, so a run on ``W`` workers takes the same optimizer steps as
  one process and ``train.learning_rate`` needs no change. In-batch negatives are the worker's own
  batch (``batch_size / W`` of them); ``model.mixed_negatives`` are drawn per worker.
* The examples are shuffled with the run's seed and dealt into ``W`` equal shards; the at most
  ``W - 1`` examples that do not divide evenly are left out of that run (logged), because every
  worker must take the same number of steps.
* Only the chief (``chief`` task, else worker 0) writes the model directory, the train state and
  TensorBoard logs; the other workers write their checkpoints into a private temporary directory
  that is removed at the end, and read the chief's checkpoints to resume.

``ParameterServerStrategy`` is the better fit when an embedding table no longer fits one worker's
memory (tens of millions of users at dim 64 and above); recfuse does not run it, and says so when
``TF_CONFIG`` names ``ps`` tasks.

TensorFlow's worker servers listen on every interface whatever address ``TF_CONFIG`` gives: run
workers on a private network (a pod network, or a network namespace in tests).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from recfuse.errors import ConfigError

logger = logging.getLogger(__name__)

ENV = "TF_CONFIG"


@dataclass(frozen=True)
class Cluster:
    """This process's place in the training cluster.

    Attributes:
        workers: number of training processes (1 without ``TF_CONFIG``).
        index: this process's rank, ``0..workers-1`` (the chief is 0).
        is_chief: whether this process writes the model directory.
        task: ``(type, index)`` as ``TF_CONFIG`` names it (``("worker", 0)`` without one).
    """

    workers: int = 1
    index: int = 0
    is_chief: bool = True
    task: tuple[str, int] = ("worker", 0)

    @property
    def distributed(self) -> bool:
        return self.workers > 1


def cluster_from_env(env: Mapping[str, str] | None = None) -> Cluster:
    """Parse ``TF_CONFIG`` (``{"cluster": {"chief": [...], "worker": [...]}, "task": {...}}``).

    Raises:
        ConfigError: unreadable JSON, a missing or unknown task, ``ps``/``evaluator`` tasks.
    """
    raw = (env if env is not None else os.environ).get(ENV, "").strip()
    if not raw:
        return Cluster()
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{ENV} is not JSON ({err}): {raw[:200]!r}; unset it to train in one process") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{ENV} must be a JSON object with 'cluster' and 'task', got {raw[:200]!r}")
    cluster = spec.get("cluster") or {}
    task = spec.get("task") or {}
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ConfigError(f"{ENV}: 'cluster' and 'task' must be objects, got {raw[:200]!r}")
    other = sorted(set(cluster) - {"chief", "worker"})
    if other:
        raise ConfigError(
            f"{ENV}.cluster names {other} tasks; recfuse trains with MultiWorkerMirroredStrategy, which "
            "takes only 'chief' and 'worker' tasks (ParameterServerStrategy is not supported)"
        )
    chiefs, workers = list(cluster.get("chief") or []), list(cluster.get("worker") or [])
    if len(chiefs) > 1:
        raise ConfigError(f"{ENV}.cluster.chief lists {len(chiefs)} addresses; at most one chief")
    total = len(chiefs) + len(workers)
    kind, idx = task.get("type"), task.get("index", 0)
    if kind not in ("chief", "worker") or not isinstance(idx, int) or isinstance(idx, bool):
        raise ConfigError(f"{ENV}.task must be {{'type': 'chief'|'worker', 'index': int}}, got {task!r}")
    size = len(chiefs) if kind == "chief" else len(workers)
    if not 0 <= idx < size:
        raise ConfigError(f"{ENV}.task {task!r} is not in the cluster ({len(chiefs)} chief, {len(workers)} workers)")
    rank = idx if kind == "chief" else len(chiefs) + idx
    return Cluster(workers=max(total, 1), index=rank, is_chief=rank == 0, task=(str(kind), int(idx)))


def make_strategy(cluster: Cluster) -> Any:
    """``MultiWorkerMirroredStrategy`` for a multi-worker cluster, else TensorFlow's default strategy.

    Must run before any other TensorFlow op of the process (the collective runtime is configured
    when the strategy is created).
    """
    import tensorflow as tf

    if not cluster.distributed:
        return tf.distribute.get_strategy()
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    logger.info(
        "multi-worker training: %d workers, this is %s %d (rank %d%s)",
        cluster.workers,
        *cluster.task,
        cluster.index,
        ", chief" if cluster.is_chief else "",
    )
    return strategy


def worker_batch(global_batch: int, cluster: Cluster) -> int:
    """Examples per worker per step: ``global_batch / workers`` (must divide evenly)."""
    if global_batch % cluster.workers:
        raise ConfigError(
            f"train.batch_size = {global_batch} does not divide across {cluster.workers} workers; "
            f"set it to a multiple of {cluster.workers} (it is the global batch)"
        )
    return global_batch // cluster.workers


def shard_rows(n: int, cluster: Cluster, seed: int) -> np.ndarray:
    """This worker's example rows: a seeded permutation of ``0..n-1`` dealt into equal shards.

    Every worker computes the same permutation, so the shards are disjoint and together cover all
    but ``n % workers`` rows. One process gets every row in order.
    """
    if not cluster.distributed:
        return np.arange(n)
    per = n // cluster.workers
    if per == 0:
        raise ConfigError(f"{n} training examples cannot be shared by {cluster.workers} workers; use fewer workers")
    perm = np.random.default_rng(seed).permutation(n)
    if n % cluster.workers:
        logger.info("%d of %d examples left out so every worker takes the same steps", n % cluster.workers, n)
    return np.sort(perm[cluster.index * per : (cluster.index + 1) * per])
