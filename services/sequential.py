"""Always-valid sequential comparisons of a challenger arm against the champion arm.

A rollout looks at its arms continuously: after every batch of requests, for hours. A fixed-horizon
test repeated at each look would roll back a perfectly good challenger far more often than its stated
level. The comparisons here are *always valid*: the chance that they ever signal a breach when there is
none, over any number of looks and however long the rollout runs, stays below ``alpha``.

Method: the normal-mixture sequential probability ratio test (mSPRT; Robbins 1970, Johari, Koomen,
Pekelis & Walsh, "Always valid inference", Operations Research 2022) and its confidence sequence
(Howard, Ramdas, McAuliffe & Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence
sequences", Annals of Statistics 2021, eq. (14)). For a difference ``delta`` estimated by ``d`` with
variance ``v`` after ``n`` observations and a mixing variance ``tau**2`` fixed before the first look,

    delta lies in  d +/- sqrt( v (v + tau^2) / tau^2 * (2 log(1/alpha) + log((v + tau^2) / v)) )

at every look simultaneously with probability at least ``1 - alpha`` (Ville's inequality applied to
the mixture likelihood ratio; exact for normal data, asymptotic through the central limit theorem for
rates and means, so every guardrail also waits for a minimum sample before its first look).

A guardrail is *breached* when the whole sequence lies beyond its tolerance (the challenger is worse
than allowed), and *cleared* when the whole sequence lies within it. With ``k`` guardrails each gets
``alpha / k`` (Bonferroni), so the chance of any false rollback stays below ``alpha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from scipy import stats

DEFAULT_ALPHA = 0.05
# The p95 guardrail compares the challenger's share of requests slower than the champion's frozen p95
# (times the tolerance) with the 5 % a p95 allows.
QUANTILE = 0.95


class Signal(StrEnum):
    """What one guardrail's sequence says at a look."""

    BREACHED = "breached"  # the challenger is worse than the tolerance allows, with confidence 1 - alpha
    CLEARED = "cleared"  # the challenger is within the tolerance, with confidence 1 - alpha
    UNDECIDED = "undecided"  # not enough evidence either way yet
    TOO_FEW = "too few requests"  # below the minimum sample: not looked at


@dataclass(frozen=True)
class ArmSample:
    """Sufficient statistics of one measure on one arm: count, sum and sum of squares of the observations.

    Rates are sums of 0/1 observations (``total`` is the number of errors, thumbs-down, passes, or
    requests slower than a threshold); means are sums of the per-request values (cost).
    """

    n: int
    total: float
    total_sq: float | None = None

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """Per-observation variance (the Bernoulli variance when no sum of squares is kept)."""
        if not self.n:
            return math.nan
        if self.total_sq is None:
            p = min(max(self.mean, 0.0), 1.0)
            return p * (1 - p)
        return max(self.total_sq / self.n - self.mean**2, 0.0)


@dataclass(frozen=True)
class Look:
    """One look at one guardrail: the estimated excess, its always-valid interval and the signal."""

    estimate: float
    lower: float
    upper: float
    margin: float
    signal: Signal
    alpha: float

    def describe(self, unit: str = "") -> str:
        return (f"{self.estimate:+.4g}{unit} (always-valid {100 * (1 - self.alpha):.4g}% interval "
                f"{self.lower:+.4g}{unit} … {self.upper:+.4g}{unit}; limit {self.margin:+.4g}{unit})")


def radius(variance: float, tau: float, alpha: float) -> float:
    """Half-width of the normal-mixture confidence sequence for an estimate of variance ``variance``."""
    if variance <= 0:
        return 0.0
    t2 = tau * tau
    return math.sqrt(variance * (variance + t2) / t2 * (2 * math.log(1 / alpha) + math.log((variance + t2) / variance)))


def mixture_likelihood_ratio(estimate: float, null: float, variance: float, tau: float) -> float:
    """The mSPRT statistic for ``H0: delta = null``; it exceeds ``1/alpha`` exactly when ``null`` leaves the sequence."""
    t2 = tau * tau
    return math.sqrt(variance / (variance + t2)) * math.exp(t2 * (estimate - null) ** 2 / (2 * variance * (variance + t2)))


def compare(estimate: float, variance: float, margin: float, *, tau: float, alpha: float) -> Look:
    """Compare an estimated excess (positive = the challenger is worse) with the largest excess allowed."""
    half = radius(variance, tau, alpha)
    lower, upper = estimate - half, estimate + half
    if lower > margin:
        signal = Signal.BREACHED
    elif upper < margin:
        signal = Signal.CLEARED
    else:
        signal = Signal.UNDECIDED
    return Look(estimate, lower, upper, margin, signal, alpha)


def rate_excess(challenger: ArmSample, champion: ArmSample, *, tolerance: float, alpha: float,
                higher_is_worse: bool = True, tau: float | None = None) -> Look:
    """A rate (errors, thumbs-down, pass rate) of the challenger against the champion's, in absolute points.

    ``tolerance`` is how many points worse the challenger may be (0.02 = two percentage points).
    """
    sign = 1.0 if higher_is_worse else -1.0
    estimate = sign * (challenger.mean - champion.mean)
    variance = _pooled_rate_variance(challenger, champion)
    return compare(estimate, variance, tolerance, tau=tau or _rate_tau(tolerance), alpha=alpha)


def mean_excess(challenger: ArmSample, champion: ArmSample, *, tolerance: float, alpha: float,
                scale: float) -> Look:
    """A mean (cost per request) of the challenger against ``1 + tolerance`` times the champion's.

    ``scale`` is the champion's mean before the rollout started, fixed in the plan (the mixing
    variance must not depend on the data it judges).
    """
    factor = 1 + tolerance
    estimate = challenger.mean - factor * champion.mean
    variance = challenger.variance / challenger.n + factor * factor * champion.variance / champion.n
    tau = max(abs(scale) * max(tolerance, 0.05), 1e-12)
    return compare(estimate, variance, 0.0, tau=tau, alpha=alpha)


def quantile_excess(slow: ArmSample, *, alpha: float, quantile: float = QUANTILE) -> Look:
    """The share of challenger requests slower than a frozen limit, against the ``1 - quantile`` a p95 allows.

    ``slow.total`` counts the challenger's requests slower than ``champion p95 x (1 + tolerance)``.
    """
    allowed = 1 - quantile
    p = min(max(slow.mean, 0.0), 1.0)
    # The variance under the boundary (p = allowed) keeps early looks from trusting a lucky 0 of 40.
    variance = max(p * (1 - p), allowed * (1 - allowed)) / slow.n
    return compare(slow.mean - allowed, variance, 0.0, tau=allowed, alpha=alpha)


def samples_to_detect(excess: float, per_observation_variance: float, *, tau: float, alpha: float,
                      arms: int = 2, limit: int = 10_000_000) -> int:
    """Requests per arm after which a true excess ``excess`` is expected to lie outside the sequence.

    The sequence's half-width shrinks like ``sqrt(log n / n)``; this finds the ``n`` where it equals the
    excess (the median detection time for normal data), for tests and the plan's help text.
    """
    if excess <= 0:
        return limit
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi) // 2
        if radius(arms * per_observation_variance / mid, tau, alpha) <= excess:
            hi = mid
        else:
            lo = mid + 1
    return lo


def wilson_bounds(successes: int, n: int, alpha: float = DEFAULT_ALPHA) -> tuple[float, float]:
    """A fixed-horizon Wilson interval, for display next to the sequential one (never for decisions)."""
    if n == 0:
        return (math.nan, math.nan)
    z = stats.norm.ppf(1 - alpha / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def _pooled_rate_variance(a: ArmSample, b: ArmSample) -> float:
    # Under "no difference" both arms share one rate; pooling keeps a 0-error start from looking certain.
    pooled = (a.total + b.total) / (a.n + b.n)
    floor = 1 / (a.n + b.n)  # as if one event had been seen: never a zero variance
    p = min(max(pooled, floor), 1 - floor)
    return p * (1 - p) * (1 / a.n + 1 / b.n)


def _rate_tau(tolerance: float) -> float:
    # Mix over effects of the size the operator said matters (at least one point).
    return max(tolerance, 0.01)
