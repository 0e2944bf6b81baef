"""Simulated rollouts with constructed arms and fixed seeds: the controller's decisions keep their stated error rates.

Each simulated rollout looks at its arms after every batch of requests, as the controller does, and
stops at the first rollback or once the evidence clears. The figures go to ``docs/reliability.md``
(section "rollout statistics") and to the test output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from services import rollouts, sequential
from services.errors import ValidationError
from services.rollouts import (
    Action,
    ArmEvidence,
    Baseline,
    Final,
    Guardrail,
    Measure,
    RolloutPlan,
)
from services.sequential import ArmSample
from tests.hardening.reliability import write_record
from tests.services.rollout_world import error_rate_evidence, error_rate_plan

RUNS = 1000
BATCH = 50
LOOKS = 120  # up to 6,000 requests per arm
ALPHA = 0.05
PLAN = error_rate_plan("support-ep", "1", "2", (5, 25, 50, 100), min_sample=200, alpha=ALPHA)


def _rollouts(plan: RolloutPlan, draw, *, runs: int = RUNS, seed: int) -> list[tuple[Action, int]]:
    """Run ``runs`` rollouts; ``draw(rng, runs, looks)`` gives each arm's per-batch sums per measure."""
    rng = np.random.default_rng(seed)
    batches = draw(rng, runs, LOOKS)  # {label: (challenger_sums, champion_sums, challenger_sq, champion_sq)}
    cumulative = {label: tuple(None if a is None else a.cumsum(axis=1) for a in arrays)
                  for label, arrays in batches.items()}
    outcomes = []
    for r in range(runs):
        outcome = (Action.HOLD, LOOKS * BATCH)
        for k in range(LOOKS):
            n = (k + 1) * BATCH
            challenger, champion = {}, {}
            for label, (a, b, a_sq, b_sq) in cumulative.items():
                challenger[label] = ArmSample(n, float(a[r, k]), None if a_sq is None else float(a_sq[r, k]))
                if b is not None:
                    champion[label] = ArmSample(n, float(b[r, k]), None if b_sq is None else float(b_sq[r, k]))
            decision = rollouts.decide(plan, len(plan.steps) - 1, ArmEvidence(challenger, champion),
                                       dwell_elapsed_seconds=math.inf, baseline=Baseline(cost_per_request=1.0))
            if decision.action is not Action.HOLD:
                outcome = (decision.action, n)
                break
        outcomes.append(outcome)
    return outcomes


def _errors(p_challenger: float, p_champion: float):
    def draw(rng, runs, looks):
        return {"error_rate": (rng.binomial(BATCH, p_challenger, (runs, looks)),
                               rng.binomial(BATCH, p_champion, (runs, looks)), None, None)}
    return draw


def _share(outcomes, action: Action) -> float:
    return sum(o[0] is action for o in outcomes) / len(outcomes)


def _report(name: str, outcomes, **extra) -> dict:
    rolled = [n for a, n in outcomes if a is Action.ROLLBACK]
    figures = {
        "rollouts": str(len(outcomes)),
        "rolled back": f"{_share(outcomes, Action.ROLLBACK):.3f}",
        "promoted": f"{_share(outcomes, Action.PROMOTE):.3f}",
        "median requests per arm to roll back": int(np.median(rolled)) if rolled else "—",
        **extra,
    }
    write_record("rollout statistics", name, figures)
    print(name, figures)
    return figures


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2])
def test_equal_arms_are_rarely_rolled_back(rate):
    outcomes = _rollouts(PLAN, _errors(rate, rate), seed=11)
    _report(f"equal arms, error rate {rate}, tolerance 0.02", outcomes, alpha=f"{ALPHA}")
    assert _share(outcomes, Action.ROLLBACK) <= ALPHA
    # Equal arms are also promoted, not held for ever, once the horizon is long enough to show they are
    # within tolerance (at a 20 % error rate, 6,000 requests per arm do not settle a 2-point question).
    needed = sequential.samples_to_detect(0.02, rate * (1 - rate), tau=0.02, alpha=ALPHA)
    if 1.5 * needed < LOOKS * BATCH:
        assert _share(outcomes, Action.PROMOTE) >= 0.9


def test_equal_arms_with_zero_tolerance_stay_within_alpha():
    plan = RolloutPlan(**{**PLAN.__dict__, "guardrails": (Guardrail(Measure.ERROR_RATE, 0.0),)})
    outcomes = _rollouts(plan, _errors(0.05, 0.05), seed=12)
    _report("equal arms, error rate 0.05, tolerance 0", outcomes, alpha=f"{ALPHA}")
    assert _share(outcomes, Action.ROLLBACK) <= ALPHA


def test_a_degraded_challenger_is_rolled_back_within_the_expected_sample():
    outcomes = _rollouts(PLAN, _errors(0.15, 0.05), seed=13)
    rolled = [n for a, n in outcomes if a is Action.ROLLBACK]
    pooled = 0.10 * 0.90
    expected = sequential.samples_to_detect(0.10 - 0.02, pooled, tau=0.02, alpha=ALPHA)
    _report("challenger error rate 0.15 vs 0.05, tolerance 0.02", outcomes,
            **{"expected requests per arm (median, normal theory)": str(expected)})
    assert _share(outcomes, Action.ROLLBACK) == 1.0
    assert _share(outcomes, Action.PROMOTE) == 0.0
    assert np.median(rolled) <= expected + PLAN.min_sample


def test_latency_guardrail_keeps_alpha_and_catches_a_slow_challenger():
    baseline_p95 = float(np.exp(0.0 + 1.645 * 0.5))  # lognormal(0, 0.5): the champion's known p95
    limit = baseline_p95 * 1.2
    plan = RolloutPlan(**{**PLAN.__dict__, "guardrails": (Guardrail(Measure.P95_LATENCY, 0.2),)})

    def slow(scale: float):
        def draw(rng, runs, looks):
            latencies = rng.lognormal(math.log(scale), 0.5, (runs, looks, BATCH))
            return {"p95_latency": ((latencies > limit).sum(axis=2), None, None, None)}
        return draw

    equal = _rollouts(plan, slow(1.0), runs=400, seed=14)
    _report("equal latency, p95 tolerance 20 %", equal, alpha=f"{ALPHA}")
    assert _share(equal, Action.ROLLBACK) <= ALPHA
    degraded = _rollouts(plan, slow(1.6), runs=400, seed=15)
    _report("challenger 60 % slower, p95 tolerance 20 %", degraded)
    assert _share(degraded, Action.ROLLBACK) == 1.0


def test_several_guardrails_share_alpha():
    plan = RolloutPlan(**{**PLAN.__dict__, "guardrails": (
        Guardrail(Measure.ERROR_RATE, 0.0), Guardrail(Measure.THUMBS_DOWN_RATE, 0.0),
        Guardrail(Measure.COST_PER_REQUEST, 0.0))})

    def draw(rng, runs, looks):
        cost_a = rng.gamma(4.0, 0.25, (runs, looks, BATCH))
        cost_b = rng.gamma(4.0, 0.25, (runs, looks, BATCH))
        return {
            "error_rate": (rng.binomial(BATCH, 0.05, (runs, looks)), rng.binomial(BATCH, 0.05, (runs, looks)), None, None),
            "thumbs_down_rate": (rng.binomial(BATCH, 0.1, (runs, looks)), rng.binomial(BATCH, 0.1, (runs, looks)),
                                 None, None),
            "cost_per_request": (cost_a.sum(axis=2), cost_b.sum(axis=2), (cost_a**2).sum(axis=2), (cost_b**2).sum(axis=2)),
        }

    outcomes = _rollouts(plan, draw, runs=400, seed=16)
    _report("equal arms, three guardrails at tolerance 0", outcomes, alpha=f"{ALPHA}")
    assert _share(outcomes, Action.ROLLBACK) <= ALPHA


def test_a_fixed_horizon_test_repeated_at_every_look_would_not_keep_alpha():
    """The reason for the sequential method: a z-test at every look rolls back equal arms far more often."""
    rng = np.random.default_rng(17)
    a = rng.binomial(BATCH, 0.05, (RUNS, LOOKS)).cumsum(axis=1)
    b = rng.binomial(BATCH, 0.05, (RUNS, LOOKS)).cumsum(axis=1)
    n = (np.arange(LOOKS) + 1) * BATCH
    pooled = np.clip((a + b) / (2 * n), 1e-9, 1)
    z = (a - b) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    naive = float(((z > 1.645) & (n >= PLAN.min_sample)).any(axis=1).mean())
    write_record("rollout statistics", "naive one-sided z-test at every look, equal arms", {"rolled back": f"{naive:.3f}"})
    print("naive z-test at every look, equal arms: rolled back", naive)
    assert naive > 2 * ALPHA


def test_decisions_hold_until_the_minimum_sample_and_dwell():
    evidence = error_rate_evidence(100, 1, 5)
    decision = rollouts.decide(PLAN, 0, evidence, dwell_elapsed_seconds=10**6, baseline=Baseline())
    assert decision.action is Action.HOLD and "200 requests" in decision.reason
    clear = error_rate_evidence(20000, 1000, 1000)
    plan = RolloutPlan(**{**PLAN.__dict__, "dwell_seconds": 600})
    held = rollouts.decide(plan, 0, clear, dwell_elapsed_seconds=60, baseline=Baseline())
    assert held.action is Action.HOLD and "540 s" in held.reason
    moved = rollouts.decide(plan, 0, clear, dwell_elapsed_seconds=600, baseline=Baseline())
    assert (moved.action, moved.share) == (Action.ADVANCE, 25)
    approval = RolloutPlan(**{**plan.__dict__, "final": Final.APPROVAL})
    assert rollouts.decide(approval, 3, clear, dwell_elapsed_seconds=600, baseline=Baseline()).action is Action.AWAIT_APPROVAL


BAD_PLANS = [
    ({"steps": (25, 5, 100)}, "increase"),
    ({"steps": (5, 50, 150)}, "1 to 100"),
    ({"steps": ()}, "at least one step"),
    ({"steps": (5, 50)}, "reach 100"),
    ({"challenger": "9"}, "not served"),
    ({"challenger": "1"}, "same version"),
    ({"guardrails": (Guardrail("latency_p99", 0.1),)}, "Unknown guardrail measure"),
    ({"guardrails": (Guardrail(Measure.ERROR_RATE, -0.1),)}, "0 or more"),
    ({"guardrails": (Guardrail(Measure.ERROR_RATE, 2),)}, "absolute points"),
    ({"guardrails": (Guardrail(Measure.LIVE_PASS_RATE, 0.05),)}, "names the scorer"),
    ({"guardrails": ()}, "at least one guardrail"),
    ({"min_sample": 5}, "at least 30"),
    ({"alpha": 0.9}, "alpha"),
]


@pytest.mark.parametrize("change,message", BAD_PLANS)
def test_bad_plans_are_refused_with_a_clear_message(change, message):
    plan = RolloutPlan(**{**PLAN.__dict__, **change})
    with pytest.raises(ValidationError, match=message):
        rollouts.validate_plan(plan, served=("1", "2"))


def test_a_good_plan_is_accepted():
    assert rollouts.validate_plan(PLAN, served=("1", "2")) is PLAN
