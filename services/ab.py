"""Judging the arms of an endpoint on live traffic, and promoting the winner.

Per arm (served version) over a time window: requests, error rate, latency percentiles, tokens
and cost per request, reviewer feedback and live scorer results — with confidence intervals,
tests for the difference against a baseline arm (scipy / statsmodels), a required-sample-size
estimate, and a plain verdict that says when there is not yet enough data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Mapping, Sequence

import numpy as np

from services import releases, roles, serving
from services._clients import get_settings
from services.audit import AliasAction
from services.errors import AgentOpsError, NotFoundError, ValidationError
from services.promotion import PromotionRequest
from services.identity import Identity
from services.live_scoring_scorers import LIVE_PREFIX
from services.serving import EndpointBackend
from services.ab_statistics import (
    ALPHA,
    bootstrap_interval,
    Interval,
    mann_whitney,
    proportion_interval,
    required_sample_size,
    two_proportion_test,
)
from services.settings import Settings

MAX_TRACES_PER_ARM = serving.MAX_TRACES_PER_ARM  # per arm and window
POSITIVE_FEEDBACK = "thumbs_up"


@dataclass(frozen=True)
class LiveScorerSample:
    """One live scorer's per-trace results on one arm: 1.0/0.0 for a pass/fail scorer, else its score."""

    scorer: str
    pass_fail: bool
    values: tuple[float, ...]


@dataclass(frozen=True)
class ArmSample:
    """Per-request values of one arm; lists are aligned only within themselves."""

    entity_name: str
    model_name: str
    version: str
    latencies_ms: tuple[float, ...]
    errors: int
    costs: tuple[float, ...]
    tokens: tuple[int, ...]
    feedback: tuple[bool, ...]
    ratings: tuple[float, ...]
    scorer_passes: tuple[bool, ...]  # scorer assessments other than the live scorers' (pooled)
    truncated: bool = False
    live: tuple[LiveScorerSample, ...] = ()  # one entry per live scorer with results on this arm

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def scorer_passes_by_name(self) -> dict[str, tuple[bool, ...]]:
        """Pass/fail live scorers' outcomes, by scorer name and by its assessment name (``live_<scorer>``)."""
        out: dict[str, tuple[bool, ...]] = {}
        for live in self.live:
            if live.pass_fail:
                passes = tuple(v >= 0.5 for v in live.values)
                out[live.scorer] = out[LIVE_PREFIX + live.scorer] = passes
        return out


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


def validate_window(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise ValidationError("Time windows need a time zone.")
    if start >= end:
        raise ValidationError("The window's start must be before its end.")


def arm_samples(endpoint: serving.Endpoint, experiment_ids: Sequence[str], start: datetime, end: datetime,
                *, settings: Settings | None = None) -> list[ArmSample]:
    """Per-arm samples from the endpoint's traces in the window (metadata only, no spans)."""
    return endpoint_samples(endpoint, experiment_ids, start, end, settings=settings)[0]


def endpoint_samples(endpoint: serving.Endpoint, experiment_ids: Sequence[str], start: datetime, end: datetime,
                     *, settings: Settings | None = None) -> tuple[list[ArmSample], int]:
    """Per-arm samples from the endpoint's traces in the window, and how many traces name no arm."""
    validate_window(start, end)
    traffic, unattributed = serving.arm_traffic(endpoint, experiment_ids, start, end, settings=settings)
    live = live_outcomes(traffic, start, end, settings=settings)
    return [replace(_sample(arm), live=live.get(arm.served.entity_name, ())) for arm in traffic], unattributed


def live_outcomes(traffic: Sequence[serving.ArmTraffic], start: datetime, end: datetime, *,
                  settings: Settings | None = None) -> dict[str, tuple[LiveScorerSample, ...]]:
    """Each arm's live-scorer results, per scorer, on exactly the arm's traces in the window.

    Read through ``live_scoring.live_results`` (one search per agent) and grouped with
    ``live_scoring.outcomes_by``; only traces the arm's own search found count, so the live scorers
    are judged on the same requests as the arm's other measures. Arms without a registered version
    (AI Gateway provider models) have no agent and so no live scorers.
    """
    from services import live_scoring

    settings = settings or get_settings()
    arm_of: dict[str, str] = {}
    per_agent: dict[str, int] = {}
    for arm in traffic:
        if not arm.served.model_version:
            continue
        per_agent[arm.served.model_name] = per_agent.get(arm.served.model_name, 0) + len(arm.infos)
        for info in arm.infos:
            arm_of[info.trace_id] = arm.served.entity_name
    frames = []
    for agent, count in per_agent.items():
        if not count:
            continue
        try:
            # The agent's other traces in the window (evaluations, other endpoints) are read too: room for them.
            frames.append(live_scoring.live_results(agent, settings, start=start, end=end,
                                                    max_traces=max(5000, 4 * count)))
        except NotFoundError:
            continue
    frames = [f for f in frames if not f.empty]
    if not frames:
        return {}
    import pandas as pd

    results = pd.concat(frames, ignore_index=True)
    results = results[results["trace_id"].isin(list(arm_of))]
    results = results.assign(arm=results["trace_id"].map(arm_of))
    scored = results.dropna(subset=["score"])
    pass_fail = {str(k): bool(v) for k, v in scored.groupby("scorer")["passed"].agg(lambda s: s.notna().all()).items()}
    return {arm: tuple(LiveScorerSample(scorer, pass_fail[scorer], tuple(values))
                       for scorer, values in sorted(by_scorer.items()))
            for arm, by_scorer in live_scoring.outcomes_by(results, "arm").items()}


def _sample(arm: serving.ArmTraffic) -> ArmSample:
    sample = sample_from_traces(arm.served, list(arm.infos), truncated=arm.truncated)
    # An AI Gateway arm's error is its own provider call failing, even when a fallback then answered.
    return sample if arm.failed is None else replace(sample, errors=arm.failed)


def sample_from_traces(served: serving.ServedVersion, infos: list[Any], *, truncated: bool) -> ArmSample:
    """An arm's sample from its trace infos (latency, errors, cost, tokens, feedback, scorer passes)."""
    latencies, costs, tokens, feedback, ratings, passes = [], [], [], [], [], []
    errors = 0
    for info in infos:
        latencies.append(float(info.execution_duration or 0))
        if str(info.state).endswith("ERROR"):
            errors += 1
        if info.cost and info.cost.get("total_cost") is not None:
            costs.append(float(info.cost["total_cost"]))
        if info.token_usage and info.token_usage.get("total_tokens") is not None:
            tokens.append(int(info.token_usage["total_tokens"]))
        for assessment in info.assessments or []:
            value = getattr(assessment, "value", None)
            if getattr(assessment, "valid", True) is False or value is None:
                continue
            source = str(getattr(assessment.source, "source_type", ""))
            if assessment.name == POSITIVE_FEEDBACK and isinstance(value, bool):
                feedback.append(value)
            elif assessment.name == "rating" and isinstance(value, (int, float)):
                ratings.append(float(value))
            elif assessment.name.startswith(LIVE_PREFIX):
                continue  # the live scorers: one measure each (live_outcomes)
            elif source.endswith(("CODE", "LLM_JUDGE")) and isinstance(value, (bool, str)):
                passes.append(value is True or str(value).lower() in ("yes", "true", "pass"))
    return ArmSample(served.entity_name, served.model_name, served.model_version, tuple(latencies), errors,
                     tuple(costs), tuple(tokens), tuple(feedback), tuple(ratings), tuple(passes), truncated)


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


# --- promote the winner / roll back -------------------------------------------------------------


@dataclass(frozen=True)
class PromotionOutcome:
    traffic_moved: bool
    alias_moved: bool
    endpoint: serving.Endpoint | None
    message: str


class PartialPromotionError(AgentOpsError):
    """Traffic moved but the alias did not; the message says exactly where things stand."""


def promote_arm(
    endpoint_name: str, entity_name: str, identity: Identity, *, reason: str, alias: str = "champion",
    override_gate: bool = False, action: str = "promote winner", settings: Settings | None = None,
    source: EndpointBackend | None = None, request_id: str | None = None,
) -> PromotionOutcome:
    """Move 100% of traffic to one arm, then point ``alias`` at its version; both audited.

    Traffic moves first. If the alias cannot follow, ``PartialPromotionError`` states that the
    traffic moved and the alias did not, so the operator can retry the alias alone. An arm with no
    registry version (an MLflow AI Gateway provider model) only gets the traffic: there is no alias
    to move. ``request_id`` (one per confirmation) makes a retry after a backend failure complete
    each step exactly once.
    """
    settings = settings or get_settings()
    roles.enforce(identity, roles.Action.CHANGE_TRAFFIC, settings)
    if not reason.strip():
        raise ValidationError("Give a reason; it goes into the audit trail.")
    endpoint = serving.get_endpoint(endpoint_name, settings, backend=source)
    served = {s.entity_name: s for s in endpoint.served}
    if entity_name not in served:
        raise ValidationError(f"{entity_name!r} is not an arm of {endpoint_name!r}.")
    winner = served[entity_name]
    plan = serving.plan_shares(endpoint, {s.entity_name: 100 if s.entity_name == entity_name else 0
                                          for s in endpoint.served})
    stored = serving.apply_split(plan, user=identity.user, reason=reason, action=action, settings=settings,
                                 user_token=identity.access_token, request_id=request_id and f"{request_id}-traffic")
    if not winner.model_version:
        return PromotionOutcome(True, False, stored,
                                f"{endpoint_name}: 100% to {entity_name}. No alias moved: {winner.label} is a "
                                "provider model, not a registered version.")
    try:
        releases.promote(PromotionRequest(
            winner.model_name, alias, winner.model_version, reason=reason, override=override_gate,
            action=AliasAction.ROLLBACK if action.startswith("roll") else AliasAction.PROMOTE,
            request_id=request_id and f"{request_id}-alias",
        ), identity, settings)
    except AgentOpsError as exc:
        raise PartialPromotionError(
            f"Traffic on {endpoint_name!r} now goes 100% to {winner.model_name} v{winner.model_version}, "
            f"but {winner.model_name}@{alias} was NOT moved: {exc} Retry moving the alias on the Versions page, "
            "or roll the traffic back."
        ) from exc
    return PromotionOutcome(True, True, stored,
                            f"{endpoint_name}: 100% to v{winner.model_version}; {alias} → v{winner.model_version}.")
