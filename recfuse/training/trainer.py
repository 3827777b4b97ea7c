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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from recfuse.config import RecfuseConfig
from recfuse.data.vocab import IdVocab
from recfuse.training.callbacks import MemoryBankRefresh, ValidateAndCheckpoint
from recfuse.training.checks import check_resumable, check_training_inputs, resolve_auto_settings, resumable_settings
from recfuse.training.examples import build_examples
from recfuse.training.model_dir import write_model_dir
from recfuse.training.optimizer import make_optimizer
from recfuse.training.pipeline import make_dataset
from recfuse.training.setup import build_model
from recfuse.training.tb_logging import ScalarLogger
from recfuse.training.validation import build_val_queries, recall_at_k

logger = logging.getLogger(__name__)


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
            ``nan`` if no epoch ran).
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


def train(
    cfg: RecfuseConfig,
    dataset: Any,
    split: Any,
    out_dir: str | Path,
    progress: bool = True,
    on_epoch: Callable[[int, float], bool] | None = None,
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

    Returns:
        :class:`TrainResult`.

    Raises:
        ConfigError, SchemaError, DataError: bad input, before training starts.
    """
    t0 = time.perf_counter()
    items, train_df, val_df = dataset.items, split.train, split.val
    check_training_inputs(cfg, items, train_df)
    cfg = resolve_auto_settings(cfg, train_df)  # the stored config holds the decided values
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(cfg.train.seed)
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()  # process-wide; see TrainConfig.deterministic

    item_vocab = IdVocab.build(items["item_id"].tolist(), num_oov=0)
    user_vocab = IdVocab.build(sorted(set(map(str, train_df["user_id"]))), num_oov=cfg.model.user_oov_buckets)
    examples = build_examples(
        train_df, item_vocab, user_vocab, cfg.data.max_history, cfg.train.example_history, cfg.train.targets
    )
    skipped = int(len(train_df) - examples.interactions)
    if skipped:
        logger.warning("%d training interactions point at items missing from the catalog; not used", skipped)
    # every training interaction counts (with targets = "all_positions" the examples keep one item per window)
    counts = np.asarray(examples.item_counts, np.float64)
    warm = frozenset(str(item_vocab.ids[i]) for i in np.flatnonzero(counts))
    built = build_model(
        cfg, items, dataset.images_dir, item_vocab, user_vocab, warm, counts / max(counts.sum(), 1.0), counts
    )
    model = built.model
    rank_scale = model.item_scale  # the popularity prior's factor (None without one)

    ema = cfg.train.ema_momentum
    optimizer = make_optimizer(cfg.train.learning_rate, ema, cfg.train.weight_decay)
    model.compile(optimizer=optimizer)
    ds = make_dataset(examples, user_vocab, cfg.train.batch_size, cfg.train.seed, cfg.train.user_dropout)
    # create every variable (towers + optimizer slots) so a checkpoint restores eagerly
    model.compute_loss({k: v[:2] for k, v in examples.as_dict().items()}, training=False)
    optimizer.build(model.trainable_variables)

    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var)
    manager = tf.train.CheckpointManager(ckpt, str(out / "checkpoints"), max_to_keep=2)
    best_ckpt = tf.train.Checkpoint(query_tower=model.query_tower, candidate_tower=model.candidate_tower)
    best_prefix = out / "checkpoints" / "best" / "ckpt"
    state_path = out / "train_state.json"
    resume_key = resumable_settings(cfg, split)
    state: dict[str, Any] = {"epoch": 0, "best_metric": None, "best_epoch": 0, "wait": 0, "history": [],
                             "resume_key": resume_key}  # fmt: skip
    if manager.latest_checkpoint and state_path.exists():
        saved = json.loads(state_path.read_text(encoding="utf-8"))
        check_resumable(saved.get("resume_key"), resume_key, out)
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        state = {**saved, "resume_key": resume_key}
        state["epoch"] = int(epoch_var.numpy())
        state["history"] = [r for r in state.get("history", []) if r["epoch"] <= state["epoch"]]
        logger.info("resuming from %s (epoch %d)", manager.latest_checkpoint, state["epoch"])

    metric_name = f"val_recall@{cfg.train.eval_k}"
    vq = build_val_queries(train_df, val_df, item_vocab, user_vocab, cfg.data.max_history) if len(val_df) else None

    def evaluate() -> float:
        items_m = model.memory_bank  # refreshed at epoch end by MemoryBankRefresh (runs first)
        q = model.query_tower(items_m, vq.user_idx, vq.hist_idx, vq.hist_pos).numpy()  # type: ignore[union-attr]
        ranked = items_m.numpy() if rank_scale is None else items_m.numpy() * rank_scale[:, None]
        return recall_at_k(q, ranked, vq, cfg.train.eval_k)  # type: ignore[arg-type]

    writer = tf.summary.create_file_writer(str(out / "tensorboard" / "validation"))
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
            ScalarLogger(out / "tensorboard"),
        ]
        t_fit = time.perf_counter()
        model.fit(
            ds, epochs=cfg.train.epochs, initial_epoch=start_epoch, callbacks=callbacks, verbose=1 if progress else 0
        )
        fit_seconds = time.perf_counter() - t_fit
        fit_examples = (int(state["epoch"]) - start_epoch) * examples.targets
    if Path(str(best_prefix) + ".index").exists():
        best_ckpt.read(str(best_prefix)).assert_existing_objects_matched()
    model.refresh_memory_bank()
    model_dir = write_model_dir(out, cfg, built, model, split, counts, state)
    return TrainResult(
        model_dir=model_dir,
        epochs_run=int(state["epoch"]),
        best_epoch=int(state.get("best_epoch", 0)),
        best_metric=state.get("best_metric"),
        history=list(state.get("history", [])),
        examples=len(examples),
        skipped_interactions=skipped,
        seconds=time.perf_counter() - t0,
        examples_per_second=fit_examples / fit_seconds if fit_seconds > 0 else float("nan"),
    )
