"""Configuration: frozen dataclasses built at the edge (TOML file < CLI overrides), validated on construction.

Every artifact stores the config that produced it (:meth:`RecfuseConfig.to_dict`), and loading a
config dict back gives an equal object. Unknown keys are errors (a typo never silently becomes a
default).

Example:
    >>> cfg = RecfuseConfig.from_dict({"model": {"fusion": "gated", "dim": 32}})
    >>> cfg.model.fusion
    'gated'
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recfuse.errors import ConfigError

logger = logging.getLogger(__name__)

FUSIONS = ("concat", "weighted", "max", "gated", "attention")
ALIGNMENTS = ("linear", "mlp", "scale")
MODALITY_KINDS = ("image", "text", "vector", "categorical")
IMAGE_SOURCES = ("raw", "backbone", "vector")
TEXT_SOURCES = ("tokens", "vector")
TEXT_ENCODERS = ("mean", "transformer")
SPLITS = ("random", "temporal", "cold_start", "column")
EVAL_MASKS = ("train", "train+valid")
EVAL_HISTORIES = ("auto", "train", "train+valid")


def _check_choice(section: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"`{section}.{name}` must be one of {list(choices)}, got {value!r}")


def _check_range(section: str, name: str, value: float, lo: float | None = None, hi: float | None = None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ConfigError(f"`{section}.{name}` must be in {bounds}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Where the catalog and interactions are and how they are split.

    Attributes:
        items: catalog file (Parquet, CSV or JSON Lines).
        interactions: interactions file (same formats).
        images_dir: base directory of relative image paths; empty means the catalog file's directory.
        split: ``random`` (per-user 8:1:1), ``temporal`` (per-user leave-one-out by time: the
            standard leave-one-out protocol), ``cold_start`` (items held out) or ``column`` (the
            interactions' own ``split`` column: ``train`` / ``valid`` / ``test``); see
            :mod:`recfuse.data.splits`.
        cold_item_fraction: share of items held out entirely for the ``cold_start`` split.
        on_bad_rows: ``fail`` stops at the first unusable row; ``quarantine`` writes them to a side file.
        allow_external_images: image paths may point outside ``images_dir`` (absolute paths, ``..``).
            Off by default: a catalog cannot make recfuse read files elsewhere on the machine.
        max_title_chars: longest ``title`` (characters, default 1000).
        max_text_chars: longest value of any other text column, e.g. ``description`` (default 20000).
        long_text: what ``validate`` does with a longer value: ``truncate`` (cut it, counted in the
            report as ``truncated``) or ``reject`` (a bad row, reason ``text_too_long``).
    """

    items: str = "data_samples/items.parquet"
    interactions: str = "data_samples/interactions.parquet"
    images_dir: str = ""
    split: str = "random"
    split_seed: int = 42
    cold_item_fraction: float = 0.1
    max_history: int = 20
    on_bad_rows: str = "fail"
    quarantine_dir: str = ""
    allow_external_images: bool = False
    max_title_chars: int = 1000
    max_text_chars: int = 20_000
    long_text: str = "truncate"

    def __post_init__(self) -> None:
        _check_choice("data", "split", self.split, SPLITS)
        _check_choice("data", "on_bad_rows", self.on_bad_rows, ("fail", "quarantine"))
        _check_choice("data", "long_text", self.long_text, ("truncate", "reject"))
        _check_range("data", "max_title_chars", self.max_title_chars, 1)
        _check_range("data", "max_text_chars", self.max_text_chars, 1)
        _check_range("data", "cold_item_fraction", self.cold_item_fraction, 0.0, 0.9)
        _check_range("data", "max_history", self.max_history, 1, 1000)


@dataclass(frozen=True)
class ModalityConfig:
    """One item modality (a branch of the candidate tower).

    Attributes:
        name: unique name (``image``, ``text``, ``audio``…); used as the modality token name.
        kind: ``image`` | ``text`` | ``vector`` | ``categorical``.
        source: for images ``raw`` (small trainable CNN), ``backbone`` (keras.applications, local
            weights) or ``vector`` (precomputed column); for text ``tokens`` or ``vector``.
        columns: catalog columns feeding this modality (text: concatenated; vector/image: one).
        dim: width of a precomputed vector column (required when ``source``/``kind`` is vector).
        augment: raw-image CNN only: random left-right flips and shifts of up to 1/8 of the side
            while training (inference unchanged). Default on; set false for pictures whose
            orientation carries meaning (text in the image, for example).
        min_item_count: text tokens found in fewer catalog items than this map to OOV (default 1:
            keep all). 2 keeps a token unique to one item from acting as that item's id.
        token_dropout: token text only: probability of hiding each token of an item's text while
            training (word dropout; default 0: off). Inference is unchanged.
    """

    name: str
    kind: str
    source: str = ""
    columns: tuple[str, ...] = ()
    dim: int = 0
    # image options
    image_size: int = 64
    backbone: str = "mobilenet_v3_small"
    backbone_weights: str = ""
    trainable: bool = False
    # text options
    encoder: str = "mean"
    vocab_size: int = 20000
    min_item_count: int = 1
    token_dropout: float = 0.0
    max_tokens: int = 64
    char_ngrams: int = 2
    embedding_dim: int = 64
    encoder_layers: int = 1
    encoder_heads: int = 2
    # raw-image CNN: output channels of each conv block (the last one is the feature width). Four
    # blocks, trained with flips and shifts (``augment``): on the sample, a probe that trains the CNN
    # on the planted image style (bench/cnn_probe.py) reads it with 0.85 held-out accuracy, against
    # 0.73 for three blocks with augmentation and 0.62-0.65 for either without
    cnn_filters: tuple[int, ...] = (16, 32, 64, 128)
    # raw-image CNN: 3x3 conv layers per block. 2 reads the sample's style better when trained on it
    # (probe 0.92 vs 0.85) at ~2x the CNN's cost, but the fused model ranked warm items lower with it
    # (0.2825 vs 0.2917, seeds 42 / 7; bench/README.md), so 1 stays the default
    cnn_convs_per_block: int = 1
    # raw-image CNN: random flips and shifts while training (cold start on the sample, seeds 42 / 7:
    # content tower 5.4x -> 5.9x random with the four-block CNN; without augmentation the bigger CNN
    # memorises warm items' pictures and cold start falls to 4.8x; bench/README.md). Unset: on for a
    # raw-image CNN, off (and not allowed) elsewhere
    augment: bool | None = None

    def __post_init__(self) -> None:
        sec = f"modalities.{self.name or '?'}"
        if not self.name:
            raise ConfigError("`modalities[].name` must be a non-empty string, got ''")
        _check_choice(sec, "kind", self.kind, MODALITY_KINDS)
        if self.kind == "image":
            object.__setattr__(self, "source", self.source or "raw")
            _check_choice(sec, "source", self.source, IMAGE_SOURCES)
            object.__setattr__(self, "columns", tuple(self.columns) or ("image",))
        elif self.kind == "text":
            object.__setattr__(self, "source", self.source or "tokens")
            _check_choice(sec, "source", self.source, TEXT_SOURCES)
            _check_choice(sec, "encoder", self.encoder, TEXT_ENCODERS)
            object.__setattr__(self, "columns", tuple(self.columns) or ("title", "description"))
        elif self.kind == "vector":
            object.__setattr__(self, "source", "vector")
            object.__setattr__(self, "columns", tuple(self.columns) or (f"{self.name}_vec",))
        else:
            object.__setattr__(self, "source", "categorical")
            object.__setattr__(self, "columns", tuple(self.columns) or ("categories",))
        if self.source == "vector" and self.dim <= 0:
            raise ConfigError(f"`{sec}.dim` must be the width of column {self.columns[0]!r} (> 0), got {self.dim}")
        _check_range(sec, "image_size", self.image_size, 16, 1024)
        _check_range(sec, "max_tokens", self.max_tokens, 1, 4096)
        _check_range(sec, "vocab_size", self.vocab_size, 3, 10_000_000)
        _check_range(sec, "min_item_count", self.min_item_count, 1, 1_000_000)
        raw_image = self.kind == "image" and self.source == "raw"
        if self.augment is None:
            object.__setattr__(self, "augment", raw_image)
        if self.augment and not raw_image:
            raise ConfigError(
                f"`{sec}.augment` applies to the raw-image CNN only (kind 'image', source 'raw'), "
                f"got kind {self.kind!r} source {self.source!r}; remove it"
            )
        if self.min_item_count != 1 and not (self.kind == "text" and self.source == "tokens"):
            raise ConfigError(
                f"`{sec}.min_item_count` applies to token text only (kind 'text', source 'tokens'), "
                f"got kind {self.kind!r} source {self.source!r}; remove it"
            )
        _check_range(sec, "token_dropout", self.token_dropout, 0.0, 0.9)
        if self.token_dropout and not (self.kind == "text" and self.source == "tokens"):
            raise ConfigError(
                f"`{sec}.token_dropout` applies to token text only (kind 'text', source 'tokens'), "
                f"got kind {self.kind!r} source {self.source!r}; remove it"
            )
        _check_range(sec, "char_ngrams", self.char_ngrams, 1, 8)
        _check_range(sec, "embedding_dim", self.embedding_dim, 1, 65536)
        _check_range(sec, "encoder_layers", self.encoder_layers, 1, 24)
        _check_range(sec, "encoder_heads", self.encoder_heads, 1, 64)
        _check_range(sec, "cnn_convs_per_block", self.cnn_convs_per_block, 1, 8)
        if not self.cnn_filters or min(self.cnn_filters) < 1:
            raise ConfigError(f"`{sec}.cnn_filters` must be a non-empty list of positive ints, got {self.cnn_filters}")

    @property
    def column(self) -> str:
        return self.columns[0]


def default_modalities() -> tuple[ModalityConfig, ...]:
    return (
        ModalityConfig(name="image", kind="image"),
        ModalityConfig(name="text", kind="text"),
        ModalityConfig(name="categories", kind="categorical"),
    )


def default_attention_heads(dim: int) -> int:
    """Heads of the attention fusion when ``model.attention_heads`` is unset: ``dim // 16`` in [2, 4]."""
    return max(2, min(4, int(dim) // 16))


@dataclass(frozen=True)
class ModelConfig:
    """Two-tower architecture: alignment, fusion and the retrieval loss.

    Attributes:
        dim: shared embedding dimension ``d`` of both towers.
        fusion: fusion variant name (see :data:`FUSIONS`).
        alignment: projection of each modality into the shared space.
        weighted_lambda: λ of the ``weighted`` fusion, Z = (1−λ)·image + λ·others.
        modality_dropout: probability of masking each present modality per item while training.
        item_id_dropout: probability of hiding the item-id embedding while training (cold-start robustness).
        user_id_embedding: give each training user an embedding row in the query tower (``true``), or
            build the query from the history alone (``false``). ``"auto"`` (the default) decides at
            training from the training split: on when the median user has at least
            :data:`recfuse.training.checks.SPARSE_USERS_MEDIAN` (10) distinct training items, off
            below. A user-id row learns only from its own user's targets, so with a handful of them it
            overfits (MicroLens-50k, median 4: +43% HR@10 without it under leave-one-out, +31% under a
            random split); the sample (median 17-22 by split) keeps it. The model directory stores the resolved
            value.
        contrastive_weight: weight of the InfoNCE image–text alignment loss (0 disables it).
        modality_loss_weight: weight of the per-modality auxiliary retrieval losses (0 disables
            them): each content modality's aligned token is also scored alone against the query
            with the main loss, so that a fast-learning branch cannot leave the others untrained
            (see :mod:`recfuse.models.two_tower`). Ignored for a tower with a single token. The
            default 0.1 lets content towers learn from the first epochs instead of after a plateau
            that early stopping can end runs on (bench/README.md, "Quality").
        attention_heads: heads of the ``attention`` fusion. Each head pools the modality tokens with
            its own softmax, so with fewer heads than tokens the fused embedding is a blend of at
            most that many weightings. Unset, it resolves to ``dim // 16`` clamped to [2, 4] (and
            is stored resolved): 4 at the default ``dim = 64``, so image, text, categories and one
            more modality can each keep a head (sample, four seeds: test Recall@10 0.2889 -> 0.2935,
            cold start 5.57x -> 5.73x random; bench/README.md "Quality"), and 2 for ``dim < 48``,
            where four heads would be under 16 dimensions each. (TensorFlow's oneDNN CPU kernels
            corrupted the heap in 4 of 7 trainings at ``dim = 16`` with 4 heads over 4 tokens, never
            with 2; see bench/README.md.)
        attention_layers: Transformer blocks of masked self-attention over the modality tokens before
            the ``attention`` fusion pools them (each modality's token then carries what the others
            say about the item); 0 pools the aligned tokens directly.
        temperature: softmax temperature of the retrieval loss.
        mixed_negatives: extra uniformly sampled catalog items per batch (0 disables).
        popularity_prior: γ of a popularity prior trained into the model (0 disables): each item's
            vector is ranked multiplied by ``1 + γ·log(1 + training count)``
            (:func:`recfuse.ranking.popularity_scale`), in the retrieval loss, in validation, in
            evaluation and in the exported index. The query tower still reads history items
            unscaled. Unit-norm embeddings cannot hold popularity and taste at once, and with the
            prior carrying popularity the fused model ranks better (sample, four seeds, γ = 0.1:
            0.2935 → 0.3198 test Recall@10; text-only 0.2528 → 0.2539; bench/README.md, "Quality").
            Items with no training interactions (cold items) get ``new_item_scale``.
        new_item_scale: the ranking factor of items with no training interactions (cold items and
            items added later with ``add-items``), applied wherever the popularity prior is (the
            evaluation's and the exported index's item vectors; not the loss). Their vectors come
            from content alone and score below warm items' content + id vectors, so among all
            items new items rarely reach a top k; a factor above 1 lifts them (MicroLens,
            bench/README.md "Cold start on real data"). Training is unchanged, so it can be set at
            evaluation or export time.
        query_encoder: how the query tower reads the history (through the item tower's
            embeddings): ``attention`` (additive-attention pooling with a learned recency term,
            order-blind apart from it) or ``transformer`` (a SASRec-style causal self-attention
            encoder with learned position embeddings whose output at the most recent item is the
            history summary; :mod:`recfuse.models.sequence_encoder`). Either way the summary then
            goes through the user-id embedding / MLP / normalisation path.
        query_layers: Transformer blocks of the ``transformer`` query encoder (1-4).
        query_heads: attention heads of the ``transformer`` query encoder; must divide ``dim``.
        query_dropout: dropout of the ``transformer`` query encoder while training (inputs,
            attention and feed-forward outputs).
        softmax: the retrieval loss's candidate pool. ``sampled``: the batch's positives plus
            ``mixed_negatives`` uniform catalog items, logQ-corrected (scales to any catalog).
            ``full``: every catalog item is a candidate in every step (exact softmax, no sampling
            bias and no correction; each step runs the item tower over the whole catalog and holds
            a ``queries × items`` logit matrix, so it suits catalogs up to some 10⁵ items;
            ``mixed_negatives`` must be 0).
    """

    dim: int = 64
    fusion: str = "attention"
    alignment: str = "mlp"
    normalize: bool = True
    # L2-normalise each aligned modality token before fusion (keeps modalities on one scale)
    normalize_tokens: bool = True
    weighted_lambda: float = 0.5
    learn_lambda: bool = True
    attention_heads: int | None = None
    attention_layers: int = 0
    modality_dropout: float = 0.1
    item_id_embedding: bool = True
    item_id_dropout: float = 0.5
    user_id_embedding: bool | str = "auto"
    user_oov_buckets: int = 64
    query_hidden: tuple[int, ...] = (128,)
    query_encoder: str = "attention"
    query_layers: int = 2
    query_heads: int = 2
    query_dropout: float = 0.2
    fusion_hidden: tuple[int, ...] = (128,)
    contrastive_weight: float = 0.1
    modality_loss_weight: float = 0.1
    temperature: float = 0.1
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    mixed_negatives: int = 0
    popularity_prior: float = 0.0
    new_item_scale: float = 1.0
    softmax: str = "sampled"

    def __post_init__(self) -> None:
        _check_range("model", "popularity_prior", self.popularity_prior, 0.0, 10.0)
        if not (isinstance(self.user_id_embedding, bool) or self.user_id_embedding == "auto"):
            raise ConfigError(
                f'`model.user_id_embedding` must be true, false or "auto", got {self.user_id_embedding!r}'
            )
        _check_range("model", "new_item_scale", self.new_item_scale, 0.1, 10.0)
        _check_choice("model", "fusion", self.fusion, FUSIONS)
        _check_choice("model", "alignment", self.alignment, ALIGNMENTS)
        _check_range("model", "dim", self.dim, 2, 4096)
        _check_range("model", "weighted_lambda", self.weighted_lambda, 0.0, 1.0)
        _check_range("model", "modality_dropout", self.modality_dropout, 0.0, 0.9)
        _check_range("model", "item_id_dropout", self.item_id_dropout, 0.0, 1.0)
        _check_range("model", "temperature", self.temperature, 1e-4, 10.0)
        _check_range("model", "contrastive_weight", self.contrastive_weight, 0.0, 100.0)
        _check_range("model", "modality_loss_weight", self.modality_loss_weight, 0.0, 100.0)
        heads = default_attention_heads(self.dim) if self.attention_heads is None else self.attention_heads
        object.__setattr__(self, "attention_heads", heads)
        _check_range("model", "attention_heads", heads, 1, 64)
        _check_range("model", "attention_layers", self.attention_layers, 0, 8)
        _check_range("model", "mixed_negatives", self.mixed_negatives, 0, 1_000_000)
        _check_choice("model", "query_encoder", self.query_encoder, ("attention", "transformer"))
        _check_range("model", "query_layers", self.query_layers, 1, 4)
        _check_range("model", "query_heads", self.query_heads, 1, 64)
        _check_range("model", "query_dropout", self.query_dropout, 0.0, 0.9)
        _check_choice("model", "softmax", self.softmax, ("sampled", "full"))
        if self.softmax == "full" and self.mixed_negatives:
            raise ConfigError(
                f"`model.mixed_negatives` = {self.mixed_negatives} has no effect with `model.softmax` = 'full' "
                "(every catalog item is already a candidate); set it to 0, or use softmax = 'sampled'"
            )
        if self.query_encoder == "transformer" and self.dim % self.query_heads:
            raise ConfigError(
                f"`model.query_heads` = {self.query_heads} must divide `model.dim` = {self.dim} (each head reads "
                f"dim / heads dimensions); choose a divisor of {self.dim}, e.g. "
                f"{max(h for h in range(1, self.query_heads) if self.dim % h == 0)}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, checkpoints and early stopping.

    ``epochs`` is a cap: early stopping on validation Recall@K ends a run after
    ``early_stopping_patience`` evaluations without improvement and keeps the best epoch. The
    id/user embeddings learn for tens of epochs after the content signal has plateaued (on the
    sample, validation recall is flat for ~5 epochs before it climbs), so the patience must outlast
    such plateaus and the noise of the validation metric.
    """

    epochs: int = 50
    batch_size: int = 256
    learning_rate: float = 3e-3
    seed: int = 42
    eval_k: int = 10
    early_stopping_patience: int = 5
    # early stopping never ends a run before this many epochs (validation recall can sit on a
    # plateau while the towers reorganise; the best epoch is still the one kept). Unset: a quarter
    # of ``epochs`` (12 of the default 50; see ``effective_min_epochs``), because content towers
    # without an auxiliary loss (one modality) sit on a popularity-level plateau for their first
    # 6-12 epochs and patience 5 ended such runs there (bench/README.md); 0 turns the hold-off off
    min_epochs: int | None = None
    # reduce-on-plateau: after this many evaluations without a better validation recall the
    # learning rate is multiplied by lr_decay_factor (0 = constant learning rate), never below
    # min_learning_rate; not before min_epochs. Off by default: on the sample, patience 2 left warm
    # items within seed noise and lowered cold-start recall on both seeds (bench/README.md)
    lr_decay_patience: int = 0
    lr_decay_factor: float = 0.5
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
    eval_every_epochs: int = 1
    # ``live``: history items go through the candidate tower in each step (gradient reaches item
    # representations through the query side); ``memory_bank``: a refreshed, frozen item matrix
    history_encoding: str = "live"
    # with ``live``: the most history-only items run through the candidate tower per step, drawn at
    # random (0 = all, up to batch_size x max_history); the rest read the memory bank. Encoding all
    # of them made the fused tower 2.6x the id-only cost per example on cached features (sample,
    # batch 256); 256 keeps it at ~1.3x (bench/README.md, "Training speed").
    live_history_items: int = 256
    memory_refresh_steps: int = 0
    out_dir: str = "runs/model"
    # share of examples whose user id is replaced by its hashed OOV bucket, so anonymous and new
    # users (who land in those buckets at serving time) get trained rows, not random ones
    user_dropout: float = 0.1
    # TensorFlow op determinism (tf.config.experimental.enable_op_determinism), so the same config
    # and seed give the same model: without it multi-threaded CPU kernels reorder float sums and
    # two runs of the sample differed by 0.02-0.03 Recall@10. Process-wide once on (a later run in
    # the same process with `false` stays deterministic); on a GPU an op without a deterministic
    # kernel raises an error naming it: set `false` there, or for the last bit of speed.
    deterministic: bool = True

    def __post_init__(self) -> None:
        _check_range("train", "epochs", self.epochs, 1, 100_000)
        _check_range("train", "batch_size", self.batch_size, 2, 1_000_000)
        _check_range("train", "learning_rate", self.learning_rate, 1e-7, 10.0)
        _check_range("train", "eval_k", self.eval_k, 1, 10_000)
        _check_range("train", "user_dropout", self.user_dropout, 0.0, 1.0)
        _check_range("train", "memory_refresh_steps", self.memory_refresh_steps, 0, 10_000_000)
        if self.min_epochs is not None:
            _check_range("train", "min_epochs", self.min_epochs, 0, self.epochs)
        _check_range("train", "lr_decay_patience", self.lr_decay_patience, 0, 100_000)
        _check_range("train", "lr_decay_factor", self.lr_decay_factor, 0.01, 0.99)
        _check_range("train", "min_learning_rate", self.min_learning_rate, 0.0, 10.0)
        _check_range("train", "ema_momentum", self.ema_momentum, 0.0, 0.9999)
        _check_range("train", "weight_decay", self.weight_decay, 0.0, 1.0)
        _check_choice("train", "example_history", self.example_history, ("previous", "profile"))
        _check_choice("train", "targets", self.targets, ("last", "all_positions"))
        if self.targets == "all_positions" and self.example_history != "previous":
            raise ConfigError(
                f"`train.targets` = 'all_positions' reads each position's next item from the ordered history, "
                f"which `train.example_history` = {self.example_history!r} does not keep; use example_history = "
                "'previous', or targets = 'last'"
            )
        _check_choice("train", "history_encoding", self.history_encoding, ("live", "memory_bank"))
        _check_range("train", "live_history_items", self.live_history_items, 0, 100_000_000)

    @property
    def effective_min_epochs(self) -> int:
        """``min_epochs``, or a quarter of ``epochs`` when it is unset.

        Resolved when used, not stored, so overriding ``epochs`` alone moves it along.
        """
        return self.epochs // 4 if self.min_epochs is None else self.min_epochs


@dataclass(frozen=True)
class EvalConfig:
    """The test protocol: what each user's test ranking excludes and what its query reads.

    Attributes:
        mask: items removed from a user's test ranking: ``train`` (the user's training items; the
            MMRec / RecBole convention and the default) or ``train+valid``. A test item is never
            removed, even when the user also has it in train or valid.
        history: the interactions the test query is built from: ``train+valid`` (every interaction
            before the test ones: the leave-one-out protocol, where the valid item is the one just
            before the test item), ``train`` (the random per-user protocol of MMRec and the
            Amazon-review papers: the query reads training items only) or ``auto``: ``train+valid``
            for the ``temporal`` and ``column`` splits, ``train`` for ``random`` and ``cold_start``.
    """

    mask: str = "train"
    history: str = "auto"

    def __post_init__(self) -> None:
        _check_choice("eval", "mask", self.mask, EVAL_MASKS)
        _check_choice("eval", "history", self.history, EVAL_HISTORIES)

    def resolved_history(self, split_kind: str) -> str:
        """``history`` with ``auto`` resolved for a split kind (``train`` or ``train+valid``)."""
        if self.history != "auto":
            return self.history
        return "train+valid" if split_kind in ("temporal", "column") else "train"

    def describe(self, split_kind: str) -> str:
        """One line for reports: ``mask train items; query reads train+valid``."""
        return f"ranking excludes each user's {self.mask} items; the query reads {self.resolved_history(split_kind)}"


#: efSearch / nprobe where neither the config nor export's tuning sets one
DEFAULT_EF_SEARCH = 128
DEFAULT_NPROBE = 32


@dataclass(frozen=True)
class IndexConfig:
    """FAISS index choice: the factory string is the index type (``auto`` picks by catalog size).

    Attributes:
        factory: faiss factory string (``Flat``, ``HNSW32``, ``IVF1024,PQ16``…) or ``auto``.
        metric: ``ip`` (inner product; cosine when vectors are normalised) or ``l2``.
        recall_floor: minimum measured ANN Recall@10 vs exact search.
        on_low_recall: ``raise`` or ``warn`` when the measured recall is below the floor.
        filter_mode: how exclusions/allow-lists are applied: ``selector`` (faiss ID selectors, where
            the index type honours them), ``refill`` (over-fetch and refill) or ``auto`` (selector
            where honoured, else refill).
        train_sample: vectors sampled to train IVF/PQ indexes (all of them when the catalog is smaller).
        threads: faiss OpenMP threads set on build/load (``0`` leaves faiss's default; 1 suits
            single-query serving).
        seed: seed of the training sample and the recall queries.
        ef_search / nprobe: HNSW efSearch / IVF nprobe. Unset, export picks the smallest value of a
            grid whose served recall meets ``target_recall`` (and stores it in the bundle), or uses
            :data:`DEFAULT_EF_SEARCH` / :data:`DEFAULT_NPROBE` where nothing is tuned; a value set
            here always wins and its served recall is only reported.
        target_recall: Recall@10 against exact search that export tunes efSearch / nprobe to, measured
            with the query vectors the index will see (``served_queries`` of them: known users' query
            vectors and history-only queries from the model's own query tower); 0 turns tuning off.
        served_queries: how many such query vectors export draws (and stores in the bundle, so
            ``add-items`` measures and tunes on the same queries).
    """

    factory: str = "auto"
    metric: str = "ip"
    ef_search: int | None = None
    ef_construction: int = 80
    nprobe: int | None = None
    target_recall: float = 0.95
    served_queries: int = 2000
    recall_floor: float = 0.9
    on_low_recall: str = "warn"
    recall_queries: int = 200
    exact_max_items: int = 50_000
    filter_mode: str = "auto"
    train_sample: int = 100_000
    threads: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choice("index", "metric", self.metric, ("ip", "l2"))
        _check_choice("index", "filter_mode", self.filter_mode, ("auto", "selector", "refill"))
        _check_range("index", "train_sample", self.train_sample, 1_000, 100_000_000)
        _check_range("index", "threads", self.threads, 0, 1024)
        _check_range("index", "recall_queries", self.recall_queries, 0, 1_000_000)
        _check_range("index", "ef_construction", self.ef_construction, 1, 100_000)
        _check_choice("index", "on_low_recall", self.on_low_recall, ("raise", "warn"))
        _check_range("index", "recall_floor", self.recall_floor, 0.0, 1.0)
        if self.ef_search is not None:
            _check_range("index", "ef_search", self.ef_search, 1, 100_000)
        if self.nprobe is not None:
            _check_range("index", "nprobe", self.nprobe, 1, 1_000_000)
        _check_range("index", "target_recall", self.target_recall, 0.0, 1.0)
        _check_range("index", "served_queries", self.served_queries, 0, 1_000_000)
        if not self.factory.strip():
            raise ConfigError("`index.factory` must be a faiss factory string or 'auto', got ''")

    def search_params(self) -> tuple[int, int]:
        """``(efSearch, nprobe)`` in force: the configured values, else the defaults."""
        ef = DEFAULT_EF_SEARCH if self.ef_search is None else self.ef_search
        return ef, DEFAULT_NPROBE if self.nprobe is None else self.nprobe


@dataclass(frozen=True)
class RecfuseConfig:
    """The whole configuration of a training run (stored beside the weights and in each bundle)."""

    data: DataConfig = field(default_factory=DataConfig)
    modalities: tuple[ModalityConfig, ...] = field(default_factory=default_modalities)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    variant: str = ""

    def __post_init__(self) -> None:
        names = [m.name for m in self.modalities]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"`modalities[].name` must be unique, got duplicates {dupes}")
        if not self.modalities and not self.model.item_id_embedding:
            raise ConfigError(
                "`modalities` is empty and `model.item_id_embedding` is false: the item tower has no input; "
                "declare a modality or enable the item-id embedding"
            )
        if self.train.targets == "all_positions" and self.model.query_encoder != "transformer":
            raise ConfigError(
                f"`train.targets` = 'all_positions' needs `model.query_encoder` = 'transformer' (a causal encoder "
                f"has an output at every history position); got query_encoder = {self.model.query_encoder!r}: "
                "set it to 'transformer', or targets = 'last'"
            )
        if not self.variant:
            object.__setattr__(self, "variant", self.model.fusion if self.modalities else "ids-only")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RecfuseConfig:
        """Build from a plain dict (parsed TOML/JSON); unknown keys raise :class:`ConfigError`.

        A dict without ``modalities`` gets :func:`default_modalities` (image, text, categories) and a
        warning that says so: declare ``[[modalities]]``, or ``modalities = []`` for an id-only model.
        """
        if isinstance(raw, Mapping) and "modalities" not in raw:
            logger.warning(
                "the config declares no [[modalities]], so the default ones are used: %s; declare [[modalities]] "
                "for your catalog's columns, or `modalities = []` (top level) for an item-id-only model",
                ", ".join(f"{m.name} ({m.kind}, columns {list(m.columns)})" for m in default_modalities()),
            )
        return _build(cls, _migrated(raw), "")

    @classmethod
    def from_toml(cls, path: str | Path) -> RecfuseConfig:
        """Load a TOML file. Relative data paths stay as written (resolved by the caller's cwd)."""
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {str(p)!r} does not exist; pass an existing TOML file") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {err}") from None
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; ``from_dict(to_dict())`` gives an equal config."""
        return _to_plain(dataclasses.asdict(self))

    def with_overrides(self, overrides: Mapping[str, Any]) -> RecfuseConfig:
        """Apply dotted overrides (``{"model.fusion": "max"}``), as given on a command line.

        A modality is addressed by its name: ``{"modalities.text.token_dropout": 0.2}``.
        """
        raw = self.to_dict()
        for dotted, value in overrides.items():
            parts = dotted.split(".")
            node = raw
            for part in parts[:-1]:
                if isinstance(node, list):  # [[modalities]]: pick the entry by name
                    named = [m for m in node if isinstance(m, dict) and m.get("name") == part]
                    if not named:
                        names = [m.get("name") for m in node if isinstance(m, dict)]
                        raise ConfigError(f"override {dotted!r}: no modality named {part!r}; configured: {names}")
                    node = named[0]
                    continue
                if part not in node or not isinstance(node[part], (dict, list)):
                    sections = {k for k, v in node.items() if isinstance(v, (dict, list))}
                    close = _closest(part, sections)
                    hint = f"; did you mean {close[0]!r}?" if close else f"; sections: {sorted(sections)}"
                    raise ConfigError(f"override {dotted!r}: unknown section {part!r}{hint}")
                node = node[part]
            if isinstance(node, list):
                raise ConfigError(f"override {dotted!r}: name a modality, e.g. 'modalities.text.{parts[-1]}'")
            if parts[-1] not in node:
                close = _closest(parts[-1], set(node))
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"override {dotted!r}: unknown key {parts[-1]!r}{hint}; known: {sorted(node)}")
            node[parts[-1]] = value
        return RecfuseConfig.from_dict(raw)

    def modality(self, name: str) -> ModalityConfig:
        for m in self.modalities:
            if m.name == name:
                return m
        raise ConfigError(f"no modality named {name!r}; configured: {[m.name for m in self.modalities]}")


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _migrated(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """``raw`` without keys that no longer exist (stored configs keep loading), each with a warning.

    ``model.attention_user_conditioned`` could only be false: item embeddings go into a FAISS index
    once for all users, so the fusion cannot depend on the user (the user side is the query tower's
    history pooling; ``AttentionFusion(...)(tokens, mask, context=...)`` takes a context vector for
    models built on top, e.g. a re-ranker).
    """
    model = raw.get("model") if isinstance(raw, Mapping) else None
    if not isinstance(model, Mapping) or "attention_user_conditioned" not in model:
        return raw
    value = model["attention_user_conditioned"]
    if value is not False:
        raise ConfigError(
            f"`model.attention_user_conditioned` = {value!r} is not supported: the item tower's embeddings are "
            "indexed by FAISS once for all users, so the fusion cannot depend on the user; remove the key (the "
            "user side is the query tower's history pooling)"
        )
    logger.warning("`model.attention_user_conditioned` is no longer a setting (it could only be false); ignored")
    return {**raw, "model": {k: v for k, v in model.items() if k != "attention_user_conditioned"}}


def _build(cls: type[Any], raw: Mapping[str, Any], section: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"`{section or 'config'}` must be a table, got {type(raw).__name__}: {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        guesses = [f"{k!r} -> did you mean {close[0]!r}?" for k in unknown if (close := _closest(k, known))]
        hint = f" ({'; '.join(guesses)})" if guesses else ""
        raise ConfigError(f"unknown key(s) {unknown} in `{section or 'config'}`{hint}; known keys: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        where = f"{section}.{name}" if section else name
        kwargs[name] = _coerce(hints[name], value, where)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"`{section or 'config'}`: {err}") from None


def _closest(key: str, known: set[str]) -> list[str]:
    """The known key a misspelled ``key`` most likely meant (empty when none is close)."""
    return difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is tuple:
        (inner, *_rest) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{where}` must be a list, got {value!r}")
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            return tuple(_build(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(_coerce(inner, v, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or len(args) != 1:
            return value
        return _coerce(args[0], value, where)  # ``X | None``: a given value must be an X
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"`{where}` must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"`{where}` must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"`{where}` must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"`{where}` must be a string, got {value!r}")
        return value
    return value
