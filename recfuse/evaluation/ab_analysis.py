"""Online A/B analysis: join click feedback to logged exposures, compare variants, check the sample ratio.

Join: a feedback row matches an exposure when (a) its ``request_id`` equals the exposure's and its
``item_id`` was shown, or, for rows without a request id, (b) same ``user_id``, the item was shown,
and the click time is within ``window_s`` seconds after the exposure (the latest such exposure wins).
Repeated clicks on the same shown item of one request count once. Feedback rows that match nothing
are counted (``unmatched_feedback``) and logged, never silently dropped.

Metrics per variant (users are the randomisation unit, so uncertainty is clustered by user):

- CTR = clicked shown items / shown items; hit-rate = requests with ≥ 1 click / requests.
- Each is a ratio of per-user sums; its standard error is the delta-method one,
  se² = Var(x_u − R·y_u) / (n · ȳ²) over users u, and CIs are normal (R ± z·se).
- Difference variant − control: CI from the two independent standard errors, two-sided z-test p.

Sample-ratio mismatch (SRM): users per variant against the configured shares with a chi-square
goodness-of-fit test (survival from scipy.stats, :func:`stats.chi2_sf`). A p-value
below ``srm_alpha`` (default 0.001, the usual SRM threshold) means assignment or logging is broken
and every other number is suspect: it is logged as an ERROR and flagged in the report. Users seen in
more than one variant (broken stickiness) are counted too.

Example:
    >>> report = analyze(read_exposure_frame("exposures/"), read_table("clicks.parquet"),
    ...                  shares={"attention": 0.9, "concat": 0.1})  # doctest: +SKIP
    >>> print(format_report(report))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from recfuse.errors import DataError, SchemaError
from recfuse.evaluation.stats import chi2_sf, normal_ppf, normal_sf_two_sided
from recfuse.variants import read_exposures, validate_shares

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class RatioEstimate:
    """A ratio-of-sums metric with its delta-method standard error and CI."""

    value: float
    se: float
    lo: float
    hi: float


@dataclass(frozen=True)
class VariantSummary:
    variant: str
    users: int
    requests: int
    impressions: int
    clicks: int
    ctr: RatioEstimate
    hit_rate: RatioEstimate


@dataclass(frozen=True)
class Comparison:
    """Variant − control for one metric."""

    variant: str
    control: str
    metric: str
    diff: float
    lo: float
    hi: float
    p_value: float


@dataclass(frozen=True)
class SrmCheck:
    """Sample-ratio-mismatch chi-square test of users per variant against the configured shares."""

    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float
    df: int
    p_value: float
    mismatch: bool


@dataclass
class ABReport:
    variants: list[VariantSummary]
    comparisons: list[Comparison]
    srm: SrmCheck | None
    counts: dict[str, int] = field(default_factory=dict)
    alpha: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio_estimate(x: npt.ArrayLike, y: npt.ArrayLike, alpha: float = 0.05) -> RatioEstimate:
    """Σx / Σy over independent units with a delta-method CI.

    Args:
        x: ``[n]`` numerator per unit (e.g. clicks per user).
        y: ``[n]`` denominator per unit (e.g. impressions per user), Σy > 0.
        alpha: 1 − confidence level.

    Example:
        >>> round(ratio_estimate([1, 0, 2], [4, 4, 4]).value, 4)
        0.25
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1 or len(xs) == 0:
        raise ValueError(f"`x` and `y` must be 1-d of equal non-zero length, got {xs.shape} and {ys.shape}")
    if ys.sum() <= 0:
        raise ValueError("`y` must have a positive sum (no impressions)")
    n = len(xs)
    r = xs.sum() / ys.sum()
    se = float(np.sqrt((xs - r * ys).var(ddof=1) / (n * ys.mean() ** 2))) if n > 1 else float("inf")
    z = normal_ppf(1 - alpha / 2)
    return RatioEstimate(float(r), se, float(r - z * se), float(r + z * se))


def read_exposure_frame(directory: str | Path) -> pd.DataFrame:
    """Exposure files of ``directory`` as a frame (request_id, user_id, variant, item_ids, scores, ts).

    Raises:
        DataError: the directory is missing or holds no exposure file.
    """
    try:
        table = read_exposures(directory)
    except FileNotFoundError as err:
        raise DataError(f"{err}; pass the directory the service writes exposures to (--exposures)") from None
    if table.num_rows == 0:
        raise DataError(f"no exposure rows in {str(directory)!r} (files exposures-*.parquet); nothing to analyse")
    df = table.to_pandas()
    df["item_ids"] = [list(v) if v is not None else [] for v in df["item_ids"]]
    return df


def _explode(exposures: pd.DataFrame) -> pd.DataFrame:
    ex = exposures[["request_id", "user_id", "variant", "ts", "item_ids"]].explode("item_ids")
    ex = ex.dropna(subset=["item_ids"]).rename(columns={"item_ids": "item_id"})
    ex["item_id"] = ex["item_id"].astype(str)
    return ex


def join_feedback(
    exposures: pd.DataFrame, feedback: pd.DataFrame, window_s: float = 3600.0
) -> tuple[pd.DataFrame, int]:
    """Clicked (request_id, item_id) pairs matched to exposures, and the number of unmatched feedback rows.

    Raises:
        SchemaError: feedback lacks ``item_id``, or lacks both ``request_id`` and ``user_id`` + a time
            column (``ts`` or ``timestamp``) needed to match by user within the window.
    """
    cols = set(feedback.columns)
    if "item_id" not in cols:
        raise SchemaError(f"feedback needs an `item_id` column; found {sorted(cols)}")
    time_col = "ts" if "ts" in cols else "timestamp" if "timestamp" in cols else None
    has_req = "request_id" in cols
    if not has_req and ("user_id" not in cols or time_col is None):
        raise SchemaError(
            f"feedback needs `request_id`, or `user_id` and a `ts`/`timestamp` column to match by user; "
            f"found {sorted(cols)}"
        )
    fb = feedback.reset_index(drop=True).copy()
    fb["_row"] = np.arange(len(fb))
    fb["item_id"] = fb["item_id"].astype(str)
    ex = _explode(exposures)
    matched: list[pd.DataFrame] = []
    by_req = fb[fb["request_id"].notna() & (fb["request_id"].astype(str) != "")] if has_req else fb.iloc[:0]
    if len(by_req):
        m = by_req.assign(request_id=by_req["request_id"].astype(str)).merge(
            ex[["request_id", "item_id"]], on=["request_id", "item_id"]
        )
        matched.append(m[["_row", "request_id", "item_id"]])
    rest = fb[~fb["_row"].isin(by_req["_row"])]
    if len(rest) and "user_id" in cols and time_col is not None:
        m = rest.assign(user_id=rest["user_id"].astype(str), _click_ts=rest[time_col].astype(np.float64)).merge(
            ex[["request_id", "user_id", "item_id", "ts"]].rename(columns={"ts": "_exp_ts"}), on=["user_id", "item_id"]
        )
        m = m[(m["_click_ts"] >= m["_exp_ts"]) & (m["_click_ts"] <= m["_exp_ts"] + window_s)]
        m = m.sort_values(["_row", "_exp_ts"]).drop_duplicates("_row", keep="last")
        matched.append(m[["_row", "request_id", "item_id"]])
    clicks = pd.concat(matched) if matched else pd.DataFrame(columns=["_row", "request_id", "item_id"])
    unmatched = len(fb) - clicks["_row"].nunique()
    clicks = clicks.drop_duplicates(["request_id", "item_id"])[["request_id", "item_id"]]
    return clicks.reset_index(drop=True), int(unmatched)


def srm_check(users_per_variant: Mapping[str, int], shares: Mapping[str, float], alpha: float = 0.001) -> SrmCheck:
    """Chi-square goodness of fit of users per variant against ``shares`` (variants with share 0 skipped).

    Example:
        >>> srm_check({"a": 5000, "b": 5000}, {"a": 0.5, "b": 0.5}).mismatch
        False
    """
    shares = validate_shares(shares)
    live = [v for v, s in shares.items() if s > 0]
    observed = {v: int(users_per_variant.get(v, 0)) for v in live}
    total = sum(observed.values())
    if total == 0:
        raise DataError(f"no users in any configured variant {live}; check the variant names in --shares")
    expected = {v: total * shares[v] for v in live}
    chi2 = float(sum((observed[v] - expected[v]) ** 2 / expected[v] for v in live))
    df = max(1, len(live) - 1)
    p = chi2_sf(chi2, df) if len(live) > 1 else 1.0
    return SrmCheck(observed, expected, chi2, df, p, p < alpha)


def analyze(
    exposures: pd.DataFrame,
    feedback: pd.DataFrame,
    shares: Mapping[str, float] | None = None,
    control: str | None = None,
    window_s: float = 3600.0,
    alpha: float = 0.05,
    srm_alpha: float = 0.001,
) -> ABReport:
    """Per-variant CTR and hit-rate with CIs, differences vs ``control``, and the SRM check.

    Args:
        exposures: exposure rows (see :func:`read_exposure_frame`).
        feedback: click rows: ``item_id`` and ``request_id`` and/or ``user_id`` + ``ts``/``timestamp``.
        shares: configured traffic shares (enables the SRM check; None skips it, say so).
        control: the baseline variant (default: first of ``shares``, else the variant with most users).
        window_s: how long after an exposure a click by the same user still counts (user matching).
        alpha: 1 − confidence level of the CIs.
        srm_alpha: p-value below which the sample ratio is called broken.
    """
    if exposures.empty:
        raise DataError("no exposures to analyse")
    clicks, unmatched = join_feedback(exposures, feedback, window_s)
    ex = exposures.drop_duplicates("request_id").copy()
    dup_requests = len(exposures) - len(ex)
    ex["shown"] = [len(v) for v in ex["item_ids"]]
    per_req = clicks.groupby("request_id").size()
    ex["clicks"] = ex["request_id"].map(per_req).fillna(0).astype(np.int64)
    ex["hit"] = (ex["clicks"] > 0).astype(np.int64)
    anonymous = ex["user_id"].isna() | (ex["user_id"].astype(str) == "")
    # anonymous requests are their own unit (no user to cluster on)
    ex["unit"] = np.where(anonymous, "req:" + ex["request_id"].astype(str), "user:" + ex["user_id"].astype(str))
    per_user = ex.groupby(["variant", "unit"])[["shown", "clicks", "hit"]].sum()
    per_user["requests"] = ex.groupby(["variant", "unit"]).size()
    multi = ex[~anonymous].groupby("user_id")["variant"].nunique()
    summaries: dict[str, VariantSummary] = {}
    for variant, grp in per_user.groupby(level=0):
        if grp["shown"].sum() == 0:
            continue
        summaries[str(variant)] = VariantSummary(
            variant=str(variant),
            users=len(grp),
            requests=int(grp["requests"].sum()),
            impressions=int(grp["shown"].sum()),
            clicks=int(grp["clicks"].sum()),
            ctr=ratio_estimate(grp["clicks"].to_numpy(), grp["shown"].to_numpy(), alpha),
            hit_rate=ratio_estimate(grp["hit"].to_numpy(), grp["requests"].to_numpy(), alpha),
        )
    srm = None
    if shares is not None:
        unknown = sorted(set(summaries) - set(shares))
        if unknown:
            logger.warning("exposures name variant(s) %s that are not in the configured shares %s", unknown, shares)
        srm = srm_check({v: s.users for v, s in summaries.items()}, shares, srm_alpha)
        if srm.mismatch:
            logger.error(
                "SAMPLE RATIO MISMATCH: users per variant %s vs expected %s (chi2=%.1f, p=%.2g < %g); "
                "assignment or exposure logging is broken — do not trust the comparison",
                srm.observed,
                {k: round(v, 1) for k, v in srm.expected.items()},
                srm.chi2,
                srm.p_value,
                srm_alpha,
            )
    if control is None:
        control = next((v for v in (shares or {}) if v in summaries), None) or max(
            summaries, key=lambda v: summaries[v].users
        )
    if control not in summaries:
        raise DataError(f"control variant {control!r} has no exposures; variants seen: {sorted(summaries)}")
    comparisons: list[Comparison] = []
    z = normal_ppf(1 - alpha / 2)
    for name, s in summaries.items():
        if name == control:
            continue
        for metric in ("ctr", "hit_rate"):
            a, b = getattr(summaries[control], metric), getattr(s, metric)
            diff = b.value - a.value
            se = float(np.hypot(a.se, b.se))
            p = normal_sf_two_sided(diff / se) if se > 0 else (1.0 if diff == 0 else 0.0)
            comparisons.append(Comparison(name, control, metric, diff, diff - z * se, diff + z * se, p))
    counts = {
        "exposure_rows": len(exposures),
        "duplicate_request_rows": dup_requests,
        "feedback_rows": len(feedback),
        "matched_clicks": len(clicks),
        "unmatched_feedback": unmatched,
        "anonymous_requests": int(anonymous.sum()),
        "users_in_several_variants": int((multi > 1).sum()),
    }
    if unmatched:
        logger.warning("%d feedback row(s) matched no exposure (unknown request, item not shown, or late)", unmatched)
    if counts["users_in_several_variants"]:
        n_multi = counts["users_in_several_variants"]
        logger.error("%d user(s) were served by more than one variant: assignment is not sticky", n_multi)
    return ABReport(list(summaries.values()), comparisons, srm, counts, alpha)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def srm_banner(report: ABReport) -> str:
    """The loud multi-line SRM warning ("" when the check passed or was skipped)."""
    if report.srm is None or not report.srm.mismatch:
        return ""
    bar = "!" * 78
    expected = {k: round(v, 1) for k, v in report.srm.expected.items()}
    return "\n".join(
        [
            bar,
            f"!!! SAMPLE RATIO MISMATCH (chi2={report.srm.chi2:.1f}, df={report.srm.df}, p={report.srm.p_value:.2g})",
            f"!!! users observed {report.srm.observed} vs expected {expected}",
            "!!! assignment or exposure logging is broken: the comparison below is NOT trustworthy",
            bar,
        ]
    )


def format_report(report: ABReport, banner: bool = True) -> str:
    """Plain-text tables for the terminal; an SRM failure is the first thing printed (``banner``)."""
    lines: list[str] = []
    if banner and srm_banner(report):
        lines.append(srm_banner(report))
    conf = round(100 * (1 - report.alpha))
    lines.append(
        f"{'variant':<16}{'users':>8}{'requests':>10}{'shown':>10}{'clicks':>8}  "
        f"{'CTR [' + str(conf) + '% CI]':<30}{'hit-rate [CI]':<30}"
    )
    for s in report.variants:
        lines.append(
            f"{s.variant:<16}{s.users:>8}{s.requests:>10}{s.impressions:>10}{s.clicks:>8}  "
            f"{_pct(s.ctr.value) + ' [' + _pct(s.ctr.lo) + ', ' + _pct(s.ctr.hi) + ']':<30}"
            f"{_pct(s.hit_rate.value) + ' [' + _pct(s.hit_rate.lo) + ', ' + _pct(s.hit_rate.hi) + ']':<30}"
        )
    if report.comparisons:
        lines.append("")
        lines.append(f"{'comparison':<28}{'metric':<10}{'diff [CI]':<34}{'p':>10}")
        for c in report.comparisons:
            sig = " *" if c.p_value < report.alpha else ""
            lines.append(
                f"{c.variant + ' - ' + c.control:<28}{c.metric:<10}"
                f"{f'{100 * c.diff:+.2f}pp [{100 * c.lo:+.2f}, {100 * c.hi:+.2f}]':<34}{c.p_value:>10.3g}{sig}"
            )
    if report.srm is None:
        lines.append("\nSRM check skipped: pass --shares to check users per variant against the configured split")
    elif not report.srm.mismatch:
        lines.append(f"\nSRM check ok: users {report.srm.observed}, p={report.srm.p_value:.3g}")
    lines.append("counts: " + ", ".join(f"{k}={v}" for k, v in report.counts.items()))
    return "\n".join(lines)
