"""Paired statistics for comparing two evaluation runs on the rows they share.

Pass/fail scorers use McNemar's exact test (an exact binomial test on the discordant pairs);
numeric scorers use the Wilcoxon signed-rank test. Every delta gets a paired bootstrap
confidence interval. All tests come from ``scipy.stats`` / ``statsmodels``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from enum import StrEnum
from typing import Sequence

import numpy as np

ALPHA = 0.05
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20240611


class MetricKind(StrEnum):
    PASS_FAIL = "pass/fail"
    NUMERIC = "numeric"


class Direction(StrEnum):
    BETTER = "better"
    WORSE = "worse"
    NO_CHANGE = "no significant change"
    NOT_TESTABLE = "not testable"


@dataclass(frozen=True)
class PairedTest:
    """Result of a paired test of ``candidate - baseline`` on ``n`` shared rows.

    ``delta`` is the mean per-row difference (for pass/fail: difference in pass rate);
    ``ci_low``/``ci_high`` its confidence interval; ``p_value`` is None when no test could run.
    For pass/fail, ``improved``/``regressed`` count rows that went fail→pass / pass→fail.
    """

    metric: str
    kind: MetricKind
    test: str
    n: int
    baseline_mean: float | None
    candidate_mean: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    improved: int
    regressed: int
    unchanged: int
    direction: Direction


def _clean_pairs(baseline: Sequence[float | None], candidate: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    if len(baseline) != len(candidate):
        raise ValueError("baseline and candidate must have the same length (one value per shared row)")
    pairs = [
        (float(a), float(b))
        for a, b in zip(baseline, candidate)
        if a is not None and b is not None and not (isinstance(a, float) and math.isnan(a))
        and not (isinstance(b, float) and math.isnan(b))
    ]
    if not pairs:
        return np.array([]), np.array([])
    arr = np.array(pairs, dtype=float)
    return arr[:, 0], arr[:, 1]


def bootstrap_ci(differences: Sequence[float], *, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Paired bootstrap (BCa, falling back to percentile) interval of the mean difference."""
    from scipy import stats

    diffs = np.asarray(differences, dtype=float)
    if diffs.size == 0:
        return (math.nan, math.nan)
    if np.all(diffs == diffs[0]):
        # Every resample has the same mean: the interval is that single point.
        return (float(diffs[0]), float(diffs[0]))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = stats.bootstrap(
                (diffs,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
                method=method, random_state=rng,
            )
        low, high = result.confidence_interval
        if not (math.isnan(low) or math.isnan(high)):
            return (float(low), float(high))
    return (math.nan, math.nan)


def mcnemar_counts(baseline: Sequence[bool], candidate: Sequence[bool]) -> tuple[int, int, int, int]:
    """The 2×2 paired table as (both pass, baseline only, candidate only, both fail)."""
    a = b = c = d = 0
    for x, y in zip(baseline, candidate):
        if x and y:
            a += 1
        elif x and not y:
            b += 1
        elif y and not x:
            c += 1
        else:
            d += 1
    return a, b, c, d


def mcnemar_p_value(table: Sequence[Sequence[int]]) -> float:
    """Exact McNemar p-value (two-sided binomial on the discordant cells) of a 2×2 table."""
    from statsmodels.stats.contingency_tables import mcnemar

    if table[0][1] + table[1][0] == 0:
        return 1.0
    return float(mcnemar(np.asarray(table), exact=True).pvalue)


def _direction(delta: float | None, p_value: float | None, alpha: float) -> Direction:
    if delta is None or p_value is None or math.isnan(p_value):
        return Direction.NOT_TESTABLE
    if p_value < alpha and delta > 0:
        return Direction.BETTER
    if p_value < alpha and delta < 0:
        return Direction.WORSE
    return Direction.NO_CHANGE


def paired_pass_fail(
    metric: str, baseline: Sequence[float | None], candidate: Sequence[float | None], *, alpha: float = ALPHA
) -> PairedTest:
    """McNemar exact test on paired pass(1)/fail(0) values; rows missing a value are left out."""
    base, cand = _clean_pairs(baseline, candidate)
    if base.size == 0:
        return _paired(metric, MetricKind.PASS_FAIL, "McNemar exact", base, cand, None, alpha)
    both, base_only, cand_only, neither = mcnemar_counts(base >= 0.5, cand >= 0.5)
    p = mcnemar_p_value([[both, base_only], [cand_only, neither]])
    return _paired(metric, MetricKind.PASS_FAIL, "McNemar exact", (base >= 0.5).astype(float),
                   (cand >= 0.5).astype(float), p, alpha)


def paired_numeric(
    metric: str, baseline: Sequence[float | None], candidate: Sequence[float | None], *, alpha: float = ALPHA
) -> PairedTest:
    """Wilcoxon signed-rank test on paired numeric values, with a bootstrap CI on the mean delta."""
    from scipy import stats

    base, cand = _clean_pairs(baseline, candidate)
    if base.size == 0 or np.all(cand == base):
        p = None if base.size == 0 else 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(stats.wilcoxon(cand, base, zero_method="wilcox").pvalue)
    return _paired(metric, MetricKind.NUMERIC, "Wilcoxon signed-rank", base, cand, p, alpha)


def _paired(metric: str, kind: MetricKind, test: str, base: np.ndarray, cand: np.ndarray, p: float | None,
            alpha: float) -> PairedTest:
    """The test's figures from the paired values (pass/fail as 1/0): means, mean delta with its bootstrap
    interval, and how many rows the candidate does better, worse or the same on. No rows: not testable."""
    if base.size == 0:
        return PairedTest(metric, kind, test, 0, None, None, None, None, None, None, 0, 0, 0, Direction.NOT_TESTABLE)
    diffs = cand - base
    low, high = bootstrap_ci(diffs)
    delta = float(diffs.mean())
    return PairedTest(
        metric, kind, test, int(base.size), float(base.mean()), float(cand.mean()), delta, low, high, p,
        int((diffs > 0).sum()), int((diffs < 0).sum()), int((diffs == 0).sum()), _direction(delta, p, alpha),
    )


def paired_test(
    metric: str, kind: MetricKind, baseline: Sequence[float | None], candidate: Sequence[float | None],
    *, alpha: float = ALPHA,
) -> PairedTest:
    """The paired test that fits the metric's kind."""
    if kind is MetricKind.PASS_FAIL:
        return paired_pass_fail(metric, baseline, candidate, alpha=alpha)
    return paired_numeric(metric, baseline, candidate, alpha=alpha)


def format_p(p: float | None) -> str:
    """``p = 0.012`` / ``p < 0.001`` / ``p = n/a``."""
    if p is None or math.isnan(p):
        return "p = n/a"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def verdict(candidate_label: str, tests: Sequence[PairedTest], shared_rows: int) -> str:
    """A plain-language summary, e.g. "B is better on correctness, p = 0.01; no significant change in safety; n = 48 shared rows"."""
    if shared_rows == 0:
        return f"{candidate_label} shares no rows with the baseline: the runs cannot be compared."
    parts = []
    named = False
    for test in tests:
        if test.direction in (Direction.BETTER, Direction.WORSE):
            subject = "" if named else f"{candidate_label} is "
            named = True
            parts.append(f"{subject}{test.direction.value} on {test.metric}, {format_p(test.p_value)}")
        elif test.direction is Direction.NO_CHANGE:
            parts.append(f"no significant change in {test.metric} ({format_p(test.p_value)})")
        else:
            parts.append(f"{test.metric} not testable (no paired values)")
    noun = "shared row" if shared_rows == 1 else "shared rows"
    return "; ".join(parts + [f"n = {shared_rows} {noun}"])
