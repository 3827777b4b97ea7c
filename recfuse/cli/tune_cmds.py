"""`recfuse tune`: Optuna hyper-parameter search on the valid split (needs the `tune` extra).

Example:
    $ recfuse tune --config data_samples/recfuse.toml --space data_samples/tune_space.toml --out runs/tune \
        --trials 20 --minutes 60
"""

from __future__ import annotations

import argparse
import logging
from typing import Any


def register(sub: Any) -> None:
    """Add this group's commands to the `recfuse` parser."""
    p = sub.add_parser(
        "tune",
        help="hyper-parameter search (Optuna TPE + median pruning) on the valid split",
        description="Search the config keys of a space TOML (see data_samples/tune_space.toml): each trial trains "
        "the base config with sampled overrides and is scored by its best validation Recall@K; trials below the "
        "median of earlier ones at the same epoch are pruned. Stops after --trials or --minutes, whichever comes "
        "first (a running trial finishes). Writes OUT/best.toml, OUT/trials.json and a model directory per trial "
        "under OUT/trials/. Calling again continues the study stored in OUT/study.db.",
    )
    p.add_argument("--config", required=True, help="base TOML config")
    p.add_argument("--space", required=True, help='search space TOML ([study], [params."KEY"] tables)')
    p.add_argument("--out", required=True, help="output directory (study, trials, best.toml)")
    p.add_argument("--trials", type=int, default=None, help="trials to run in this call (default: [study] trials)")
    p.add_argument("--minutes", type=float, default=None, help="time budget of this call (default: [study] minutes)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL, or 'memory' (no resuming); default sqlite:///OUT/study.db")  # fmt: skip
    p.add_argument("--study-name", default="recfuse", help="study name in the storage (default recfuse)")
    p.add_argument("--seed", type=int, default=None, help="TPE sampler seed (default: [study] seed, else 0)")
    p.add_argument("--metric", default=None, help="val_recall@K (default: [study] metric, else the config's eval_k)")
    p.add_argument("--keep-models", action="store_true", help="keep every trial's model directory, not only the best")
    p.set_defaults(handler=_tune)


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec) if isinstance(value, float) else str(value)


def _line(rec: Any) -> str:
    params = ", ".join(f"{k}={_fmt(v, '.4g')}" for k, v in rec.params.items())
    return (f"{rec.number:>5}  {rec.state:<8}  {_fmt(rec.value):>8}  {_fmt(rec.epochs):>6}  "
            f"{_fmt(rec.seconds, '.1f'):>8}  {params}")  # fmt: skip


def _tune(args: argparse.Namespace) -> int:
    from recfuse.config import RecfuseConfig
    from recfuse.errors import UsageError
    from recfuse.evaluation.tune import require_optuna, run_study
    from recfuse.evaluation.tune_space import load_space

    optuna = require_optuna()
    if args.verbose == 0:  # its per-trial INFO lines duplicate the table below
        optuna.logging.set_verbosity(logging.WARNING)
    for flag, value in (("--trials", args.trials), ("--minutes", args.minutes)):
        if value is not None and not value > 0:
            raise UsageError(f"{flag} must be positive, got {value}")
    cfg = RecfuseConfig.from_toml(args.config)
    space = load_space(args.space)
    header = f"{'trial':>5}  {'state':<8}  {'value':>8}  {'epochs':>6}  {'seconds':>8}  params"
    shown: list[int] = []

    def progress(rec: Any) -> None:
        if not shown:  # after run_study's checks, so a refused space prints only its error
            print(f"tuning {len(space.params)} parameters of {args.config} -> {args.out}\n{header}", flush=True)
        shown.append(rec.number)
        print(_line(rec), flush=True)

    outcome = run_study(
        cfg,
        space,
        args.out,
        trials=args.trials,
        minutes=args.minutes,
        storage=args.storage,
        seed=args.seed,
        metric=args.metric,
        study_name=args.study_name,
        keep_models=args.keep_models,
        progress=progress,
    )
    print(
        f"\nall trials of the study ({outcome.ran} run now, {len(outcome.trials)} in total; metric {outcome.metric}):"
    )
    print(header)
    for rec in outcome.trials:
        print(_line(rec))
    best = outcome.best
    if best is None:  # run_study raises before this when no trial completed
        return 1
    print(f"best: trial {best.number}, {outcome.metric} = {_fmt(best.value)}")
    print(f"best config: {outcome.best_toml}")
    if best.model_dir:
        print(f"best model directory: {best.model_dir}")
    print(f"trials: {outcome.trials_path}")
    return 0
