"""Experiment outputs: ``results.json`` (every per-seed figure), ``report.md`` (readable at a glance), PNG plots.

Plots are drawn with matplotlib's object API (:class:`matplotlib.figure.Figure`, Agg canvas), so no
global pyplot state or display is involved; every file is written atomically.

- ``plots/curves_<segment>.png`` — metric@K curves (primary metric and NDCG) per variant with the
  bootstrap CI over users as a band.
- ``plots/ablation.png`` — the primary metric per variant (label: its modality subset) with one dot
  per seed, beside each challenger's paired Δ vs the control with its paired CI and verdict.

Example:
    >>> results, report, plots = write_report(out, spec, records, runs, analysis, split.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recfuse.evaluation.compare import ExperimentAnalysis, MetricComparison
from recfuse.evaluation.experiment_config import ExperimentSpec
from recfuse.evaluation.result import EvalResult
from recfuse.fsio import atomic_write_bytes, atomic_write_json, atomic_write_text

RESULTS_FORMAT = "recfuse.experiment-results/1"
_SEGMENT_TITLES = {"all": "all test items", "warm": "warm items", "cold": "cold-start items"}


def _fmt(x: float, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pm(spec: ExperimentSpec, mean: float, sd: float) -> str:
    """``mean ± seed sd`` (no ± with a single seed: the spread is unknown, not zero)."""
    return f"{_fmt(mean)} ± {_fmt(sd)}" if len(spec.seeds) > 1 else _fmt(mean)


def _p(x: float) -> str:
    return f"{x:.2g}" if x < 0.001 else f"{x:.3f}"


def _modalities(spec: ExperimentSpec, name: str) -> str:
    v = spec.variant(name)
    if v.is_baseline:
        return "baseline"
    return "+".join(v.modalities) if v.modalities else "all"


def _changes(spec: ExperimentSpec, name: str, records: Sequence[Any] = ()) -> str:
    v = spec.variant(name)
    if v.is_baseline:
        params: dict[str, Any] = next((r.train.get("params", {}) for r in records if r.variant == name), {})
        chosen = ", ".join(f"{k}={val}" for k, val in params.items())
        return f"baseline `{v.baseline}`" + (f" ({chosen}, chosen on valid)" if chosen else "")
    parts = [f"{k}={val}" for k, val in v.overrides.items()]
    if v.modalities:
        parts.append("modalities=" + "+".join(v.modalities))
    return ", ".join(parts) or "(base config)"


def results_dict(
    spec: ExperimentSpec,
    records: Sequence[Any],
    runs: Mapping[str, Mapping[int, EvalResult]],
    analysis: ExperimentAnalysis,
    split_summary: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON document: settings, every run's per-seed means and counts, summaries, comparisons."""
    run_rows = []
    for r in records:
        res = runs[r.variant][r.seed]
        run_rows.append(
            {
                "variant": r.variant,
                "seed": r.seed,
                "fingerprint": r.fingerprint,
                "train": r.train,
                "means": {seg: res.means(seg) for seg in res.segments},
                "users": {seg: len(s.users) for seg, s in res.segments.items()},
                "skipped_users": {seg: s.skipped_users for seg, s in res.segments.items()},
                "counts": res.counts,
            }
        )
    return {
        "format": RESULTS_FORMAT,
        "name": spec.name,
        "control": spec.control,
        "metric": spec.metric,
        "ks": list(spec.ks),
        "alpha": spec.alpha,
        "seeds": list(spec.seeds),
        "n_boot": spec.n_boot,
        "n_perm": spec.n_perm,
        "variants": [{"name": v.name, "kind": v.kind, "baseline": v.baseline, "overrides": dict(v.overrides),
                      "modalities": list(v.modalities)} for v in spec.variants],  # fmt: skip
        "protocol": spec.base.eval.describe(str(split_summary.get("kind", ""))),
        "split": dict(split_summary),
        "runs": run_rows,
        "analysis": analysis.to_dict(),
    }


def _delta_cell(c: MetricComparison) -> str:
    return f"{c.delta:+.4f} [{c.lo:+.4f}, {c.hi:+.4f}]"


def render_markdown(spec: ExperimentSpec, records: Sequence[Any], analysis: ExperimentAnalysis,
                    split_summary: Mapping[str, Any], plots: Sequence[Path]) -> str:  # fmt: skip
    """``report.md`` text."""
    k = spec.metric.split("@")[1]
    conf = round(100 * (1 - spec.alpha))
    names = [v.name for v in spec.variants]
    lines = [
        f"# Experiment `{spec.name}`",
        "",
        f"Control **{spec.control}** · seeds {list(spec.seeds)} · primary metric **{spec.metric}** · "
        f"α = {spec.alpha} (Holm-adjusted over {len(names) - 1} challenger(s)) · "
        f"split `{split_summary.get('kind', '?')}` (seed {split_summary.get('seed', '?')}: "
        f"{split_summary.get('train', '?')} train / {split_summary.get('val', '?')} val / "
        f"{split_summary.get('test', '?')} test interactions) · users evaluated: "
        + ", ".join(f"{seg} {n}" for seg, n in analysis.users.items()),
        "",
        f"Protocol: full ranking of the catalog; {spec.base.eval.describe(str(split_summary.get('kind', '')))}. "
        "Baseline variants (no tower trained) are fit on the same training split, their hyper-parameter chosen "
        "on the validation split, and stand unchanged for every seed.",
        "",
        f"## Verdict on {spec.metric} (all test items)",
        "",
        f"| variant | changes | {spec.metric} (mean ± seed sd) | Δ vs {spec.control} [{conf}% CI] "
        "| p | p (Holm) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        s = analysis.summary(name, spec.metric)
        if name == spec.control:
            changes = _changes(spec, name, records)
            lines.append(f"| **{name}** (control) | {changes} | {_pm(spec, s.mean, s.seed_sd)} | – | – | – | – |")
            continue
        c = analysis.comparison(name, spec.metric)
        lines.append(
            f"| {name} | {_changes(spec, name, records)} | {_pm(spec, s.mean, s.seed_sd)} | {_delta_cell(c)} | "
            f"{_p(c.p_value)} | {_p(c.p_holm)} | **{c.verdict}** |"
        )
    lines += [
        "",
        "p: paired sign-flip permutation test over users (per-user metrics averaged over seeds); "
        "CI: paired bootstrap over users; 'within seed noise': |Δ| is smaller than the seed-to-seed "
        "standard deviation of the metric."
        + (" With a single seed the seed spread is unknown: train more seeds before trusting small Δ."
           if len(spec.seeds) < 2 else ""),
    ]
    for segment in analysis.users:
        metrics = [m for m in ("recall", "ndcg", "hit", "precision", "mrr", "novelty", "coverage", "gini")
                   if any(s.metric == f"{m}@{k}" and s.segment == segment for s in analysis.summaries)]  # fmt: skip
        if not metrics:
            continue
        lines += ["", f"## Metrics@{k} — {_SEGMENT_TITLES.get(segment, segment)} ({analysis.users[segment]} users)", ""]
        lines.append("| variant | " + " | ".join(f"{m}@{k}" for m in metrics) + " |")
        lines.append("|---|" + "---|" * len(metrics))
        for name in names:
            cells = []
            for m in metrics:
                s = analysis.summary(name, f"{m}@{k}", segment)
                cell = _pm(spec, s.mean, s.seed_sd)
                if name != spec.control and not m.startswith(("coverage", "gini")):
                    c = analysis.comparison(name, f"{m}@{k}", segment)
                    mark = {"better": " ▲", "worse": " ▼"}.get(c.verdict, "")
                    cell += f" ({c.delta:+.4f}{mark})"
                cells.append(cell)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", f"Comparisons vs {spec.control} ({segment}):", ""]
        lines.append(f"| variant | metric | Δ [{conf}% CI] | p | p (t-test) | p (Holm) | seed spread | verdict |")
        lines.append("|---|---|---|---|---|---|---|---|")
        primary_name = spec.metric.split("@")[0]
        for c in analysis.comparisons:
            if c.segment == segment and (c.metric.endswith(f"@{k}") or c.metric.split("@")[0] == primary_name):
                lines.append(
                    f"| {c.variant} | {c.metric} | {_delta_cell(c)} | {_p(c.p_value)} | {_p(c.p_ttest)} | "
                    f"{_p(c.p_holm)} | {_fmt(c.seed_spread) if len(spec.seeds) > 1 else '–'} | {c.verdict} |"
                )
    lines += ["", "## Runs", "",
        "| variant | seed | epochs | best val | train s | eval s |", "|---|---|---|---|---|---|"]
    for r in records:
        t = r.train
        best = t.get("best_val_metric")
        lines.append(
            f"| {r.variant} | {r.seed} | {t.get('epochs_run', '–')} | {_fmt(best) if best is not None else '–'} | "
            f"{t.get('train_seconds', '–')} | {t.get('eval_seconds', '–')} |"
        )
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots]
    lines += ["",
        "Every per-seed figure is in `results.json`; per-user metrics in `runs/<variant>/seed-<s>/eval.json`."]
    return "\n".join(lines) + "\n"


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def plot_curves(spec: ExperimentSpec, analysis: ExperimentAnalysis, segment: str, path: Path) -> Path:
    """Metric@K curves with CI bands per variant for one segment."""
    from matplotlib.figure import Figure

    names = list(dict.fromkeys([spec.metric.split("@")[0], "ndcg"]))
    fig = Figure(figsize=(5 * len(names), 4))
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, metric in zip(axes, names):
        for v in spec.variants:
            pts = [(k, analysis.summary(v.name, f"{metric}@{k}", segment)) for k in spec.ks]
            ks = [p[0] for p in pts]
            ax.plot(ks, [p[1].mean for p in pts], marker="o", label=v.name)
            ax.fill_between(ks, [p[1].lo for p in pts], [p[1].hi for p in pts], alpha=0.2)
        ax.set_xlabel("K")
        ax.set_ylabel(f"{metric}@K")
        ax.set_title(f"{metric}@K — {_SEGMENT_TITLES.get(segment, segment)}")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_ablation(spec: ExperimentSpec, analysis: ExperimentAnalysis, path: Path) -> Path:
    """Left: the primary metric per variant (labelled by modality subset) with one dot per seed.
    Right: each challenger's paired Δ vs the control with the paired CI, coloured by the verdict.

    Per-variant CIs over users overlap whenever users differ a lot from each other, even when the
    paired test says one variant is worse for most users; the right panel shows what the test says.
    """
    from matplotlib.figure import Figure

    n = len(spec.variants)
    fig = Figure(figsize=(max(9, 2.6 * n), 4))
    left, right = fig.subplots(1, 2)
    for i, v in enumerate(spec.variants):
        s = analysis.summary(v.name, spec.metric)
        left.bar(i, s.mean, color="tab:gray" if v.name == spec.control else "tab:blue")
        seeds = list(s.per_seed.values())
        left.scatter([i] * len(seeds), seeds, color="black", s=12, zorder=3)
    left.set_xticks(range(n))
    left.set_xticklabels([f"{v.name}\n[{_modalities(spec, v.name)}]" for v in spec.variants], fontsize=8)
    left.set_ylabel(spec.metric)
    left.set_title(f"{spec.metric} by variant (dots: seeds)")
    challengers = [v.name for v in spec.variants if v.name != spec.control]
    colors = {"better": "tab:green", "worse": "tab:red"}
    for i, name in enumerate(challengers):
        c = analysis.comparison(name, spec.metric)
        right.errorbar(i, c.delta, yerr=[[c.delta - c.lo], [c.hi - c.delta]], fmt="o", capsize=5,
                       color=colors.get(c.verdict, "tab:gray"))  # fmt: skip
        right.annotate(c.verdict, (i, c.hi), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
    right.axhline(0.0, color="black", linewidth=0.8)
    right.set_xticks(range(len(challengers)))
    right.set_xticklabels(challengers, fontsize=8)
    right.set_xlim(-0.5, max(len(challengers), 1) - 0.5)
    right.set_ylabel(f"Δ {spec.metric} vs {spec.control}")
    right.set_title(f"paired Δ vs {spec.control} ({1 - analysis.alpha:.0%} CI over users)")
    return _save(fig, path)


def write_report(
    out_dir: Path,
    spec: ExperimentSpec,
    records: Sequence[Any],
    runs: Mapping[str, Mapping[int, EvalResult]],
    analysis: ExperimentAnalysis,
    split_summary: Mapping[str, Any],
) -> tuple[Path, Path, list[Path]]:
    """Write results.json, plots/*.png and report.md; returns their paths."""
    results = atomic_write_json(out_dir / "results.json", results_dict(spec, records, runs, analysis, split_summary))
    plots = [plot_curves(spec, analysis, seg, out_dir / "plots" / f"curves_{seg}.png") for seg in analysis.users
             if analysis.users[seg] >= 2]  # fmt: skip
    plots.append(plot_ablation(spec, analysis, out_dir / "plots" / "ablation.png"))
    report = atomic_write_text(out_dir / "report.md", render_markdown(spec, records, analysis, split_summary, plots))
    return results, report, plots
