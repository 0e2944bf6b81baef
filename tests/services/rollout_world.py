"""What the rollout tests share: a ramp guarded by the error rate alone, and both arms' error counts."""

from __future__ import annotations

from typing import Any, Sequence

from services.rollouts import ArmEvidence, Final, Guardrail, Measure, RolloutPlan
from services.sequential import ArmSample

ERROR_RATE_RAILS = (Guardrail(Measure.ERROR_RATE, 0.02),)


def error_rate_plan(endpoint: str = "support-ep", champion: str = "support-1", challenger: str = "support-2",
                    steps: Sequence[int] = (10, 50, 100), *, min_sample: int = 100, final: Final = Final.PROMOTE,
                    **more: Any) -> RolloutPlan:
    """A ramp over ``steps`` with no dwell, guarded by the error rate (two points of tolerance)."""
    return RolloutPlan(endpoint, champion, challenger, tuple(steps), min_sample=min_sample, dwell_seconds=0,
                       guardrails=ERROR_RATE_RAILS, final=final, **more)


def error_rate_evidence(n: int, challenger_errors: float, champion_errors: float) -> ArmEvidence:
    """``n`` requests on each arm, with the given error counts."""
    return ArmEvidence({"error_rate": ArmSample(n, challenger_errors)}, {"error_rate": ArmSample(n, champion_errors)})
