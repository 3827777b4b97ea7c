"""Hyper-parameter search with Optuna on the valid split (``recfuse tune``; needs the ``tune`` extra).

Each trial is the base config plus overrides sampled from a :class:`~recfuse.evaluation.tune_space.TuneSpace`
(TPE sampler), trained with :func:`recfuse.training.trainer.train`; the objective is the best validation
Recall@K the trainer reports (the valid split; the test split is never read). The validation metric of
every epoch is reported to a ``MedianPruner``, which stops unpromising trials early. The dataset and the
split are loaded once per study.

Output directory layout::

    OUT/study.db              the default storage (SQLite): calling again continues the same study
    OUT/trials/<number>/      the model directory of each trial (only the best one's is kept unless
                              keep_models)
    OUT/trials.json           every trial of the study: number, state, params, value, epochs, seconds
    OUT/best.toml             the full config of the best trial (``recfuse train --config OUT/best.toml``)

A study remembers the base config, the params and the metric it was started with; continuing it with
other ones is refused (its trials would not be comparable).

Example:
    >>> cfg = RecfuseConfig.from_toml("data_samples/recfuse.toml")                 # doctest: +SKIP
    >>> space = load_space("data_samples/tune_space.toml")                        # doctest: +SKIP
    >>> outcome = run_study(cfg, space, "runs/tune", trials=10, minutes=30)       # doctest: +SKIP
    >>> outcome.best.value, outcome.best_toml                                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from recfuse.config import RecfuseConfig
from recfuse.errors import ConfigError, RecfuseError
from recfuse.evaluation.tune_space import ParamSpec, TuneSpace, check_space, metric_k
from recfuse.evaluation.tune_toml import config_toml
from recfuse.fsio import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

STUDY_NAME = "recfuse"
_FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def require_optuna() -> ModuleType:
    """Import optuna, or raise :class:`ConfigError` naming the extra that provides it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "hyper-parameter search needs Optuna, the optional `tune` extra: pip install 'recfuse[tune]'"
        ) from None
    return optuna


@dataclass(frozen=True)
class TrialRecord:
    """One trial as listed in trials.json.

    ``value`` is the best validation metric of a complete trial, the metric of the epoch a pruned trial
    stopped at, ``None`` for a failed one (``error`` says why).
    """

    number: int
    state: str
    params: dict[str, Any]
    value: float | None
    epochs: int | None
    seconds: float | None
    model_dir: str | None
    error: str | None = None


@dataclass(frozen=True)
class TuneOutcome:
    """What :func:`run_study` produced: every trial of the study (this call's and earlier ones)."""

    out_dir: Path
    metric: str
    storage: str
    trials: list[TrialRecord]
    ran: int
    best: TrialRecord | None
    best_config: RecfuseConfig | None
    best_toml: Path | None
    trials_path: Path


def storage_url(storage: str | None, out_dir: Path) -> str:
    """``None`` -> SQLite in ``out_dir``; ``"memory"`` stays (no resuming); anything else is an Optuna URL."""
    if storage is None:
        return f"sqlite:///{(out_dir / 'study.db').resolve()}"
    if storage != "memory" and "://" not in storage:
        raise ConfigError(f"storage must be 'memory' or a database URL such as sqlite:///DIR/study.db, got {storage!r}")
    return storage


def _shown(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)  # never write a password into trials.json


def _suggest(trial: Any, p: ParamSpec) -> Any:
    if p.type == "categorical":
        return trial.suggest_categorical(p.key, list(p.choices))
    if p.type == "int":
        return trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)  # type: ignore[arg-type]
    return trial.suggest_float(p.key, float(p.low), float(p.high), step=p.step, log=p.log)  # type: ignore[arg-type]


def _open_study(
    optuna: ModuleType, url: str, name: str, fingerprint: dict[str, Any], seed: int, space: TuneSpace
) -> Any:
    storage = optuna.storages.InMemoryStorage() if url == "memory" else optuna.storages.RDBStorage(url)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)
    saved = study.user_attrs.get("recfuse")
    if saved is None:
        study.set_user_attr("recfuse", fingerprint)
    elif saved != fingerprint:
        changed = [k for k in fingerprint if saved.get(k) != fingerprint[k]]
        raise ConfigError(
            f"study {name!r} in {_shown(url)} was started with a different {' and '.join(changed)}, so its trials "
            "would not be comparable; continue it with the same config, space and metric, or use another "
            "--out / --storage / --study-name"
        )
    # a continued study gets a fresh sampler seed, so it does not replay the first call's random trials
    sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=space.n_startup_trials, n_warmup_steps=space.n_warmup_steps)
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def _record(t: Any, out: Path) -> TrialRecord:
    seconds = t.duration.total_seconds() if t.duration is not None else t.user_attrs.get("seconds")
    mdir = out / "trials" / str(t.number)
    return TrialRecord(
        number=int(t.number),
        state=t.state.name,
        params=dict(t.params),
        value=None if t.value is None else float(t.value),
        epochs=t.user_attrs.get("epochs"),
        seconds=None if seconds is None else round(float(seconds), 3),
        model_dir=str(mdir) if (mdir / "config.json").exists() else None,
        error=t.user_attrs.get("error"),
    )


def run_study(
    base: RecfuseConfig,
    space: TuneSpace,
    out_dir: str | Path,
    *,
    trials: int | None = None,
    minutes: float | None = None,
    storage: str | None = None,
    seed: int | None = None,
    metric: str | None = None,
    study_name: str = STUDY_NAME,
    keep_models: bool = False,
    dataset: Any = None,
    split: Any = None,
    progress: Callable[[TrialRecord], None] | None = None,
) -> TuneOutcome:
    """Run (or continue) a study; write trials.json and best.toml into ``out_dir``.

    Args:
        base: the config every trial starts from.
        space: the validated search space (:func:`recfuse.evaluation.tune_space.load_space`).
        out_dir: output directory (created).
        trials: trials to run in this call (default ``space.trials``).
        minutes: wall-clock budget of this call (default ``space.minutes``; ``None``: no limit). Whichever
            of the two budgets ends first stops the study; a trial in progress finishes.
        storage: Optuna storage URL, ``"memory"``, or ``None`` for ``sqlite:///OUT/study.db``.
        seed: TPE sampler seed (default ``space.seed``).
        metric: ``val_recall@K`` (default ``space.metric``, else the config's ``train.eval_k``).
        study_name: the study's name in the storage.
        keep_models: keep every trial's model directory (default: only the best trial's).
        dataset, split: an already loaded dataset and its split (default: read from ``base.data``).
        progress: called with each finished trial.

    Returns:
        :class:`TuneOutcome`.

    Raises:
        ConfigError: optuna missing, a space entry the config refuses, a split without validation
            interactions, a stored study started with other settings, or no trial completed.
    """
    optuna = require_optuna()
    from recfuse.training.trainer import train

    out = Path(out_dir)
    metric = metric or space.metric
    cfg = base.with_overrides({"train.eval_k": metric_k(metric)}) if metric else base
    metric = f"val_recall@{cfg.train.eval_k}"
    check_space(space, cfg)
    url = storage_url(storage, out)
    if dataset is None or split is None:
        from recfuse.data.splits import split_for
        from recfuse.data.validate import load_dataset

        dataset = load_dataset(cfg.data, cfg.modalities)
        split = split_for(dataset.interactions, cfg.data)
    if not len(split.val):
        raise ConfigError(f"the {cfg.data.split!r} split has no validation interactions; tuning scores the valid split")
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = {"config": cfg.to_dict(), "params": space.params_dict(), "metric": metric}
    study = _open_study(
        optuna, url, study_name, json.loads(json.dumps(fingerprint)), space.seed if seed is None else seed, space
    )

    def objective(trial: Any) -> float:
        tdir = out / "trials" / str(trial.number)
        if tdir.exists():  # left by another study (memory storage) under the same number
            shutil.rmtree(tdir)
        pruned_at: list[int] = []

        def on_epoch(epoch: int, value: float) -> bool:
            trial.report(value, epoch)
            if trial.should_prune():
                pruned_at.append(epoch)
                return True
            return False

        t0 = time.perf_counter()
        try:
            run_cfg = cfg.with_overrides({p.key: _suggest(trial, p) for p in space.params})
            result = train(run_cfg, dataset, split, tdir, progress=False, on_epoch=on_epoch)
        except RecfuseError as err:  # e.g. a combination of values the config refuses: a failed trial
            trial.set_user_attr("error", str(err))
            raise
        trial.set_user_attr("epochs", result.epochs_run)
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 3))
        if pruned_at:
            raise optuna.TrialPruned(f"{metric} below the median of earlier trials at epoch {pruned_at[0]}")
        return float(result.best_metric)  # type: ignore[arg-type]  # the split has validation interactions

    before = len(study.trials)
    minutes = space.minutes if minutes is None else minutes
    study.optimize(
        objective,
        n_trials=space.trials if trials is None else trials,
        timeout=None if minutes is None else minutes * 60.0,
        catch=(RecfuseError,),
        callbacks=[lambda _s, t: progress(_record(t, out))] if progress else None,
    )
    return _finish(study, cfg, out, metric, url, before, keep_models)


def _finish(study: Any, cfg: RecfuseConfig, out: Path, metric: str, url: str, before: int, keep: bool) -> TuneOutcome:
    frozen = study.trials
    complete = [t for t in frozen if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value) if complete else None
    if best is not None and not keep:
        for t in frozen:
            tdir = out / "trials" / str(t.number)
            if t.number != best.number and t.state.name in _FINISHED and tdir.exists():
                shutil.rmtree(tdir)
    records = [_record(t, out) for t in frozen]
    trials_path = atomic_write_json(out / "trials.json", {
        "metric": metric, "direction": "maximize", "storage": _shown(url),
        "best": None if best is None else best.number, "trials": [asdict(r) for r in records],
    })  # fmt: skip
    if best is None:
        raise ConfigError(f"no trial of the study completed; see the errors in {trials_path}")
    best_cfg = cfg.with_overrides(best.params)
    best_toml = atomic_write_text(out / "best.toml", config_toml(best_cfg))
    logger.info("best trial %d: %s = %.4f -> %s", best.number, metric, best.value, best_toml)
    by_number = {r.number: r for r in records}
    return TuneOutcome(out, metric, _shown(url), records, len(frozen) - before, by_number[best.number], best_cfg,
                       best_toml, trials_path)  # fmt: skip
