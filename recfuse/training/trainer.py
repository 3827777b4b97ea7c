"""Train a two-tower model from a validated dataset and split; write a loadable model directory.

Steps: pre-flight checks (bad input stops here, before any model exists) → vocabularies → item
feature table (images decoded once) → towers → :class:`TwoTowerModel` → tf.data pipeline of integer
examples (seeded shuffle, batch, prefetch) → ``fit`` with the memory-bank refresh, validation Recall@K
(full ranking, training items masked), early stopping, a checkpoint per epoch and TensorBoard logs →
best weights restored → model directory written atomically (:mod:`recfuse.training.model_dir`).

Re-running on the same ``out_dir`` resumes from the last completed epoch (``out_dir/checkpoints``);
a run that already finished (or stopped early) only rewrites the model files.

Example:
    >>> from recfuse.config import RecfuseConfig
    >>> from recfuse.data.validate import load_dataset
    >>> from recfuse.data.splits import split_interactions
    >>> cfg = RecfuseConfig.from_toml("data_samples/recfuse.toml")                     # doctest: +SKIP
    >>> ds = load_dataset(cfg.data, cfg.modalities)                                      # doctest: +SKIP
    >>> split = split_interactions(ds.interactions, cfg.data.split, cfg.data.split_seed)  # doctest: +SKIP
    >>> result = train(cfg, ds, split, "runs/model")                                     # doctest: +SKIP
    >>> result.best_metric, result.model_dir                                             # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from recfuse.config import RecfuseConfig
from recfuse.data.prepared_split import PreparedSplit
from recfuse.data.vocab import IdVocab
from recfuse.errors import ConfigError
from recfuse.training.callbacks import MemoryBankRefresh, ValidateAndCheckpoint
from recfuse.training.checks import check_resumable, check_training_inputs, resolve_auto_settings, resumable_settings
from recfuse.training.distribute import Cluster, cluster_from_env, make_strategy, shard_rows, worker_batch
from recfuse.training.examples import Examples, build_examples
from recfuse.training.model_dir import write_model_dir
from recfuse.training.optimizer import make_optimizer
from recfuse.training.pipeline import make_dataset
from recfuse.training.setup import build_model, user_vocabulary
from recfuse.training.stream import (
    StreamedExamples,
    make_stream_dataset,
    materialise,
    prepared_user_ids,
    read_stream_dataset,
    streamed_input,
)
from recfuse.training.stream_users import stream_val_queries, write_prepared_user_lists
from recfuse.training.tb_logging import ScalarLogger
from recfuse.training.validation import build_val_queries, capped, recall_at_k

logger = logging.getLogger(__name__)

STREAM_DIR = "stream_examples"  # under the run's work dir while a streamed fit runs
VAL_BLOCK, RANK_BLOCK = 8192, 256  # validation users per query-tower call / ranked at a time


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        model_dir: the written model directory (load with ``TrainedModel.load``).
        epochs_run: epochs completed in total (including resumed ones).
        best_epoch: epoch whose weights were kept.
        best_metric: best validation Recall@K (``None`` without a validation split).
        history: per-epoch records (loss, validation metric).
        examples: number of training examples.
        skipped_interactions: training interactions whose item is not in the catalog.
        seconds: wall time of this call.
        examples_per_second: training throughput of this call, in next-item targets per second
            (with ``train.targets = "all_positions"`` an example holds one per history position;
            ``nan`` if no epoch ran); on several workers, this worker's share of it.
        workers: training processes of the run (``TF_CONFIG``; 1 without it).
        is_chief: whether this process wrote ``model_dir`` (the others only trained).
    """

    model_dir: Path
    epochs_run: int
    best_epoch: int
    best_metric: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    examples: int = 0
    skipped_interactions: int = 0
    seconds: float = 0.0
    examples_per_second: float = float("nan")
    workers: int = 1
    is_chief: bool = True


def train(
    cfg: RecfuseConfig,
    dataset: Any,
    split: Any,
    out_dir: str | Path,
    progress: bool = True,
    on_epoch: Callable[[int, float], bool] | None = None,
    prepared: str | Path | None = None,
) -> TrainResult:
    """Train (or resume) and write the model directory ``out_dir``.

    Args:
        cfg: full configuration (stored beside the weights).
        dataset: ``recfuse.data.validate.Dataset`` (``items``, ``interactions``, ``images_dir``).
        split: ``recfuse.data.splits.Split`` (``train``, ``val``, ``test``, ``cold_items``).
        out_dir: model directory; also holds ``checkpoints/`` and ``tensorboard/``.
        progress: show a Keras progress bar per epoch.
        on_epoch: ``(epoch, val_metric) -> stop``, called after each validation (epoch counted from
            1); True stops training like early stopping does (the best weights are still written).
        prepared: a folder ``recfuse prepare`` wrote from ``split.train``'s interactions: the training
            examples are then streamed from its shards (:mod:`recfuse.training.stream`, bounded
            memory) instead of built in memory; under several workers each streams every
            ``workers``-th shard. ``split.train`` still feeds the checks, the user vocabulary,
            validation and the model directory. A ``PreparedSplit`` as ``split`` (its folder is the
            default ``prepared``) holds no training row in memory: users, validation queries and
            the model's per-user lists come from the folder (:mod:`recfuse.training.stream_users`).

    Under a multi-worker ``TF_CONFIG`` every worker calls this with the same arguments (and the
    same ``out_dir`` on storage all of them read, for resuming); see :mod:`recfuse.training.distribute`.

    Returns:
        :class:`TrainResult`.

    Raises:
        ConfigError, SchemaError, DataError: bad input, before training starts.
    """
    t0 = time.perf_counter()
    if isinstance(split, PreparedSplit) and prepared is None:
        prepared = split.folder
    cluster = cluster_from_env()
    strategy = make_strategy(cluster)  # before any other TensorFlow op of the process
    train_df = split.train
    check_training_inputs(cfg, dataset.items, train_df)
    per_worker = worker_batch(cfg.train.batch_size, cluster)
    cfg = resolve_auto_settings(cfg, train_df)  # the stored config holds the decided values
    out = Path(out_dir)
    if cluster.is_chief:
        out.mkdir(parents=True, exist_ok=True)
    # only the chief writes under out_dir; another worker writes into a private dir, removed at the end
    work = out if cluster.is_chief else Path(tempfile.mkdtemp(prefix=f"recfuse-worker{cluster.index}-"))
    try:
        return _train(cfg, dataset, split, out, work, cluster, strategy, per_worker, progress, on_epoch, t0, prepared)
    finally:
        if work != out:
            shutil.rmtree(work, ignore_errors=True)


def _train(
    cfg: RecfuseConfig,
    dataset: Any,
    split: Any,
    out: Path,
    work: Path,
    cluster: Cluster,
    strategy: Any,
    per_worker: int,
    progress: bool,
    on_epoch: Callable[[int, float], bool] | None,
    t0: float,
    prepared: str | Path | None = None,
) -> TrainResult:
    items, train_df, val_df = dataset.items, split.train, split.val
    total_examples = stream_targets = 0  # streamed: all workers' examples; this worker's targets per epoch
    tf.keras.utils.set_random_seed(cfg.train.seed)
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()  # process-wide; see TrainConfig.deterministic

    on_disk = isinstance(split, PreparedSplit)  # the training rows are the prepared shards, never a frame
    item_vocab = IdVocab.build(items["item_id"].tolist(), num_oov=0)
    train_users = prepared_user_ids(split.folder) if on_disk else sorted(set(map(str, train_df["user_id"])))
    user_vocab = user_vocabulary(cfg, train_users)
    source = None
    ex_args = (item_vocab, user_vocab, cfg.data.max_history, cfg.train.example_history, cfg.train.targets)
    if prepared is not None:
        part = (cluster.index, cluster.workers)  # several workers: each streams every workers-th shard
        source, item_counts, skipped = streamed_input(prepared, len(train_df), *ex_args, part=part)
        examples = source.first_examples(2)  # build the variables below; fit streams them all
    else:
        examples = build_examples(train_df, *ex_args)
        item_counts, skipped = np.asarray(examples.item_counts), int(len(train_df) - examples.interactions)
    if skipped:
        logger.warning("%d training interactions point at items missing from the catalog; not used", skipped)
    # every training interaction counts (with targets = "all_positions" the examples keep one item per window)
    counts = np.asarray(item_counts, np.float64)
    warm = frozenset(str(item_vocab.ids[i]) for i in np.flatnonzero(counts))
    ema = cfg.train.ema_momentum
    with strategy.scope():  # the towers' and the optimizer's variables are mirrored across workers
        built = build_model(
            cfg, items, dataset.images_dir, item_vocab, user_vocab, warm, counts / max(counts.sum(), 1.0), counts
        )
        model = built.model
        optimizer = make_optimizer(cfg.train.learning_rate, ema, cfg.train.weight_decay)
        model.compile(optimizer=optimizer)
        # create every variable (towers + optimizer slots) so a checkpoint restores eagerly
        model.compute_loss({k: v[:2] for k, v in examples.as_dict().items()}, training=False)
        optimizer.build(model.trainable_variables)
    rank_scale = model.item_scale  # the popularity prior's factor (None without one)
    if source is not None:
        ds, steps, total_examples, stream_targets = _stream_input(
            source, user_vocab, cfg, cluster, strategy, work / STREAM_DIR
        )
    else:
        ds, steps = _input(examples, user_vocab, cfg, cluster, strategy, per_worker)

    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var)
    manager = tf.train.CheckpointManager(ckpt, str(work / "checkpoints"), max_to_keep=2)
    best_ckpt = tf.train.Checkpoint(query_tower=model.query_tower, candidate_tower=model.candidate_tower)
    best_prefix = work / "checkpoints" / "best" / "ckpt"
    state_path = work / "train_state.json"
    resume_key = resumable_settings(cfg, split)
    state: dict[str, Any] = {"epoch": 0, "best_metric": None, "best_epoch": 0, "wait": 0, "history": [],
                             "resume_key": resume_key}  # fmt: skip
    # every worker resumes from the chief's checkpoint (the same weights and epoch everywhere)
    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    if latest and (out / "train_state.json").exists():
        saved = json.loads((out / "train_state.json").read_text(encoding="utf-8"))
        check_resumable(saved.get("resume_key"), resume_key, out)
        ckpt.restore(latest).assert_existing_objects_matched()
        state = {**saved, "resume_key": resume_key}
        state["epoch"] = int(epoch_var.numpy())
        state["history"] = [r for r in state.get("history", []) if r["epoch"] <= state["epoch"]]
        logger.info("resuming from %s (epoch %d)", latest, state["epoch"])

    metric_name = f"val_recall@{cfg.train.eval_k}"
    vq = None
    if len(val_df):
        queries = stream_val_queries if on_disk else build_val_queries
        vq = queries(split.folder if on_disk else train_df, val_df, item_vocab, user_vocab, cfg.data.max_history)
        vq = capped(vq, cfg.train.val_max_users, item_vocab.size, cfg.train.seed)

    def evaluate() -> float:
        items_m = model.memory_bank  # refreshed at epoch end by MemoryBankRefresh (runs first)
        if vq is None:  # the callback gets `evaluate` only with validation queries
            return float("nan")
        # in blocks: one call over every validation user holds [users, max_history, dim] intermediates
        q = np.concatenate([
            model.query_tower(items_m, vq.user_idx[s : s + VAL_BLOCK], vq.hist_idx[s : s + VAL_BLOCK],
                              vq.hist_pos[s : s + VAL_BLOCK]).numpy()
            for s in range(0, len(vq), VAL_BLOCK)
        ])  # fmt: skip
        ranked = items_m.numpy() if rank_scale is None else items_m.numpy() * rank_scale[:, None]
        total = 0.0  # RANK_BLOCK users at a time: ranking holds [block, items] scores and their argpartition
        for s in range(0, len(vq), RANK_BLOCK):
            part = vq.block(s, s + RANK_BLOCK)
            total += recall_at_k(q[s : s + RANK_BLOCK], ranked, part, cfg.train.eval_k) * len(part)
        return total / len(vq) if len(vq) else 0.0

    writer = tf.summary.create_file_writer(str(work / "tensorboard" / "validation"))
    start_epoch = int(state["epoch"])
    fit_seconds, fit_examples = 0.0, 0
    if start_epoch < cfg.train.epochs and not state.get("stopped"):
        callbacks = [
            # the bank feeds validation (and, with history_encoding = "memory_bank", training)
            MemoryBankRefresh(model, cfg.train.memory_refresh_steps),
            ValidateAndCheckpoint(
                evaluate if vq is not None and len(vq) else None,
                manager,
                epoch_var,
                best_ckpt,
                best_prefix,
                state_path,
                state,
                cfg.train.early_stopping_patience,
                cfg.train.eval_every_epochs,
                writer,
                metric_name,
                cfg.train.effective_min_epochs,
                cfg.train.lr_decay_patience,
                cfg.train.lr_decay_factor,
                cfg.train.min_learning_rate,
                averaged=ema > 0,
                on_epoch=on_epoch,
            ),
            ScalarLogger(work / "tensorboard"),
        ]
        t_fit = time.perf_counter()
        model.fit(
            ds,
            epochs=cfg.train.epochs,
            initial_epoch=start_epoch,
            steps_per_epoch=steps,
            callbacks=callbacks,
            verbose=1 if progress else 0,
        )
        fit_seconds = time.perf_counter() - t_fit
        per_epoch = stream_targets if source is not None else ds_targets(examples, cluster, cfg.train.seed)
        fit_examples = (int(state["epoch"]) - start_epoch) * per_epoch
    shutil.rmtree(work / STREAM_DIR, ignore_errors=True)
    if Path(str(best_prefix) + ".index").exists():
        best_ckpt.read(str(best_prefix)).assert_existing_objects_matched()
    model.refresh_memory_bank()
    # every worker writes (a checkpoint's save reads variables collectively); the chief's copy is the one kept
    user_lists = partial(write_prepared_user_lists, split.folder, val_df) if on_disk else None
    written = write_model_dir(out if cluster.is_chief else work / "model", cfg, built, model, split, counts, state,
                              user_lists=user_lists)  # fmt: skip
    model_dir = written if cluster.is_chief else out
    return TrainResult(
        model_dir=model_dir,
        epochs_run=int(state["epoch"]),
        best_epoch=int(state.get("best_epoch", 0)),
        best_metric=state.get("best_metric"),
        history=list(state.get("history", [])),
        examples=total_examples if source is not None else len(examples),
        skipped_interactions=skipped,
        seconds=time.perf_counter() - t0,
        examples_per_second=fit_examples / fit_seconds if fit_seconds > 0 else float("nan"),
        workers=cluster.workers,
        is_chief=cluster.is_chief,
    )


def ds_targets(examples: Examples, cluster: Cluster, seed: int) -> int:
    """Next-item targets this worker trains on per epoch."""
    if not cluster.distributed:
        return examples.targets
    return examples.take(shard_rows(len(examples), cluster, seed)).targets


def _input(
    examples: Examples, user_vocab: IdVocab, cfg: RecfuseConfig, cluster: Cluster, strategy: Any, per_worker: int
) -> tuple[Any, int | None]:
    """The training input and its steps per epoch (``None``: one pass of the dataset).

    One process reads one dataset. On several workers each reads its own shard, repeated, for the
    same number of steps per epoch on every worker (a distributed dataset has no end Keras can see).
    """
    if not cluster.distributed:
        ds = make_dataset(examples, user_vocab, cfg.train.batch_size, cfg.train.seed, cfg.train.user_dropout)
        return ds, None
    shard = examples.take(shard_rows(len(examples), cluster, cfg.train.seed))
    logger.info(
        "worker %d: %d of %d examples, batch %d of the global %d",
        cluster.index,
        len(shard),
        len(examples),
        per_worker,
        cfg.train.batch_size,
    )

    def per_replica(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        # one input pipeline per worker, already sharded above: the batch is the replica's share
        batch = ctx.get_per_replica_batch_size(cfg.train.batch_size)
        ds = make_dataset(shard, user_vocab, batch, cfg.train.seed, cfg.train.user_dropout)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.repeat().with_options(options)  # each pass reshuffles: one pass is one epoch

    steps = -(-len(shard) // (cfg.train.batch_size // strategy.num_replicas_in_sync))
    return strategy.distribute_datasets_from_function(per_replica), steps


def _stream_input(
    source: StreamedExamples, user_vocab: IdVocab, cfg: RecfuseConfig, cluster: Cluster, strategy: Any, cache: Path
) -> tuple[Any, int | None, int, int]:
    """The streamed input, its steps per epoch (``None``: one pass), all workers' examples, this worker's targets.

    The examples are written as int32 files under ``cache`` (removed after ``fit``) and read back by
    tf.data alone. On several workers each reads its own shards (``source.part``), repeated, and all
    take the steps of the worker with the fewest examples (counts exchanged by an all-reduce).
    """
    t = cfg.train
    if not cluster.distributed:
        ds = make_stream_dataset(source, user_vocab, t.batch_size, t.seed, cache, t.user_dropout)
        return ds, None, source.epoch_examples, source.epoch_targets
    prefixes = materialise(source, user_vocab, cache)
    mine = np.zeros(cluster.workers, np.float64)
    mine[cluster.index] = source.epoch_examples
    per_worker_examples = strategy.reduce(
        tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(mine)), axis=None
    ).numpy()
    batch = t.batch_size // strategy.num_replicas_in_sync
    fewest = int(per_worker_examples.min())
    if fewest < 1:
        raise ConfigError(f"a worker's prepared shards hold no training example ({per_worker_examples.tolist()})")
    counts = per_worker_examples.astype(int).tolist()
    logger.info("worker %d: %d streamed examples (all workers: %s), %d steps of batch %d per epoch", cluster.index,
                source.epoch_examples, counts, -(-fewest // batch), batch)  # fmt: skip

    def per_replica(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        ds = read_stream_dataset(prefixes, source.max_history, ctx.get_per_replica_batch_size(t.batch_size), t.seed,
                                 t.user_dropout)  # fmt: skip
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.repeat().with_options(options)  # already this worker's shards; each pass reshuffles

    steps = -(-fewest // batch)
    targets = round(source.epoch_targets * min(1.0, steps * batch / source.epoch_examples))  # what `steps` take
    return strategy.distribute_datasets_from_function(per_replica), steps, int(per_worker_examples.sum()), targets
