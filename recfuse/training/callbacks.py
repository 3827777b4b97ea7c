"""Keras callbacks of the trainer: memory-bank refresh, validation + early stopping + checkpoints.

Order matters and is fixed by :func:`recfuse.training.trainer.train`: :class:`MemoryBankRefresh`
recomputes the bank at the start of training, every ``memory_refresh_steps`` steps and at each epoch
end; :class:`ValidateAndCheckpoint` then scores the held-out users against that fresh item matrix
(the serving setup), keeps the best weights, saves a resumable checkpoint and the train state, and
stops training after ``patience`` evaluations without improvement.

Example:
    >>> callbacks = [MemoryBankRefresh(model, 0), ValidateAndCheckpoint(...)]   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import tensorflow as tf

from recfuse.fsio import atomic_write_json
from recfuse.models.two_tower import TwoTowerModel
from recfuse.training.tb_logging import log_scalar

logger = logging.getLogger(__name__)


class MemoryBankRefresh(tf.keras.callbacks.Callback):
    """Refresh ``model.memory_bank`` from the candidate tower (train begin, every N steps, epoch end)."""

    def __init__(self, two_tower: TwoTowerModel, every_steps: int = 0) -> None:
        super().__init__()
        self.two_tower = two_tower
        self.every_steps = int(every_steps)
        self._steps = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.two_tower.refresh_memory_bank()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._steps += 1
        if self.every_steps > 0 and self._steps % self.every_steps == 0:
            self.two_tower.refresh_memory_bank()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.two_tower.refresh_memory_bank()


@contextlib.contextmanager
def averaged_weights(model: TwoTowerModel) -> Iterator[None]:
    """The optimizer's moving average of the trainable weights (``use_ema``) in place of the weights,
    with the memory bank recomputed from them; the trained weights come back on exit.

    The bank is left as the averaged weights computed it: the next epoch's training reads it for
    the history items it does not encode live, a smoother stand-in for the same items.
    """
    variables = model.trainable_variables
    trained = [tf.identity(v) for v in variables]
    model.optimizer.finalize_variable_values(variables)  # with use_ema: assigns the averages
    model.refresh_memory_bank()
    try:
        yield
    finally:
        for v, value in zip(variables, trained):
            v.assign(value)


class ValidateAndCheckpoint(tf.keras.callbacks.Callback):
    """Validation Recall@K, best-weights tracking, early stopping and a resumable checkpoint per epoch.

    Args:
        evaluate: ``() -> float`` validation Recall@K of the current weights (``None``: no validation).
        manager: checkpoint manager of the full training state (model + optimizer + epoch).
        epoch_var: ``tf.Variable`` holding the number of completed epochs (saved in the checkpoint).
        best_ckpt: ``tf.train.Checkpoint`` of the towers, written to ``best_prefix`` on improvement.
        state_path: JSON train state (epoch, best metric, best epoch, wait, history, stopped).
        state: the state restored from a previous run (or a fresh one).
        patience: evaluations without improvement before stopping (0 disables early stopping).
        every: evaluate every this many epochs.
        writer: TensorBoard summary writer for the validation metric.
        metric_name: e.g. ``val_recall@10``.
        min_epochs: early stopping never ends training before this many epochs (and the learning
            rate is never cut before it).
        lr_decay_patience: evaluations without improvement before the optimizer's learning rate is
            multiplied by ``lr_decay_factor`` (0 disables it); the count restarts after each cut
            and on every improvement. The rate is an optimizer variable, so the per-epoch checkpoint
            carries it and a resumed run continues at the rate it had reached; the train state
            records it for reading only.
        lr_decay_factor: multiplier of a cut, in ``(0, 1)``.
        min_learning_rate: the learning rate is never cut below this.
        averaged: validate, and keep as the best weights, the optimizer's moving average of the
            weights (:func:`averaged_weights`; the optimizer must have ``use_ema``); training goes on
            from the trained weights.
        on_epoch: ``(epoch, metric) -> stop`` called after each validation (epoch counted from 1);
            returning True ends training as early stopping does (``stopped`` in the state), e.g. a
            hyper-parameter search pruning an unpromising trial.
    """

    def __init__(
        self,
        evaluate: Callable[[], float] | None,
        manager: tf.train.CheckpointManager,
        epoch_var: tf.Variable,
        best_ckpt: tf.train.Checkpoint,
        best_prefix: Path,
        state_path: Path,
        state: dict[str, Any],
        patience: int,
        every: int,
        writer: Any,
        metric_name: str,
        min_epochs: int = 0,
        lr_decay_patience: int = 0,
        lr_decay_factor: float = 0.5,
        min_learning_rate: float = 0.0,
        averaged: bool = False,
        on_epoch: Callable[[int, float], bool] | None = None,
    ) -> None:
        super().__init__()
        self.on_epoch = on_epoch
        self.averaged = bool(averaged)
        self.evaluate = evaluate
        self.manager = manager
        self.epoch_var = epoch_var
        self.best_ckpt = best_ckpt
        self.best_prefix = best_prefix
        self.state_path = state_path
        self.state = state
        self.patience = int(patience)
        self.every = max(1, int(every))
        self.writer = writer
        self.metric_name = metric_name
        self.min_epochs = int(min_epochs)
        self.lr_decay_patience = int(lr_decay_patience)
        self.lr_decay_factor = float(lr_decay_factor)
        self.min_learning_rate = float(min_learning_rate)

    def _maybe_cut_learning_rate(self, epoch: int) -> None:
        if self.lr_decay_patience <= 0 or epoch + 1 < self.min_epochs:
            return
        self.state["lr_wait"] = int(self.state.get("lr_wait", 0)) + 1
        if self.state["lr_wait"] < self.lr_decay_patience:
            return
        self.state["lr_wait"] = 0
        old = float(self.model.optimizer.learning_rate.numpy())
        new = max(old * self.lr_decay_factor, self.min_learning_rate)
        if new < old:
            self.model.optimizer.learning_rate.assign(new)
            logger.info("epoch %d: %s flat for %d evaluations, learning rate %.3g -> %.3g",
                        epoch + 1, self.metric_name, self.lr_decay_patience, old, new)  # fmt: skip

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(logs.get("loss", math.nan)),
            "learning_rate": float(self.model.optimizer.learning_rate.numpy()),
        }
        due = (epoch + 1) % self.every == 0 or epoch + 1 == self.params.get("epochs")
        if self.evaluate is None or due:  # epochs between evaluations leave the best weights alone
            with averaged_weights(self.model) if self.averaged else contextlib.nullcontext():
                self._validate(epoch, record, logs)
        logger.info("epoch %d: %s", epoch + 1, record)
        self.state.setdefault("history", []).append(record)
        self.state["epoch"] = epoch + 1
        self.state["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())
        self.epoch_var.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)
        atomic_write_json(self.state_path, self.state)

    def _validate(self, epoch: int, record: dict[str, Any], logs: dict[str, Any]) -> None:
        """Validation metric, best weights, learning-rate cuts and early stopping for one epoch."""
        if self.evaluate is not None:
            metric = float(self.evaluate())
            record[self.metric_name] = metric
            logs[self.metric_name] = metric
            log_scalar(self.writer, self.metric_name, metric, epoch + 1)
            best = self.state.get("best_metric")
            if best is None or metric > best:
                self.state.update(best_metric=metric, best_epoch=epoch + 1, wait=0, lr_wait=0)
                self.best_ckpt.write(str(self.best_prefix))
            else:
                self.state["wait"] = int(self.state.get("wait", 0)) + 1
                self._maybe_cut_learning_rate(epoch)
                if self.patience > 0 and self.state["wait"] >= self.patience and epoch + 1 >= self.min_epochs:
                    logger.info(
                        "early stopping at epoch %d: %s did not improve on %.4f (epoch %d) for %d evaluations",
                        epoch + 1,
                        self.metric_name,
                        best,
                        self.state["best_epoch"],
                        self.state["wait"],
                    )
                    self.state["stopped"] = True
                    self.model.stop_training = True
            if self.on_epoch is not None and self.on_epoch(epoch + 1, metric):
                logger.info("epoch %d: stopped by the on_epoch hook at %s = %.4f", epoch + 1, self.metric_name, metric)
                self.state["stopped"] = True
                self.model.stop_training = True
        else:
            # no validation: the last epoch is the best one
            self.best_ckpt.write(str(self.best_prefix))
            self.state.update(best_epoch=epoch + 1)
