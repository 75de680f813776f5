"""Statistics of a seeded study: means with t confidence intervals, paired differences, paired
t-tests, Holm's correction and Spearman's rho (scripts/replicate_fmnist.py, docs/RESULTS.md).

A paired design trains every method once per seed with the seed's own draws; the difference
between two methods is taken seed by seed, which removes what the seed does to both (the
student's initialisation, the batch order), so its interval is far narrower than the two
methods' intervals side by side.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

__all__ = ["t_quantile_975", "t_two_sided_p", "holm", "spearman_rho", "Interval",
           "mean_interval", "paired_difference", "paired_p_value"]

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, df = 1 ... 30 (any statistics table).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """t_{0.975} with ``df`` degrees of freedom (df >= 1): the table to 30, then the
    Cornish-Fisher expansion around the normal quantile (error below 1e-3 there)."""
    if not isinstance(df, int) or isinstance(df, bool) or df < 1:
        raise ValueError(f"t_quantile_975: df must be an int >= 1, got {df!r}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) by its continued fraction (Lentz's method; the
    fraction converges for x < (a + 1) / (a + b + 2), the other side by symmetry)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * f / a


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom: I_{df/(df+t^2)}(df/2, 1/2)."""
    if not isinstance(df, int) or isinstance(df, bool) or df < 1:
        raise ValueError(f"t_two_sided_p: df must be an int >= 1, got {df!r}")
    if math.isnan(t):
        raise ValueError("t_two_sided_p: t is nan")
    if math.isinf(t):
        return 0.0
    return _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (same order as given): the i-th
    smallest is multiplied by (m - i), made monotone, capped at 1. A contrast survives at level
    a when its adjusted p-value is below a; the family-wise error rate is at most a."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties): Pearson's r of the ranks."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman_rho: need two equal-length sequences of at least 2 values, "
                         f"got {len(x)} and {len(y)}")

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2.0 + 1.0
            i = j + 1
        return r

    rx, ry = ranks(list(x)), ranks(list(y))
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


@dataclass(frozen=True)
class Interval:
    """A mean with its 95% confidence half-width over n values (``half`` is nan for n = 1)."""

    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    @property
    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)

    def text(self, scale: float = 100.0, digits: int = 2, signed: bool = False) -> str:
        """``"87.12 ± 0.40"`` (``scale`` 100: fractions shown in points)."""
        sign = "+" if signed else ""
        mean = f"{scale * self.mean:{sign}.{digits}f}"
        return mean if self.n < 2 else f"{mean} ± {scale * self.half:.{digits}f}"


def mean_interval(values: Sequence[float]) -> Interval:
    """Mean and 95% t interval, half-width t_{0.975, n-1} * s / sqrt(n)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_interval: no values")
    n = len(values)
    mean = statistics.fmean(values)
    if n == 1:
        return Interval(mean, math.nan, 1)
    return Interval(mean, t_quantile_975(n - 1) * statistics.stdev(values) / math.sqrt(n), n)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]
                      ) -> tuple[Interval, dict[int, float]]:
    """``a - b`` seed by seed over the seeds both have: (interval of the differences,
    {seed: difference})."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("paired_difference: the two methods share no seed")
    diffs = {s: float(a[s]) - float(b[s]) for s in seeds}
    return mean_interval(list(diffs.values())), diffs


def paired_p_value(diffs: Mapping[int, float]) -> float:
    """Two-sided p-value of the paired t-test (mean difference 0) over the per-seed
    differences; nan with fewer than 2 seeds, 0 when every difference is the same non-zero
    value."""
    values = [float(v) for v in diffs.values()]
    n = len(values)
    if n < 2:
        return math.nan
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    return t_two_sided_p(mean / (sd / math.sqrt(n)), n - 1)
