"""Significance machinery on synthetic per-user scores with a known true difference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recfuse.evaluation.stats import (
    chi2_sf,
    holm,
    normal_ppf,
    normal_sf_two_sided,
    paired_bootstrap_ci,
    paired_permutation_test,
    paired_t_test,
    seed_spread,
    t_sf_two_sided,
    verdict,
)


def _pairs(rng: np.random.Generator, n: int, effect: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-user metric for a control and a variant sharing a per-user difficulty (so pairing matters)."""
    difficulty = rng.beta(2, 5, size=n)
    a = np.clip(difficulty + rng.normal(0, 0.1, n), 0, 1)
    b = np.clip(difficulty + effect + rng.normal(0, 0.1, n), 0, 1)
    return a, b


def test_reference_values_of_the_distribution_functions() -> None:
    # textbook critical values: the two-sided 5% points of t(10), t(3) and the upper 5% of chi2(1), chi2(10)
    assert t_sf_two_sided(2.228138851986274, 10) == pytest.approx(0.05, abs=1e-12)
    assert t_sf_two_sided(3.182446305284263, 3) == pytest.approx(0.05, abs=1e-12)
    assert t_sf_two_sided(2.0, 10) == pytest.approx(0.07338803477074, abs=1e-11)
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, abs=1e-12)
    assert chi2_sf(18.307038053275146, 10) == pytest.approx(0.05, abs=1e-12)
    assert chi2_sf(124.342113404, 100) == pytest.approx(0.05, abs=1e-9)
    assert chi2_sf(0.0, 3) == 1.0
    assert normal_ppf(0.975) == pytest.approx(1.959963984540054, abs=1e-9)
    assert normal_sf_two_sided(1.959963984540054) == pytest.approx(0.05, abs=1e-12)


def test_paired_t_test_agrees_with_scipy_ttest_rel() -> None:
    from scipy import stats

    a, b = _pairs(np.random.default_rng(5), 300, 0.01)
    t, df, p = paired_t_test(a, b)
    ref = stats.ttest_rel(b, a)
    assert t == pytest.approx(ref.statistic, rel=1e-12) and p == pytest.approx(ref.pvalue, rel=1e-10)
    assert df == 299.0


def test_paired_t_test_matches_the_hand_computation() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([2.0, 2.5, 4.0, 4.5])  # d = 1, .5, 1, .5: mean .75, sd .288675
    t, df, p = paired_t_test(a, b)
    assert t == pytest.approx(0.75 / (math.sqrt(1 / 12) / 2))
    assert df == 3.0 and p == pytest.approx(t_sf_two_sided(t, 3))
    assert paired_t_test(a, a) == (0.0, 3.0, 1.0)
    assert paired_t_test(a, a + 1)[2] == 0.0


def test_holm_step_down_by_hand() -> None:
    # sorted p: .01*3 = .03, .03*2 = .06, .04*1 -> max(.06, .04) = .06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_no_true_difference_is_significant_at_about_alpha() -> None:
    rng = np.random.default_rng(1)
    reps, alpha = 300, 0.05
    t_hits = perm_hits = boot_hits = 0
    for r in range(reps):
        a, b = _pairs(rng, 150, effect=0.0)
        t_hits += paired_t_test(a, b)[2] < alpha
        perm_hits += paired_permutation_test(a, b, n_perm=400, seed=r) < alpha
        _, lo, hi = paired_bootstrap_ci(a, b, n_boot=400, seed=r)
        boot_hits += not (lo <= 0.0 <= hi)
    # binomial sd of a 5% rate over 300 replications is 1.3%: allow 1%..10%
    for name, hits in (("t", t_hits), ("permutation", perm_hits), ("bootstrap", boot_hits)):
        assert 0.01 <= hits / reps <= 0.10, (name, hits / reps)


def test_a_large_true_difference_is_detected_and_covered() -> None:
    rng = np.random.default_rng(2)
    a, b = _pairs(rng, 300, effect=0.05)
    true = float(np.mean(b - a))
    mean, lo, hi = paired_bootstrap_ci(a, b, seed=0)
    assert mean == pytest.approx(true) and lo < true < hi and lo > 0
    assert paired_permutation_test(a, b, seed=0) == pytest.approx(1 / 10_001)
    assert paired_t_test(a, b)[2] < 1e-10


def test_same_seed_same_numbers() -> None:
    rng = np.random.default_rng(3)
    a, b = _pairs(rng, 200, effect=0.01)
    assert paired_bootstrap_ci(a, b, seed=7) == paired_bootstrap_ci(a, b, seed=7)
    assert paired_permutation_test(a, b, seed=7) == paired_permutation_test(a, b, seed=7)


def test_verdicts() -> None:
    assert verdict(0.02, 0.001, 0.05, spread=0.0) == "better"
    assert verdict(-0.02, 0.001, 0.05, spread=0.0) == "worse"
    assert verdict(0.02, 0.001, 0.05, spread=0.0, higher_is_better=False) == "worse"
    assert verdict(0.02, 0.2, 0.05, spread=0.0) == "no significant difference"
    assert verdict(0.02, 0.001, 0.05, spread=0.03) == "within seed noise"
    assert seed_spread([0.1, 0.2, 0.3]) == pytest.approx(0.1)
    assert seed_spread([0.1]) == 0.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="equal length, got 3 and 2"):
        paired_t_test([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2 users, got 1"):
        paired_bootstrap_ci([1], [2])
    with pytest.raises(ValueError, match="NaN or inf"):
        paired_permutation_test([1, float("nan")], [1, 2])
    with pytest.raises(ValueError, match=r"`alpha` must be in \(0, 1\), got 1.5"):
        paired_bootstrap_ci([1, 2], [2, 3], alpha=1.5)
    with pytest.raises(ValueError, match="`pvalues` must be a list of probabilities"):
        holm([0.5, 1.5])
    with pytest.raises(ValueError, match="`df` must be >= 1"):
        chi2_sf(1.0, 0)
    with pytest.raises(ValueError, match="`df` must be > 0"):
        t_sf_two_sided(1.0, 0)
    with pytest.raises(ValueError, match=r"`p` must be in \(0, 1\)"):
        normal_ppf(1.0)


def test_vectorised_columns_match_one_metric_at_a_time() -> None:
    from recfuse.evaluation.stats import bootstrap_means, sign_flip_pvalues

    rng = np.random.default_rng(5)
    d = rng.normal(0.1, 0.2, size=(300, 3))
    d[:, 2] = 0.0
    both = sign_flip_pvalues(d, n_perm=2000, seed=1)
    assert both[2] == 1.0 and both[0] < 0.01 and both[1] < 0.01
    boots = bootstrap_means(d, n_boot=500, seed=1)
    assert boots.shape == (500, 3)
    np.testing.assert_allclose(boots[:, 0], bootstrap_means(d[:, 0], n_boot=500, seed=1))
    assert np.all(boots[:, 2] == 0.0)
