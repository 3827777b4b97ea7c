"""Run an offline experiment: every variant × seed trained on the same split, evaluated, compared.

Output directory layout::

    OUT/experiment.json                 the resolved experiment (variants, seeds, split summary)
    OUT/runs/<variant>/seed-<s>/model/  the trained model directory (trainer checkpoints inside)
    OUT/runs/<variant>/seed-<s>/eval.json   per-user metrics of that run (atomic)
    OUT/runs/<variant>/seed-<s>/run.json    fingerprint + training summary; ``status: done`` last
    OUT/runs/<baseline>/baseline/{eval.json,run.json}  a baseline variant: fit once, stands for every seed
    OUT/results.json  OUT/report.md  OUT/plots/*.png

Resuming: a run whose ``run.json`` says ``done`` with the same fingerprint (hash of its full config,
seed and ks) is loaded, not retrained; a run interrupted mid-training resumes from the trainer's
checkpoints; a run whose fingerprint changed (the exp.toml was edited) is deleted and retrained.

Reproducibility: the split is computed once from the base config (``data.split_seed``); each run
sets ``train.seed``; the trainer seeds Python, numpy and TensorFlow, and this runner turns on
TensorFlow op determinism, so the same config and seeds give the same numbers (the resampling in
the comparison is seeded too).

Example:
    >>> spec = load_experiment("data_samples/experiment.toml")  # doctest: +SKIP
    >>> outcome = run_experiment(spec, "runs/experiments/fusion")  # doctest: +SKIP
    >>> outcome.report_path  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recfuse.evaluation.compare import ExperimentAnalysis, compare_runs
from recfuse.evaluation.experiment_config import ExperimentSpec, VariantSpec
from recfuse.evaluation.result import EvalResult
from recfuse.fsio import atomic_write_json

logger = logging.getLogger(__name__)

RUN_FORMAT = "recfuse.experiment-run/1"
Progress = Callable[[str, int, int], None]  # (message, runs done, runs total)


@dataclass
class RunRecord:
    """One variant × seed run."""

    variant: str
    seed: int
    fingerprint: str
    status: str  # "trained" (this call) or "cached" (loaded from a previous call)
    train: dict[str, Any]
    eval_path: Path


@dataclass
class ExperimentOutcome:
    """What :func:`run_experiment` produced."""

    out_dir: Path
    runs: list[RunRecord]
    analysis: ExperimentAnalysis
    results_path: Path
    report_path: Path
    plots: list[Path] = field(default_factory=list)


def run_dir(out_dir: Path, variant: str, seed: int) -> Path:
    return out_dir / "runs" / variant / f"seed-{seed}"


def _read_run(path: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return raw if isinstance(raw, dict) and raw.get("format") == RUN_FORMAT else None


def _one_run(
    spec: ExperimentSpec, variant: VariantSpec, seed: int, out_dir: Path, dataset: Any, split: Any
) -> RunRecord:
    from recfuse.evaluation.fullrank import evaluate_model
    from recfuse.models.trained import TrainedModel
    from recfuse.training.trainer import train

    rdir = run_dir(out_dir, variant.name, seed)
    fp = spec.fingerprint(variant, seed)
    meta_path, eval_path = rdir / "run.json", rdir / "eval.json"
    meta = _read_run(meta_path)
    if meta is not None and meta.get("fingerprint") == fp and meta.get("status") == "done" and eval_path.exists():
        EvalResult.load(eval_path)  # verify it is readable before trusting it
        return RunRecord(variant.name, seed, fp, "cached", dict(meta.get("train", {})), eval_path)
    if rdir.exists() and (meta is None or meta.get("fingerprint") != fp):
        logger.warning("run %s was made by a different config (fingerprint changed); retraining it", rdir)
        shutil.rmtree(rdir)
    cfg = spec.run_config(variant, seed)
    atomic_write_json(meta_path, {"format": RUN_FORMAT, "fingerprint": fp, "status": "started", "seed": seed,
                                  "variant": variant.name, "config": cfg.to_dict()})  # fmt: skip
    t0 = time.perf_counter()
    selection_dir = None  # the early-stopped run under train.refit: the head's choices are made there
    if cfg.train.refit:  # the early-stopped run picks the epochs; the model scored trains on train + val
        from recfuse.training.refit import train_refit

        runs = train_refit(cfg, dataset, split, rdir / "model", progress=False)
        result = runs.final
        selection_dir = None if runs.selection is None else runs.selection.model_dir  # None: train.refit_epochs
    else:
        result = train(cfg, dataset, split, rdir / "model", progress=False)
    if cfg.item_head.enabled:  # the variant is scored as `recfuse train` would serve it: with its head
        from recfuse.evaluation.item_head import fit_and_save

        fit_and_save(result.model_dir, split, selection_dir, dataset.items)
    t_train = time.perf_counter() - t0
    model = TrainedModel.load(result.model_dir)
    t1 = time.perf_counter()
    evaluation = evaluate_model(model, split, ks=spec.ks, protocol=spec.base.eval)
    t_eval = time.perf_counter() - t1
    evaluation.save(eval_path)
    train_info = {
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_val_metric": result.best_metric,
        "train_seconds": round(t_train, 3),
        "eval_seconds": round(t_eval, 3),
        "examples": result.examples,
    }
    atomic_write_json(meta_path, {"format": RUN_FORMAT, "fingerprint": fp, "status": "done", "seed": seed,
                                  "variant": variant.name, "config": cfg.to_dict(), "train": train_info})  # fmt: skip
    return RunRecord(variant.name, seed, fp, "trained", train_info, eval_path)


def _baseline_run(
    spec: ExperimentSpec, variant: VariantSpec, out_dir: Path, dataset: Any, split: Any
) -> tuple[str, str, dict[str, Any], Path]:
    """Fit and score a baseline variant once (it does not depend on the seed); reuse a finished run.

    Returns:
        ``(fingerprint, status, info, eval_path)``: status ``trained`` or ``cached``.
    """
    from recfuse.evaluation.baseline_eval import evaluate_baseline

    rdir = out_dir / "runs" / variant.name / "baseline"
    fp = spec.fingerprint(variant, 0)
    meta_path, eval_path = rdir / "run.json", rdir / "eval.json"
    meta = _read_run(meta_path)
    if meta is not None and meta.get("fingerprint") == fp and meta.get("status") == "done" and eval_path.exists():
        EvalResult.load(eval_path)
        return fp, "cached", dict(meta.get("train", {})), eval_path
    if rdir.exists():
        shutil.rmtree(rdir)
    item_ids = [str(i) for i in dataset.items["item_id"]]
    t0 = time.perf_counter()
    # fitted on train + val when the models are (train.refit)
    result = evaluate_baseline(variant.baseline, split, item_ids, spec.base.eval, ks=spec.ks, settings=spec.baselines,
                               refit=spec.base.train.refit)  # fmt: skip
    result.save(eval_path)
    about = result.info["baseline"]
    info = {
        "baseline": variant.baseline,
        "params": about["params"],
        "train_seconds": about["fit_seconds"],
        "eval_seconds": about["eval_seconds"],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    atomic_write_json(meta_path, {"format": RUN_FORMAT, "fingerprint": fp, "status": "done", "seed": None,
                                  "variant": variant.name, "train": info, "selection": about["selection"]})  # fmt: skip
    return fp, "trained", info, eval_path


def _enable_determinism() -> None:
    import tensorflow as tf

    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # older TF or already-initialised runtime: seeds still apply
        logger.warning("could not enable TensorFlow op determinism; results may differ in the last digits")


def run_experiment(
    spec: ExperimentSpec,
    out_dir: str | Path,
    progress: Progress | None = None,
    dataset: Any = None,
    split: Any = None,
) -> ExperimentOutcome:
    """Train and evaluate every variant × seed (resuming finished runs), compare, write the report.

    Args:
        spec: validated experiment (see :func:`recfuse.evaluation.experiment_config.load_experiment`).
        out_dir: output directory (created; reused to resume).
        progress: called before and after each run with ``(message, done, total)``.
        dataset, split: a loaded dataset and split to use instead of reading ``spec.base.data``
            (the split must come from the base config's split settings).

    Returns:
        :class:`ExperimentOutcome` with the paths of results.json, report.md and the plots.
    """
    from recfuse.evaluation.report import write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dataset is None or split is None:
        from recfuse.data.splits import split_for
        from recfuse.data.validate import load_dataset

        dataset = load_dataset(spec.base.data, spec.base.modalities)
        split = split_for(dataset.interactions, spec.base.data)
    _enable_determinism()
    split_summary = split.summary() if hasattr(split, "summary") else {}
    atomic_write_json(
        out / "experiment.json",
        {
            "name": spec.name,
            "control": spec.control,
            "seeds": list(spec.seeds),
            "metric": spec.metric,
            "ks": list(spec.ks),
            "alpha": spec.alpha,
            "variants": [{"name": v.name, "kind": v.kind, "baseline": v.baseline, "overrides": dict(v.overrides),
                          "modalities": list(v.modalities)} for v in spec.variants],  # fmt: skip
            "protocol": spec.base.eval.describe(spec.base.data.split),
            "base_config": spec.base.to_dict(),
            "split": split_summary,
        },
    )
    total = len(spec.variants) * len(spec.seeds)
    records: list[RunRecord] = []
    for variant in spec.variants:
        if variant.is_baseline:
            if progress:
                progress(f"{variant.name} (baseline)", len(records), total)
            fp, status, info, eval_path = _baseline_run(spec, variant, out, dataset, split)
            # deterministic: the same per-user results stand for every seed, so pairing with a model works
            records.extend(RunRecord(variant.name, seed, fp, status, info, eval_path) for seed in spec.seeds)
            if progress:
                progress(f"{variant.name} (baseline) {status}", len(records), total)
            continue
        for seed in spec.seeds:
            if progress:
                progress(f"{variant.name} seed {seed}", len(records), total)
            record = _one_run(spec, variant, seed, out, dataset, split)
            records.append(record)
            logger.info("run %s seed %d %s", variant.name, seed, record.status)
            if progress:
                progress(f"{variant.name} seed {seed} {record.status}", len(records), total)
    runs: dict[str, dict[int, EvalResult]] = {}
    for r in records:
        runs.setdefault(r.variant, {})[r.seed] = EvalResult.load(r.eval_path)
    analysis = compare_runs(runs, spec.control, spec.metric, spec.alpha, spec.n_boot, spec.n_perm)
    results_path, report_path, plots = write_report(out, spec, records, runs, analysis, split_summary)
    return ExperimentOutcome(out, records, analysis, results_path, report_path, plots)
