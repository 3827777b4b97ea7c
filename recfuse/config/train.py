"""``[train]``: optimisation, checkpoints and early stopping."""

from __future__ import annotations

from dataclasses import dataclass

from recfuse.config.checks import check_choice, check_range
from recfuse.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, checkpoints and early stopping.

    ``epochs`` is a cap: early stopping on validation Recall@K ends a run after
    ``early_stopping_patience`` evaluations without improvement and keeps the best epoch. The
    id/user embeddings learn for tens of epochs after the content signal has plateaued, so the
    patience must outlast such plateaus and the noise of the validation metric.
    """

    # most epochs of a run (a cap: early stopping usually ends it sooner)
    epochs: int = 50
    # training examples per step (and, with the sampled softmax, the in-batch negatives of each)
    batch_size: int = 256
    # initial learning rate of Adam (AdamW with ``weight_decay``)
    learning_rate: float = 3e-3
    # seed of weight initialisation, shuffling and sampling (with ``deterministic``, the same config and
    # seed give the same model)
    seed: int = 42
    # K of the validation Recall@K that early stopping, the learning-rate decay and the best epoch follow
    eval_k: int = 10
    # validation users each epoch's Recall@K is measured on: a seeded sample of this many when there
    # are more (0 = all). Every user is ranked against the whole catalog, so the cost grows with
    # users x items. Unset: as many as keep users x items within 2e9 scores, at least 2,000 (every
    # user of a 19k-item catalog up to 105k users; 2,000 users at 1M items, where ranking all of a
    # run's validation users took minutes an epoch)
    val_max_users: int | None = None
    # validation evaluations without improvement before training stops (0 disables early stopping)
    early_stopping_patience: int = 5
    # early stopping never ends a run before this many epochs (validation recall can sit on a
    # plateau while the towers reorganise; the best epoch is still the one kept). Unset: a quarter
    # of ``epochs`` (12 of the default 50; see ``effective_min_epochs``); 0 turns the hold-off off
    min_epochs: int | None = None
    # reduce-on-plateau: after this many evaluations without a better validation recall the
    # learning rate is multiplied by lr_decay_factor (0 = constant learning rate), never below
    # min_learning_rate; not before min_epochs. Off by default
    lr_decay_patience: int = 0
    # reduce-on-plateau: the learning rate's multiplier at each decay (in [0.01, 0.99])
    lr_decay_factor: float = 0.5
    # reduce-on-plateau: the learning rate never decays below this
    min_learning_rate: float = 1e-5
    # exponential moving average of the weights, updated every step with this momentum, warmed up as
    # min(momentum, (1 + step) / (10 + step)) so a short run's average is not its initialisation
    # (recfuse.training.optimizer; 0 = off):
    # validation, early stopping, the best checkpoint and the exported model use the average;
    # training goes on from the trained weights
    ema_momentum: float = 0.0
    # a training example's history: ``previous`` (the interactions before it: next-item prediction,
    # what a leave-one-out split asks) or ``profile`` (all the user's other training interactions,
    # most recent first: what a random per-user split asks, where the held-out items are anywhere)
    example_history: str = "previous"
    # what each training example predicts: ``last`` (its own item, from the history before it) or
    # ``all_positions`` (SASRec's training, ``model.query_encoder = "transformer"`` only): one example
    # per window of ``data.max_history`` items of a user's sequence, and the causal encoder's output at
    # every history position is a query for the item right after it, so one forward scores every
    # next-item target of the window (each training interaction is a target once)
    targets: str = "last"
    # decoupled weight decay (AdamW): each step every weight but biases and normalisation parameters
    # shrinks by learning_rate * weight_decay of itself (0 = plain Adam)
    weight_decay: float = 0.0
    # after early stopping, train a fresh model (same seed) on the training and validation rows together
    # for the best epoch's count, and write that one; the early-stopped run stays in OUT/selection; under
    # leave-one-out the validation rows are each user's latest interaction, which the early-stopped model
    # never trains on; `recfuse train`, `recfuse experiment` and recfuse.training.refit.train_refit do it
    # (their baselines are refitted too); it doubles the training time (not with refit_epochs) and needs
    # in-memory training rows and, unless refit_epochs is set, a validation split
    refit: bool = False
    # with ``refit``: 0 = the early-stopped selection run chooses the refit's epoch count; N > 0 = no
    # selection run: the refit trains on the training and validation rows for N epochs (one training,
    # half the time; N is a count chosen before, e.g. an earlier selection run's best epoch, and the
    # validation split may be empty). An `[item_head]` then has no validation to choose on: each of its
    # grids for the method (and history_decays, betas) must hold one value
    refit_epochs: int = 0
    # validate (early stopping, best checkpoint) every this many epochs
    eval_every_epochs: int = 1
    # ``live``: history items go through the candidate tower in each step (gradient reaches item
    # representations through the query side); ``memory_bank``: a refreshed, frozen item matrix
    history_encoding: str = "live"
    # with ``live``: the most history-only items run through the candidate tower per step, drawn at
    # random (0 = all, up to batch_size x max_history); the rest read the memory bank (default 256)
    live_history_items: int = 256
    # ``memory_bank``: recompute the bank every this many steps (0: at the start of training and at each
    # epoch end only)
    memory_refresh_steps: int = 0
    # model directory ``recfuse train`` writes (weights, checkpoints, TensorBoard logs); ``--out`` wins
    out_dir: str = "runs/model"
    # share of examples whose user id is replaced by its hashed OOV bucket, so anonymous and new
    # users (who land in those buckets at serving time) get trained rows, not random ones
    user_dropout: float = 0.1
    # TensorFlow op determinism (tf.config.experimental.enable_op_determinism), so the same config
    # and seed give the same model: without it multi-threaded CPU kernels reorder float sums and
    # two runs differ. Process-wide once on (a later run in
    # the same process with `false` stays deterministic); on a GPU an op without a deterministic
    # kernel raises an error naming it: set `false` there, or for the last bit of speed.
    deterministic: bool = True

    def __post_init__(self) -> None:
        check_range("train", "epochs", self.epochs, 1, 100_000)
        check_range("train", "batch_size", self.batch_size, 2, 1_000_000)
        check_range("train", "learning_rate", self.learning_rate, 1e-7, 10.0)
        check_range("train", "eval_k", self.eval_k, 1, 10_000)
        if self.val_max_users is not None:
            check_range("train", "val_max_users", self.val_max_users, 0, 1_000_000_000)
        check_range("train", "user_dropout", self.user_dropout, 0.0, 1.0)
        check_range("train", "memory_refresh_steps", self.memory_refresh_steps, 0, 10_000_000)
        if self.min_epochs is not None:
            check_range("train", "min_epochs", self.min_epochs, 0, self.epochs)
        check_range("train", "lr_decay_patience", self.lr_decay_patience, 0, 100_000)
        check_range("train", "lr_decay_factor", self.lr_decay_factor, 0.01, 0.99)
        check_range("train", "min_learning_rate", self.min_learning_rate, 0.0, 10.0)
        check_range("train", "ema_momentum", self.ema_momentum, 0.0, 0.9999)
        check_range("train", "weight_decay", self.weight_decay, 0.0, 1.0)
        check_choice("train", "example_history", self.example_history, ("previous", "profile"))
        check_choice("train", "targets", self.targets, ("last", "all_positions"))
        if self.targets == "all_positions" and self.example_history != "previous":
            raise ConfigError(
                f"`train.targets` = 'all_positions' reads each position's next item from the ordered history, "
                f"which `train.example_history` = {self.example_history!r} does not keep; use example_history = "
                "'previous', or targets = 'last'"
            )
        check_choice("train", "history_encoding", self.history_encoding, ("live", "memory_bank"))
        check_range("train", "live_history_items", self.live_history_items, 0, 100_000_000)
        check_range("train", "refit_epochs", self.refit_epochs, 0, 100_000)
        if self.refit_epochs and not self.refit:
            raise ConfigError(
                f"`train.refit_epochs` = {self.refit_epochs} sets the epoch count of a refit, and `train.refit` is "
                "false; set refit = true to train once on the training and validation rows, or refit_epochs = 0"
            )

    @property
    def effective_min_epochs(self) -> int:
        """``min_epochs``, or a quarter of ``epochs`` when it is unset.

        Resolved when used, not stored, so overriding ``epochs`` alone moves it along.
        """
        return self.epochs // 4 if self.min_epochs is None else self.min_epochs
