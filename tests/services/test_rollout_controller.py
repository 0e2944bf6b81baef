"""The rollout controller's record and its exactly-once actions, on a real MLflow store.

The ports stand in for the serving backends, the A/B evidence, promotion and the alert channels:
they keep an endpoint's split in memory, apply a change once per request id (as the audited change
mechanism does), and can fail at a chosen point to play a controller killed between acting and
recording.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services import rollout_controller as rc
from services import team_state
from services.errors import ConflictError, ValidationError
from services.identity import Identity, IdentitySource
from services.rollouts import Baseline, RolloutPlan
from tests.services.rollout_world import error_rate_evidence, error_rate_plan

OPERATOR = Identity("op@example.com", "Op", IdentitySource.OS_USER)
PLAN = error_rate_plan()


class Killed(Exception):
    """The controller process dying at a chosen point."""


class Ports:
    def __init__(self) -> None:
        self.split = {"support-1": 100, "support-2": 0}
        self.applied: dict[str, dict[str, int]] = {}
        self.calls: list[str] = []
        self.notices: list[tuple[str, str]] = []
        self.promoted: list[str] = []
        self.error_rates = (0.05, 0.05)  # challenger, champion
        self.n = 0
        self.kill_after_split = False

    def served_arms(self, endpoint):
        return dict(self.split)

    def baseline(self, plan):
        return Baseline(p95_latency_ms=800.0, cost_per_request=0.01)

    def evidence(self, plan, baseline, since, until):
        mine, theirs = self.error_rates
        return error_rate_evidence(self.n, round(self.n * mine), round(self.n * theirs))

    def set_shares(self, endpoint, shares, *, request_id, actor, reason):
        self.calls.append(request_id)
        if request_id not in self.applied:  # idempotent per request id, as the audit trail makes it
            self.applied[request_id] = dict(shares)
            self.split = dict(shares)
        if self.kill_after_split:
            self.kill_after_split = False
            raise Killed(request_id)

    def promote(self, plan, *, request_id, actor, reason):
        if request_id not in self.promoted:
            self.promoted.append(request_id)

    def notify(self, title, body, *, key):
        self.notices.append((key, title))


@pytest.fixture
def ports():
    return Ports()


def test_a_clean_rollout_advances_step_by_step_and_promotes(isolated_settings, ports):
    rollout = rc.start(PLAN, OPERATOR, isolated_settings, ports)
    assert rollout.status is rc.Status.RUNNING and ports.split == {"support-1": 90, "support-2": 10}
    ports.n = 50
    [(_, held)] = rc.tick(isolated_settings, ports)
    assert held.action.value == "hold" and ports.split["support-2"] == 10
    ports.n = 20_000
    for expected in (50, 100):
        rc.tick(isolated_settings, ports)
        assert ports.split["support-2"] == expected
    # The last step (100 %) dwells and is judged like the others before the alias moves.
    assert rc.get_rollout(PLAN.endpoint, isolated_settings).status is rc.Status.RUNNING and not ports.promoted
    rc.tick(isolated_settings, ports)
    final = rc.get_rollout(PLAN.endpoint, isolated_settings)
    assert final.status is rc.Status.PROMOTED and len(ports.promoted) == 1
    assert [e.action for e in final.timeline if e.kind == "decision"] == ["advance", "advance", "advance", "promote"]
    assert rc.tick(isolated_settings, ports) == []  # nothing left to look at


def test_a_breach_rolls_back_once_and_names_the_rule(isolated_settings, ports):
    rc.start(PLAN, OPERATOR, isolated_settings, ports)
    ports.n, ports.error_rates = 2_000, (0.20, 0.05)
    [(_, decision)] = rc.tick(isolated_settings, ports)
    assert decision.action.value == "roll back" and decision.rule == "error_rate"
    assert ports.split == {"support-1": 100, "support-2": 0}
    rolled = rc.get_rollout(PLAN.endpoint, isolated_settings)
    assert rolled.status is rc.Status.ROLLED_BACK
    last = rolled.timeline[-1]
    assert last.rule == "error_rate" and "error_rate" in last.evidence
    assert [t for _, t in ports.notices if "roll back" in t] == [f"Rollout on {PLAN.endpoint}: roll back (rule: error_rate)"]
    assert ports.promoted == []


def test_a_controller_killed_between_acting_and_recording_finishes_the_action_once(isolated_settings, ports):
    rc.start(PLAN, OPERATOR, isolated_settings, ports)
    ports.n, ports.error_rates = 2_000, (0.20, 0.05)
    ports.kill_after_split = True
    with pytest.raises(Killed):
        rc.look(rc.get_rollout(PLAN.endpoint, isolated_settings), isolated_settings, ports,
                datetime.now(tz=timezone.utc))
    pending = rc.get_rollout(PLAN.endpoint, isolated_settings)
    assert pending.pending and pending.status is rc.Status.RUNNING  # decided and acted, not recorded
    # The restarted controller sees the pending action and completes it with the same request id.
    ports.error_rates = (0.05, 0.05)  # whatever the evidence says now, the decision taken stands
    rc.tick(isolated_settings, ports)
    done = rc.get_rollout(PLAN.endpoint, isolated_settings)
    assert done.status is rc.Status.ROLLED_BACK and not done.pending
    rollback_ids = [r for r in ports.calls if r.endswith("rollback")]
    assert len(set(rollback_ids)) == 1 and len(ports.applied) == 2  # the first step and one rollback
    assert sum("roll back" in t for _, t in ports.notices) == 1
    assert sum(e.kind == "decision" and e.action == "roll back" for e in done.timeline) == 1


def test_two_controllers_looking_at_once_act_once(isolated_settings, ports):
    rc.start(PLAN, OPERATOR, isolated_settings, ports)
    ports.n = 20_000
    seen = rc.get_rollout(PLAN.endpoint, isolated_settings)
    rc.look(seen, isolated_settings, ports, datetime.now(tz=timezone.utc))
    with pytest.raises(ConflictError):  # the second controller still holds the version it read
        rc.look(seen, isolated_settings, ports, datetime.now(tz=timezone.utc))
    assert ports.split["support-2"] == 50 and len(ports.applied) == 2


def test_pause_resume_and_abort(isolated_settings, ports):
    rc.start(PLAN, OPERATOR, isolated_settings, ports)
    rc.pause(PLAN.endpoint, OPERATOR, isolated_settings)
    ports.n = 20_000
    assert rc.tick(isolated_settings, ports) == []  # a paused rollout is not looked at
    with pytest.raises(ValidationError, match="cannot be paused"):
        rc.pause(PLAN.endpoint, OPERATOR, isolated_settings)
    rc.resume(PLAN.endpoint, OPERATOR, isolated_settings)
    aborted = rc.abort(PLAN.endpoint, OPERATOR, isolated_settings, ports, reason="customer escalation")
    assert aborted.status is rc.Status.ABORTED and ports.split == {"support-1": 100, "support-2": 0}
    assert aborted.timeline[-1].by == OPERATOR.user and "customer escalation" in aborted.timeline[-1].reason


def test_dwell_time_holds_a_clear_step(isolated_settings, ports):
    plan = RolloutPlan(**{**PLAN.__dict__, "dwell_seconds": 3600})
    rc.start(plan, OPERATOR, isolated_settings, ports)
    ports.n = 20_000
    [(_, held)] = rc.tick(isolated_settings, ports)
    assert held.action.value == "hold" and "dwell" in held.reason
    later = datetime.now(tz=timezone.utc) + timedelta(hours=2)
    rc.tick(isolated_settings, ports, now=later)
    assert ports.split["support-2"] == 50


@pytest.mark.parametrize("change,message", [
    ({"challenger": "support-9"}, "not served"),
    ({"steps": (50, 10, 100)}, "increase"),
])
def test_a_bad_plan_changes_nothing(isolated_settings, ports, change, message):
    with pytest.raises(ValidationError, match=message):
        rc.start(RolloutPlan(**{**PLAN.__dict__, **change}), OPERATOR, isolated_settings, ports)
    assert ports.calls == [] and rc.get_rollout(PLAN.endpoint, isolated_settings) is None
    assert team_state.read_all(isolated_settings, rc.KEY_PREFIX) == {}


def test_a_second_rollout_on_the_same_endpoint_is_refused(isolated_settings, ports):
    rc.start(PLAN, OPERATOR, isolated_settings, ports)
    with pytest.raises(ConflictError, match="already has a rollout"):
        rc.start(PLAN, OPERATOR, isolated_settings, ports)
    ports.split = {"support-1": 80, "support-2": 10, "support-3": 10}
    with pytest.raises(ValidationError, match="also sends traffic"):
        rc.start(RolloutPlan(**{**PLAN.__dict__, "endpoint": "other-ep"}), OPERATOR, isolated_settings, ports)
