"""Compare experiment variants with the control: paired over users, across seeds, Holm-corrected.

For each segment (all / warm / cold) and per-user metric:

1. Users: those evaluated in every run (all variants, all seeds; the same split gives the same
   users, any difference is counted in ``dropped_users``).
2. Per user, the metric is averaged over a variant's seeds, so model noise from one seed does not
   masquerade as a user effect; Δ per user = variant − control.
3. Mean Δ with a percentile paired bootstrap CI over users, a sign-flip permutation p-value (the
   p-value used for verdicts) and a paired t-test p-value (reported alongside). All variants and
   metrics of a segment share one set of bootstrap draws and one set of sign flips (columns of one
   matrix), so a segment costs two matrix products, not one resampling loop per number.
4. Holm step-down over the challengers of one (segment, metric) family.
5. Seed spread = the larger of control's and variant's standard deviation, across seeds, of the
   metric's mean; the verdict is "within seed noise" when |Δ| is below it.

Aggregate metrics (coverage@k, gini@k) have one value per run, so only their per-seed values and
seed spread are reported.

Example:
    >>> analysis = compare_runs(runs, control="attention", seeds=(1, 2), primary="recall@10")  # doctest: +SKIP
    >>> analysis.comparison("concat", "recall@10").verdict  # doctest: +SKIP
    'no significant difference'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from recfuse.errors import DataError
from recfuse.evaluation.experiment_config import higher_is_better
from recfuse.evaluation.result import EvalResult
from recfuse.evaluation.stats import (
    bootstrap_means,
    holm,
    paired_t_test,
    percentile_ci,
    seed_spread,
    sign_flip_pvalues,
    verdict,
)


@dataclass(frozen=True)
class MetricSummary:
    """One variant's value of one metric in one segment.

    Attributes:
        mean: mean over seeds of the per-seed mean.
        seed_sd: standard deviation of the per-seed means (0 with one seed).
        lo, hi: bootstrap CI over users of the seed-averaged mean (NaN for aggregate metrics).
        per_seed: seed -> mean of that run.
    """

    variant: str
    segment: str
    metric: str
    mean: float
    seed_sd: float
    lo: float
    hi: float
    per_seed: dict[int, float]


@dataclass(frozen=True)
class MetricComparison:
    """Variant − control on one metric in one segment."""

    variant: str
    control: str
    segment: str
    metric: str
    delta: float
    lo: float
    hi: float
    p_value: float
    p_ttest: float
    p_holm: float
    seed_spread: float
    verdict: str
    n_users: int


@dataclass
class ExperimentAnalysis:
    """Everything :func:`compare_runs` computed."""

    control: str
    primary: str
    alpha: float
    summaries: list[MetricSummary] = field(default_factory=list)
    comparisons: list[MetricComparison] = field(default_factory=list)
    users: dict[str, int] = field(default_factory=dict)
    dropped_users: dict[str, int] = field(default_factory=dict)

    def summary(self, variant: str, metric: str, segment: str = "all") -> MetricSummary:
        for s in self.summaries:
            if (s.variant, s.metric, s.segment) == (variant, metric, segment):
                return s
        raise KeyError(f"no summary for variant {variant!r}, metric {metric!r}, segment {segment!r}")

    def comparison(self, variant: str, metric: str, segment: str = "all") -> MetricComparison:
        for c in self.comparisons:
            if (c.variant, c.metric, c.segment) == (variant, metric, segment):
                return c
        raise KeyError(f"no comparison for variant {variant!r}, metric {metric!r}, segment {segment!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for s in out["summaries"]:
            s["per_seed"] = {str(k): v for k, v in s["per_seed"].items()}
        return out


def _seed_averaged(
    runs: Mapping[int, EvalResult], segment: str, users: Sequence[str], metrics: Sequence[str]
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """``[u, m]`` per-user values averaged over seeds, and per seed the ``[m]`` means."""
    per_seed: dict[int, np.ndarray] = {}
    acc = np.zeros((len(users), len(metrics)), dtype=np.float64)
    for seed, res in runs.items():
        seg = res.segment(segment)
        pos = {u: i for i, u in enumerate(seg.users)}
        rows = np.array([pos[u] for u in users], dtype=np.int64)
        mat = np.stack([seg.per_user[m][rows] for m in metrics], axis=1)
        per_seed[seed] = mat.mean(axis=0)
        acc += mat
    return acc / len(runs), per_seed


def compare_runs(
    runs: Mapping[str, Mapping[int, EvalResult]],
    control: str,
    primary: str,
    alpha: float = 0.05,
    n_boot: int = 2000,
    n_perm: int = 5000,
    seed: int = 0,
) -> ExperimentAnalysis:
    """Summaries of every variant and comparisons of every challenger with ``control``.

    Args:
        runs: variant -> seed -> :class:`EvalResult` (all on the same split).
        control: baseline variant.
        primary: primary metric (reported first; every metric gets the same treatment).
        alpha: significance level for verdicts (Holm-adjusted) and 1 − CI level.
        n_boot, n_perm: resampling sizes.
        seed: RNG seed of the resampling (same inputs → same numbers).
    """
    if control not in runs:
        raise ValueError(f"control {control!r} has no runs; variants with runs: {sorted(runs)}")
    all_runs = [r for by_seed in runs.values() for r in by_seed.values()]
    segments = [s for s in ("all", "warm", "cold") if all(s in r.segments for r in all_runs)]
    analysis = ExperimentAnalysis(control=control, primary=primary, alpha=alpha)
    for segment in segments:
        user_sets = [set(r.segment(segment).users) for r in all_runs]
        common = sorted(set.intersection(*user_sets))
        analysis.users[segment] = len(common)
        analysis.dropped_users[segment] = len(set.union(*user_sets)) - len(common)
        if len(common) < 2:
            if segment == "all":
                raise DataError(
                    f"only {len(common)} user(s) were evaluated in every run; a comparison needs at least 2 "
                    "users with test items (use a larger dataset or the random split)"
                )
            continue
        metrics = sorted(set.intersection(*(set(r.segment(segment).per_user) for r in all_runs)))
        aggregates = sorted(set.intersection(*(set(r.segment(segment).aggregate) for r in all_runs)))
        averaged: dict[str, np.ndarray] = {}
        seed_means: dict[str, dict[int, np.ndarray]] = {}
        for variant, by_seed in runs.items():
            averaged[variant], seed_means[variant] = _seed_averaged(by_seed, segment, common, metrics)
        challengers = [v for v in runs if v != control]
        names = list(runs)
        diffs = [averaged[v] - averaged[control] for v in challengers]
        # One resampling pass per segment: every variant's values and every challenger's differences
        # share the same bootstrap draws (and the same sign flips), as columns of one matrix.
        boot = bootstrap_means(np.concatenate([averaged[v] for v in names] + diffs, axis=1), n_boot, seed)
        lo_all, hi_all = percentile_ci(boot, alpha)
        p_all = np.atleast_1d(sign_flip_pvalues(np.concatenate(diffs, axis=1), n_perm, seed)) if diffs else np.empty(0)
        n_m = len(metrics)
        for i, variant in enumerate(names):
            for j, m in enumerate(metrics):
                seeds_m = {s: float(v[j]) for s, v in seed_means[variant].items()}
                analysis.summaries.append(
                    MetricSummary(
                        variant, segment, m, float(np.mean(list(seeds_m.values()))),
                        seed_spread(list(seeds_m.values())), float(lo_all[i * n_m + j]), float(hi_all[i * n_m + j]),
                        seeds_m,
                    )
                )  # fmt: skip
            for m in aggregates:
                seeds_a = {s: float(r.segment(segment).aggregate[m]) for s, r in runs[variant].items()}
                vals = list(seeds_a.values())
                analysis.summaries.append(
                    MetricSummary(variant, segment, m, float(np.mean(vals)), seed_spread(vals), np.nan, np.nan, seeds_a)
                )
        raw: dict[tuple[str, str], tuple[float, float, float, float, float]] = {}
        offset = len(names) * n_m
        for i, (variant, d) in enumerate(zip(challengers, diffs)):
            for j, m in enumerate(metrics):
                col = i * n_m + j
                p_t = paired_t_test(averaged[control][:, j], averaged[variant][:, j])[2]
                raw[(variant, m)] = (
                    float(d[:, j].mean()), float(lo_all[offset + col]), float(hi_all[offset + col]),
                    float(p_all[col]), p_t,
                )  # fmt: skip
        for m in metrics:
            adjusted = holm([raw[(v, m)][3] for v in challengers])
            for variant, p_adj in zip(challengers, adjusted):
                delta, lo_d, hi_d, p, p_t = raw[(variant, m)]
                spread = max(
                    analysis.summary(variant, m, segment).seed_sd, analysis.summary(control, m, segment).seed_sd
                )
                analysis.comparisons.append(
                    MetricComparison(
                        variant, control, segment, m, delta, lo_d, hi_d, p, p_t, p_adj, spread,
                        verdict(delta, p_adj, alpha, spread, higher_is_better(m)), len(common),
                    )
                )  # fmt: skip
    return analysis
