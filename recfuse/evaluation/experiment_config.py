"""The ``exp.toml`` of ``recfuse experiment``: a base recfuse config, experiment settings, variants.

Layout::

    [experiment]
    name = "fusion"              # output folder name (default: the file's stem)
    base = "recfuse.toml"        # optional base config, relative to this file; inline tables below override it
    control = "attention"        # one of the variants
    seeds = [1, 2, 3]            # train.seed of each run; the split seed (data.split_seed) stays fixed
    metric = "recall@10"         # primary metric: verdicts, Holm family, ablation bars
    ks = [10, 20, 50]
    alpha = 0.05
    n_boot = 2000                # bootstrap replicates (CIs)
    n_perm = 5000                # sign-flip permutations (p-values)

    [model]                      # any recfuse config table (data, model, train, modalities …)
    dim = 32

    [[variants]]
    name = "attention"           # the control may have no overrides
    [[variants]]
    name = "concat"
    overrides = { "model.fusion" = "concat", "model.contrastive_weight" = 0.0 }
    [[variants]]
    name = "text-only"
    modalities = ["text"]        # keep only these modalities of the base config (ablation)
    [[variants]]
    name = "ease"
    kind = "baseline"            # a simple baseline on the same split and protocol, no tower trained:
                                 # popularity | itemknn | ease (the name, or `baseline = "ease"`)

    [baselines]                  # optional: grids and limits of the baselines (BaselineSettings fields)
    ease_lambdas = [100.0, 500.0]

Variants may not override ``data.*``: every variant must see the same split. A baseline is
deterministic: it is fit once and its per-user results stand for every seed.

Example:
    >>> spec = load_experiment("data_samples/experiment.toml")  # doctest: +SKIP
    >>> [v.name for v in spec.variants], spec.control  # doctest: +SKIP
    (['attention', 'concat'], 'attention')
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recfuse.config import RecfuseConfig
from recfuse.config.parse import build_section, load_toml, read_toml
from recfuse.errors import ConfigError
from recfuse.evaluation.baselines import BASELINES, BaselineSettings

PER_USER_METRICS = ("recall", "ndcg", "hit", "precision", "mrr", "novelty")
AGGREGATE_METRICS = ("coverage", "gini")
LOWER_IS_BETTER = ("gini",)
_METRIC_RE = re.compile(r"^([a-z]+)@(\d+)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True, kw_only=True)
class ExperimentSettings:
    """The ``[experiment]`` table as written (:class:`ExperimentSpec` holds what it resolves to).

    Attributes:
        name: experiment name (default output folder ``runs/experiments/<name>``; unset: the file's stem).
        base: optional base recfuse config (TOML), relative to exp.toml; the file's other tables
            (``[model]``, ``[[modalities]]`` …) override it.
        control: the variant the others are compared with (one of ``[[variants]]``).
        seeds: training seeds (each model variant is trained once per seed; ``data.split_seed`` stays fixed).
        metric: primary metric ``name@k`` (per-user metric; k in ``ks``): verdicts, Holm family, ablation bars.
        ks: cut-offs evaluated.
        alpha: significance level (family-wise, Holm).
        n_boot: bootstrap replicates of the confidence intervals.
        n_perm: sign-flip permutations of the p-values.
    """

    name: str = ""
    base: str = ""
    control: str
    seeds: tuple[int, ...]
    metric: str = "recall@10"
    ks: tuple[int, ...] = (10, 20, 50)
    alpha: float = 0.05
    n_boot: int = 2000
    n_perm: int = 5000


_EXPERIMENT_KEYS = {f.name for f in dataclasses.fields(ExperimentSettings)}


@dataclass(frozen=True)
class VariantSpec:
    """One arm of the experiment.

    Attributes:
        name: short name (letters, digits, ``_ . -``), used in paths and tables.
        overrides: dotted config overrides (``{"model.fusion": "concat"}``).
        modalities: names of the base modalities to keep (empty: keep all).
        kind: ``model`` (a trained two-tower run) or ``baseline``.
        baseline: the baseline's name (one of :data:`recfuse.evaluation.baselines.BASELINES`) when
            ``kind`` is ``baseline``.
    """

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    modalities: tuple[str, ...] = ()
    kind: str = "model"
    baseline: str = ""

    @property
    def is_baseline(self) -> bool:
        return self.kind == "baseline"


@dataclass(frozen=True)
class ExperimentSpec:
    """A validated experiment.

    Attributes:
        name: experiment name (default output folder ``runs/experiments/<name>``).
        base: base recfuse config.
        variants: arms in file order; ``control`` is one of them.
        control: the baseline variant name.
        seeds: training seeds (each variant trained once per seed).
        metric: primary metric ``name@k`` (per-user metric; k in ``ks``).
        ks: cut-offs evaluated.
        alpha: significance level (family-wise, Holm).
        n_boot: bootstrap replicates. n_perm: permutations.
        baselines: grids and limits of the baseline variants (``[baselines]`` table).
    """

    name: str
    base: RecfuseConfig
    variants: tuple[VariantSpec, ...]
    control: str
    seeds: tuple[int, ...]
    metric: str = ExperimentSettings.metric
    ks: tuple[int, ...] = ExperimentSettings.ks
    alpha: float = ExperimentSettings.alpha
    n_boot: int = ExperimentSettings.n_boot
    n_perm: int = ExperimentSettings.n_perm
    baselines: BaselineSettings = field(default_factory=BaselineSettings)

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if len(names) < 2:
            raise ConfigError(f"`variants` needs at least 2 entries (a control and a challenger), got {names}")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"`variants[].name` must be unique, got duplicates {dupes}")
        if self.control not in names:
            raise ConfigError(f"`experiment.control` {self.control!r} is not a variant; choose one of {names}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            seeds = list(self.seeds)
            raise ConfigError(f"`experiment.seeds` must be a non-empty list of distinct integers, got {seeds}")
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError(f"`experiment.ks` must be positive integers, got {list(self.ks)}")
        m = _METRIC_RE.match(self.metric)
        if not m or m.group(1) not in PER_USER_METRICS or int(m.group(2)) not in self.ks:
            raise ConfigError(
                f"`experiment.metric` must be NAME@K with NAME in {list(PER_USER_METRICS)} and K in ks "
                f"{list(self.ks)}, got {self.metric!r}"
            )
        if not 0 < self.alpha < 1:
            raise ConfigError(f"`experiment.alpha` must be in (0, 1), got {self.alpha}")
        if self.n_boot < 100 or self.n_perm < 100:
            raise ConfigError(f"`experiment.n_boot` and `n_perm` must be >= 100, got {self.n_boot}, {self.n_perm}")

    def variant(self, name: str) -> VariantSpec:
        for v in self.variants:
            if v.name == name:
                return v
        raise ConfigError(f"no variant named {name!r}; variants: {[v.name for v in self.variants]}")

    def run_config(self, variant: VariantSpec, seed: int) -> RecfuseConfig:
        """The full recfuse config of one run (base + variant overrides + modality subset + seed)."""
        cfg = self.base
        if variant.modalities:
            known = [m.name for m in cfg.modalities]
            unknown = [n for n in variant.modalities if n not in known]
            if unknown:
                raise ConfigError(f"variant {variant.name!r}: `modalities` {unknown} not in the base config {known}")
            raw = cfg.to_dict()
            raw["modalities"] = [m for m in raw["modalities"] if m["name"] in variant.modalities]
            cfg = RecfuseConfig.from_dict(raw)
        try:
            return cfg.with_overrides({**dict(variant.overrides), "train.seed": seed, "bundle.variant": variant.name})
        except ConfigError as err:
            raise ConfigError(f"variant {variant.name!r}: {err}") from None

    def fingerprint(self, variant: VariantSpec, seed: int) -> str:
        """Hash of everything that determines one run's numbers (config, seed, ks; for a baseline:
        its name, settings, the base config's data and protocol, ks — not the seed)."""
        if variant.is_baseline:
            payload: dict[str, Any] = {
                "baseline": variant.baseline,
                "settings": dataclasses.asdict(self.baselines),
                "data": self.base.to_dict()["data"],
                "eval": self.base.to_dict()["eval"],
            }
        else:
            payload = {"config": self.run_config(variant, seed).to_dict()}
        blob = json.dumps({**payload, "ks": list(self.ks)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def higher_is_better(metric: str) -> bool:
    """``gini@k`` (popularity bias) is better when lower; every other metric when higher."""
    return metric.split("@", 1)[0] not in LOWER_IS_BETTER


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _variant(raw: Any, i: int) -> VariantSpec:
    """One ``[[variants]]`` table: keys and types by the config loader, then the variant's own rules."""
    where = f"variants[{i}]"
    spec = build_section(VariantSpec, raw, where)
    if not _NAME_RE.match(spec.name):
        raise ConfigError(f"`{where}.name` must be letters/digits/_.- (used in paths), got {spec.name!r}")
    if spec.kind not in ("model", "baseline"):
        raise ConfigError(f"`{where}.kind` must be 'model' or 'baseline', got {spec.kind!r}")
    if spec.is_baseline:
        baseline = spec.baseline or spec.name
        if baseline not in BASELINES:
            raise ConfigError(
                f"`{where}`: baseline {baseline!r} is not one of {list(BASELINES)}; name the variant after one or "
                "set `baseline = \"ease\"`"
            )
        extra = sorted(set(raw) & {"overrides", "modalities"})
        if extra:
            raise ConfigError(f"`{where}` is a baseline: {extra} do not apply to it (no tower is trained); remove them")
        return dataclasses.replace(spec, baseline=baseline)
    if "baseline" in raw:
        raise ConfigError(f"`{where}.baseline` needs `kind = \"baseline\"`, got kind {spec.kind!r}")
    named = sorted(k for k in spec.overrides if str(k).split(".")[0] in ("variant", "bundle"))
    if named:
        raise ConfigError(
            f"`{where}.overrides` may not change {named}: each run is published under its variant's `name`; "
            "drop the key"
        )
    data_keys = sorted(k for k in spec.overrides if str(k).split(".")[0] == "data")
    if data_keys:
        raise ConfigError(
            f"`{where}.overrides` may not change {data_keys}: every variant must train on the same split; "
            "put data settings in the base config"
        )
    if "modalities" in raw and not spec.modalities:
        raise ConfigError(f"`{where}.modalities` must be a non-empty list of modality names, got []")
    return spec


def parse_experiment(raw: Mapping[str, Any], base_dir: Path, default_name: str = "experiment") -> ExperimentSpec:
    """Build an :class:`ExperimentSpec` from a parsed exp.toml (``base`` resolved against ``base_dir``)."""
    raw = dict(raw)
    if not isinstance(raw.get("experiment"), Mapping):
        raise ConfigError("exp.toml needs an [experiment] table with at least `control` and `seeds`")
    exp = build_section(ExperimentSettings, raw.pop("experiment"), "experiment")
    variants_raw = raw.pop("variants", None)
    settings = build_section(BaselineSettings, raw.pop("baselines", {}), "baselines")
    if not isinstance(variants_raw, list):
        raise ConfigError("exp.toml needs [[variants]] tables (each with a `name`), got none")
    base_raw: dict[str, Any] = {}
    if exp.base:
        base_path = (base_dir / exp.base).resolve()
        base_raw = read_toml(base_path, "`experiment.base`", "give a path relative to exp.toml")
    base = RecfuseConfig.from_written_dict(_merge(base_raw, raw))
    return ExperimentSpec(
        name=exp.name or default_name,
        base=base,
        variants=tuple(_variant(v, i) for i, v in enumerate(variants_raw)),
        control=exp.control,
        seeds=exp.seeds,
        metric=exp.metric,
        ks=exp.ks,
        alpha=exp.alpha,
        n_boot=exp.n_boot,
        n_perm=exp.n_perm,
        baselines=settings,
    )


def load_experiment(path: str | Path) -> ExperimentSpec:
    """Read and validate an exp.toml.

    Raises:
        ConfigError: missing file, invalid TOML, or any invalid field (the message names it).
    """
    p = Path(path)

    def build(raw: dict[str, Any]) -> ExperimentSpec:
        spec = parse_experiment(raw, p.parent, default_name=p.stem)
        for v in spec.variants:  # fail before any training when an override is wrong
            if not v.is_baseline:
                spec.run_config(v, spec.seeds[0])
        return spec

    return load_toml(p, build, "experiment file", "pass --config path/to/exp.toml")
