"""Releases: gate rules, promotion evidence, promote / roll back aliases, alias history.

Gate rules live in one registered-model tag (``agentops.gate``, JSON) so they travel with the
agent. Every alias change made here is recorded by ``services.audit`` with the registry state
observed around the change, so the trail never disagrees with the registry.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from services import audit, registry, roles, versions
from services._clients import get_settings, mlflow_client, translate_errors
from services.audit import AliasAction, AliasChange, ChangeStatus, GateOutcome
from services.errors import BackendUnavailableError, ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from services.evaluations import EvaluationSummary
from services.identity import Identity
from services.settings import Backend, Settings

GATE_TAG = "agentops.gate"
_ALIAS_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_VERSION_ALIAS_RE = re.compile(r"^[vV]\d+$")


class GateBlockedError(ValidationError):
    """The promotion fails the agent's gate; override with a written reason."""


class RuleKind(StrEnum):
    MAX_DROP = "max_drop"  # metric may not drop more than threshold vs the current holder
    MIN_VALUE = "min_value"  # metric (a pass rate) must be at least threshold
    MAX_P95_MS = "max_p95_ms"  # p95 latency of the candidate's traffic
    MAX_COST = "max_cost_per_request"  # mean cost per request of the candidate's traffic


class CheckStatus(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NO_DATA = "no data"


@dataclass(frozen=True)
class GateRule:
    """One gate rule; ``metric`` is None for latency and cost rules."""

    kind: RuleKind
    threshold: float
    metric: str | None = None

    def describe(self) -> str:
        match self.kind:
            case RuleKind.MAX_DROP:
                return f"{self.metric} drops at most {self.threshold:g} vs the current holder"
            case RuleKind.MIN_VALUE:
                return f"{self.metric} ≥ {self.threshold:g}"
            case RuleKind.MAX_P95_MS:
                return f"p95 latency ≤ {self.threshold:g} ms"
            case RuleKind.MAX_COST:
                return f"cost per request ≤ ${self.threshold:g}"


@dataclass(frozen=True)
class GateCheck:
    rule: GateRule
    status: CheckStatus
    observed: float | None
    detail: str


@dataclass(frozen=True)
class MetricDelta:
    metric: str
    current: float | None
    candidate: float | None

    @property
    def delta(self) -> float | None:
        if self.current is None or self.candidate is None:
            return None
        return self.candidate - self.current


@dataclass(frozen=True)
class Evidence:
    """Latest evaluation of both versions on one dataset, per-metric deltas and traffic."""

    dataset: str | None
    candidate_eval: EvaluationSummary | None
    current_eval: EvaluationSummary | None
    deltas: tuple[MetricDelta, ...]
    candidate_traffic: versions.VersionTraffic
    current_traffic: versions.VersionTraffic | None

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary for the audit record."""
        return {
            "dataset": self.dataset,
            "candidate_eval_run": self.candidate_eval.run_id if self.candidate_eval else None,
            "current_eval_run": self.current_eval.run_id if self.current_eval else None,
            "metrics": {d.metric: {"current": d.current, "candidate": d.candidate, "delta": d.delta}
                        for d in self.deltas},
            "candidate_p95_ms": self.candidate_traffic.p95_ms,
            "candidate_cost_per_request": self.candidate_traffic.cost_per_request,
        }


@dataclass(frozen=True)
class PromotionPlan:
    """What a promotion would do: the alias now, after, the evidence and the gate verdict."""

    agent: str
    alias: str
    current_version: str | None
    target_version: str
    evidence: Evidence
    checks: tuple[GateCheck, ...]

    @property
    def blocked(self) -> bool:
        return any(c.status is CheckStatus.FAIL for c in self.checks)

    @property
    def is_noop(self) -> bool:
        return self.current_version == self.target_version


class Drift(StrEnum):
    RECORDED = "recorded"  # the last record's to-version is what the alias holds
    EXTERNAL = "moved outside the app"  # the alias points elsewhere than the last record says
    UNRECORDED = "never changed through the app"
    REMOVED = "removed outside the app"  # recorded, but the alias no longer exists
    INTERRUPTED = "interrupted change"  # the newest record is an intent never completed (backend failed mid-change)


@dataclass(frozen=True)
class AliasState:
    alias: str
    version: str | None
    last_change: AliasChange | None
    drift: Drift
    previous_version: str | None  # what a one-click rollback would restore
    interrupted: AliasChange | None = None  # an uncompleted intent newer than the last completed change


@dataclass(frozen=True)
class PromotionResult:
    change: AliasChange
    plan: PromotionPlan
    superseded: bool = False  # another operator moved the alias right after this change
    messages: tuple[str, ...] = field(default=())


# --- validation ---------------------------------------------------------------------------

def check_alias(alias: str) -> str:
    """An alias MLflow accepts; ``ValidationError`` naming the problem otherwise."""
    alias = (alias or "").strip()
    if not alias:
        raise ValidationError("The alias name is empty; use e.g. champion or challenger.")
    if not _ALIAS_RE.match(alias):
        raise ValidationError(
            f"{alias!r} is not a valid alias: use letters, digits, '_' and '-' only (at most 255)."
        )
    if alias.lower() == "latest" or _VERSION_ALIAS_RE.match(alias):
        raise ValidationError(f"{alias!r} is reserved by MLflow (it names 'latest' or a version); pick another name.")
    return alias


# --- gate rules ---------------------------------------------------------------------------

def parse_rules(raw: str | None) -> list[GateRule]:
    """Gate rules from the tag's JSON; ``ValidationError`` when it is malformed."""
    if not raw:
        return []
    try:
        data = json.loads(raw)
        rules = [GateRule(RuleKind(r["kind"]), float(r["threshold"]), r.get("metric")) for r in data]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValidationError(f"The {GATE_TAG} tag is not valid gate JSON ({exc}); fix or clear it.") from None
    return [_check_rule(r) for r in rules]


def _check_rule(rule: GateRule) -> GateRule:
    if rule.kind in (RuleKind.MAX_DROP, RuleKind.MIN_VALUE) and not rule.metric:
        raise ValidationError(f"A {rule.kind.value} rule needs a metric, e.g. expected_facts/mean.")
    if not math.isfinite(rule.threshold):
        raise ValidationError(f"The threshold of a {rule.kind.value} rule must be a finite number, not {rule.threshold}.")
    if rule.threshold < 0:
        raise ValidationError(f"The threshold of '{rule.describe()}' must not be negative.")
    if rule.kind not in (RuleKind.MAX_DROP, RuleKind.MIN_VALUE):
        rule = GateRule(rule.kind, rule.threshold, None)
    return rule


def gate_rules(agent: str, settings: Settings | None = None) -> list[GateRule]:
    """The agent's gate rules (empty when none are set)."""
    agent = versions.check_agent_name(agent)
    client = mlflow_client(settings)
    with translate_errors(f"registered model {agent!r}"):
        model = client.get_registered_model(agent)
    return parse_rules((model.tags or {}).get(GATE_TAG))


def set_gate_rules(agent: str, rules: list[GateRule], identity: Identity, settings: Settings | None = None) -> list[GateRule]:
    """Store the agent's gate rules as a registered-model tag (empty list clears them)."""
    agent = versions.check_agent_name(agent)
    roles.enforce(identity, roles.Action.EDIT_RULES, settings or get_settings())
    checked = [_check_rule(r) for r in rules]
    payload = json.dumps([{"kind": r.kind.value, "threshold": r.threshold, "metric": r.metric} for r in checked])
    client = mlflow_client(settings)
    with translate_errors(f"registered model {agent!r}"):
        if checked:
            client.set_registered_model_tag(agent, GATE_TAG, payload)
        else:
            try:
                client.delete_registered_model_tag(agent, GATE_TAG)
            except Exception as exc:  # noqa: BLE001 - no tag to delete is fine
                if getattr(exc, "error_code", "") not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                    raise
        client.set_registered_model_tag(agent, GATE_TAG + ".updated_by", identity.user)
    return checked


def evaluate_gate(rules: list[GateRule], evidence: Evidence) -> tuple[GateCheck, ...]:
    """Each rule checked against the evidence."""
    checks = []
    candidate = evidence.candidate_eval.metrics if evidence.candidate_eval else {}
    current = evidence.current_eval.metrics if evidence.current_eval else {}
    for rule in rules:
        if rule.kind is RuleKind.MIN_VALUE:
            value = candidate.get(rule.metric or "")
            if value is None:
                checks.append(GateCheck(rule, CheckStatus.FAIL, None, "the candidate has no evaluation with this metric"))
            else:
                ok = value >= rule.threshold
                checks.append(GateCheck(rule, CheckStatus.PASS if ok else CheckStatus.FAIL, value,
                                        f"{value:.3f} {'≥' if ok else '<'} {rule.threshold:g}"))
        elif rule.kind is RuleKind.MAX_DROP:
            new, old = candidate.get(rule.metric or ""), current.get(rule.metric or "")
            if new is None:
                checks.append(GateCheck(rule, CheckStatus.FAIL, None, "the candidate has no evaluation with this metric"))
            elif old is None:
                checks.append(GateCheck(rule, CheckStatus.NO_DATA, None,
                                        "no evaluation of the current holder on the same dataset"))
            else:
                drop = old - new
                ok = drop <= rule.threshold + 1e-12
                checks.append(GateCheck(rule, CheckStatus.PASS if ok else CheckStatus.FAIL, new - old,
                                        f"{old:.3f} → {new:.3f} (Δ {new - old:+.3f})"))
        else:
            traffic = evidence.candidate_traffic
            value = traffic.p95_ms if rule.kind is RuleKind.MAX_P95_MS else traffic.cost_per_request
            if value is None:
                checks.append(GateCheck(rule, CheckStatus.NO_DATA, None, "no traces of the candidate in the last 7 days"))
            else:
                ok = value <= rule.threshold
                checks.append(GateCheck(rule, CheckStatus.PASS if ok else CheckStatus.FAIL, value,
                                        f"{value:g} {'≤' if ok else '>'} {rule.threshold:g}"))
    return tuple(checks)


# --- evidence and plan --------------------------------------------------------------------

def gather_evidence(agent: str, candidate: str, current: str | None, settings: Settings | None = None,
                    *, model: Any = None, runs: list[EvaluationSummary] | None = None,
                    traffic: dict[str, versions.VersionTraffic] | None = None) -> Evidence:
    """Latest evaluations of both versions on the same dataset, with deltas, and traffic.

    ``runs`` and ``traffic`` may be passed when already read (e.g. for many versions at once).
    """
    experiment_ids = versions.agent_experiment_ids(agent, settings, model=model)
    if runs is None:
        runs = versions.evaluations_for(agent, settings, experiment_ids=experiment_ids)
    finished = [r for r in runs if r.status == "FINISHED"]
    mine = [r for r in finished if r.version == candidate]
    theirs = [r for r in finished if current is not None and r.version == current]
    candidate_eval = current_eval = None
    # Prefer the newest candidate run whose dataset the current holder was also evaluated on.
    for run in mine:
        match = next((t for t in theirs if t.dataset == run.dataset), None)
        if match is not None:
            candidate_eval, current_eval = run, match
            break
    if candidate_eval is None and mine:
        candidate_eval = mine[0]
    metrics = sorted(set(candidate_eval.metrics if candidate_eval else {}) | set(current_eval.metrics if current_eval else {}))
    deltas = tuple(
        MetricDelta(m, current_eval.metrics.get(m) if current_eval else None,
                    candidate_eval.metrics.get(m) if candidate_eval else None)
        for m in metrics
    )
    client = mlflow_client(settings)
    empty = versions.VersionTraffic(0, 0, None, None)
    # Live trace counts come from the model-id link: version -> LoggedModel -> mlflow.modelId.
    model_of: dict[str, str | None] = {}
    for number in (candidate, current):
        if number is not None:
            with translate_errors(f"version {number} of {agent!r}"):
                model_of[number] = registry.model_id_of(client.get_model_version(agent, number))
    if traffic is None:
        traffic = versions.traffic_by_model(experiment_ids, settings,
                                            model_ids=[m for m in model_of.values() if m])

    def flow(number: str | None) -> versions.VersionTraffic | None:
        if number is None:
            return None
        return traffic.get(model_of.get(number) or "", empty)

    return Evidence(
        dataset=candidate_eval.dataset if candidate_eval else None,
        candidate_eval=candidate_eval,
        current_eval=current_eval,
        deltas=deltas,
        candidate_traffic=flow(candidate) or empty,
        current_traffic=flow(current),
    )


def plan_promotion(agent: str, alias: str, version: str | int, settings: Settings | None = None) -> PromotionPlan:
    """Before → after for an alias, the evidence and the gate verdict; changes nothing."""
    agent = versions.check_agent_name(agent)
    alias = check_alias(alias)
    number = versions.check_version(version)
    client = mlflow_client(settings)
    with translate_errors(f"registered model {agent!r}"):
        model = client.get_registered_model(agent)
    versions.require_version_exists(client, agent, number)
    current = registry.aliases_of(model).get(alias)
    rules = parse_rules((model.tags or {}).get(GATE_TAG))
    evidence = gather_evidence(agent, number, current, settings, model=model)
    return PromotionPlan(agent, alias, current, number, evidence, evaluate_gate(rules, evidence))


# --- mutations ----------------------------------------------------------------------------

def promote(
    agent: str,
    alias: str,
    version: str | int,
    identity: Identity,
    *,
    reason: str = "",
    override: bool = False,
    expected_current: str | None | object = ...,
    action: AliasAction = AliasAction.PROMOTE,
    settings: Settings | None = None,
    readiness_failures: tuple[str, ...] = (),
    readiness_evidence: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> PromotionResult:
    """Point ``alias`` at ``version`` behind the gate, and record the change.

    Args:
        override: promote although the gate fails; needs a non-empty ``reason``.
        expected_current: the holder the operator saw when confirming; when given and the alias
            now points elsewhere, nothing changes and ``ConflictError`` says so.
        readiness_failures: failing required readiness items (``services.readiness``); they block
            like a failing gate and take the same override path.
        readiness_evidence: the readiness checklist, stored with the audit record.
        request_id: one id per confirmation. A retry with the same id after a backend failure
            completes the recorded attempt (alias set if not yet, record completed) instead of
            changing or recording twice; a retry of a completed one returns it unchanged.
    """
    reason = (reason or "").strip()
    if override and not reason:
        raise ValidationError("Overriding the gate needs a written reason.")
    audit.check_request_id(request_id)
    roles.enforce(identity, roles.Action.PROMOTE, settings or get_settings())
    plan = plan_promotion(agent, alias, version, settings)
    if (plan.blocked or readiness_failures) and not override:
        failed = "; ".join([f"{c.rule.describe()} ({c.detail})" for c in plan.checks if c.status is CheckStatus.FAIL]
                           + [f"readiness: {item}" for item in readiness_failures])
        raise GateBlockedError(f"The gate blocks v{plan.target_version} as {plan.alias}: {failed}. "
                               "Nothing changed. Override with a written reason if you must.")
    blocked = plan.blocked or bool(readiness_failures)
    if not plan.checks and not readiness_failures:
        gate = GateOutcome.NO_RULES
    else:
        gate = GateOutcome.OVERRIDDEN if blocked else GateOutcome.PASSED
    evidence = plan.evidence.summary() | {
        "checks": [{"rule": c.rule.describe(), "status": c.status.value, "detail": c.detail} for c in plan.checks],
    }
    if readiness_evidence is not None:
        evidence["readiness"] = readiness_evidence
    move = _AliasMove(mlflow_client(settings), plan, identity, action=action, reason=reason, gate=gate,
                      evidence=evidence, expected_current=expected_current, settings=settings)
    done = audit.run_two_phase(move, request_id)
    change, after = done.record, done.state
    if done.path is audit.Path.ALREADY_DONE:
        return PromotionResult(change, plan, change.to_version != change.requested_version,
                               ("This confirmation was already carried out; nothing changed again.",))
    if done.path is audit.Path.RECORD_COMPLETED:
        return PromotionResult(change, plan, False, ("Completed an interrupted promotion: the alias had already "
                                                     "moved; its audit record is now complete.",))
    superseded = after != plan.target_version
    if done.path is audit.Path.RESUMED:
        return PromotionResult(change, plan, superseded,
                               ("Completed an interrupted promotion: the alias was set and recorded once.",))
    messages = (f"Another change moved {plan.alias} to {_label(after)} at the same time; recorded as observed.",) if superseded else ()
    return PromotionResult(change, plan, superseded, messages)


class _AliasMove(audit.TwoPhaseChange[AliasChange, "str | None"]):
    """Moving one alias, as the steps of the audit trail's two-phase change."""

    def __init__(self, client: Any, plan: PromotionPlan, identity: Identity, *, action: AliasAction, reason: str,
                 gate: GateOutcome, evidence: dict[str, Any], expected_current: object,
                 settings: Settings | None) -> None:
        self.client, self.plan, self.identity, self.settings = client, plan, identity, settings
        self.action, self.reason, self.gate, self.evidence = action, reason, gate, evidence
        self.expected_current = expected_current
        self.lock_key = ("alias", plan.agent, plan.alias)
        self.before: str | None = None

    def find(self, request_id: str) -> AliasChange | None:
        return audit.find_alias_change(self.plan.agent, self.plan.alias, request_id, settings=self.settings)

    def check(self) -> None:
        plan = self.plan
        self.before = _read_alias(self.client, plan.agent, plan.alias)
        if self.expected_current is not ... and self.before != self.expected_current:
            raise ConflictError(
                f"{plan.agent}@{plan.alias} now points to {_label(self.before)}, not {_label(self.expected_current)} "
                "as when you looked. Nothing changed; review the new state and try again."
            )

    def open(self, request_id: str) -> AliasChange:
        # Written before the alias moves, so a failure after this point leaves a record that says
        # "interrupted" rather than an alias move nobody recorded.
        return audit.open_alias_change(
            model=self.plan.agent, alias=self.plan.alias, action=self.action, from_version=self.before,
            requested_version=self.plan.target_version, user=self.identity.user, reason=self.reason, gate=self.gate,
            evidence=self.evidence, request_id=request_id, settings=self.settings,
        )

    def act(self, intent: AliasChange) -> str | None:
        plan = self.plan
        with translate_errors(f"setting {plan.agent}@{plan.alias}"):
            self.client.set_registered_model_alias(plan.agent, plan.alias, intent.requested_version)
        # Record what the registry actually holds now, not what we asked for.
        return self.observe()

    def observe(self) -> str | None:
        return _read_alias(self.client, self.plan.agent, self.plan.alias)

    def complete(self, intent: AliasChange, state: str | None) -> AliasChange:
        return audit.complete_alias_change(intent, state, settings=self.settings)

    def holds_requested(self, intent: AliasChange, state: str | None) -> bool:
        return state == intent.requested_version

    def holds_before(self, intent: AliasChange, state: str | None) -> bool:
        return state == intent.from_version

    def same_request(self, earlier: AliasChange) -> ValidationError | None:
        if earlier.requested_version == self.plan.target_version:
            return None
        return ValidationError(
            f"Request {earlier.request_id} was a promotion of {self.plan.agent}@{self.plan.alias} to "
            f"v{earlier.requested_version}, not v{self.plan.target_version}; start a new confirmation for this one."
        )

    def refused(self, exc: Exception) -> Exception:
        if isinstance(exc, PermissionDeniedError):
            return PermissionDeniedError(_alias_refused(self.plan, self.identity, self.settings or get_settings(), exc))
        return exc

    def not_recorded(self, exc: BackendUnavailableError) -> BackendUnavailableError:
        plan = self.plan
        return BackendUnavailableError(
            f"The MLflow backend stopped answering before the promotion of {plan.agent}@{plan.alias} → "
            f"v{plan.target_version} was recorded. Nothing changed: the alias still points to {_label(self.before)}. "
            f"Retry once the backend is back. ({exc})"
        )

    def interrupted(self, intent: AliasChange, when: str, exc: Exception) -> BackendUnavailableError:
        return BackendUnavailableError(
            f"The MLflow backend stopped answering {when} ({self.plan.agent}@{self.plan.alias} → "
            f"v{intent.requested_version}), so the alias may or may not have moved. It is recorded as interrupted "
            f"(request {intent.request_id}); retry the same confirmation once the backend is back and it completes "
            f"exactly once. ({exc})"
        )

    def superseded(self, earlier: AliasChange, state: str | None) -> ConflictError:
        return ConflictError(
            f"{self.plan.agent}@{self.plan.alias} now points to {_label(state)}, not {_label(earlier.from_version)} or "
            f"v{earlier.requested_version}: another change happened after the interrupted promotion. "
            "The interrupted attempt is closed without changing anything; review the new state and try again."
        )

    def describe(self, state: str | None) -> str:
        return _label(state)


def _alias_refused(plan: PromotionPlan, identity: Identity, settings: Settings, exc: Exception) -> str:
    """Which grant the user lacks when the registry refuses an alias change."""
    who = identity.display_name or identity.user
    if settings.backend is Backend.DATABRICKS:
        # No Databricks Apps user scope covers the registry: the app sets aliases as its service principal.
        needs = (f"{who} may promote in this app, but the app sets aliases as its own service principal, and in "
                 f"Unity Catalog that needs the service principal to own the registered model {plan.agent} (or "
                 "MANAGE on it), plus USE CATALOG on its catalog and USE SCHEMA on its schema. Ask the model's owner "
                 "to grant these to the app's service principal.")
    else:
        needs = f"{who} needs permission to edit the registered model {plan.agent} on this MLflow server."
    return f"{plan.agent}@{plan.alias} was not changed: the registry refused it. {needs} ({exc})"


def rollback(agent: str, alias: str, identity: Identity, *, reason: str = "", settings: Settings | None = None,
             expected_current: str | None | object = ..., request_id: str | None = None) -> PromotionResult:
    """Point ``alias`` back at its previous recorded holder (skips the gate: rollbacks restore)."""
    # The role first: a user who may not promote learns that, not what the trail holds.
    roles.enforce(identity, roles.Action.PROMOTE, settings or get_settings())
    state = alias_state(agent, alias, settings)
    if state.previous_version is None:
        raise NotFoundError(
            f"No previous holder of {agent}@{alias} is recorded; promote a version explicitly instead."
        )
    return promote(
        agent, alias, state.previous_version, identity, reason=reason or "rollback", override=True,
        expected_current=state.version if expected_current is ... else expected_current,
        action=AliasAction.ROLLBACK, settings=settings, request_id=request_id,
    )


# --- history ------------------------------------------------------------------------------

def alias_history(agent: str, alias: str | None = None, settings: Settings | None = None, *,
                  include_interrupted: bool = False) -> list[AliasChange]:
    """Recorded changes of an agent's aliases, newest first (interrupted attempts only when asked)."""
    agent = versions.check_agent_name(agent)
    if alias is not None:
        alias = check_alias(alias)
    return audit.alias_changes(agent, alias, settings=settings, completed_only=not include_interrupted)


def holder_at(agent: str, alias: str, when: datetime, settings: Settings | None = None) -> str | None:
    """The version the trail says held ``alias`` at ``when`` (None: not held or nothing recorded)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    history = alias_history(agent, alias, settings)
    for change in history:
        if change.at <= when:
            return change.to_version
    # Before the first recorded change the alias held that change's from-version.
    return history[-1].from_version if history else None


def alias_states(agent: str, settings: Settings | None = None) -> list[AliasState]:
    """Each alias the agent has now or had through the app, with drift against the trail."""
    agent = versions.check_agent_name(agent)
    client = mlflow_client(settings)
    with translate_errors(f"registered model {agent!r}"):
        current = registry.aliases_of(client.get_registered_model(agent))
    history = audit.alias_changes(agent, settings=settings)
    names = sorted(set(current) | {c.alias for c in history})
    return [_state(name, current.get(name), [c for c in history if c.alias == name]) for name in names]


def alias_state(agent: str, alias: str, settings: Settings | None = None) -> AliasState:
    """One alias now, its last recorded change and the version a rollback would restore."""
    agent = versions.check_agent_name(agent)
    alias = check_alias(alias)
    client = mlflow_client(settings)
    with translate_errors(f"registered model {agent!r}"):
        current = registry.aliases_of(client.get_registered_model(agent)).get(alias)
    return _state(alias, current, audit.alias_changes(agent, alias, settings=settings))


def _state(alias: str, version: str | None, records: list[AliasChange]) -> AliasState:
    history = [c for c in records if c.completed]
    last = history[0] if history else None
    interrupted = next((c for c in records if c.status is ChangeStatus.INTERRUPTED
                        and (last is None or c.at_ns > last.at_ns)), None)
    if last is None:
        drift = Drift.UNRECORDED
    elif version is None:
        drift = Drift.REMOVED
    elif last.to_version == version:
        drift = Drift.RECORDED
    else:
        drift = Drift.EXTERNAL
    previous = None
    if drift is Drift.RECORDED:
        previous = _undo_target(history, version)
    elif drift is Drift.EXTERNAL:
        previous = last.to_version
    if interrupted is not None:
        # Whether it moved the alias is unknown until retried; offer no rollback meanwhile.
        return AliasState(alias, version, last, Drift.INTERRUPTED, None, interrupted)
    return AliasState(alias, version, last, drift, previous)


def _undo_target(history: list[AliasChange], version: str | None) -> str | None:
    """The holder a rollback restores: the trail replayed as an undo stack (newest-first ``history``).

    A promotion pushes the holder it replaced (no-op promotions push nothing); a rollback that restored
    the top of the stack pops it, so after rolling back, the next rollback goes further back instead of
    re-applying the move just undone.
    """
    stack: list[str] = []
    for change in reversed(history):
        if change.action is AliasAction.ROLLBACK:
            if stack and stack[-1] == change.to_version:
                stack.pop()
        elif change.from_version and change.from_version != change.to_version:
            stack.append(change.from_version)
    while stack and stack[-1] == version:
        stack.pop()
    return stack[-1] if stack else None


def _read_alias(client: Any, agent: str, alias: str) -> str | None:
    with translate_errors(f"registered model {agent!r}"):
        return registry.aliases_of(client.get_registered_model(agent)).get(alias)


def _label(version: object) -> str:
    return f"v{version}" if version else "nothing"
