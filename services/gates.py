"""Gate rules and the evidence they are checked against.

Gate rules live in one registered-model tag (``agentops.gate``, JSON) so they travel with the
agent. A rule is checked against the latest evaluations of the candidate and of the alias's
current holder on one dataset, and against the candidate's *live* traffic (evaluation rows are
not requests: see ``services.version_traffic``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from services import audit, version_traffic, registry, roles, versions
from services._clients import get_settings, mlflow_client, translate_errors
from services.errors import ValidationError
from services.evaluations import EvaluationSummary
from services.identity import Identity
from services.settings import Settings

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
            "candidate_live_traces": self.candidate_traffic.traces,  # evaluation rows not counted
            "candidate_p95_ms": self.candidate_traffic.p95_ms,
            "candidate_cost_per_request": self.candidate_traffic.cost_per_request,
        }


@dataclass(frozen=True)
class GateResult:
    """The gate verdict of one candidate against an alias's current holder."""

    alias: str
    current_version: str | None
    evidence: Evidence
    checks: tuple[GateCheck, ...]

    @property
    def blocked(self) -> bool:
        return any(c.status is CheckStatus.FAIL for c in self.checks)

    def failures(self) -> list[str]:
        """Each failing rule with what was observed."""
        return [f"{c.rule.describe()} ({c.detail})" for c in self.checks if c.status is CheckStatus.FAIL]

    def summary(self) -> list[dict[str, str]]:
        """JSON-able checks for the audit record."""
        return [{"rule": c.rule.describe(), "status": c.status.value, "detail": c.detail} for c in self.checks]


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


def set_gate_rules(agent: str, rules: list[GateRule], identity: Identity, settings: Settings | None = None, *,
                   reason: str = "", request_id: str | None = None) -> list[GateRule]:
    """Store the agent's gate rules as a registered-model tag (empty list clears them), audited.

    The edit goes through the audit trail's two-phase change: who changed which agent's rules from
    what to what (and why, when a reason is given). ``request_id`` (one per confirmation) makes a
    retry after an interruption complete the same edit once.
    """
    agent = versions.check_agent_name(agent)
    roles.enforce(identity, roles.Action.EDIT_RULES, settings or get_settings())
    checked = [_check_rule(r) for r in rules]
    audit.check_request_id(request_id)
    audit.run_two_phase(_RulesEdit(agent, checked, identity.user, reason, settings), request_id)
    return checked


def _rules_json(rules: list[GateRule]) -> list[dict[str, Any]]:
    return [{"kind": r.kind.value, "threshold": r.threshold, "metric": r.metric} for r in rules]


class _RulesEdit(audit.TwoPhaseChange["str | None"]):
    """Replacing an agent's gate rules (the raw ``agentops.gate`` tag, None when unset) as a two-phase change."""

    kind = audit.ChangeKind.GATE_RULES

    def __init__(self, agent: str, rules: list[GateRule], user: str, reason: str, settings: Settings | None) -> None:
        self.agent, self.rules, self.user, self.reason, self.settings = agent, rules, user, reason, settings
        self.action = "edit gate rules" if rules else "clear gate rules"
        self.target = {"model": agent}
        self.lock_key = ("gate_rules", agent)
        self.client = mlflow_client(settings)
        self.before: str | None = None

    def check(self) -> None:
        self.before = self.observe()

    def planned(self) -> tuple[Any, Any]:
        return self.recorded(self.before), _rules_json(self.rules)

    def act(self, intent: audit.Change) -> str | None:
        client, agent = self.client, self.agent
        with translate_errors(f"registered model {agent!r}"):
            if self.rules:
                client.set_registered_model_tag(agent, GATE_TAG, json.dumps(_rules_json(self.rules)))
            else:
                try:
                    client.delete_registered_model_tag(agent, GATE_TAG)
                except Exception as exc:  # noqa: BLE001 - no tag to delete is fine
                    if getattr(exc, "error_code", "") not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                        raise
            client.set_registered_model_tag(agent, GATE_TAG + ".updated_by", self.user)
        return self.observe()

    def observe(self) -> str | None:
        with translate_errors(f"registered model {self.agent!r}"):
            return (self.client.get_registered_model(self.agent).tags or {}).get(GATE_TAG)

    def recorded(self, state: str | None) -> Any:
        try:
            return json.loads(state) if state else []
        except ValueError:
            return {"unreadable": state}

    def describe(self, state: str | None) -> str:
        return state or "no rules"


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
                checks.append(GateCheck(rule, CheckStatus.NO_DATA, None,
                                        "no live traces of the candidate in the last 7 days"))
            else:
                ok = value <= rule.threshold
                checks.append(GateCheck(rule, CheckStatus.PASS if ok else CheckStatus.FAIL, value,
                                        f"{value:g} {'≤' if ok else '>'} {rule.threshold:g}"))
    return tuple(checks)


# --- evidence ---------------------------------------------------------------------------------

def gather_evidence(agent: str, candidate: str, current: str | None, settings: Settings | None = None,
                    *, model: Any = None, runs: list[EvaluationSummary] | None = None,
                    traffic: dict[str, versions.VersionTraffic] | None = None,
                    experiment_ids: list[str] | None = None) -> Evidence:
    """Latest evaluations of both versions on the same dataset, with deltas, and traffic.

    ``runs`` and ``traffic`` (live traffic by LoggedModel id, ``version_traffic``) may be passed when
    already read (e.g. for many versions at once).
    """
    if experiment_ids is None:
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
    # Live trace counts come from the model-id link (version -> LoggedModel -> mlflow.modelId),
    # without the rows of evaluation runs.
    model_of: dict[str, str | None] = {}
    for number in (candidate, current):
        if number is not None:
            with translate_errors(f"version {number} of {agent!r}"):
                model_of[number] = registry.model_id_of(client.get_model_version(agent, number))
    if traffic is None:
        traffic = version_traffic.live_traffic_by_model(experiment_ids, [m for m in model_of.values() if m], settings)

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


def check_gate(agent: str, alias: str, candidate: str, model: Any, settings: Settings | None = None, *,
               runs: list[EvaluationSummary] | None = None,
               traffic: dict[str, versions.VersionTraffic] | None = None,
               experiment_ids: list[str] | None = None) -> GateResult:
    """The gate of ``candidate`` against the holder of ``alias``, from an already-read registered model."""
    current = registry.aliases_of(model).get(alias)
    rules = parse_rules((model.tags or {}).get(GATE_TAG))
    evidence = gather_evidence(agent, candidate, current, settings, model=model, runs=runs, traffic=traffic,
                               experiment_ids=experiment_ids)
    return GateResult(alias, current, evidence, evaluate_gate(rules, evidence))
