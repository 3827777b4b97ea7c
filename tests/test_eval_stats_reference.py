"""The hand-written statistics against independent references: scipy, statsmodels and brute force.

The vectorised bootstrap and sign-flip test stay hand-written because many metrics and variants share
one set of draws (which ``scipy.stats.bootstrap`` / ``permutation_test`` do not offer) and they are
faster; Holm stays a ten-line function rather than a 65 MB statsmodels dependency. Each is checked here
against the library that would otherwise compute it, on per-user metrics shaped like real ones
(HR@10: mostly zeros).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from recfuse.evaluation.stats import (
    bootstrap_means,
    holm,
    paired_bootstrap_ci,
    paired_permutation_test,
    percentile_ci,
)

B = 10_000  # resamples on each side of every comparison
SIGMAS = 4.0  # tolerance in standard errors of the Monte-Carlo difference (a false failure ~1e-4)


def _hr_pairs(n: int, seed: int, lift: float, ndcg: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-user HR@10 of a control and a variant: 0/1, ~10% hits, the same users mostly agreeing.

    ``ndcg``: NDCG@10 instead, each hit worth ``1 / log2(1 + rank)`` at a rank drawn from 1..10.
    """
    rng = np.random.default_rng(seed)
    a = (rng.random(n) < 0.10).astype(np.float64)
    b = a.copy()
    b[(a == 0) & (rng.random(n) < 0.03 + lift)] = 1.0  # the variant finds some new hits…
    b[(a == 1) & (rng.random(n) < 0.25)] = 0.0  # …and loses some of the control's
    if ndcg:
        a, b = (x / np.log2(1 + rng.integers(1, 11, n)) for x in (a, b))
    return a, b


def _quantile_se(sigma: float, q: float, n_resamples: int) -> float:
    """Monte-Carlo standard error of the ``q`` sample quantile of ``n_resamples`` draws from N(·, sigma²).

    The sample quantile has variance ``q (1 - q) / (B f(x_q)²)``, and the bootstrap distribution of a
    mean over hundreds of users is close to normal, so ``f(x_q) = φ(z_q) / sigma``.
    """
    z = sps.norm.ppf(q)
    return sigma * math.sqrt(q * (1 - q) / n_resamples) / sps.norm.pdf(z)


@pytest.mark.parametrize(
    ("n", "seed", "lift", "ndcg"),
    [
        (500, 0, 0.0, False),
        (1_000, 1, 0.02, False),
        (2_000, 2, 0.01, False),
        (500, 7, 0.0, True),
        (2_000, 8, 0.01, True),
    ],
)
def test_bootstrap_ci_agrees_with_scipy_percentile_bootstrap(n: int, seed: int, lift: float, ndcg: bool) -> None:
    a, b = _hr_pairs(n, seed, lift, ndcg)
    d = b - a
    assert (d == 0).mean() > 0.8  # realistic: most users score the same under both
    mean, lo, hi = paired_bootstrap_ci(a, b, n_boot=B, alpha=0.05, seed=seed)
    ref = sps.bootstrap(
        (a, b), lambda x, y, axis=-1: np.mean(y - x, axis=axis), paired=True, vectorized=True,
        n_resamples=B, batch=1_000, confidence_level=0.95, method="percentile", rng=np.random.default_rng(100 + seed),
    )  # fmt: skip
    sigma = d.std() / math.sqrt(n)  # sd of the bootstrap distribution of the mean
    # two independent estimates of each percentile, plus (HR) one step of the 1/n lattice its means live on
    tol = SIGMAS * math.sqrt(2) * _quantile_se(sigma, 0.025, B) + (0.0 if ndcg else 1.0 / n)
    assert mean == pytest.approx(d.mean())
    assert lo == pytest.approx(ref.confidence_interval.low, abs=tol)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=tol)
    assert tol < 0.1 * (hi - lo)  # the check is tight compared with the interval itself
    # scipy's standard error is the sd of its replicates; an sd of B normal draws has relative SE
    # 1/sqrt(2(B-1)), so two independent ones differ by about 1/sqrt(B-1)
    ours_se = float(bootstrap_means(d, B, seed).std(ddof=1))
    assert ours_se == pytest.approx(ref.standard_error, rel=SIGMAS / math.sqrt(B - 1))


def test_percentile_ci_is_numpy_percentile_per_column() -> None:
    rng = np.random.default_rng(5)
    reps = rng.normal(size=(B, 3))
    lo, hi = percentile_ci(reps, 0.1)
    np.testing.assert_array_equal(lo, np.percentile(reps, 5, axis=0))
    np.testing.assert_array_equal(hi, np.percentile(reps, 95, axis=0))


@pytest.mark.parametrize(("n", "seed", "lift"), [(500, 3, 0.0), (1_000, 4, 0.02), (2_000, 5, 0.015), (2_000, 6, 0.2)])
def test_sign_flip_p_agrees_with_scipy_paired_permutation_test(n: int, seed: int, lift: float) -> None:
    a, b = _hr_pairs(n, seed, lift)
    p = paired_permutation_test(a, b, n_perm=B, seed=seed)
    # permutation_type="samples" swaps each user's two values: a sign flip of the difference
    ref = sps.permutation_test(
        (a, b), lambda x, y, axis=-1: np.mean(y - x, axis=axis), permutation_type="samples", vectorized=True,
        n_resamples=B, batch=1_000, alternative="two-sided", rng=np.random.default_rng(200 + seed),
    ).pvalue  # fmt: skip
    # ours counts |T*| >= |T| (binomial, variance p(1-p)/B); scipy doubles the smaller one-sided count
    # (variance 4 (p/2)(1-p/2)/B = p(2-p)/B) and adds 1 to its count, i.e. up to 2/(B+1) more
    truth = min(1.0, max(p, ref))
    se = math.sqrt((truth * (1 - truth) + truth * (2 - truth)) / B)
    assert p == pytest.approx(ref, abs=SIGMAS * se + 2.0 / (B + 1))
    if lift >= 0.2:
        assert p == 1 / (B + 1) and ref <= 2 / (B + 1)  # nothing as extreme in either


# ----------------------------------------------------------------------------------- Holm
def _holm_by_definition(p: list[float]) -> list[float]:
    """Holm's adjusted p-value of each hypothesis: the smallest level at which the step-down rejects it.

    The procedure at level ``alpha``: go through the p-values in ascending order and reject the
    j-th smallest (j = 1..m) while ``p_(j) <= alpha / (m - j + 1)``; stop at the first that is not.
    Here it is run literally at every level where a decision can change, with no running maximum.
    """
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    levels = sorted({min(1.0, (m - j) * p[i]) for j, i in enumerate(order)} | {1.0})

    def rejected(alpha: float) -> set[int]:
        out: set[int] = set()
        for j, i in enumerate(order):
            if (m - j) * p[i] > alpha:  # p_(j+1) > alpha / (m - j), written without a division
                break
            out.add(i)
        return out

    adjusted = [1.0] * m
    for alpha in reversed(levels):  # largest first, so the last level that rejects is the smallest
        for i in rejected(alpha):
            adjusted[i] = alpha
    return adjusted


def _pvalue_vectors() -> list[list[float]]:
    rng = np.random.default_rng(11)
    vectors = [[0.5], [0.0, 0.0, 1.0], [1.0, 1.0], [0.01, 0.04, 0.03], [0.2, 0.2, 0.2, 0.01]]
    for m in (2, 3, 5, 8, 13, 20):
        vectors.append(rng.random(m).tolist())
        vectors.append(np.round(rng.random(m) ** 3, 2).tolist())  # ties, and many small values
        vectors.append((1 - rng.random(m) * 1e-3).tolist())  # all near 1
        mixed = rng.choice([0.001, 0.01, 0.02, 0.5, 0.999, 1.0], m)  # heavy ties, exact 1s
        vectors.append(mixed.tolist())
    return vectors


@pytest.mark.parametrize("pvalues", _pvalue_vectors())
def test_holm_equals_the_step_down_procedure_run_at_every_level(pvalues: list[float]) -> None:
    np.testing.assert_allclose(holm(pvalues), _holm_by_definition(pvalues), rtol=1e-15, atol=0)


@pytest.mark.parametrize("pvalues", _pvalue_vectors())
def test_holm_equals_statsmodels(pvalues: list[float]) -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")  # in the dev extra
    reject, corrected, _, _ = multitest.multipletests(pvalues, alpha=0.05, method="holm")
    np.testing.assert_allclose(holm(pvalues), corrected, rtol=1e-15, atol=0)
    assert (np.asarray(holm(pvalues)) <= 0.05).tolist() == reject.tolist()
