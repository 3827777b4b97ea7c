"""The whole configuration (:class:`RecfuseConfig`): its sections, loading, overrides and migration."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recfuse.config.bundle import BundleConfig
from recfuse.config.data import DataConfig
from recfuse.config.evaluation import EvalConfig
from recfuse.config.index import IndexConfig
from recfuse.config.item_head import ItemHeadConfig
from recfuse.config.modality import ModalityConfig, check_kind_keys, default_modalities, key_kinds, written_modality
from recfuse.config.model import ModelConfig
from recfuse.config.parse import build_section, closest, load_toml, other_table, to_plain
from recfuse.config.train import TrainConfig
from recfuse.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecfuseConfig:
    """The whole configuration of a training run (stored beside the weights and in each bundle)."""

    data: DataConfig = field(default_factory=DataConfig)
    modalities: tuple[ModalityConfig, ...] = field(default_factory=default_modalities)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bundle: BundleConfig = field(default_factory=BundleConfig)
    item_head: ItemHeadConfig = field(default_factory=ItemHeadConfig)

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
        content = self.item_head.content_modality
        if content:
            sources = {m.name: m.source for m in self.modalities}
            if not self.item_head.enabled:
                raise ConfigError(
                    f"`item_head.content_modality` = {content!r} adds a term to the item head, but "
                    "`item_head.method` is 'none': set a method (e.g. 'ease'), or content_modality = ''"
                )
            if sources.get(content) != "vector":
                vectors = sorted(n for n, src in sources.items() if src == "vector")
                raise ConfigError(
                    f"`item_head.content_modality` = {content!r} must name a declared modality with vector "
                    f"input (kind 'vector', or source 'vector'); those here: {vectors or 'none'}"
                )
        if self.train.refit_epochs and self.item_head.enabled:
            grids = {name: v for name, v in self.item_head.choice_grids().items() if len(v) != 1}
            if grids:
                raise ConfigError(
                    f"`train.refit_epochs` = {self.train.refit_epochs} trains without a selection run, so the "
                    f"{self.item_head.method} item head has no validation to choose on, and {grids} hold several "
                    "values: give each `item_head` grid named there one value, or set refit_epochs = 0"
                )

    @property
    def variant(self) -> str:
        """The name this model is published and served under (``bundle.variant``)."""
        return self.bundle.variant

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
        return build_section(cls, _migrated(raw), "")

    @classmethod
    def from_toml(cls, path: str | Path) -> RecfuseConfig:
        """Load a TOML file. Relative data paths stay as written (resolved by the caller's cwd).

        Raises:
            ConfigError: the file is missing or not TOML, or a key or value is invalid (the message
                starts with the file's path and names the key).
        """
        return load_toml(path, cls.from_written_dict, "config file", "pass an existing TOML file")

    @classmethod
    def from_written_dict(cls, raw: Mapping[str, Any]) -> RecfuseConfig:
        """:meth:`from_dict` of a config a person wrote (a TOML file, an experiment's tables).

        Also refuses a key of another modality kind in a ``[[modalities]]`` table (``max_tokens`` in
        an image modality), even at its default, which :meth:`from_dict` cannot: a stored config
        holds every key of every modality. :meth:`to_written_dict` is what such a file holds.
        """
        modalities = raw.get("modalities") if isinstance(raw, Mapping) else None
        for i, table in enumerate(modalities if isinstance(modalities, list) else []):
            name = table.get("name") if isinstance(table, dict) else None
            check_kind_keys(table, f"modalities.{name}" if isinstance(name, str) and name else f"modalities[{i}]")
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; ``from_dict(to_dict())`` gives an equal config."""
        return to_plain(dataclasses.asdict(self))

    def to_written_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` as a config file holds it: each modality without the other kinds' keys.

        :meth:`from_written_dict` of it gives an equal config.
        """
        raw = self.to_dict()
        return {**raw, "modalities": [written_modality(m) for m in raw["modalities"]]}

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
                    close = closest(part, sections)
                    hint = f"; did you mean {close[0]!r}?" if close else f"; sections: {sorted(sections)}"
                    raise ConfigError(f"override {dotted!r}: unknown section {part!r}{hint}")
                node = node[part]
            if isinstance(node, list):
                raise ConfigError(f"override {dotted!r}: name a modality, e.g. 'modalities.text.{parts[-1]}'")
            if parts[0] == "modalities" and len(parts) == 3:
                check_kind_keys({"kind": node.get("kind"), parts[-1]: value}, f"modalities.{parts[1]}")
            if parts[-1] not in node:
                hint = _override_hint(parts, node, raw)
                raise ConfigError(f"override {dotted!r}: unknown key {parts[-1]!r}{hint}; known: {sorted(node)}")
            node[parts[-1]] = value
        return RecfuseConfig.from_dict(raw)

    def modality(self, name: str) -> ModalityConfig:
        for m in self.modalities:
            if m.name == name:
                return m
        raise ConfigError(f"no modality named {name!r}; configured: {[m.name for m in self.modalities]}")


def _override_hint(parts: list[str], node: Mapping[str, Any], raw: Mapping[str, Any]) -> str:
    """The did-you-mean of the unknown last key of the override ``parts``: a close key of its table
    (``node``), else the same key (or a close one) in another section of ``raw``, as an override."""
    if close := closest(parts[-1], set(node)):
        return f"; did you mean {close[0]!r}?"
    sections = {name: set(value) for name, value in raw.items() if isinstance(value, dict) and name != parts[0]}
    if parts[0] != "modalities" and isinstance(raw.get("modalities"), list):
        for m in (m for m in raw["modalities"] if isinstance(m, dict)):
            sections[f"modalities.{m.get('name')}"] = {k for k in m if m.get("kind") in key_kinds(k)}
    other = other_table(parts[-1], sections)
    return f"; did you mean {' or '.join(repr(f'{t}.{k}') for t, k in other)}?" if other else ""


def _migrated(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """``raw`` without keys that no longer exist (stored configs keep loading), each with a warning.

    A top-level ``variant`` (its place before ``[bundle]``; it defaulted to the fusion's name) moves to
    ``bundle.variant``, so a stored model keeps publishing under the name it was trained with.

    ``model.attention_user_conditioned`` could only be false: item embeddings go into a FAISS index
    once for all users, so the fusion cannot depend on the user (the user side is the query tower's
    history pooling; ``AttentionFusion(...)(tokens, mask, context=...)`` takes a context vector for
    models built on top, e.g. a re-ranker).
    """
    if isinstance(raw, Mapping) and "variant" in raw:
        bundle = raw.get("bundle")
        if isinstance(bundle, Mapping) and "variant" in bundle:
            raise ConfigError(
                f"`variant` = {raw['variant']!r} and `bundle.variant` = {bundle['variant']!r} are both set; "
                "keep `bundle.variant` only"
            )
        logger.warning("top-level `variant` is now `[bundle] variant`; read as bundle.variant = %r", raw["variant"])
        rest = {k: v for k, v in raw.items() if k != "variant"}
        raw = {**rest, "bundle": {**(bundle if isinstance(bundle, Mapping) else {}), "variant": raw["variant"]}}
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
