"""How much the report's numbers can be trusted: intervals over seeds, paired comparisons with the
best method at one budget point, and the seeds a grid would need to resolve a given difference.

Seeds are class orders: each seed shuffles the classes, and every method of a grid runs the same
seeds, so two methods' runs with one seed are a pair. The tests here assume what docs/results.md
states: seeds are independent draws of the class order, and the paired differences between two
methods over seeds are roughly normal (Student t). Pure functions over numpy and pandas; scipy.stats
gives the t distribution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05   # two-sided: 95 % intervals, 5 % family-wise error at one budget point
POWER = 0.8    # the usual power when planning the number of seeds
RESOLVE = 1.0  # default difference to resolve: one point of accuracy (%)


@dataclass(frozen=True)
class Interval:
    """Mean over `n` seeds, sample std and the half-width of its Student-t interval."""
    n: int
    mean: float
    std: float
    half_width: float


def t_interval(values, confidence: float = 1 - ALPHA) -> Interval:
    """Student-t interval of the mean: mean ± t_{(1+c)/2, n-1} * sd / sqrt(n); NaNs are ignored.
    With fewer than 2 values the std and half-width are NaN (one seed says nothing of spread)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan)
    mean = float(values.mean())
    if n < 2:
        return Interval(1, mean, math.nan, math.nan)
    std = float(values.std(ddof=1))
    quantile = float(stats.t.ppf((1 + confidence) / 2, n - 1))
    return Interval(n, mean, std, quantile * std / math.sqrt(n))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given): sorted ascending, the i-th
    (0-based) of m is multiplied by m - i, made non-decreasing, capped at 1. A hypothesis is
    rejected at family-wise level alpha when its adjusted p-value is <= alpha. scipy.stats has no
    Holm correction, hence this."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    adjusted = np.empty(m)
    adjusted[order] = scaled
    return adjusted


def paired_p_value(a, b) -> float:
    """Two-sided paired t-test of mean(a - b) == 0 over the pairs both have (NaN-free).
    Identical differences (zero spread) give p = 1 when they are all 0 and p = 0 otherwise,
    where scipy would warn about precision and divide by zero."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    both = np.isfinite(a) & np.isfinite(b)
    differences = a[both] - b[both]
    if len(differences) < 2:
        return math.nan
    if np.ptp(differences) <= 1e-12 * max(1.0, float(np.abs(differences).max())):
        return 1.0 if abs(float(differences.mean())) <= 1e-12 else 0.0
    return float(stats.ttest_rel(a[both], b[both]).pvalue)


def compare_with_best(per_seed: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Which methods cannot be told apart from the best, at one budget point and for one metric.

    `per_seed`: seeds as rows, methods as columns, NaN where a method has no run with that seed;
    higher is better. The best is the method with the highest mean among those with >= 2 seeds.
    Each other method is tested against it by a paired t-test over the seeds both have (at least
    2), and the p-values of these pairs are corrected together by Holm. Returns, per method
    (index): `n_seeds`, `p_holm` (NaN for the best and for untested methods) and `tied_with_best`
    (True for the best and for methods not significantly different from it; False for methods
    significantly worse or better; NA when no comparison is possible: fewer than 2 seeds, fewer
    than 2 seeds shared with the best, or no other method to compare with).
    """
    counts = per_seed.notna().sum(axis=0).astype(int)
    result = pd.DataFrame({"n_seeds": counts, "p_holm": math.nan,
                           "tied_with_best": pd.array([pd.NA] * len(counts), dtype="boolean")},
                          index=per_seed.columns)
    ranked = per_seed.loc[:, counts >= 2]
    if ranked.shape[1] < 2:
        return result
    best = ranked.mean(axis=0).idxmax()
    others = [method for method in ranked.columns if method != best]
    raw = {method: paired_p_value(ranked[best], ranked[method]) for method in others}
    tested = [method for method, p in raw.items() if math.isfinite(p)]
    if not tested:
        return result
    result.loc[tested, "p_holm"] = holm([raw[method] for method in tested])
    result.loc[tested, "tied_with_best"] = result.loc[tested, "p_holm"] > alpha
    result.loc[best, "tied_with_best"] = True
    return result


def seeds_needed(spread: float, difference: float = RESOLVE, alpha: float = ALPHA,
                 power: float = POWER) -> float:
    """Fewest seeds (class orders) with which a two-sided paired t-test at level `alpha` detects
    a true mean difference `difference` with probability `power`, when the per-seed differences
    have standard deviation `spread`. Exact power from the noncentral t distribution, searched
    upwards from 2 seeds (the normal approximation ((z_a + z_b) sd / d)^2 underestimates it at
    small n). NaN when the spread is unknown; 2 when it is zero."""
    if not math.isfinite(spread) or spread < 0 or difference <= 0:
        return math.nan
    if spread == 0:
        return 2
    effect = difference / spread
    n = 2
    while _paired_power(n, effect, alpha) < power:
        n += 1
        if n > 100_000:  # a spread this large says a difference of this size is beyond reach
            return math.inf
    return n


def _paired_power(n: int, effect: float, alpha: float) -> float:
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    noncentrality = effect * math.sqrt(n)
    return float(stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df,
                                                                             noncentrality))


def pooled_difference_spread(tables) -> tuple[float, int]:
    """Pooled standard deviation of the paired differences of every pair of methods, over the
    seeds both have, in each of `tables` (one per budget point: seeds as rows, methods as
    columns). Each pair's variance is weighted by its degrees of freedom (shared seeds - 1).
    Returns (spread, pairs with >= 2 shared seeds); (NaN, 0) without any such pair."""
    squares, dof, pairs = 0.0, 0, 0
    for per_seed in tables:
        methods = list(per_seed.columns)
        for i, first in enumerate(methods):
            for second in methods[i + 1:]:
                differences = (per_seed[first] - per_seed[second]).dropna()
                if len(differences) >= 2:
                    squares += float(differences.var(ddof=1)) * (len(differences) - 1)
                    dof += len(differences) - 1
                    pairs += 1
    return (math.sqrt(squares / dof) if dof else math.nan), pairs
