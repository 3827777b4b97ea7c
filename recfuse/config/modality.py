"""``[[modalities]]``: one item modality each (a branch of the candidate tower)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from recfuse.config.checks import check_choice, check_range
from recfuse.config.parse import to_plain
from recfuse.errors import ConfigError

MODALITY_KINDS = ("image", "text", "vector", "categorical")
IMAGE_SOURCES = ("raw", "backbone", "vector")
TEXT_SOURCES = ("tokens", "vector")
TEXT_ENCODERS = ("mean", "transformer")

#: the kinds each kind-specific key applies to (a key not listed applies to every kind). A config file
#: that sets one in a table of another kind is refused (:func:`check_kind_keys`), so a key copied into
#: the wrong [[modalities]] table is not silently ignored; :class:`ModalityConfig` (what ``from_dict``
#: builds) does not refuse them for being there, so stored configs, which hold every key, keep loading
KIND_KEYS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("image_size", "backbone", "backbone_weights", "trainable", "cnn_filters"), ("image",)),
    **dict.fromkeys(("cnn_convs_per_block", "augment", "augment_shift"), ("image",)),
    **dict.fromkeys(("encoder", "max_tokens", "char_ngrams", "encoder_layers", "encoder_heads"), ("text",)),
    **dict.fromkeys(("encoder_ff_dim", "encoder_dropout", "min_item_count", "token_dropout"), ("text",)),
    **dict.fromkeys(("vocab_size", "embedding_dim"), ("text", "categorical")),
}


def key_kinds(key: str) -> tuple[str, ...]:
    """The modality kinds ``key`` applies to (every kind for a key that is not kind-specific)."""
    return KIND_KEYS.get(key, MODALITY_KINDS)


def check_kind_keys(table: object, where: str) -> None:
    """Refuse the keys of a written ``[[modalities]]`` table that do not apply to its ``kind``.

    A key is refused for being written at all, whatever its value (its default included). A full
    dump of a config for a file to hold (``tune``'s best.toml) is :func:`written_modality` of each
    modality, which leaves such keys out.

    Raises:
        ConfigError: e.g. ``max_tokens`` (text only) in a table of kind ``image``.
    """
    if not isinstance(table, dict) or table.get("kind") not in MODALITY_KINDS:
        return  # ModalityConfig names a missing or unknown kind
    for key in table:
        kinds = KIND_KEYS.get(key)
        if kinds and table["kind"] not in kinds:
            raise ConfigError(
                f"`{where}.{key}` applies to kind {' and '.join(repr(k) for k in kinds)} only, got kind "
                f"{table['kind']!r}; remove it"
            )


def written_modality(table: dict[str, Any]) -> dict[str, Any]:
    """A ``[[modalities]]`` table of ``to_dict`` without the keys of other kinds that hold their default.

    What a config file holds (:func:`check_kind_keys` refuses those keys); a key of another kind
    set to another value stays, so the file is refused rather than read as a different config.
    """
    base = ModalityConfig(**{k: v for k, v in table.items() if k in ("name", "kind", "source", "columns", "dim")})
    default = to_plain(dataclasses.asdict(base))
    return {
        k: v for k, v in table.items() if table["kind"] in key_kinds(k) or k not in default or to_plain(v) != default[k]
    }


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
        image_size: images are resized to ``image_size`` x ``image_size`` pixels (raw CNN and backbone).
        backbone: ``tf.keras.applications`` model of ``source = "backbone"`` (e.g. ``mobilenet_v3_small``).
        backbone_weights: local weights file (.h5) of the backbone; nothing is downloaded, and empty means
            random initialisation.
        trainable: fine-tune the backbone's weights while training (``false`` keeps them frozen).
        encoder: token text: ``mean`` (masked mean of the token embeddings) or ``transformer``
            (``encoder_layers`` Transformer blocks with learned positions, then the masked mean).
        vocab_size: token text and categorical: vocabulary size including the padding and OOV ids (the
            ``vocab_size - 2`` most frequent tokens or categories of the catalog are kept).
        max_tokens: token text: tokens read per item (longer texts are truncated).
        char_ngrams: token text: longest character n-gram emitted for Chinese / Japanese runs (1 =
            single characters; words elsewhere are whitespace tokens).
        embedding_dim: token text and categorical: width of the token / category embeddings (the
            branch's output, before alignment to ``model.dim``).
        encoder_layers: token text with ``encoder = "transformer"``: Transformer blocks.
        encoder_heads: token text with ``encoder = "transformer"``: attention heads of each block.
        encoder_ff_dim: token text with ``encoder = "transformer"``: hidden width of each block's
            feed-forward net; 0 (the default) means ``2 * embedding_dim``.
        encoder_dropout: token text with ``encoder = "transformer"``: dropout of each block's attention
            and feed-forward outputs while training (default 0: off).
        cnn_filters: raw-image CNN: output channels of each conv block (the last one is the feature
            width); four blocks by default.
        cnn_convs_per_block: raw-image CNN: 3x3 conv layers per block (default 1).
        augment: raw-image CNN only: random left-right flips and shifts of up to ``augment_shift`` of the side
            while training (inference unchanged). Default on; set false for pictures whose
            orientation carries meaning (text in the image, for example).
        augment_shift: raw-image CNN with ``augment`` only: the largest random shift while training,
            as a fraction of the image side, in [0, 0.5) (default 0.125 = 1/8; 0 keeps the flips only).
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
    encoder_ff_dim: int = 0
    encoder_dropout: float = 0.0
    # raw-image CNN: output channels of each conv block (the last one is the feature width); four
    # blocks by default, trained with flips and shifts (``augment``)
    cnn_filters: tuple[int, ...] = (16, 32, 64, 128)
    # raw-image CNN: 3x3 conv layers per block (default 1)
    cnn_convs_per_block: int = 1
    # raw-image CNN: random flips and shifts while training. Unset: on for a raw-image CNN, off (and
    # not allowed) elsewhere
    augment: bool | None = None
    augment_shift: float = 0.125

    def __post_init__(self) -> None:
        sec = f"modalities.{self.name or '?'}"
        if not self.name:
            raise ConfigError("`modalities[].name` must be a non-empty string, got ''")
        check_choice(sec, "kind", self.kind, MODALITY_KINDS)
        if self.kind == "image":
            object.__setattr__(self, "source", self.source or "raw")
            check_choice(sec, "source", self.source, IMAGE_SOURCES)
            object.__setattr__(self, "columns", tuple(self.columns) or ("image",))
        elif self.kind == "text":
            object.__setattr__(self, "source", self.source or "tokens")
            check_choice(sec, "source", self.source, TEXT_SOURCES)
            check_choice(sec, "encoder", self.encoder, TEXT_ENCODERS)
            object.__setattr__(self, "columns", tuple(self.columns) or ("title", "description"))
        elif self.kind == "vector":
            object.__setattr__(self, "source", "vector")
            object.__setattr__(self, "columns", tuple(self.columns) or (f"{self.name}_vec",))
        else:
            object.__setattr__(self, "source", "categorical")
            object.__setattr__(self, "columns", tuple(self.columns) or ("categories",))
        if self.source == "vector" and self.dim <= 0:
            raise ConfigError(f"`{sec}.dim` must be the width of column {self.columns[0]!r} (> 0), got {self.dim}")
        check_range(sec, "image_size", self.image_size, 16, 1024)
        check_range(sec, "max_tokens", self.max_tokens, 1, 4096)
        check_range(sec, "vocab_size", self.vocab_size, 3, 10_000_000)
        check_range(sec, "min_item_count", self.min_item_count, 1, 1_000_000)
        raw_image = self.kind == "image" and self.source == "raw"
        if self.augment is None:
            object.__setattr__(self, "augment", raw_image)
        if self.augment and not raw_image:
            raise ConfigError(
                f"`{sec}.augment` applies to the raw-image CNN only (kind 'image', source 'raw'), "
                f"got kind {self.kind!r} source {self.source!r}; remove it"
            )
        if not 0.0 <= self.augment_shift < 0.5:
            raise ConfigError(f"`{sec}.augment_shift` must be in [0, 0.5), got {self.augment_shift!r}")
        if self.augment_shift != ModalityConfig.augment_shift and not self.augment:
            raise ConfigError(
                f"`{sec}.augment_shift` applies to the raw-image CNN with `augment` on only, got kind {self.kind!r} "
                f"source {self.source!r} augment {self.augment}; remove it"
            )
        if self.min_item_count != 1 and not (self.kind == "text" and self.source == "tokens"):
            raise ConfigError(
                f"`{sec}.min_item_count` applies to token text only (kind 'text', source 'tokens'), "
                f"got kind {self.kind!r} source {self.source!r}; remove it"
            )
        check_range(sec, "token_dropout", self.token_dropout, 0.0, 0.9)
        if self.token_dropout and not (self.kind == "text" and self.source == "tokens"):
            raise ConfigError(
                f"`{sec}.token_dropout` applies to token text only (kind 'text', source 'tokens'), "
                f"got kind {self.kind!r} source {self.source!r}; remove it"
            )
        check_range(sec, "char_ngrams", self.char_ngrams, 1, 8)
        check_range(sec, "embedding_dim", self.embedding_dim, 1, 65536)
        check_range(sec, "encoder_layers", self.encoder_layers, 1, 24)
        check_range(sec, "encoder_heads", self.encoder_heads, 1, 64)
        check_range(sec, "encoder_ff_dim", self.encoder_ff_dim, 0, 65536)
        check_range(sec, "encoder_dropout", self.encoder_dropout, 0.0, 0.9)
        check_range(sec, "cnn_convs_per_block", self.cnn_convs_per_block, 1, 8)
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
