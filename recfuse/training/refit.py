"""``train.refit``: the served model trains on the validation rows too.

Early stopping needs rows the model does not train on, and under a leave-one-out split those are
each user's most recent interaction: the transition that best predicts the next item. With
``train.refit = true`` the run that early stopping ends (the *selection* run, written to
``OUT/selection/``) only chooses the number of epochs; a fresh model with the same seed then trains
on the training and validation rows together for that many epochs, without validation, and is the
model written to ``OUT``. Its ``config.json`` records the chosen epoch count, and its
``train_state.json`` the selection run's best validation figure.

The refit run has no validation, so what follows validation is the selection run's alone: early
stopping and the best checkpoint (the refit keeps its last epoch, with ``train.ema_momentum`` the
average) and a reduce-on-plateau learning rate (the refit keeps the initial one).

With ``train.refit_epochs = N`` there is no selection run: the epoch count is one chosen before (an
earlier selection run's best epoch, say), and the refit is the only training, at about half the
time. The validation split may then be empty (a retrain on every row).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from recfuse.config import RecfuseConfig
from recfuse.errors import ConfigError
from recfuse.training.model_dir import SELECTION_DIR

__all__ = ["SELECTION_DIR", "RefitResult", "check_refit", "refit_split", "train_refit"]


@dataclasses.dataclass(frozen=True)
class RefitResult:
    """The two runs of a refit.

    Attributes:
        selection: the early-stopped run on the training rows (``OUT/selection``); its
            ``best_epoch`` is the refit's epoch count and its ``best_metric`` the validation figure.
            ``None`` with ``train.refit_epochs`` (no selection run).
        final: the run on training + validation rows (``OUT``): the model to evaluate and serve.
    """

    selection: Any
    final: Any


def refit_split(split: Any) -> Any:
    """``split`` with its validation rows moved into train (validation left empty)."""
    merged = pd.concat([split.train, split.val], ignore_index=True)
    return dataclasses.replace(split, train=merged, val=split.val.iloc[:0])


def check_refit(split: Any, prepared: str | Path | None = None, workers: int = 1, refit_epochs: int = 0) -> None:
    """Raise :class:`ConfigError` where a refit cannot run: streamed or multi-worker input, or no
    validation rows to choose the epoch count on (``refit_epochs`` 0)."""
    if prepared is not None or not isinstance(getattr(split, "train", None), pd.DataFrame):
        raise ConfigError(
            "`train.refit` = true merges the validation rows into the training rows in memory, which a prepared "
            "(streamed) split keeps on disk; train without --prepared, or set train.refit = false"
        )
    if workers > 1:
        raise ConfigError(
            f"`train.refit` = true runs two trainings one after the other in one process, not on {workers} "
            "workers; set train.refit = false for distributed training"
        )
    if len(split.val) == 0 and not refit_epochs:
        raise ConfigError(
            "`train.refit` = true takes its epoch count from early stopping on the validation split, and this "
            "split has no validation rows; give the data a validation split, set train.refit_epochs to the "
            "epoch count, or set train.refit = false"
        )


def train_refit(
    cfg: RecfuseConfig,
    dataset: Any,
    split: Any,
    out_dir: str | Path,
    progress: bool = True,
    on_epoch: Callable[[int, float], bool] | None = None,
) -> RefitResult:
    """The selection run into ``out_dir/selection``, then the refit on train + validation into ``out_dir``
    (only the refit, for ``train.refit_epochs`` epochs, where that is set).

    Args:
        cfg: the configuration (``train.refit`` need not be set: this function is the refit).
        dataset, split, progress, on_epoch: as :func:`recfuse.training.trainer.train`; ``on_epoch``
            sees the selection run's validations.
        out_dir: the model directory written by the refit.

    Returns:
        :class:`RefitResult`.

    Raises:
        ConfigError: no validation rows, a streamed split or several workers (:func:`check_refit`).
    """
    from recfuse.training.distribute import cluster_from_env
    from recfuse.training.trainer import train

    check_refit(split, workers=cluster_from_env().workers, refit_epochs=cfg.train.refit_epochs)
    out = Path(out_dir)
    selection = None
    if cfg.train.refit_epochs:
        epochs = cfg.train.refit_epochs
    else:
        selection = train(cfg, dataset, split, out / SELECTION_DIR, progress=progress, on_epoch=on_epoch)
        epochs = max(int(selection.best_epoch), 1)
    refit_cfg = cfg.with_overrides({"train.epochs": epochs, "train.min_epochs": 0})
    final = train(refit_cfg, dataset, refit_split(split), out, progress=progress)
    state_path = out / "train_state.json"
    state = json.loads(state_path.read_text(encoding="utf-8"))
    state["refit"] = {"epochs": epochs, "selection_best_metric": None, "selection_epochs_run": 0,
                      "selection_dir": None}  # fmt: skip
    if selection is not None:
        state["refit"].update(selection_best_metric=selection.best_metric, selection_epochs_run=selection.epochs_run,
                              selection_dir=SELECTION_DIR)  # fmt: skip
    tmp = state_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
    tmp.replace(state_path)
    best = None if selection is None else selection.best_metric
    return RefitResult(selection=selection, final=dataclasses.replace(final, best_metric=best))
