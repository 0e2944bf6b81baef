"""Judging the arms of an endpoint on live traffic.

Per arm (served version) over a time window: requests, error rate, latency percentiles, tokens
and cost per request, reviewer feedback and live scorer results — with confidence intervals,
tests for the difference against a baseline arm (scipy / statsmodels), a required-sample-size
estimate, and a plain verdict that says when there is not yet enough data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from typing import Mapping, Sequence

import numpy as np

from services import serving
from services.ab_promotion import PartialPromotionError, PromotionOutcome, promote_arm
from services.ab_samples import (
    ArmSample,
    LiveScorerSample,
    arm_samples,
    endpoint_samples,
    sample_from_traces,
    validate_window,
)
from services.ab_statistics import (
    ALPHA,
    bootstrap_interval,
    Interval,
    mann_whitney,
    proportion_interval,
    required_sample_size,
    two_proportion_test,
)
from services.errors import ValidationError
from services.serving import EndpointBackend
from services.settings import Settings

# Reading the arms' traffic (``ab_samples``) and promoting a winner (``ab_promotion``) live in their own
# modules; their names are kept here, where the Serving page and the rollouts find the A/B as a whole.
__all__ = [
    "ArmComparison", "ArmReport", "ArmSample", "ArmStats", "Direction", "Interval", "LiveScorerSample",
    "LiveScorerStats", "MetricComparison", "PartialPromotionError", "PromotionOutcome", "arm_samples", "arm_stats",
    "compare_arms", "endpoint_samples", "judge_endpoint", "live_kinds", "live_scorer_stats", "promote_arm",
    "sample_from_traces", "validate_window",
]


@dataclass(frozen=True)
class LiveScorerStats:
    """A live scorer on one arm: pass rate (Wilson interval) or mean score (bootstrap interval).

    ``n`` is 0 and ``value`` empty when the scorer has no result on this arm (not a rate of 0).
    """

    scorer: str
    pass_fail: bool
    n: int
    value: Interval

    @property
    def measure(self) -> str:
        return f"live {self.scorer} " + ("pass rate" if self.pass_fail else "mean score")


@dataclass(frozen=True)
class ArmStats:
    entity_name: str
    model_name: str
    version: str
    requests: int
    error_rate: Interval
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    median_latency: Interval
    cost_per_request: Interval
    tokens_per_request: float | None
    feedback_count: int
    positive_rate: Interval
    mean_rating: float | None
    scorer_pass_rate: Interval
    truncated: bool
    live_scorers: tuple[LiveScorerStats, ...] = ()


class Direction(StrEnum):
    BETTER = "better"
    WORSE = "worse"
    NO_DIFFERENCE = "no significant difference"
    NOT_ENOUGH_DATA = "not enough data"


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    baseline: float | None
    candidate: float | None
    p_value: float | None
    test: str
    direction: Direction


@dataclass(frozen=True)
class ArmComparison:
    candidate: str
    baseline: str
    metrics: tuple[MetricComparison, ...]
    required_per_arm: int | None
    verdict: str

    @property
    def is_winner(self) -> bool:
        directions = {m.metric: m.direction for m in self.metrics}
        quality = ("error rate", "positive feedback", "scorer pass rate")
        return any(d is Direction.BETTER for m, d in directions.items()
                   if m in quality or m.startswith("live ")) and not any(
            d is Direction.WORSE for d in directions.values()
        )


@dataclass(frozen=True)
class ArmReport:
    endpoint: str
    start: datetime
    end: datetime
    baseline: str | None
    arms: tuple[ArmStats, ...]
    comparisons: tuple[ArmComparison, ...]
    verdict: str

    @property
    def winner(self) -> str | None:
        winners = [c.candidate for c in self.comparisons if c.is_winner]
        return winners[0] if len(winners) == 1 else None


def live_kinds(samples: Sequence[ArmSample]) -> dict[str, bool]:
    """Every live scorer with results on any of the arms, and whether it is pass/fail."""
    kinds: dict[str, bool] = {}
    for sample in samples:
        for live in sample.live:
            kinds[live.scorer] = kinds.get(live.scorer, True) and live.pass_fail
    return dict(sorted(kinds.items()))


def live_scorer_stats(sample: ArmSample, kinds: Mapping[str, bool] | None = None) -> tuple[LiveScorerStats, ...]:
    """One row per live scorer (``kinds``: every scorer of the report, so an arm without results shows empty)."""
    kinds = dict(kinds) if kinds is not None else live_kinds([sample])
    values = {live.scorer: live.values for live in sample.live}
    out = []
    for scorer, pass_fail in kinds.items():
        found = values.get(scorer, ())
        if pass_fail:
            interval = proportion_interval(int(sum(v >= 0.5 for v in found)), len(found))
        else:
            interval = bootstrap_interval(found, np.mean)
        out.append(LiveScorerStats(scorer, pass_fail, len(found), interval))
    return tuple(out)


def arm_stats(sample: ArmSample, kinds: Mapping[str, bool] | None = None) -> ArmStats:
    """Point estimates and intervals for one arm (``kinds``: the live scorers to report, see :func:`live_kinds`)."""
    latencies = np.asarray(sample.latencies_ms, dtype=float)
    pct = (lambda q: float(np.percentile(latencies, q))) if len(latencies) else (lambda q: None)
    return ArmStats(
        entity_name=sample.entity_name,
        model_name=sample.model_name,
        version=sample.version,
        requests=sample.requests,
        error_rate=proportion_interval(sample.errors, sample.requests),
        p50_ms=pct(50), p95_ms=pct(95), p99_ms=pct(99),
        median_latency=bootstrap_interval(sample.latencies_ms),
        cost_per_request=bootstrap_interval(sample.costs, np.mean),
        tokens_per_request=float(np.mean(sample.tokens)) if sample.tokens else None,
        feedback_count=len(sample.feedback),
        positive_rate=proportion_interval(sum(sample.feedback), len(sample.feedback)),
        mean_rating=float(np.mean(sample.ratings)) if sample.ratings else None,
        scorer_pass_rate=proportion_interval(sum(sample.scorer_passes), len(sample.scorer_passes)),
        truncated=sample.truncated,
        live_scorers=live_scorer_stats(sample, kinds),
    )


def _direction(p: float | None, candidate: float | None, baseline: float | None, higher_is_better: bool) -> Direction:
    if p is None or candidate is None or baseline is None:
        return Direction.NOT_ENOUGH_DATA
    if p >= ALPHA or candidate == baseline:
        return Direction.NO_DIFFERENCE
    better = candidate > baseline if higher_is_better else candidate < baseline
    return Direction.BETTER if better else Direction.WORSE


def compare_arms(baseline: ArmSample, candidate: ArmSample, *, minimum_effect: float = 0.02) -> ArmComparison:
    """Tests of the candidate arm against the baseline arm, with a plain verdict."""
    metrics = []
    b_n, c_n = baseline.requests, candidate.requests
    p, test = two_proportion_test(baseline.errors, b_n, candidate.errors, c_n)
    b_err = baseline.errors / b_n if b_n else None
    c_err = candidate.errors / c_n if c_n else None
    metrics.append(MetricComparison("error rate", b_err, c_err, p, test, _direction(p, c_err, b_err, False)))
    p = mann_whitney(baseline.latencies_ms, candidate.latencies_ms)
    b_lat = float(np.median(baseline.latencies_ms)) if b_n else None
    c_lat = float(np.median(candidate.latencies_ms)) if c_n else None
    metrics.append(MetricComparison("median latency (ms)", b_lat, c_lat, p, "Mann-Whitney U", _direction(p, c_lat, b_lat, False)))
    if baseline.costs and candidate.costs:
        p = mann_whitney(baseline.costs, candidate.costs)
        b_cost, c_cost = float(np.mean(baseline.costs)), float(np.mean(candidate.costs))
        metrics.append(MetricComparison("cost per request ($)", b_cost, c_cost, p, "Mann-Whitney U", _direction(p, c_cost, b_cost, False)))
    for name, a, b in (("positive feedback", baseline.feedback, candidate.feedback),
                       ("scorer pass rate", baseline.scorer_passes, candidate.scorer_passes)):
        if a or b:
            p, test = two_proportion_test(sum(a), len(a), sum(b), len(b))
            ra = sum(a) / len(a) if a else None
            rb = sum(b) / len(b) if b else None
            metrics.append(MetricComparison(name, ra, rb, p, test, _direction(p, rb, ra, True)))
    metrics.extend(_live_comparisons(baseline, candidate))
    required = required_sample_size(b_err or 0.0, minimum_effect, ratio=(c_n / b_n) if b_n and c_n else 1.0)
    # Provider models (MLflow AI Gateway) have no version: name them instead.
    label = f"v{candidate.version}" if candidate.version else candidate.entity_name
    base_label = f"v{baseline.version}" if baseline.version else baseline.entity_name
    parts = []
    for m in metrics:
        if m.direction in (Direction.BETTER, Direction.WORSE):
            parts.append(f"{label} is {m.direction.value} on {m.metric} ({_fmt(m.candidate)} vs {_fmt(m.baseline)}, p = {m.p_value:.3g})")
    quiet = [m.metric for m in metrics if m.direction is Direction.NO_DIFFERENCE]
    if quiet:
        parts.append(f"no significant change in {', '.join(quiet)}")
    n_line = f"n = {c_n} vs {b_n} requests"
    if required and min(b_n, c_n) < required:
        parts.append(
            f"not enough data yet to detect a {minimum_effect:.0%} change in error rate: about {required:,} "
            f"requests per arm are needed"
        )
    verdict = f"{label} vs {base_label}: " + "; ".join(parts or ["no data"]) + f" ({n_line})."
    return ArmComparison(candidate.entity_name, baseline.entity_name, tuple(metrics), required, verdict)


def _live_comparisons(baseline: ArmSample, candidate: ArmSample) -> list[MetricComparison]:
    """Each live scorer tested like the other measures: pass rates with the two-proportion test, scores
    with Mann-Whitney (higher is better). A scorer without results on one arm: not enough data."""
    kinds = live_kinds([baseline, candidate])
    base = {live.scorer: live.values for live in baseline.live}
    cand = {live.scorer: live.values for live in candidate.live}
    out = []
    for scorer, pass_fail in kinds.items():
        a, b = base.get(scorer, ()), cand.get(scorer, ())
        if pass_fail:
            pass_a, pass_b = int(sum(v >= 0.5 for v in a)), int(sum(v >= 0.5 for v in b))
            p, test = two_proportion_test(pass_a, len(a), pass_b, len(b))
            ra = pass_a / len(a) if a else None
            rb = pass_b / len(b) if b else None
            metric = f"live {scorer} pass rate"
        else:
            p, test = mann_whitney(a, b), "Mann-Whitney U"
            ra = float(np.mean(a)) if a else None
            rb = float(np.mean(b)) if b else None
            metric = f"live {scorer} mean score"
        out.append(MetricComparison(metric, ra, rb, p, test if a and b else "none", _direction(p, rb, ra, True)))
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if 0 <= value <= 1:
        return f"{value:.1%}"
    return f"{value:,.1f}"


# --- reading live traffic --------------------------------------------------------------------


def judge_endpoint(endpoint_name: str, experiment_ids: Sequence[str], start: datetime, end: datetime | None = None,
                   *, baseline: str | None = None, minimum_effect: float = 0.02,
                   settings: Settings | None = None, source: EndpointBackend | None = None) -> ArmReport:
    """Stats per arm and each arm compared with the baseline (by default the largest share).

    ``source`` names the endpoint's backend (default: the app's agent endpoints). An MLflow AI Gateway
    endpoint is judged from its own usage traces (``experiment_ids`` is then ignored); it raises
    ``serving.ai_gateway.CannotAttributeError`` when those traces cannot tell the arms apart.
    """
    end = end or datetime.now(tz=timezone.utc)
    validate_window(start, end)
    endpoint = serving.get_endpoint(endpoint_name, settings, backend=source)
    samples, unattributed = endpoint_samples(endpoint, experiment_ids, start, end, settings=settings)
    if not samples:
        return ArmReport(endpoint.name, start, end, None, (), (), "This endpoint serves no versions.")
    by_name = {s.entity_name: s for s in samples}
    if baseline is None:
        baseline = max(endpoint.routes, key=lambda r: r.percentage).entity_name
    if baseline not in by_name:
        raise ValidationError(f"{baseline!r} is not an arm of {endpoint.name!r}.")
    base = by_name[baseline]
    comparisons = tuple(compare_arms(base, s, minimum_effect=minimum_effect) for s in samples if s.entity_name != baseline)
    kinds = live_kinds(samples)
    stats = tuple(arm_stats(s, kinds) for s in samples)
    if sum(s.requests for s in samples) == 0:
        verdict = "No traffic in this window yet: send requests to the endpoint, or widen the window."
    else:
        verdict = " ".join(c.verdict for c in comparisons) or "Only one arm: nothing to compare."
    if unattributed:
        verdict += (f" {unattributed} usage trace(s) name no arm of this endpoint (no provider call was "
                    "recorded, e.g. the request was refused first) and are not counted in any arm.")
    return ArmReport(endpoint.name, start, end, baseline, stats, comparisons, verdict)
