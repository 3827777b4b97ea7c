"""Run ``recfuse train`` on a Ray cluster through Ray Train's ``TensorflowTrainer``.

Ray starts ``workers`` training processes and gives each a ``TF_CONFIG``; every process then runs
the same :func:`recfuse.training.trainer.train` as ``recfuse train`` does under Kubernetes or by hand
(:mod:`recfuse.training.distribute`: MultiWorkerMirroredStrategy, one shard of the examples per
worker, the chief writes the model directory). Each worker reads the config's data files itself, so
the data paths and ``out`` must be on storage every Ray node reads (one machine: any local path).

Ray is the optional ``recfuse[ray]`` extra, imported lazily. Without a running session this starts a
local one on 127.0.0.1 (``num_cpus`` = the workers' CPUs), and refuses to when ``ray`` was imported
before ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` was set, which would make it listen on every
interface. TensorFlow's worker servers inside the Ray workers listen on every interface whatever
address Ray gives them: run multi-node training on a private network.

Example:
    >>> from recfuse.training.ray_train import train_on_ray
    >>> train_on_ray("data_samples/recfuse.toml", {"train.epochs": 3}, "runs/model", workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from recfuse import ray_session
from recfuse.errors import UsageError

logger = logging.getLogger(__name__)


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: load the config and data, then train (``TF_CONFIG`` is set by Ray)."""
    from recfuse.config import RecfuseConfig
    from recfuse.data.splits import split_for
    from recfuse.data.validate import load_dataset
    from recfuse.training.trainer import train

    os.chdir(config["cwd"])  # relative data paths resolve as they do for `recfuse train`
    cfg = RecfuseConfig.from_toml(config["config"])
    if config["overrides"]:
        cfg = cfg.with_overrides(config["overrides"])
    dataset = load_dataset(cfg.data, cfg.modalities)
    split = split_for(dataset.interactions, cfg.data)
    train(cfg, dataset, split, config["out"], progress=False)


def train_on_ray(
    config_path: str | Path,
    overrides: dict[str, Any],
    out: str | Path,
    workers: int,
    cpus_per_worker: float = 0.5,
    address: str | None = None,
) -> Path:
    """Train with ``workers`` Ray Train workers; returns the model directory the chief wrote.

    Args:
        config_path: the TOML config (read by every worker).
        overrides: ``--set`` overrides (``{"train.epochs": 3}``).
        out: model directory.
        workers: number of training processes (≥ 1).
        cpus_per_worker: Ray CPUs each worker reserves (0.5 lets two share a 2-CPU local session).
        address: a running Ray cluster (``ray.init(address=...)``); default: the session already
            started in this process, else a new local one on 127.0.0.1.

    Raises:
        ConfigError: Ray missing, a bad worker count, or a local session that would not stay on loopback.
        RuntimeError: the training failed on a worker (its error is in the message).
    """
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    ray = ray_session.import_ray("ray.train.tensorflow", fallback="the default `--engine local`")
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    started = False
    if not ray.is_initialized():
        if address is None:
            ray_session.start_local(ray, num_cpus=max(1, math.ceil(workers * cpus_per_worker)), log_to_driver=True)
        else:
            ray.init(address=address, log_to_driver=True)
        started = True
    out_path = Path(out).resolve()
    loop_config = {
        "config": str(Path(config_path).resolve()),
        "overrides": dict(overrides),
        "out": str(out_path),
        "cwd": os.getcwd(),
    }
    try:
        with tempfile.TemporaryDirectory(prefix="recfuse-ray-train-") as storage:
            trainer = TensorflowTrainer(
                _worker_loop,
                train_loop_config=loop_config,
                scaling_config=ScalingConfig(
                    num_workers=workers, use_gpu=False, resources_per_worker={"CPU": cpus_per_worker}
                ),
                run_config=RunConfig(name="recfuse-train", storage_path=storage),
            )
            result = trainer.fit()
            error = getattr(result, "error", None)
            if error is not None:
                raise RuntimeError(f"Ray Train failed: {error}") from error
    finally:
        if started:
            ray.shutdown()
    if not (out_path / "model.json").exists():
        raise RuntimeError(f"Ray Train ended but the chief wrote no model directory at {out_path}")
    logger.info("Ray Train with %d workers wrote %s", workers, out_path)
    return out_path
