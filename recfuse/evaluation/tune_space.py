"""The search space of ``recfuse tune``: a TOML file of dotted config keys and their ranges, validated fully
before any training.

Format::

    [study]
    direction = "maximize"        # optional; the validation metric is always maximised
    trials = 20                   # trials per call (--trials overrides)
    minutes = 60                  # wall-clock budget per call (--minutes overrides); a running trial finishes
    seed = 0                      # TPE sampler seed (--seed overrides)
    metric = "val_recall@10"      # sets train.eval_k (--metric overrides); default: the config's eval_k

    [study.pruner]                # optuna MedianPruner; a step is a validated epoch, counted from 1
    n_startup_trials = 5          # completed trials before any pruning
    n_warmup_steps = 0            # a trial is never pruned at an epoch below this

    [params."train.learning_rate"]
    type = "float"                # float | int | categorical
    low = 1e-4
    high = 1e-2
    log = true                    # float/int: sample on a log scale (low > 0); exclusive with step

    [params."train.batch_size"]
    type = "categorical"
    choices = [256, 512, 1024]    # strings, numbers or booleans

    [params."data.max_history"]
    type = "int"
    low = 10
    high = 50
    step = 10

A key is a dotted config key as :meth:`recfuse.config.RecfuseConfig.with_overrides` takes it (a modality by
its name: ``modalities.text.token_dropout``). Keys that would change the dataset or the split are refused:
the study loads both once and every trial must be scored on the same valid split.

Example:
    >>> space = parse_space({"params": {"model.temperature": {"type": "float", "low": 0.02, "high": 0.3}}})
    >>> space.params[0].key, space.trials
    ('model.temperature', 20)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from recfuse.config import RecfuseConfig
from recfuse.config.parse import build_section, load_toml
from recfuse.errors import ConfigError

PARAM_TYPES = ("float", "int", "categorical")
# modality fields that decide which catalog columns the dataset loads
_MODALITY_FIXED = ("name", "kind", "source", "columns", "dim")
_FIXED = {
    "train.out_dir": "each trial trains into OUT/trials/<number>",
    "train.eval_k": "the objective's cut-off is set with --metric / [study] metric",
    "variant": "the variant name is not a hyper-parameter",
}
_METRIC = re.compile(r"val_recall@(\d+)")


@dataclass(frozen=True)
class ParamSpec:
    """One searched config key.

    Attributes:
        key: dotted config key, e.g. ``model.temperature``.
        type: ``float`` | ``int`` | ``categorical``.
        low, high: inclusive bounds (``float`` / ``int``), ``low < high``.
        log: sample on a log scale (needs ``low > 0``; not with ``step``).
        step: grid step (``int`` default 1; ``float`` default continuous).
        choices: the values of a ``categorical`` (strings, numbers or booleans, distinct).
    """

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        where = f'params."{self.key}"'
        if self.type not in PARAM_TYPES:
            raise ConfigError(f"{where}: `type` must be one of {list(PARAM_TYPES)}, got {self.type!r}")
        if not isinstance(self.log, bool):
            raise ConfigError(f"{where}: `log` must be true or false, got {self.log!r}")
        if self.type == "categorical":
            self._check_categorical(where)
        else:
            self._check_range(where)

    def _check_categorical(self, where: str) -> None:
        extra = [n for n in ("low", "high", "step") if getattr(self, n) is not None] + (["log"] if self.log else [])
        if extra:
            raise ConfigError(f"{where}: a categorical takes only `choices`, not {extra}")
        if not self.choices:
            raise ConfigError(f"{where}: `choices` must be a non-empty list, got {list(self.choices)!r}")
        bad = [c for c in self.choices if not isinstance(c, (str, int, float, bool))]
        if bad:
            raise ConfigError(f"{where}: `choices` must be strings, numbers or booleans, got {bad[0]!r}")
        if len({(type(c), c) for c in self.choices}) != len(self.choices):
            raise ConfigError(f"{where}: `choices` must be distinct, got {list(self.choices)!r}")

    def _check_range(self, where: str) -> None:
        if self.choices:
            raise ConfigError(f'{where}: `choices` belongs to type = "categorical", not {self.type!r}')
        number = int if self.type == "int" else (int, float)
        for name in ("low", "high"):
            value = getattr(self, name)
            if value is None:
                raise ConfigError(f"{where}: type {self.type!r} needs `{name}`; add e.g. {name} = 1")
            if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
                kind = "an integer" if self.type == "int" else "a finite number"
                raise ConfigError(f"{where}: `{name}` must be {kind}, got {value!r}")
        lo, hi = cast(float, self.low), cast(float, self.high)  # both checked just above
        if not lo < hi:
            raise ConfigError(f"{where}: `low` must be below `high`, got low = {self.low!r}, high = {self.high!r}")
        if self.log and lo <= 0:
            raise ConfigError(f"{where}: log = true needs low > 0, got low = {self.low!r}")
        if self.step is not None:
            if self.log:
                raise ConfigError(f"{where}: `step` and log = true exclude each other; drop one")
            if isinstance(self.step, bool) or not isinstance(self.step, number) or not self.step > 0:
                kind = "a positive integer" if self.type == "int" else "a positive number"
                raise ConfigError(f"{where}: `step` must be {kind}, got {self.step!r}")

    def samples(self) -> list[Any]:
        """Values that must all be valid for the config: both bounds, or every choice."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]  # type: ignore[arg-type]


@dataclass(frozen=True)
class TuneSpace:
    """A validated search space with its budget and pruner settings (see the module docstring)."""

    params: tuple[ParamSpec, ...]
    trials: int = 20
    minutes: float | None = None
    seed: int = 0
    metric: str | None = None
    n_startup_trials: int = 5
    n_warmup_steps: int = 0

    def __post_init__(self) -> None:
        if not self.params:
            raise ConfigError('the search space declares no [params."KEY"] tables; add at least one')
        keys = [p.key for p in self.params]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ConfigError(f"the search space declares {dupes} more than once")
        _check_int("study.trials", self.trials, 1)
        if self.minutes is not None and (
            isinstance(self.minutes, bool) or not isinstance(self.minutes, (int, float)) or not self.minutes > 0
        ):
            raise ConfigError(f"`study.minutes` must be a positive number, got {self.minutes!r}")
        _check_int("study.seed", self.seed, 0)
        if self.metric is not None:
            metric_k(self.metric)
        _check_int("study.pruner.n_startup_trials", self.n_startup_trials, 0)
        _check_int("study.pruner.n_warmup_steps", self.n_warmup_steps, 0)

    def params_dict(self) -> list[dict[str, Any]]:
        """The params as plain dicts (stored with a study to recognise it when resuming)."""
        return [{**asdict(p), "choices": list(p.choices)} for p in self.params]


def _check_int(where: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"`{where}` must be an integer >= {lo}, got {value!r}")


def metric_k(metric: str) -> int:
    """``"val_recall@10"`` -> 10: the cut-off of the validation metric the trainer reports."""
    m = _METRIC.fullmatch(str(metric))
    if m is None or int(m.group(1)) < 1:
        raise ConfigError(f"metric must be val_recall@K (K >= 1, the trainer's validation Recall@K), got {metric!r}")
    return int(m.group(1))


@dataclass(frozen=True)
class _PrunerTable:
    """``[study.pruner]`` as written; :class:`TuneSpace` checks the values."""

    n_startup_trials: int = 5
    n_warmup_steps: int = 0


@dataclass(frozen=True)
class _StudyTable:
    """``[study]`` as written; :class:`TuneSpace` checks the values."""

    direction: str = "maximize"
    trials: int = 20
    minutes: float | None = None
    seed: int = 0
    metric: str | None = None
    pruner: _PrunerTable = field(default_factory=_PrunerTable)


@dataclass(frozen=True)
class _ParamTable:
    """One ``[params."KEY"]`` as written. Values are left untyped here: :class:`ParamSpec` checks them
    with messages that name the entry and the rule (``low`` below ``high``, an integer for ``int`` …)."""

    type: Any = None
    low: Any = None
    high: Any = None
    log: Any = False
    step: Any = None
    choices: Any = ()


@dataclass(frozen=True)
class _SpaceFile:
    """The top level of a search-space file; each table is built on its own so messages name it."""

    study: Any = None
    params: Any = None


def parse_space(raw: Mapping[str, Any]) -> TuneSpace:
    """Build a :class:`TuneSpace` from parsed TOML; every problem raises :class:`ConfigError` naming the entry.

    Tables go through :func:`recfuse.config.parse.build_section`, like every other config file, so an
    unknown key is named with its table and a did-you-mean hint.
    """
    top = build_section(_SpaceFile, raw, "search space")
    study = build_section(_StudyTable, {} if top.study is None else top.study, "study")
    if study.direction != "maximize":
        raise ConfigError(f'`study.direction` must be "maximize" (the validation metric), got {study.direction!r}')
    params = {} if top.params is None else top.params
    if not isinstance(params, Mapping):
        raise ConfigError(f'`params` must be tables [params."KEY"], got {params!r}')
    specs = []
    for key, entry in params.items():
        table = build_section(_ParamTable, entry, f'params."{key}"')
        if table.type is None:
            raise ConfigError(f'params."{key}": `type` is missing; one of {list(PARAM_TYPES)}')
        if not isinstance(table.choices, list | tuple):
            raise ConfigError(f'params."{key}": `choices` must be a list, got {table.choices!r}')
        specs.append(ParamSpec(key=key, **{**asdict(table), "choices": tuple(table.choices)}))
    return TuneSpace(
        params=tuple(specs),
        trials=study.trials,
        minutes=study.minutes,
        seed=study.seed,
        metric=study.metric,
        n_startup_trials=study.pruner.n_startup_trials,
        n_warmup_steps=study.pruner.n_warmup_steps,
    )


def load_space(path: str | Path) -> TuneSpace:
    """Read and validate a search-space TOML file; every :class:`ConfigError` names the file.

    Raises:
        ConfigError: the file is missing or not valid TOML, or :func:`parse_space` refuses it.
    """
    return load_toml(path, parse_space, "search space file", "pass an existing TOML file")


def _fixed_reason(key: str) -> str | None:
    parts = key.split(".")
    if parts[0] == "data" and len(parts) == 2 and parts[1].startswith("split"):
        return "every trial must see the same split"
    if parts[0] == "data" and key != "data.max_history":
        return "the study loads the dataset and its split once; only data.max_history can vary"
    if parts[0] == "modalities" and len(parts) == 3 and parts[2] in _MODALITY_FIXED:
        return "it decides which catalog columns the dataset loads"
    return _FIXED.get(key)


def check_space(space: TuneSpace, cfg: RecfuseConfig) -> None:
    """Check every key exists in ``cfg`` and every bound / choice gives a valid config, before training.

    Raises:
        ConfigError: naming the ``params."KEY"`` entry and the value that failed.
    """
    for p in space.params:
        reason = _fixed_reason(p.key)
        if reason:
            raise ConfigError(f'params."{p.key}" cannot be searched: {reason}')
        for value in p.samples():
            try:
                cfg.with_overrides({p.key: value})
            except ConfigError as err:
                raise ConfigError(f'params."{p.key}" = {value!r} does not give a valid config: {err}') from None
