"""`recfuse experiment` (offline variant comparison) and `recfuse ab analyze` (online A/B logs).

Example:
    $ recfuse experiment --config data_samples/experiment.toml --out runs/experiments/fusion
    $ recfuse ab analyze --exposures runs/exposures --feedback clicks.parquet --shares attention=0.9,concat=0.1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add this group's commands to the `recfuse` parser."""
    p = sub.add_parser(
        "experiment",
        help="train + evaluate variants x seeds on one split and compare them with a control",
        description="Run an offline experiment from exp.toml: every variant is trained with every seed on the "
        "same split, evaluated with full ranking, and compared with the control (paired bootstrap CI, "
        "permutation p-value, Holm correction, seed spread). Writes report.md, results.json and plots/. "
        "Re-running resumes: finished runs are reused.",
    )
    p.add_argument("--config", required=True, help="experiment TOML (see data_samples/experiment.toml)")
    p.add_argument("--out", default=None, help="output directory (default: runs/experiments/<experiment.name>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_experiment)

    e = sub.add_parser(
        "evaluate",
        help="full-ranking evaluation of a trained model directory on its test split, beside baselines",
        description="Recompute the model's split from its stored config (same data, split kind and seed) and check "
        "it is the split the model was trained on (refuses when the data no longer gives it), rank the whole "
        "catalog for every test user under the config's [eval] protocol (masked items, the history the query "
        "reads), and print Recall/NDCG/HitRate/Precision/MRR/novelty/coverage/Gini per segment (all, warm, cold). "
        "--baselines scores simple baselines on the same split and protocol beside the model.",
    )
    e.add_argument("--model", default=None, help="model directory written by `recfuse train`: its exact ranking")
    e.add_argument("--bundle", default=None, help="bundle (root, ROOT/<variant> or a version): what it serves, "
                   "through its Recommender and index as served; with --model too, both side by side")  # fmt: skip
    e.add_argument("--config", default=None, help="with --bundle: a config whose [data] and [eval] to use "
                   "(default: the training config stored in the bundle)")  # fmt: skip
    e.add_argument("--ks", default="10,20,50", help="cut-offs, comma-separated (default 10,20,50)")
    e.add_argument("--baselines", default="", help="comma-separated baselines to score beside the model: "
                   "popularity, itemknn, ease (hyper-parameters chosen on the valid split; default: none)")  # fmt: skip
    e.add_argument("--mask", default=None, choices=["train", "train+valid"],
                   help="override eval.mask: items removed from each test ranking (default: the model's config)")
    e.add_argument("--history", default=None, choices=["auto", "train", "train+valid"],
                   help="override eval.history: what the test query reads (default: the model's config)")
    e.add_argument("--out", default=None, help="also write per-user metrics as JSON to this path")
    e.set_defaults(handler=_evaluate)

    ab = sub.add_parser("ab", help="online A/B test tools", description="Online A/B test tools.")
    ab_sub = ab.add_subparsers(dest="ab_command", metavar="COMMAND", help="`analyze`: exposures + clicks -> report")
    ab_sub.required = True
    a = ab_sub.add_parser(
        "analyze",
        help="per-variant CTR / hit-rate with CIs from exposure logs + click feedback, with an SRM check",
        description="Join click feedback to the service's exposure logs; report CTR and hit-rate per variant "
        "with confidence intervals, differences vs the control with CI and p-value, and a sample-ratio-"
        "mismatch chi-square check against the configured shares.",
    )
    a.add_argument("--exposures", required=True, help="directory of exposures-*.parquet files")
    a.add_argument("--feedback", required=True, help="clicks file (.parquet/.csv/.jsonl): item_id + request_id "
                   "and/or user_id + ts")  # fmt: skip
    a.add_argument("--shares", default=None, help="configured traffic shares, e.g. attention=0.9,concat=0.1 "
                   "(enables the SRM check)")  # fmt: skip
    a.add_argument("--control", default=None, help="control variant (default: first of --shares)")
    a.add_argument("--window", type=float, default=3600.0, help="seconds after an exposure a click still counts "
                   "when matched by user (default 3600)")  # fmt: skip
    a.add_argument("--alpha", type=float, default=0.05, help="1 - confidence level (default 0.05)")
    a.add_argument("--out", default=None, help="also write the report as JSON to this path")
    a.add_argument("--strict", action="store_true", help="exit with code 1 on a sample-ratio mismatch")
    a.set_defaults(handler=_ab_analyze)


def _experiment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from recfuse.evaluation.experiment import run_experiment
    from recfuse.evaluation.experiment_config import load_experiment

    spec = load_experiment(args.config)
    out = Path(args.out) if args.out else Path("runs") / "experiments" / spec.name
    total = len(spec.variants) * len(spec.seeds)
    print(
        f"experiment {spec.name!r}: {len(spec.variants)} variants x {len(spec.seeds)} seeds = {total} runs "
        f"(control {spec.control!r}, metric {spec.metric}) -> {out}",
        flush=True,
    )
    bar = tqdm(total=total, unit="run", disable=args.no_progress, file=sys.stderr)

    def progress(message: str, done: int, _total: int) -> None:
        bar.set_description(message)
        bar.n = done
        bar.refresh()

    try:
        outcome = run_experiment(spec, out, progress=progress)
    finally:
        bar.close()
    cached = sum(r.status == "cached" for r in outcome.runs)
    if cached:
        print(f"{cached} of {total} runs reused from a previous call")
    a = outcome.analysis
    print(f"\n{spec.metric} vs {spec.control} (all test items, {a.users.get('all', 0)} users):")
    def pm(mean: float, sd: float) -> str:
        return f"{mean:.4f} ± {sd:.4f}" if len(spec.seeds) > 1 else f"{mean:.4f}"

    s = a.summary(spec.control, spec.metric)
    print(f"  {spec.control:<20} {pm(s.mean, s.seed_sd)}  (control)")
    for v in spec.variants:
        if v.name == spec.control:
            continue
        s = a.summary(v.name, spec.metric)
        c = a.comparison(v.name, spec.metric)
        print(
            f"  {v.name:<20} {pm(s.mean, s.seed_sd)}  Δ {c.delta:+.4f} [{c.lo:+.4f}, {c.hi:+.4f}]  "
            f"p={c.p_value:.3g} p_holm={c.p_holm:.3g}  {c.verdict}"
        )
    print(f"\nreport:  {outcome.report_path}\nresults: {outcome.results_path}\nplots:   {outcome.out_dir / 'plots'}")
    return 0


def _parse_ks(text: str) -> tuple[int, ...]:
    from recfuse.errors import UsageError

    try:
        ks = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise UsageError(f"--ks must be comma-separated integers, got {text!r}; e.g. 10,20,50") from None
    if not ks or min(ks) < 1:
        raise UsageError(f"--ks must be positive integers, got {text!r}")
    return ks


def _evaluate(args: argparse.Namespace) -> int:
    ks = _parse_ks(args.ks)
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    import dataclasses

    from recfuse.config import RecfuseConfig
    from recfuse.data.splits import check_same_split, split_for
    from recfuse.data.validate import load_dataset
    from recfuse.errors import UsageError
    from recfuse.evaluation.baseline_eval import evaluate_baseline
    from recfuse.evaluation.baselines import BASELINES

    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise UsageError(f"--baselines: unknown {unknown}; choose from {list(BASELINES)}, comma-separated")
    if not args.model and not args.bundle:
        raise UsageError("give --model (the trained model's exact ranking), --bundle (what a bundle serves), or both")
    model = recommender = None
    if args.bundle:
        from recfuse.inference import Recommender

        recommender = Recommender.from_bundle(args.bundle)
    if args.model:
        from recfuse.models.trained import TrainedModel

        model = TrainedModel.load(args.model)
    if args.config:
        cfg = RecfuseConfig.from_toml(args.config)
    elif model is not None:
        cfg = model.config
    else:
        cfg = RecfuseConfig.from_dict(recommender.bundle.manifest["training_config"])  # type: ignore[union-attr]
    data, protocol = cfg.data, cfg.eval
    if args.mask or args.history:
        protocol = dataclasses.replace(protocol, mask=args.mask or protocol.mask,
                                       history=args.history or protocol.history)  # fmt: skip
    dataset = load_dataset(data, cfg.modalities)
    split = split_for(dataset.interactions, data)
    if model is not None:
        check_same_split(split, model.split_record, f"model {args.model!r}")
    if recommender is not None:
        check_same_split(split, _bundle_split_record(recommender), f"bundle {args.bundle!r}")
    results = []
    if model is not None:
        from recfuse.evaluation.fullrank import evaluate_model

        results.append((f"model {args.model} (exact ranking)", evaluate_model(model, split, ks=ks, protocol=protocol)))
    if recommender is not None:
        from recfuse.evaluation.bundle_eval import evaluate_bundle

        served = evaluate_bundle(recommender, split, ks=ks, protocol=protocol)
        about = served.info["served"]
        recall = "unknown" if about["served_recall"] is None else f"{about['served_recall']:.4f}"
        results.append((f"bundle {about['version']} (as served: {about['index']}"
                        f"{', ' + about['search_params'] if about['search_params'] else ''}, served recall@10 "
                        f"{recall})", served))  # fmt: skip
    result = results[0][1]
    names = [f"{m}@{k}" for k in result.ks for m in ("recall", "ndcg", "hit", "precision", "mrr")]
    print(f"{result.n_items} items, split {data.split} (seed {data.split_seed}, "
          f"{len(split.train)} train / {len(split.val)} val / {len(split.test)} test rows)")  # fmt: skip
    print(f"protocol: {result.info['protocol']}")
    for label, res in results:
        print(f"\n{label}")
        for seg_name, seg in res.segments.items():
            means = seg.means()
            print(f"[{seg_name}] {len(seg.users)} users evaluated, {seg.skipped_users} without test items skipped")
            for name in names + [f"{m}@{k}" for k in res.ks for m in ("novelty", "coverage", "gini")]:
                if name in means:
                    print(f"  {name:<14} {means[name]:.4f}")
        print("counts: " + ", ".join(f"{k}={v}" for k, v in res.counts.items()))
    if len(results) == 2:
        print(_served_vs_exact(results[0][1], results[1][1]))
    if baselines:
        label = f"model ({cfg.variant})" if model is not None else "bundle (served)"
        rows = [(label, result, "")]
        item_ids = list(model.item_ids) if model is not None else list(recommender.bundle.item_ids)  # type: ignore[union-attr]
        for name in baselines:
            # fitted on train + val when the model was (train.refit), so both have seen the same rows
            res = evaluate_baseline(name, split, item_ids, protocol, ks=ks, refit=cfg.train.refit)
            params = ", ".join(f"{k}={v}" for k, v in res.info["baseline"]["params"].items())
            rows.append((name, res, params))
        print(_comparison_table(rows, result.ks))
    if args.out:
        print(f"per-user metrics: {result.save(args.out)}")
    return 0


def _bundle_split_record(recommender: Any) -> dict[str, Any] | None:
    """The split record of the model a bundle was exported from (None when it carries no model copy)."""
    model_dir = recommender.bundle.model_dir
    if model_dir is None or not (model_dir / "model.json").is_file():
        return None
    record = json.loads((model_dir / "model.json").read_text(encoding="utf-8")).get("split")
    return record if isinstance(record, dict) else None


def _served_vs_exact(exact: Any, served: Any) -> str:
    """Served ÷ exact per metric (all test items): what the approximate index costs."""
    cols = [f"{m}@{k}" for k in exact.ks for m in ("recall", "ndcg", "hit")]
    e, s = exact.means("all"), served.means("all")
    lines = ["", "served / exact (all test items):", "  " + "".join(f"{c:>11}" for c in cols),
             "  " + "".join(f"{(s[c] / e[c] if e[c] > 0 else float('nan')):>10.3f}x" for c in cols)]  # fmt: skip
    return "\n".join(lines)


def _comparison_table(rows: list[tuple[str, Any, str]], ks: tuple[int, ...]) -> str:
    """Model and baselines side by side (all test items), with model / best baseline per column."""
    cols = [f"{m}@{k}" for k in ks for m in ("hit", "ndcg", "recall")]
    lines = ["", "model and baselines (all test items, same split and protocol):",
             f"  {'':<24}" + "".join(f"{c:>11}" for c in cols) + "   chosen on valid"]  # fmt: skip
    means = [r.means("all") for _, r, _ in rows]
    for (label, _res, params), m in zip(rows, means):
        lines.append(f"  {label:<24}" + "".join(f"{m.get(c, float('nan')):>11.4f}" for c in cols) + f"   {params}")
    if len(rows) > 1:
        ratio = []
        for c in cols:
            best = max(m.get(c, 0.0) for m in means[1:])
            ratio.append(means[0].get(c, 0.0) / best if best > 0 else float("nan"))
        lines.append(f"  {'model / best baseline':<24}" + "".join(f"{r:>10.2f}x" for r in ratio))
    return "\n".join(lines)


def _ab_analyze(args: argparse.Namespace) -> int:
    from recfuse.data.readers import read_table
    from recfuse.evaluation.ab_analysis import analyze, format_report, read_exposure_frame, srm_banner
    from recfuse.fsio import atomic_write_json
    from recfuse.variants import parse_shares

    shares = parse_shares(args.shares) if args.shares else None
    exposures = read_exposure_frame(args.exposures)
    feedback = read_table(args.feedback)
    report = analyze(exposures, feedback, shares=shares, control=args.control, window_s=args.window,
                     alpha=args.alpha)  # fmt: skip
    banner = srm_banner(report)
    if banner:
        print(banner, file=sys.stderr)
    print(format_report(report, banner=not banner))
    if args.out:
        atomic_write_json(args.out, report.to_dict())
        print(f"report JSON: {args.out}")
    if args.strict and report.srm is not None and report.srm.mismatch:
        return 1
    return 0
