"""Candidate (item) tower: modality branches -> alignment -> (modality dropout) -> fusion -> ``[b, d]``.

Each configured modality has an encoder (small CNN or application backbone for images, token
embeddings + mean/Transformer for text, category embeddings, or the identity for a precomputed
vector column) and a projection into the shared ``d``-dimensional space; the optional item-id
embedding is one more token whose mask is 1 only for warm items. Tokens ``[b, M, d]`` with their
presence mask ``[b, M]`` go through the fusion variant named by ``cfg.model.fusion``.

While training, present modalities are dropped at ``cfg.model.modality_dropout`` (the id token at
``cfg.model.item_id_dropout``), keeping at least one, and — when the config has an image and a
text modality and ``cfg.model.contrastive_weight > 0`` — a symmetric InfoNCE between the image and
text tokens of items having both is added with ``add_loss``.

The input is the dict of :func:`recfuse.data.item_features.build_item_features` (rows gathered per
batch). Vocabularies (text tokens, categories) are computed on the catalog by
:func:`build_candidate_tower` (with :func:`recfuse.data.modality_vocab.catalog_vocabularies`) and
stored in the tower's config (:meth:`CandidateTower.get_config`), so a tower rebuilt from
``CandidateTower.from_config(tower.get_config())`` (or with the saved ``tower.vocabularies``) accepts
the same weights.

Example:
    >>> tower = build_candidate_tower(cfg, items, item_vocab)                    # doctest: +SKIP
    >>> emb = tower(build_item_features(items, cfg, images_dir, item_vocab))     # doctest: +SKIP
    >>> emb.shape                                                                # doctest: +SKIP
    TensorShape([n, 64])
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from recfuse.config import ModalityConfig, RecfuseConfig
from recfuse.data.item_features import CATEGORY_SEPARATOR, check_modality_names
from recfuse.data.modality_vocab import catalog_vocabularies
from recfuse.data.vocab import IdVocab
from recfuse.errors import ConfigError, SchemaError
from recfuse.layers.alignment import ModalityProjection, info_nce
from recfuse.layers.categorical import CategoryEncoder
from recfuse.layers.fusion import Fusion, make_fusion
from recfuse.layers.image import BackboneEncoder, ImageCNN
from recfuse.layers.masking import ModalityDropout
from recfuse.layers.text import TextEncoder

logger = logging.getLogger(__name__)

ITEM_ID_TOKEN = "item_id"


def _encoder(m: ModalityConfig, vocabularies: Mapping[str, Sequence[str]]) -> tf.keras.layers.Layer | None:
    """The modality's encoder (``None`` = the input vector itself)."""
    if m.source == "vector":
        return None
    if m.kind == "image":
        if m.source == "backbone":
            return BackboneEncoder(m.backbone, m.image_size, m.backbone_weights, m.trainable, name=f"{m.name}_backbone")
        return ImageCNN(
            m.cnn_filters,
            augment=bool(m.augment),
            augment_shift=m.augment_shift,
            convs_per_block=m.cnn_convs_per_block,
            name=f"{m.name}_cnn",
        )
    if m.kind == "text":
        return TextEncoder(
            vocabularies.get(m.name, ()),
            max_tokens=m.max_tokens,
            embedding_dim=m.embedding_dim,
            encoder=m.encoder,
            num_layers=m.encoder_layers,
            num_heads=m.encoder_heads,
            token_dropout=m.token_dropout,
            ff_dim=m.encoder_ff_dim,
            dropout=m.encoder_dropout,
            name=f"{m.name}_text",
        )
    return CategoryEncoder(vocabularies.get(m.name, ()), m.embedding_dim, CATEGORY_SEPARATOR, name=f"{m.name}_cat")


def feature_specs(cfg: RecfuseConfig) -> dict[str, tf.TensorSpec]:
    """``{feature name: TensorSpec}`` of the tower's input (batch dimension ``None``)."""
    specs = {
        "item_idx": tf.TensorSpec([None], tf.int64, name="item_idx"),
        "item_id_mask": tf.TensorSpec([None], tf.float32, name="item_id_mask"),
    }
    if cfg.model.item_id_buckets:
        specs["item_id_row"] = tf.TensorSpec([None], tf.int64, name="item_id_row")
    for m in cfg.modalities:
        if m.source == "vector":
            spec = tf.TensorSpec([None, m.dim], tf.float32, name=m.name)
        elif m.kind == "image":
            spec = tf.TensorSpec([None, m.image_size, m.image_size, 3], tf.float32, name=m.name)
        else:
            spec = tf.TensorSpec([None], tf.string, name=m.name)
        specs[m.name] = spec
        specs[f"{m.name}_mask"] = tf.TensorSpec([None], tf.float32, name=f"{m.name}_mask")
    return specs


def dummy_features(cfg: RecfuseConfig, batch: int = 1) -> dict[str, tf.Tensor]:
    """All-missing features of ``batch`` items (used to build the tower's variables)."""
    out: dict[str, tf.Tensor] = {}
    for name, spec in feature_specs(cfg).items():
        shape = [batch, *spec.shape[1:]]
        out[name] = tf.fill(shape, "") if spec.dtype == tf.string else tf.zeros(shape, spec.dtype)
    return out


@tf.keras.utils.register_keras_serializable(package="recfuse")
class CandidateTower(tf.keras.Model):
    """Multimodal item tower.

    Args:
        config: the run configuration (a :class:`RecfuseConfig` or its ``to_dict()``).
        vocabularies: ``{modality name: tokens}`` for text-token and categorical modalities.
        item_rows: rows of the item-id embedding (``item_vocab.size``, or ``model.item_id_buckets``
            when set: items then read the row their ``item_id_row`` feature names); 0 disables the
            id token.

    Call:
        features ``{name: [b, ...]}`` (see :func:`feature_specs`) -> ``[b, d]`` (L2-normalised when
        ``cfg.model.normalize``).
    """

    def __init__(
        self,
        config: RecfuseConfig | Mapping[str, Any],
        vocabularies: Mapping[str, Sequence[str]] | None = None,
        item_rows: int = 0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("name", "candidate_tower")
        super().__init__(**kwargs)
        cfg = config if isinstance(config, RecfuseConfig) else RecfuseConfig.from_dict(config)
        check_modality_names(cfg)
        self.cfg = cfg
        self.vocabularies = {k: [str(t) for t in v] for k, v in (vocabularies or {}).items()}
        self.item_rows = int(item_rows) if cfg.model.item_id_embedding else 0
        mc = cfg.model
        self.dim = mc.dim
        self.modality_names = [m.name for m in cfg.modalities]
        self.encoders = {m.name: _encoder(m, self.vocabularies) for m in cfg.modalities}
        self.projections = {
            m.name: ModalityProjection(
                mc.dim,
                mc.alignment,
                hidden=mc.alignment_hidden,
                normalize=mc.normalize_tokens,
                seed=i,
                name=f"{m.name}_align",
            )
            for i, m in enumerate(cfg.modalities)
        }
        self.id_embedding = (
            tf.keras.layers.Embedding(self.item_rows, mc.dim, name="item_id_embedding") if self.item_rows else None
        )
        self.token_names = self.modality_names + ([ITEM_ID_TOKEN] if self.id_embedding is not None else [])
        if not self.token_names:
            raise ConfigError(
                "the candidate tower has no input: declare a modality or enable `model.item_id_embedding`"
            )
        rates = [mc.modality_dropout] * len(self.modality_names)
        if self.id_embedding is not None:
            rates.append(mc.item_id_dropout)
        self.modality_dropout = ModalityDropout(rates, name="modality_dropout")
        kinds = [m.kind for m in cfg.modalities]
        self.image_index = kinds.index("image") if "image" in kinds else -1
        self.text_index = kinds.index("text") if "text" in kinds else -1
        assert mc.attention_heads is not None  # ModelConfig resolves an unset value from ``dim``
        self.fusion: Fusion = make_fusion(
            mc.fusion,
            mc.dim,
            len(self.token_names),
            primary_index=self.image_index,
            hidden=mc.fusion_hidden,
            num_heads=mc.attention_heads,
            weighted_lambda=mc.weighted_lambda,
            learn_lambda=mc.learn_lambda,
            encoder_layers=mc.attention_layers,
            dropout=mc.attention_dropout,
            gated_hidden=mc.gated_hidden,
        )
        self.contrastive_weight = mc.contrastive_weight if self.image_index >= 0 and self.text_index >= 0 else 0.0

    def _mask(self, features: Mapping[str, tf.Tensor], key: str) -> tf.Tensor:
        if key not in features:
            raise SchemaError(
                f"candidate-tower features lack {key!r}; got {sorted(features)} (use build_item_features)"
            )
        return tf.reshape(tf.cast(features[key], tf.float32), [-1])

    def modality_tokens(
        self, features: Mapping[str, tf.Tensor], training: bool | None = False
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Aligned modality tokens ``[b, M, d]`` and their presence mask ``[b, M]`` (before dropout).

        Token order: the configured modalities, then the item-id token (when enabled).
        """
        tokens, masks = [], []
        for name in self.modality_names:
            if name not in features:
                raise SchemaError(f"candidate-tower features lack modality {name!r}; got {sorted(features)}")
            x = features[name]
            enc = self.encoders[name]
            h = enc(x, training=training) if enc is not None else tf.cast(x, tf.float32)
            tokens.append(self.projections[name](h))
            masks.append(self._mask(features, f"{name}_mask"))
        if self.id_embedding is not None:
            row_key = "item_id_row" if self.cfg.model.item_id_buckets else "item_idx"  # hashed: row = bucket
            if row_key not in features:
                raise SchemaError(
                    f"candidate-tower features lack {row_key!r}; got {sorted(features)} (use build_item_features)"
                )
            idx = tf.reshape(tf.cast(features[row_key], tf.int64), [-1])
            in_range = tf.logical_and(idx >= 0, idx < self.item_rows)
            emb = self.id_embedding(tf.where(in_range, idx, tf.zeros_like(idx)))
            tokens.append(tf.math.l2_normalize(emb, axis=-1) if self.cfg.model.normalize_tokens else emb)
            masks.append(self._mask(features, "item_id_mask") * tf.cast(in_range, tf.float32))
        return tf.stack(tokens, axis=1), tf.stack(masks, axis=1)

    def embed_with_tokens(
        self, features: Mapping[str, tf.Tensor], training: bool | None = False
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The fused embedding ``[b, d]`` plus the aligned tokens ``[b, M, d]`` and mask ``[b, M]`` it came from.

        The mask is the presence mask before modality dropout. Used by the per-modality auxiliary
        loss (``model.modality_loss_weight``), which scores each content token alone. Goes through
        ``__call__`` (so the contrastive ``add_loss`` is recorded as usual).
        """
        z, tokens, mask = self(features, training=training, return_tokens=True)
        return z, tokens, mask

    def call(
        self, features: Mapping[str, tf.Tensor], training: bool | None = False, return_tokens: bool = False
    ) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        tokens, mask = self.modality_tokens(features, training=training)
        if training and self.contrastive_weight > 0:
            both = mask[:, self.image_index] * mask[:, self.text_index]
            loss = info_nce(
                tokens[:, self.image_index],
                tokens[:, self.text_index],
                both > 0,
                self.cfg.model.temperature,
                ids=features.get("item_idx"),  # a popular item twice in a batch is not its own negative
            )
            self.add_loss(self.contrastive_weight * loss)
        dropped = self.modality_dropout(mask, training=training)
        z = self.fusion(tokens, dropped, training=training)
        z = tf.math.l2_normalize(z, axis=-1) if self.cfg.model.normalize else z
        return (z, tokens, mask) if return_tokens else z

    @property
    def content_token_count(self) -> int:
        """How many leading tokens are content modalities (the item-id token, if any, comes last)."""
        return len(self.modality_names)

    def prepare_features(self, table: Mapping[str, np.ndarray], batch_size: int = 4096) -> dict[str, np.ndarray]:
        """Replace string text/category columns by their int64 ids, once for the whole catalog.

        The tower gives identical outputs on the prepared table, but a training step then gathers
        integer rows instead of splitting and hashing strings every batch. The string form stays
        the serving contract (:meth:`serving_function`).

        Args:
            table: output of :func:`recfuse.data.item_features.build_item_features`.
            batch_size: rows vectorised per call.

        Returns:
            A new dict: text-token modalities ``[n, max_tokens]`` int64, categorical ``[n, C]``
            int64 (``C`` = most categories of any item), everything else unchanged.

        Example:
            >>> table = tower.prepare_features(build_item_features(items, cfg, images_dir, vocab))  # doctest: +SKIP
        """
        out = dict(table)
        for name in self.modality_names:
            enc = self.encoders[name]
            if not isinstance(enc, (TextEncoder, CategoryEncoder)) or name not in table:
                continue
            values = np.asarray(table[name])
            if values.dtype != object and values.dtype.kind not in ("U", "S"):
                continue  # already ids
            to_ids = enc.token_ids if isinstance(enc, TextEncoder) else enc.category_ids
            parts = [to_ids(tf.constant(values[s : s + batch_size])).numpy() for s in range(0, len(values), batch_size)]
            width = max([p.shape[1] for p in parts], default=1)
            ids = np.zeros((len(values), width), dtype=np.int64)
            row = 0
            for p in parts:
                ids[row : row + len(p), : p.shape[1]] = p
                row += len(p)
            out[name] = ids
        return out

    def serving_function(self) -> tf.types.experimental.GenericFunction:
        """A ``tf.function`` with an explicit input signature (for ``tf.saved_model.save``)."""
        specs = feature_specs(self.cfg)

        @tf.function(input_signature=[specs])
        def serve(features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            return {"embedding": self(features, training=False)}

        return serve

    def get_config(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "vocabularies": {k: list(v) for k, v in self.vocabularies.items()},
            "item_rows": self.item_rows,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> CandidateTower:
        tower = cls(**config)
        tower.build_with_dummy()
        return tower

    def build_with_dummy(self) -> None:
        """Create every variable by calling the tower once on an all-missing batch."""
        self(dummy_features(self.cfg, 1), training=False)


def build_candidate_tower(
    cfg: RecfuseConfig,
    items: pd.DataFrame | None,
    item_vocab: IdVocab,
    vocabularies: Mapping[str, Sequence[str]] | None = None,
) -> CandidateTower:
    """Build (and create the variables of) the candidate tower for a catalog.

    Args:
        cfg: configuration.
        items: catalog used to compute the text/category vocabularies (may be ``None`` when
            ``vocabularies`` is given, e.g. when reloading a trained model).
        item_vocab: item vocabulary (size of the item-id embedding, unless ``model.item_id_buckets``
            sets it).
        vocabularies: saved ``tower.vocabularies`` to reuse instead of computing them.

    Returns:
        A built :class:`CandidateTower`.
    """
    if vocabularies is None:
        if items is None:
            raise ConfigError("build_candidate_tower needs `items` (catalog) or saved `vocabularies`; got neither")
        vocabularies = catalog_vocabularies(items, cfg)
    tower = CandidateTower(cfg, vocabularies, item_rows=cfg.model.item_id_buckets or item_vocab.size)
    tower.build_with_dummy()
    n_params = int(np.sum([np.prod(v.shape) for v in tower.trainable_variables]))
    logger.info(
        "candidate tower: fusion=%s tokens=%s trainable params=%d", cfg.model.fusion, tower.token_names, n_params
    )
    return tower
