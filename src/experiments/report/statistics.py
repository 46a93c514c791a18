"""The arithmetic of comparing configurations over their seeds, on plain lists of floats: the mean
with its Student-t interval, Welch's test and interval for two means, the probability that one
configuration beats another on a seed, Holm's correction for many pairs, and the expected best of
a random search over a grid (a tuning curve). Each agrees with scipy (the tests' reference), which
the package does not install."""

from __future__ import annotations

import functools
import math
import statistics
from typing import Any


def spread(values: list[float]) -> dict[str, float | None]:
    """Mean, sample standard deviation and the 95% Student-t interval of the mean (None for one
    value). Equal values have a spread of exactly 0 (their rounded mean need not equal them)."""
    n = len(values)
    if n < 2:
        return {"mean": values[0], "std": None, "ci95_low": None, "ci95_high": None}
    if len(set(values)) == 1:
        return {"mean": values[0], "std": 0.0, "ci95_low": values[0], "ci95_high": values[0]}
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.975, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


# Student's t distribution through the regularized incomplete beta function of mpmath (which torch
# installs with sympy): scipy.stats would do, but an installed scipy costs every run 1.5 s of
# start-up, as torchmetrics then imports scipy.signal. Both agree with scipy to 1e-14.


def t_two_sided(statistic: Any, df: float) -> Any:
    """P(|T| >= |statistic|) for T of Student's t distribution with `df` degrees of freedom, as
    an mpmath number (float() it)."""
    import mpmath

    x = mpmath.mpf(df) / (df + mpmath.mpf(statistic) ** 2)
    return mpmath.betainc(mpmath.mpf(df) / 2, 0.5, 0, x, regularized=True)


@functools.lru_cache(maxsize=None)
def t_quantile(q: float, df: float) -> float:
    """The value t > 0 below which Student's t distribution with `df` degrees of freedom has
    probability q (q > 0.5), as scipy.stats.t.ppf(q, df)."""
    import mpmath

    tail = 2 * (1 - mpmath.mpf(q))
    return float(mpmath.findroot(lambda t: t_two_sided(t, df) - tail, (0, 1e4), solver="illinois"))


def welch_p(a: list[float], b: list[float]) -> float:
    """Welch's t-test of two samples (unequal variances): the two-sided p-value, as
    scipy.stats.ttest_ind(a, b, equal_var=False).pvalue; nan where neither sample varies."""
    va, vb = (statistics.variance(x) / len(x) for x in (a, b))
    if va + vb == 0:
        return math.nan
    statistic = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(t_two_sided(statistic, df))


def welch(a: list[float], b: list[float]) -> dict[str, float | None]:
    """Welch's comparison of two means (unequal variances): the difference mean(a) - mean(b), its
    95% interval (as scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval()), the
    degrees of freedom and the two-sided p-value; interval and p are None where a sample has one
    value or neither varies."""
    difference = statistics.fmean(a) - statistics.fmean(b)
    none = {"difference": difference, "low": None, "high": None, "df": None, "p": None}
    if len(a) < 2 or len(b) < 2:
        return none
    va, vb = (statistics.variance(x) / len(x) for x in (a, b))
    if va + vb == 0:
        return none
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile(0.975, df) * math.sqrt(va + vb)
    p = float(t_two_sided(difference / math.sqrt(va + vb), df))
    return {
        "difference": difference,
        "low": difference - half,
        "high": difference + half,
        "df": df,
        "p": p,
    }


def superiority(a: list[float], b: list[float], lower_is_better: bool) -> float:
    """The probability that a seed of a ends better than a seed of b, ties counted half: the
    common-language effect size, Mann-Whitney's U over len(a) * len(b)."""
    better = sum((x < y) if lower_is_better else (x > y) for x in a for y in b)
    ties = sum(x == y for x in a for y in b)
    return (better + ties / 2) / (len(a) * len(b))


def holm(ps: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of the p-values of several tests (None: no test, not counted):
    the smallest times m, the next times m - 1, ..., each at least the one before, at most 1."""
    order = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    adjusted: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def expected_best(values: list[float | None], n: int, lower_is_better: bool) -> float | None:
    """The expected best of n grid points drawn at random without replacement from `values` (the
    without-replacement form of Dodge et al. 2019's expected validation performance, which draws
    with replacement): the k-th worst is the best of the n with probability C(k-1, n-1) / C(N, n). A point that diverged or failed (None, nan, inf) is
    worse than any; where one could be the best of the n, the expectation is None."""
    worst = math.inf if lower_is_better else -math.inf
    clean = [v if v is not None and math.isfinite(v) else worst for v in values]
    ordered = sorted(clean, reverse=lower_is_better)  # worst first
    total = math.comb(len(ordered), n)
    terms = [(math.comb(k - 1, n - 1), v) for k, v in enumerate(ordered, start=1)]
    if any(weight and not math.isfinite(v) for weight, v in terms):
        return None
    return math.fsum(weight * v for weight, v in terms if weight) / total


def float32_steps(a: float, b: float) -> int:
    """How many float32 values lie from a to b: metrics are logged as float32, so values a few
    steps apart differ by rounding, not by training."""
    import struct

    def ordered(x: float) -> int:
        bits = struct.unpack("<i", struct.pack("<f", x))[0]
        return bits if bits >= 0 else -(bits & 0x7FFFFFFF)

    return abs(ordered(a) - ordered(b))
