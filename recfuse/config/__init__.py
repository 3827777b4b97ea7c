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

from recfuse.config.bundle import BundleConfig
from recfuse.config.data import SPLITS, DataConfig
from recfuse.config.evaluation import EVAL_HISTORIES, EVAL_MASKS, EvalConfig
from recfuse.config.index import DEFAULT_EF_SEARCH, DEFAULT_NPROBE, IndexConfig
from recfuse.config.item_head import ITEM_HEAD_METHODS, ItemHeadConfig
from recfuse.config.modality import (
    IMAGE_SOURCES,
    MODALITY_KINDS,
    TEXT_ENCODERS,
    TEXT_SOURCES,
    ModalityConfig,
    default_modalities,
)
from recfuse.config.model import ALIGNMENTS, FUSIONS, ModelConfig, default_attention_heads
from recfuse.config.root import RecfuseConfig
from recfuse.config.train import TrainConfig

__all__ = [
    "BundleConfig",
    "ALIGNMENTS",
    "DEFAULT_EF_SEARCH",
    "DEFAULT_NPROBE",
    "EVAL_HISTORIES",
    "EVAL_MASKS",
    "FUSIONS",
    "IMAGE_SOURCES",
    "MODALITY_KINDS",
    "SPLITS",
    "TEXT_ENCODERS",
    "TEXT_SOURCES",
    "DataConfig",
    "EvalConfig",
    "IndexConfig",
    "ItemHeadConfig",
    "ITEM_HEAD_METHODS",
    "ModalityConfig",
    "ModelConfig",
    "RecfuseConfig",
    "TrainConfig",
    "default_attention_heads",
    "default_modalities",
]
