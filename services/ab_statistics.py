"""Unpaired statistics for two arms on live traffic: intervals, tests for a difference, sample size.

Wilson intervals and the two-proportion z-test (statsmodels), Fisher's exact test, Mann-Whitney U
and the percentile bootstrap (scipy). Significance level ``ALPHA`` (5 %); power 80 % for sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

ALPHA = 0.05


@dataclass(frozen=True)
class Interval:
    value: float | None
    low: float | None
    high: float | None



def proportion_interval(successes: int, n: int) -> Interval:
    """Wilson interval for a proportion (``value`` None when n == 0)."""
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return Interval(None, None, None)
    low, high = proportion_confint(successes, n, alpha=ALPHA, method="wilson")
    return Interval(successes / n, float(low), float(high))


def bootstrap_interval(values: Sequence[float], statistic: Callable = np.median, *, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of a statistic (needs at least 2 values)."""
    from scipy.stats import bootstrap

    if len(values) == 0:
        return Interval(None, None, None)
    data = np.asarray(values, dtype=float)
    point = float(statistic(data))
    if len(data) < 2 or np.all(data == data[0]):
        return Interval(point, point, point)
    result = bootstrap((data,), statistic, confidence_level=1 - ALPHA, n_resamples=2000,
                       method="percentile", rng=np.random.default_rng(seed))
    return Interval(point, float(result.confidence_interval.low), float(result.confidence_interval.high))


def two_proportion_test(success_a: int, n_a: int, success_b: int, n_b: int) -> tuple[float | None, str]:
    """p-value for a difference of two proportions: z-test, or Fisher's exact test for small counts."""
    from scipy.stats import fisher_exact
    from statsmodels.stats.proportion import proportions_ztest

    if n_a == 0 or n_b == 0:
        return None, "none"
    if success_a + success_b == 0 or success_a + success_b == n_a + n_b:
        return 1.0, "identical"
    pooled = (success_a + success_b) / (n_a + n_b)
    if min(n_a, n_b) * min(pooled, 1 - pooled) < 5:
        _, p = fisher_exact([[success_a, n_a - success_a], [success_b, n_b - success_b]])
        return float(p), "Fisher's exact test"
    _, p = proportions_ztest([success_a, success_b], [n_a, n_b])
    return float(p), "two-proportion z-test"


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Mann-Whitney U p-value (None with fewer than 2 values in an arm)."""
    from scipy.stats import mannwhitneyu

    if len(a) < 2 or len(b) < 2:
        return None
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def required_sample_size(baseline_rate: float, minimum_effect: float, ratio: float = 1.0) -> int | None:
    """Requests per (baseline) arm to detect an absolute change of ``minimum_effect`` (alpha 5%, power 80%)."""
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    target = min(max(baseline_rate + minimum_effect, 1e-6), 1 - 1e-6)
    base = min(max(baseline_rate, 1e-6), 1 - 1e-6)
    effect = abs(proportion_effectsize(target, base))
    if effect == 0:
        return None
    n = NormalIndPower().solve_power(effect_size=effect, alpha=ALPHA, power=0.8, ratio=ratio, alternative="two-sided")
    return int(np.ceil(n))
