"""Significance machinery for paired per-user metrics (numpy + math; no scipy).

- :func:`paired_bootstrap_ci` — percentile CI of the mean difference ``b − a`` by resampling users
  (vectorised: multinomial resampling counts in blocks, seeded).
- :func:`paired_permutation_test` — two-sided sign-flip randomisation test of mean difference 0;
  p = (1 + #{|mean(s·d)| ≥ |mean(d)|}) / (1 + n_perm), never 0.
- :func:`paired_t_test` — Student t on the differences; the two-sided p-value uses the exact t
  distribution through the regularised incomplete beta function, P(|T| > t) = I_{df/(df+t²)}(df/2, ½)
  (continued fraction, Numerical Recipes ``betacf``), accurate to ~1e-12.
- :func:`holm` — Holm step-down adjustment of a family of p-values (controls family-wise error).
- :func:`chi2_sf` — chi-square survival function via the regularised upper incomplete gamma
  Q(df/2, x/2) (series below a+1, continued fraction above), for the sample-ratio-mismatch check.
- :func:`verdict` — "better" / "worse" / "no significant difference" / "within seed noise".

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0); a = rng.random(500); b = a + 0.1
    >>> lo, hi = paired_bootstrap_ci(a, b, seed=0)[1:]
    >>> bool(lo < 0.1 < hi + 1e-9), paired_permutation_test(a, b, seed=0) < 0.01
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

_BLOCK_ELEMS = 4_000_000  # resampling matrix elements per block (~32 MB of float64)


def _paired(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have equal length, got {len(x)} and {len(y)}")
    if len(x) < 2:
        raise ValueError(f"paired samples need at least 2 users, got {len(x)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("paired samples contain NaN or inf; evaluate on users with test items only")
    return y - x


def _resample_counts(rng: np.random.Generator, n: int, size: int) -> npt.NDArray[np.float64]:
    """``[size, n]`` bootstrap multiplicities: each row counts how often each unit was drawn."""
    idx = rng.integers(0, n, size=(size, n), dtype=np.int64) + (np.arange(size, dtype=np.int64) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)


def bootstrap_means(d: npt.ArrayLike, n_boot: int = 10_000, seed: int = 0) -> npt.NDArray[np.float64]:
    """Bootstrap distribution of the mean of each column.

    Args:
        d: ``[n]`` or ``[n, m]`` values per unit (m metrics resampled with the same draws).
        n_boot: replicates.
        seed: RNG seed.

    Returns:
        ``[n_boot]`` or ``[n_boot, m]`` replicate means.
    """
    x = np.asarray(d, dtype=np.float64)
    flat = x.reshape(len(x), -1)
    n = len(flat)
    if n < 2:
        raise ValueError(f"bootstrap needs at least 2 users, got {n}")
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, flat.shape[1]), dtype=np.float64)
    block = max(1, _BLOCK_ELEMS // n)
    for start in range(0, n_boot, block):
        stop = min(start + block, n_boot)
        out[start:stop] = _resample_counts(rng, n, stop - start) @ flat / n
    return out.reshape(n_boot) if x.ndim == 1 else out


def sign_flip_pvalues(d: npt.ArrayLike, n_perm: int = 10_000, seed: int = 0) -> npt.NDArray[np.float64]:
    """Two-sided sign-flip p-values of mean 0 for each column of ``d`` (``[n]`` or ``[n, m]``).

    Each column's p = (1 + #{|mean(s·d)| ≥ |mean(d)|}) / (1 + n_perm), with the same sign draws for
    every column (so several metrics of one comparison cost one pass).
    """
    x = np.asarray(d, dtype=np.float64)
    flat = x.reshape(len(x), -1)
    n = len(flat)
    observed = np.abs(flat.mean(axis=0))
    tol = 1e-12 * np.maximum(1.0, np.abs(flat).max(axis=0, initial=0.0))
    rng = np.random.default_rng(seed)
    extreme = np.zeros(flat.shape[1], dtype=np.int64)
    block = max(1, _BLOCK_ELEMS // n)
    total = flat.sum(axis=0)
    for start in range(0, n_perm, block):
        size = min(block, n_perm - start)
        # 8 random signs per random byte; with s = 2b - 1: Σ s·d = 2 Σ b·d − Σ d
        bits = np.unpackbits(np.frombuffer(rng.bytes((size * n + 7) // 8), dtype=np.uint8))[: size * n]
        stats = np.abs(2.0 * (bits.reshape(size, n).astype(np.float64) @ flat) - total) / n  # [size, m]
        extreme += (stats >= observed - tol).sum(axis=0)
    p = np.asarray((1.0 + extreme) / (1.0 + n_perm), dtype=np.float64)
    return p.reshape(()) if x.ndim == 1 else p


def percentile_ci(replicates: npt.ArrayLike, alpha: float = 0.05) -> tuple[npt.NDArray[np.float64], ...]:
    """``(lo, hi)`` percentile interval of bootstrap replicates (per column)."""
    if not 0 < alpha < 1:
        raise ValueError(f"`alpha` must be in (0, 1), got {alpha}")
    lo, hi = np.quantile(np.asarray(replicates, dtype=np.float64), [alpha / 2, 1 - alpha / 2], axis=0)
    return lo, hi


def paired_bootstrap_ci(
    a: npt.ArrayLike, b: npt.ArrayLike, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """Mean difference ``mean(b − a)`` and its percentile bootstrap CI over users.

    Args:
        a: ``[u]`` control metric per user.
        b: ``[u]`` variant metric per user (same users, same order).
        n_boot: bootstrap replicates.
        alpha: 1 − confidence level.
        seed: RNG seed (same inputs + seed → same interval).

    Returns:
        ``(mean_diff, lo, hi)``.
    """
    d = _paired(a, b)
    if not 0 < alpha < 1:
        raise ValueError(f"`alpha` must be in (0, 1), got {alpha}")
    lo, hi = percentile_ci(bootstrap_means(d, n_boot, seed), alpha)
    return float(d.mean()), float(lo), float(hi)


def paired_permutation_test(a: npt.ArrayLike, b: npt.ArrayLike, n_perm: int = 10_000, seed: int = 0) -> float:
    """Two-sided paired sign-flip test of ``mean(b − a) == 0``; returns the p-value."""
    return float(sign_flip_pvalues(_paired(a, b), n_perm, seed))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 ≤ x ≤ 1."""
    if a <= 0 or b <= 0 or not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs a, b > 0 and x in [0, 1], got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_sf_two_sided(t: float, df: float) -> float:
    """P(|T| > |t|) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"`df` must be > 0, got {df}")
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def paired_t_test(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[float, float, float]:
    """Paired Student t-test of ``mean(b − a) == 0``; returns ``(t, df, p_two_sided)``.

    Zero variance of the differences gives p = 1 when they are all 0 and p = 0 otherwise.
    """
    d = _paired(a, b)
    n = len(d)
    sd = float(d.std(ddof=1))
    mean = float(d.mean())
    if sd == 0.0:
        return (0.0 if mean == 0 else math.copysign(math.inf, mean)), float(n - 1), (1.0 if mean == 0 else 0.0)
    t = mean / (sd / math.sqrt(n))
    return t, float(n - 1), t_sf_two_sided(t, n - 1)


def normal_sf_two_sided(z: float) -> float:
    """P(|Z| > |z|) for a standard normal."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def normal_ppf(p: float) -> float:
    """Standard normal quantile by bisection on ``erfc`` (to ~1e-13; used for CI half-widths)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"`p` must be in (0, 1), got {p}")
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if 0.5 * math.erfc(-mid / math.sqrt(2.0)) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13:
            break
    return (lo + hi) / 2.0


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order.

    Example:
        >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)) or np.isnan(p).any():
        raise ValueError(f"`pvalues` must be a list of probabilities in [0, 1], got {list(pvalues)}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m, dtype=np.float64)
    out[order] = adjusted
    return out.tolist()


def seed_spread(per_seed_means: Sequence[float]) -> float:
    """Seed-to-seed standard deviation (ddof=1) of a metric's mean; 0.0 with fewer than 2 seeds."""
    x = np.asarray(per_seed_means, dtype=np.float64)
    return float(x.std(ddof=1)) if len(x) >= 2 else 0.0


def _gamma_series(a: float, x: float) -> float:
    total = term = 1.0 / a
    ap = a
    for _ in range(100_000):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * 1e-15:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gamma_cf(a: float, x: float) -> float:
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 100_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = b + an / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def chi2_sf(x: float, df: int) -> float:
    """Chi-square survival P(X > x) with ``df`` degrees of freedom (regularised upper gamma Q(df/2, x/2)).

    Example:
        >>> round(chi2_sf(3.841458820694124, 1), 6)
        0.05
    """
    if df < 1:
        raise ValueError(f"`df` must be >= 1, got {df}")
    if x <= 0:
        return 1.0
    a, h = df / 2.0, x / 2.0
    if h < a + 1.0:
        return max(0.0, 1.0 - _gamma_series(a, h))
    return _gamma_cf(a, h)


VERDICTS = ("better", "worse", "no significant difference", "within seed noise")


def verdict(delta: float, p_adjusted: float, alpha: float, spread: float, higher_is_better: bool = True) -> str:
    """Plain-words call on a comparison.

    ``within seed noise`` when ``|delta| < spread`` (retraining the control with another seed moves
    the metric that much), else ``better``/``worse`` when the Holm-adjusted p-value is below
    ``alpha``, else ``no significant difference``.
    """
    if spread > 0 and abs(delta) < spread:
        return "within seed noise"
    if p_adjusted < alpha and delta != 0:
        return "better" if (delta > 0) == higher_is_better else "worse"
    return "no significant difference"
