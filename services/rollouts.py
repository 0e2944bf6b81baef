"""Guarded rollouts: a challenger ramped through traffic steps, judged against the champion at every look.

This module holds the plan, its validation and the decision taken at one look; the controller that
reads the arms' figures and acts through the audited change mechanism is built on it. Decisions use the
always-valid sequential comparisons of ``services.sequential``: however often the controller looks,
the chance that it rolls back a challenger that is as good as the champion stays below the plan's
``alpha``.

Evidence is cumulative from the rollout's start (the arms' per-request figures do not depend on the
share of traffic they get), so every look refines the same sequence and its guarantee covers the
whole rollout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Mapping, Sequence

from services import sequential
from services.errors import ValidationError
from services.sequential import ArmSample, Look, Signal


class Measure(StrEnum):
    """What a guardrail compares; ``tolerance`` is read in the unit given here."""

    ERROR_RATE = "error_rate"  # absolute points: 0.02 allows two more errors per hundred requests
    P95_LATENCY = "p95_latency"  # relative: 0.2 allows a p95 up to 20 % above the champion's
    COST_PER_REQUEST = "cost_per_request"  # relative: 0.1 allows 10 % more cost per request
    LIVE_PASS_RATE = "live_pass_rate"  # absolute points of a live scorer's pass rate
    THUMBS_DOWN_RATE = "thumbs_down_rate"  # absolute points of negative feedback


MEASURE_HELP = {
    Measure.ERROR_RATE: "error rate, in absolute points (0.02 = two more errors per 100 requests)",
    Measure.P95_LATENCY: "p95 latency, relative to the champion's p95 when the rollout started (0.2 = 20 % slower)",
    Measure.COST_PER_REQUEST: "cost per request, relative to the champion's (0.1 = 10 % more)",
    Measure.LIVE_PASS_RATE: "a live scorer's pass rate, in absolute points (0.05 = five points lower)",
    Measure.THUMBS_DOWN_RATE: "thumbs-down rate, in absolute points",
}


class Final(StrEnum):
    """What the last step does once its evidence clears."""

    PROMOTE = "promote"  # alias and 100 % traffic together, through the gated promotion path
    APPROVAL = "wait for approval"  # a person confirms the promotion


class Action(StrEnum):
    HOLD = "hold"
    ADVANCE = "advance"
    ROLLBACK = "roll back"
    PROMOTE = "promote"
    AWAIT_APPROVAL = "await approval"


@dataclass(frozen=True)
class Guardrail:
    measure: Measure
    tolerance: float
    scorer: str | None = None  # the live scorer (its name, or its live_ assessment name), for LIVE_PASS_RATE

    @property
    def label(self) -> str:
        return f"{self.measure.value}({self.scorer})" if self.scorer else self.measure.value


@dataclass(frozen=True)
class RolloutPlan:
    """A challenger's ramp on one endpoint; shares are the challenger's percent of traffic at each step."""

    endpoint: str
    champion: str  # served version labels as the endpoint names them
    challenger: str
    steps: tuple[int, ...]
    min_sample: int
    dwell_seconds: int
    guardrails: tuple[Guardrail, ...]
    final: Final = Final.APPROVAL
    alias: str = "champion"
    alpha: float = sequential.DEFAULT_ALPHA

    @property
    def alpha_per_guardrail(self) -> float:
        return self.alpha / max(len(self.guardrails), 1)


@dataclass(frozen=True)
class Baseline:
    """The champion's figures before the rollout started, frozen in the plan's first record."""

    p95_latency_ms: float | None = None
    cost_per_request: float | None = None


@dataclass(frozen=True)
class ArmEvidence:
    """Per-measure samples of both arms since the rollout started.

    For P95_LATENCY the challenger's sample counts requests slower than ``baseline p95 x (1 + tolerance)``
    (the champion's entry is unused); for the other measures see ``sequential.ArmSample``.
    """

    challenger: Mapping[str, ArmSample]
    champion: Mapping[str, ArmSample]


@dataclass(frozen=True)
class Decision:
    action: Action
    step: int  # index of the step the decision was taken in
    share: int  # the challenger's share after the action
    reason: str
    rule: str | None = None  # the guardrail that triggered a rollback
    looks: Mapping[str, Look] = field(default_factory=dict)


def validate_plan(plan: RolloutPlan, served: Sequence[str]) -> RolloutPlan:
    """Refuse a plan that cannot run, naming what to fix; ``served`` are the endpoint's served versions."""
    if not plan.steps:
        raise ValidationError("A rollout needs at least one step (the challenger's share of traffic).")
    for share in plan.steps:
        if isinstance(share, bool) or not isinstance(share, int) or not 0 < share <= 100:
            raise ValidationError(f"Step {share!r} is not a share of traffic: use whole percents from 1 to 100.")
    if any(b <= a for a, b in zip(plan.steps, plan.steps[1:])):
        raise ValidationError(f"Steps must increase ({' → '.join(map(str, plan.steps))} does not).")
    if plan.steps[-1] != 100 and plan.final is Final.PROMOTE:
        raise ValidationError("A rollout that promotes at the end must reach 100 % in its last step.")
    if plan.challenger == plan.champion:
        raise ValidationError("The challenger and the champion are the same version.")
    for version, role in ((plan.champion, "champion"), (plan.challenger, "challenger")):
        if version not in served:
            raise ValidationError(f"The {role} {version!r} is not served by {plan.endpoint} "
                                  f"(it serves {', '.join(served) or 'nothing'}).")
    if isinstance(plan.min_sample, bool) or not isinstance(plan.min_sample, int) or plan.min_sample < 30:
        raise ValidationError("The minimum sample must be at least 30 requests per arm (the statistics need it).")
    if isinstance(plan.dwell_seconds, bool) or not isinstance(plan.dwell_seconds, int) or plan.dwell_seconds < 0:
        raise ValidationError("The dwell time must be zero or more seconds.")
    if not 0 < plan.alpha < 0.5:
        raise ValidationError("The false-rollback level alpha must be between 0 and 0.5 (0.05 is usual).")
    if not plan.guardrails:
        raise ValidationError("A guarded rollout needs at least one guardrail.")
    seen = set()
    for rail in plan.guardrails:
        if not isinstance(rail.measure, Measure):
            try:
                Measure(rail.measure)
            except ValueError:
                raise ValidationError(f"Unknown guardrail measure {rail.measure!r}; use one of "
                                      f"{', '.join(m.value for m in Measure)}.") from None
        if not isinstance(rail.tolerance, (int, float)) or isinstance(rail.tolerance, bool) \
                or not math.isfinite(rail.tolerance) or rail.tolerance < 0:
            raise ValidationError(f"The tolerance of {rail.label} must be a number of 0 or more.")
        if Measure(rail.measure) in (Measure.ERROR_RATE, Measure.LIVE_PASS_RATE, Measure.THUMBS_DOWN_RATE) \
                and rail.tolerance >= 1:
            raise ValidationError(f"The tolerance of {rail.label} is in absolute points: below 1 (0.02 = two points).")
        if Measure(rail.measure) is Measure.LIVE_PASS_RATE and not (rail.scorer or "").strip():
            raise ValidationError("A live pass-rate guardrail names the scorer whose pass rate it watches.")
        if rail.label in seen:
            raise ValidationError(f"The guardrail {rail.label} is listed twice.")
        seen.add(rail.label)
    return plan


def decide(plan: RolloutPlan, step: int, evidence: ArmEvidence, *, dwell_elapsed_seconds: float,
           baseline: Baseline) -> Decision:
    """The action at one look: roll back on any breach, advance once every guardrail clears, else hold."""
    share = plan.steps[step]
    looks: dict[str, Look] = {}
    short: list[str] = []
    for rail in plan.guardrails:
        look = _look(plan, rail, evidence, baseline)
        if look is None:
            short.append(rail.label)
            continue
        looks[rail.label] = look
        if look.signal is Signal.BREACHED:
            return Decision(Action.ROLLBACK, step, 0, f"{rail.label} breached its tolerance: {look.describe()}",
                            rule=rail.label, looks=looks)
    if short:
        return Decision(Action.HOLD, step, share, f"Waiting for {plan.min_sample} requests per arm on "
                        f"{', '.join(short)}.", looks=looks)
    undecided = [label for label, look in looks.items() if look.signal is not Signal.CLEARED]
    if undecided:
        return Decision(Action.HOLD, step, share, f"Not enough evidence yet on {', '.join(undecided)}.", looks=looks)
    if dwell_elapsed_seconds < plan.dwell_seconds:
        left = math.ceil(plan.dwell_seconds - dwell_elapsed_seconds)
        return Decision(Action.HOLD, step, share, f"Every guardrail is clear; the step's dwell time has {left} s left.",
                        looks=looks)
    if step + 1 < len(plan.steps):
        return Decision(Action.ADVANCE, step, plan.steps[step + 1],
                        f"Every guardrail is clear: {share} % → {plan.steps[step + 1]} %.", looks=looks)
    if plan.final is Final.PROMOTE:
        return Decision(Action.PROMOTE, step, 100, f"Every guardrail is clear at {share} %: promote "
                        f"{plan.challenger} to {plan.alias}.", looks=looks)
    return Decision(Action.AWAIT_APPROVAL, step, share, "Every guardrail is clear; waiting for a person to approve "
                    "the promotion.", looks=looks)


def _look(plan: RolloutPlan, rail: Guardrail, evidence: ArmEvidence, baseline: Baseline) -> Look | None:
    measure = Measure(rail.measure)
    key = rail.label
    challenger = evidence.challenger.get(key)
    alpha = plan.alpha_per_guardrail
    if challenger is None or challenger.n < plan.min_sample:
        return None
    if measure is Measure.P95_LATENCY:
        return sequential.quantile_excess(challenger, alpha=alpha)
    champion = evidence.champion.get(key)
    if champion is None or champion.n < plan.min_sample:
        return None
    if measure is Measure.COST_PER_REQUEST:
        scale = baseline.cost_per_request if baseline.cost_per_request else champion.mean
        return sequential.mean_excess(challenger, champion, tolerance=rail.tolerance, alpha=alpha, scale=scale)
    return sequential.rate_excess(challenger, champion, tolerance=rail.tolerance, alpha=alpha,
                                  higher_is_worse=measure is not Measure.LIVE_PASS_RATE)
