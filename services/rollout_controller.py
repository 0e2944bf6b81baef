"""The rollout controller: one look per running rollout, and the action it calls for, exactly once.

A rollout is one team-configuration record (``rollout:<endpoint>``, ``services.team_state``): the plan,
its status, the current step, the champion's baseline and a timeline of looks and decisions. The
controller runs in the background worker; every look reads the arms' evidence through ``RolloutPorts``
and decides with ``services.rollouts.decide``.

Exactly once: an action is first written into the record as *pending* (a compare-and-set on the
record's version, so of two controllers only one gets to act), then carried out through the ports with a
request id derived from the rollout and the step (the split change and the promotion are idempotent
per request id: the audited change mechanism finds an earlier change with the same id), then cleared
with the new step and status. A controller that dies between deciding and finishing finds the pending
action on its next look and completes it with the same request id.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Mapping, Protocol, Sequence

from services import roles, rollouts, team_state
from services.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from services.identity import Identity
from services.live_scoring_scorers import scorer_of
from services.rollouts import (
    Action,
    ArmEvidence,
    Baseline,
    Decision,
    Final,
    Guardrail,
    Measure,
    RolloutPlan,
)
from services.sequential import ArmSample
from services.settings import Settings

_logger = logging.getLogger(__name__)

KEY_PREFIX = "rollout:"
CONTROLLER = "rollout controller"
TIMELINE_LIMIT = 200  # entries kept in the record (looks are recorded only when what they say changes)


class Status(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    AWAITING_APPROVAL = "awaiting approval"
    ROLLED_BACK = "rolled back"
    PROMOTED = "promoted"
    ABORTED = "aborted"

    @property
    def active(self) -> bool:
        return self in (Status.RUNNING, Status.PAUSED, Status.AWAITING_APPROVAL)


@dataclass(frozen=True)
class Entry:
    """One line of a rollout's timeline."""

    at: str
    kind: str  # "look", "decision", "operator"
    action: str
    share: int
    reason: str
    by: str
    rule: str | None = None
    evidence: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rollout:
    plan: RolloutPlan
    status: Status
    step: int
    step_started_at: str
    started_at: str
    started_by: str
    baseline: Baseline
    timeline: tuple[Entry, ...]
    pending: Mapping[str, Any] | None
    version: int

    @property
    def share(self) -> int:
        return self.plan.steps[self.step]

    @property
    def rollout_id(self) -> str:
        return hashlib.sha256(f"{self.plan.endpoint}|{self.started_at}".encode()).hexdigest()[:12]


class RolloutPorts(Protocol):
    """What the controller needs from the rest of the services (serving, A/B evidence, promotion, alerts)."""

    def served_arms(self, endpoint: str) -> dict[str, int]:
        """The endpoint's arms (entity names) and their current share of traffic in percent."""

    def baseline(self, plan: RolloutPlan) -> Baseline:
        """The champion's figures before the rollout starts (p95 latency, cost per request)."""

    def evidence(self, plan: RolloutPlan, baseline: Baseline, since: datetime, until: datetime) -> ArmEvidence:
        """Both arms' samples per guardrail since the rollout started."""

    def set_shares(self, endpoint: str, shares: dict[str, int], *, request_id: str, actor: str, reason: str) -> None:
        """Route traffic by ``shares`` through the audited change mechanism (idempotent per request id)."""

    def promote(self, plan: RolloutPlan, *, request_id: str, actor: str, reason: str) -> None:
        """Move the plan's alias to the challenger through the gated promotion path (idempotent per request id)."""

    def notify(self, title: str, body: str, *, key: str) -> None:
        """Tell the alert channels (de-duplicated by ``key``)."""


# --- records ----------------------------------------------------------------------------------


def _key(endpoint: str) -> str:
    return KEY_PREFIX + team_state.validate_key_part(endpoint, "endpoint")


def _now() -> datetime:
    return datetime.now(tz=timezone.utc)


def _to_json(rollout: Rollout) -> dict[str, Any]:
    plan = asdict(rollout.plan)
    plan["guardrails"] = [{"measure": str(g.measure), "tolerance": g.tolerance, "scorer": g.scorer}
                          for g in rollout.plan.guardrails]
    plan["final"] = str(rollout.plan.final)
    return {
        "plan": plan, "status": str(rollout.status), "step": rollout.step,
        "step_started_at": rollout.step_started_at, "started_at": rollout.started_at,
        "started_by": rollout.started_by, "baseline": asdict(rollout.baseline),
        "timeline": [asdict(e) for e in rollout.timeline[-TIMELINE_LIMIT:]], "pending": rollout.pending,
    }


def _from_json(value: Mapping[str, Any], version: int) -> Rollout:
    raw = dict(value["plan"])
    raw["steps"] = tuple(raw["steps"])
    raw["guardrails"] = tuple(Guardrail(Measure(g["measure"]), g["tolerance"], g.get("scorer"))
                              for g in raw["guardrails"])
    raw["final"] = Final(raw["final"])
    return Rollout(
        plan=RolloutPlan(**raw), status=Status(value["status"]), step=int(value["step"]),
        step_started_at=value["step_started_at"], started_at=value["started_at"], started_by=value["started_by"],
        baseline=Baseline(**value.get("baseline") or {}),
        timeline=tuple(Entry(**e) for e in value.get("timeline") or ()), pending=value.get("pending"),
        version=version,
    )


def get_rollout(endpoint: str, settings: Settings) -> Rollout | None:
    """The endpoint's latest rollout (running or finished), or None."""
    record = team_state.read(_key(endpoint), settings)
    return _from_json(record.value, record.version) if record and record.value else None


def list_rollouts(settings: Settings) -> list[Rollout]:
    """Every endpoint's latest rollout, active ones first."""
    found = [_from_json(r.value, r.version) for r in team_state.read_all(settings, KEY_PREFIX).values() if r.value]
    return sorted(found, key=lambda r: (not r.status.active, r.plan.endpoint))


def _save(rollout: Rollout, settings: Settings, user: str, note: str) -> Rollout:
    record = team_state.write(_key(rollout.plan.endpoint), _to_json(rollout), expected_version=rollout.version,
                              user=user, settings=settings, note=note)
    return replace(rollout, version=record.version)


def _entry(kind: str, action: str, share: int, reason: str, by: str, rule: str | None = None,
           decision: Decision | None = None) -> Entry:
    evidence = {label: look.describe() for label, look in (decision.looks if decision else {}).items()}
    return Entry(_now().isoformat(), kind, action, share, reason, by, rule, evidence)


# --- operator actions ---------------------------------------------------------------------------


def start(plan: RolloutPlan, identity: Identity, settings: Settings, ports: RolloutPorts) -> Rollout:
    """Validate the plan, freeze the champion's baseline and move the first step's traffic (audited)."""
    roles.enforce(identity, roles.Action.CHANGE_TRAFFIC, settings)
    arms = ports.served_arms(plan.endpoint)
    rollouts.validate_plan(plan, served=tuple(arms))
    others = {arm: share for arm, share in arms.items() if arm not in (plan.champion, plan.challenger) and share}
    if others:
        raise ValidationError(f"{plan.endpoint} also sends traffic to {', '.join(f'{a} ({s} %)' for a, s in others.items())}; "
                              "route it to the champion first, so the rollout moves only its two arms.")
    current = get_rollout(plan.endpoint, settings)
    if current and current.status.active:
        raise ConflictError(f"{plan.endpoint} already has a rollout {current.status.value} (started by "
                            f"{current.started_by}); abort it before starting another.")
    now = _now().isoformat()
    rollout = Rollout(plan, Status.RUNNING, 0, now, now, identity.user, ports.baseline(plan),
                      (_entry("operator", "start", plan.steps[0], f"Rollout of {plan.challenger} started.", identity.user),),
                      None, current.version if current else 0)
    rollout = _save(rollout, settings, identity.user, f"start rollout of {plan.challenger}")
    return _act(rollout, Decision(Action.ADVANCE, 0, plan.steps[0], "First step."), identity.user, settings, ports,
                first=True)


def pause(endpoint: str, identity: Identity, settings: Settings) -> Rollout:
    """Stop looking and acting; traffic stays as it is."""
    return _set_status(endpoint, identity, settings, Status.PAUSED, (Status.RUNNING,), "paused")


def resume(endpoint: str, identity: Identity, settings: Settings) -> Rollout:
    """Look and act again; the current step's dwell time starts over."""
    return _set_status(endpoint, identity, settings, Status.RUNNING, (Status.PAUSED,), "resumed")


def abort(endpoint: str, identity: Identity, settings: Settings, ports: RolloutPorts, reason: str = "") -> Rollout:
    """Send all traffic back to the champion and end the rollout (aliases are untouched)."""
    roles.enforce(identity, roles.Action.CHANGE_TRAFFIC, settings)
    rollout = _active(endpoint, settings)
    why = f"Aborted by {identity.user}" + (f": {reason}" if reason else ".")
    return _act(rollout, Decision(Action.ROLLBACK, rollout.step, 0, why, rule="operator"), identity.user, settings,
                ports, final_status=Status.ABORTED)


def approve(endpoint: str, identity: Identity, settings: Settings, ports: RolloutPorts) -> Rollout:
    """Promote a rollout that waits for approval (the gated promotion path checks the person's role)."""
    roles.enforce(identity, roles.Action.PROMOTE, settings)
    rollout = _active(endpoint, settings)
    if rollout.status is not Status.AWAITING_APPROVAL:
        raise ValidationError(f"The rollout on {endpoint} is {rollout.status.value}, not waiting for approval.")
    return _act(rollout, Decision(Action.PROMOTE, rollout.step, 100, f"Approved by {identity.user}."), identity.user,
                settings, ports)


def _active(endpoint: str, settings: Settings) -> Rollout:
    rollout = get_rollout(endpoint, settings)
    if rollout is None or not rollout.status.active:
        raise NotFoundError(f"{endpoint} has no rollout in progress.")
    return rollout


def _set_status(endpoint: str, identity: Identity, settings: Settings, status: Status, allowed: Sequence[Status],
                verb: str) -> Rollout:
    roles.enforce(identity, roles.Action.CHANGE_TRAFFIC, settings)
    rollout = _active(endpoint, settings)
    if rollout.status not in allowed:
        raise ValidationError(f"The rollout on {endpoint} is {rollout.status.value}; it cannot be {verb}.")
    entry = _entry("operator", verb, rollout.share, f"{verb.capitalize()} by {identity.user}.", identity.user)
    changed = replace(rollout, status=status, step_started_at=_now().isoformat(),
                      timeline=(*rollout.timeline, entry))
    return _save(changed, settings, identity.user, f"rollout {verb}")


# --- the controller's look ------------------------------------------------------------------------


def tick(settings: Settings, ports: RolloutPorts, now: datetime | None = None) -> list[tuple[str, Decision | None]]:
    """One look at every running rollout; returns (endpoint, decision) per rollout looked at."""
    now = now or _now()
    done = []
    for rollout in list_rollouts(settings):
        if not rollout.pending and rollout.status is not Status.RUNNING:
            continue
        try:
            done.append((rollout.plan.endpoint, look(rollout, settings, ports, now)))
        except ConflictError:
            continue  # another controller changed the record first: it acts, this one does not
        except Exception:  # noqa: BLE001 - one failing rollout must not stop the others; it is retried next look
            _logger.exception("rollout look failed for %s", rollout.plan.endpoint)
            done.append((rollout.plan.endpoint, None))
    return done


def look(rollout: Rollout, settings: Settings, ports: RolloutPorts, now: datetime) -> Decision | None:
    """Finish a pending action, or look at the evidence and act on what it says."""
    if rollout.pending:
        return _finish(rollout, settings, ports)
    if rollout.status is not Status.RUNNING:
        return None
    since = datetime.fromisoformat(rollout.started_at)
    evidence = ports.evidence(rollout.plan, rollout.baseline, since, now)
    dwell = (now - datetime.fromisoformat(rollout.step_started_at)).total_seconds()
    decision = rollouts.decide(rollout.plan, rollout.step, evidence, dwell_elapsed_seconds=dwell,
                               baseline=rollout.baseline)
    if decision.action is Action.HOLD:
        last = next((e for e in reversed(rollout.timeline) if e.kind == "look"), None)
        if last is None or last.reason != decision.reason:
            entry = _entry("look", decision.action.value, rollout.share, decision.reason, CONTROLLER, decision=decision)
            _save(replace(rollout, timeline=(*rollout.timeline, entry)), settings, CONTROLLER, "rollout look")
        return decision
    if decision.action is Action.AWAIT_APPROVAL:
        entry = _entry("decision", decision.action.value, rollout.share, decision.reason, CONTROLLER, decision=decision)
        _save(replace(rollout, status=Status.AWAITING_APPROVAL, timeline=(*rollout.timeline, entry)), settings,
              CONTROLLER, "rollout awaits approval")
        ports.notify(f"Rollout on {rollout.plan.endpoint} waits for approval", decision.reason,
                     key=f"rollout-{rollout.rollout_id}-approval")
        return decision
    _act(rollout, decision, CONTROLLER, settings, ports)
    return decision


def _act(rollout: Rollout, decision: Decision, actor: str, settings: Settings, ports: RolloutPorts, *,
         first: bool = False, final_status: Status | None = None) -> Rollout:
    """Record the action as pending (compare-and-set), then carry it out and clear it."""
    plan = rollout.plan
    share = decision.share if decision.action is not Action.ROLLBACK else 0
    if decision.action is Action.ROLLBACK:
        status = final_status or Status.ROLLED_BACK
    elif decision.action is Action.PROMOTE:
        status = Status.PROMOTED
    else:
        status = Status.RUNNING
    next_step = rollout.step + (0 if first or decision.action is not Action.ADVANCE else 1)
    pending = {
        "request_id": f"rollout-{rollout.rollout_id}-{next_step}-{decision.action.name.lower()}",
        "action": decision.action.value, "share": share, "reason": decision.reason, "rule": decision.rule,
        "by": actor, "status": status.value, "step": next_step,
        "evidence": {label: look.describe() for label, look in decision.looks.items()},
    }
    recorded = _save(replace(rollout, pending=pending), settings, actor, f"rollout {decision.action.value}")
    _finish(recorded, settings, ports)
    return get_rollout(plan.endpoint, settings) or recorded


def _finish(rollout: Rollout, settings: Settings, ports: RolloutPorts) -> Decision:
    pending = dict(rollout.pending or {})
    plan = rollout.plan
    action = Action(pending["action"])
    share = int(pending["share"])
    reason = pending["reason"]
    request_id = pending["request_id"]
    shares = {plan.champion: 100 - share, plan.challenger: share}
    ports.set_shares(plan.endpoint, shares, request_id=request_id, actor=pending["by"], reason=reason)
    status = Status(pending["status"])
    if action is Action.PROMOTE:
        # The controller promotes on behalf of the person who started the rollout (their role decides).
        on_behalf = rollout.started_by if pending["by"] == CONTROLLER else pending["by"]
        try:
            ports.promote(plan, request_id=request_id, actor=on_behalf, reason=reason)
        except (ValidationError, PermissionDeniedError) as exc:
            # The gated promotion path refused (gate, readiness or role): a person decides from here.
            status = Status.AWAITING_APPROVAL
            reason = f"{reason} The promotion was refused, so the rollout waits for a person: {exc}"
    if action in (Action.ROLLBACK, Action.PROMOTE) or pending["by"] == CONTROLLER:
        rule = f" (rule: {pending['rule']})" if pending.get("rule") else ""
        ports.notify(f"Rollout on {plan.endpoint}: {action.value}{rule}",
                     f"{reason}\nEvidence: " + "; ".join(f"{k}: {v}" for k, v in pending.get("evidence", {}).items()),
                     key=request_id)
    entry = Entry(_now().isoformat(), "decision", action.value, share, reason, pending["by"], pending.get("rule"),
                  pending.get("evidence") or {})
    step = int(pending["step"])
    moved = step != rollout.step or action is not Action.ADVANCE
    finished = replace(rollout, pending=None, status=status, step=step,
                       step_started_at=_now().isoformat() if moved else rollout.step_started_at,
                       timeline=(*rollout.timeline, entry))
    _save(finished, settings, pending["by"], f"rollout {action.value} done")
    return Decision(action, step, share, reason, rule=pending.get("rule"))


def evidence_from_arms(plan: RolloutPlan, baseline: Baseline, challenger: Any, champion: Any) -> ArmEvidence:
    """Per-guardrail samples from two arms' per-request values (``services.ab.ArmSample``)."""
    mine: dict[str, ArmSample] = {}
    theirs: dict[str, ArmSample] = {}
    for rail in plan.guardrails:
        for arm, out in ((challenger, mine), (champion, theirs)):
            sample = _arm_sample(rail, arm, baseline)
            if sample is not None:
                out[rail.label] = sample
    return ArmEvidence(mine, theirs)


def _arm_sample(rail: Guardrail, arm: Any, baseline: Baseline) -> ArmSample | None:
    measure = Measure(rail.measure)
    if measure is Measure.ERROR_RATE:
        return ArmSample(arm.requests, arm.errors)
    if measure is Measure.P95_LATENCY:
        if baseline.p95_latency_ms is None:
            return None
        limit = baseline.p95_latency_ms * (1 + rail.tolerance)
        return ArmSample(arm.requests, sum(1 for ms in arm.latencies_ms if ms > limit))
    if measure is Measure.COST_PER_REQUEST:
        costs = list(arm.costs)
        return ArmSample(len(costs), sum(costs), sum(c * c for c in costs))
    if measure is Measure.THUMBS_DOWN_RATE:
        return ArmSample(len(arm.feedback), sum(1 for up in arm.feedback if not up))
    by_name = getattr(arm, "scorer_passes_by_name", None)
    passes = list(by_name.get(scorer_of(rail.scorer or ""), ())) if isinstance(by_name, Mapping) \
        else list(arm.scorer_passes)
    return ArmSample(len(passes), sum(1 for p in passes if p))
