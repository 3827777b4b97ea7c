"""A/B analysis on synthetic exposure logs: joins, CTR CIs that cover the truth, SRM detection."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfuse.errors import DataError, SchemaError
from recfuse.evaluation.ab_analysis import (
    analyze,
    format_report,
    join_feedback,
    ratio_estimate,
    read_exposure_frame,
    srm_check,
)
from recfuse.variants import Exposure, ExposureLogger, VariantAssigner

SHARES = {"attention": 0.9, "concat": 0.1}
TRUE_CTR = {"attention": 0.10, "concat": 0.13}


def _log(
    n_users: int, seed: int, lose_concat: float = 0.0, shares: dict[str, float] = SHARES
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exposures (1-4 requests per user, 10 items each) and clicks drawn at the variant's true CTR."""
    rng = np.random.default_rng(seed)
    users = [f"u{i}" for i in range(n_users)]
    variants = VariantAssigner("exp", shares).assign_many(users)
    ex_rows, fb_rows = [], []
    for user, variant in zip(users, variants):
        if variant == "concat" and rng.random() < lose_concat:
            continue  # a logging bug that loses some users of one variant
        for r in range(int(rng.integers(1, 5))):
            rid = f"{user}-{r}"
            items = [f"i{j}" for j in rng.choice(500, size=10, replace=False)]
            ts = float(1000 * r)
            ex_rows.append((rid, user, variant, items, [1.0] * 10, ts))
            for item in np.array(items)[rng.random(10) < TRUE_CTR[variant]]:
                fb_rows.append((rid, user, str(item), ts + 5))
    ex = pd.DataFrame(ex_rows, columns=["request_id", "user_id", "variant", "item_ids", "scores", "ts"])
    fb = pd.DataFrame(fb_rows, columns=["request_id", "user_id", "item_id", "ts"])
    return ex, fb


def test_ratio_ci_covers_the_true_rate_at_the_stated_level() -> None:
    rng = np.random.default_rng(0)
    covered, reps = 0, 400
    for _ in range(reps):
        shown = rng.integers(5, 50, size=300)
        clicks = rng.binomial(shown, 0.1)
        est = ratio_estimate(clicks, shown)
        covered += est.lo <= 0.1 <= est.hi
    assert 0.91 <= covered / reps <= 0.985


def test_ctr_cis_cover_the_truth_and_the_difference_is_detected() -> None:
    ex, fb = _log(4000, seed=1)
    report = analyze(ex, fb, shares=SHARES)
    by = {s.variant: s for s in report.variants}
    for variant, truth in TRUE_CTR.items():
        assert by[variant].ctr.lo <= truth <= by[variant].ctr.hi, (variant, by[variant].ctr)
    ctr = next(c for c in report.comparisons if c.metric == "ctr")
    assert (ctr.variant, ctr.control) == ("concat", "attention")
    assert ctr.lo <= 0.03 <= ctr.hi and ctr.p_value < 1e-6
    assert report.srm is not None and not report.srm.mismatch
    assert report.counts["unmatched_feedback"] == 0 and report.counts["users_in_several_variants"] == 0
    assert by["attention"].clicks + by["concat"].clicks == len(fb)


def test_srm_is_flagged_loudly_on_a_skewed_log(caplog: pytest.LogCaptureFixture) -> None:
    ex, fb = _log(4000, seed=2, lose_concat=0.3)
    with caplog.at_level(logging.ERROR):
        report = analyze(ex, fb, shares=SHARES)
    assert report.srm is not None and report.srm.mismatch and report.srm.p_value < 1e-3
    assert "SAMPLE RATIO MISMATCH" in caplog.text
    text = format_report(report)
    assert text.startswith("!" * 78) and "NOT trustworthy" in text


def test_srm_not_flagged_on_fair_assignments() -> None:
    users = [f"user-{i}" for i in range(3000)]
    p_values = []
    for salt in range(40):
        got = VariantAssigner(f"salt-{salt}", SHARES).assign_many(users)
        p_values.append(srm_check({v: got.count(v) for v in SHARES}, SHARES).p_value)
    assert sum(p < 0.001 for p in p_values) == 0
    assert 0.2 < float(np.mean(p_values)) < 0.8  # p-values of a fair split are ~uniform


def test_srm_check_by_hand() -> None:
    # 520 vs 480 at 50/50: chi2 = 2 * 20² / 500 = 1.6, p = 0.2059
    srm = srm_check({"a": 520, "b": 480}, {"a": 0.5, "b": 0.5})
    assert srm.chi2 == pytest.approx(1.6) and srm.p_value == pytest.approx(0.205903, abs=1e-6)
    assert srm_check({"a": 600, "b": 400}, {"a": 0.5, "b": 0.5}).mismatch
    with pytest.raises(DataError, match="no users in any configured variant"):
        srm_check({"x": 10}, {"a": 0.5, "b": 0.5})


def test_join_by_user_within_the_window_and_unmatched_rows_are_counted() -> None:
    ex = pd.DataFrame(
        {"request_id": ["r1", "r2"], "user_id": ["u", "u"], "variant": ["a", "a"],
         "item_ids": [["x", "y"], ["y", "z"]], "scores": [[1.0, 0.5], [1.0, 0.5]], "ts": [100.0, 200.0]}
    )
    fb = pd.DataFrame(
        {"user_id": ["u", "u", "u", "u", "u"], "item_id": ["x", "y", "z", "q", "x"], "ts": [150, 250, 210, 150, 9000]}
    )
    clicks, unmatched = join_feedback(ex, fb, window_s=1000)
    assert sorted(map(tuple, clicks.to_numpy().tolist())) == [("r1", "x"), ("r2", "y"), ("r2", "z")]
    assert unmatched == 2  # item q never shown; x clicked long after the window


def test_users_in_two_variants_are_counted() -> None:
    ex = pd.DataFrame(
        {"request_id": ["r1", "r2", "r3"], "user_id": ["u", "u", "v"], "variant": ["a", "b", "b"],
         "item_ids": [["x"], ["x"], ["x"]], "scores": [[1.0]] * 3, "ts": [1.0, 2.0, 3.0]}
    )
    report = analyze(ex, pd.DataFrame({"request_id": ["r1"], "item_id": ["x"]}), control="a")
    assert report.counts["users_in_several_variants"] == 1
    assert report.srm is None and "SRM check skipped" in format_report(report)


def test_exposure_files_written_by_the_logger_are_analysed(tmp_path: Path) -> None:
    ex, fb = _log(300, seed=3)
    with ExposureLogger(tmp_path / "exp", rotate_rows=100) as log:
        for row in ex.itertuples():
            log.log(Exposure(row.request_id, row.user_id, row.variant, row.item_ids, row.scores, row.ts))
    frame = read_exposure_frame(tmp_path / "exp")
    assert len(frame) == len(ex)
    report = analyze(frame, fb, shares=SHARES)
    assert sum(s.clicks for s in report.variants) == len(fb)


def test_bad_inputs_raise() -> None:
    ex, fb = _log(50, seed=4)
    with pytest.raises(SchemaError, match="feedback needs an `item_id` column"):
        join_feedback(ex, fb.drop(columns=["item_id"]))
    with pytest.raises(SchemaError, match="feedback needs `request_id`, or `user_id` and a `ts`"):
        join_feedback(ex, fb.drop(columns=["request_id", "ts"]))
    with pytest.raises(DataError, match="control variant 'gated' has no exposures"):
        analyze(ex, fb, control="gated")
    with pytest.raises(ValueError, match="`y` must have a positive sum"):
        ratio_estimate([0], [0])


def test_missing_or_empty_exposure_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist; pass the directory"):
        read_exposure_frame(tmp_path / "nope")
    with pytest.raises(DataError, match="no exposure rows"):
        read_exposure_frame(tmp_path)
