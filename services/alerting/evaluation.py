"""Evaluating rules into incidents (``alert-incident:<rule>``) and delivering what each incident owes.

A transition is claimed by writing the next version of the incident record, so of two workers that see
the same breach exactly one sends; a worker that dies mid-delivery leaves a lease that expires, and the
next evaluation sends what is still owed (each channel once)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from services import notify, team_state
from services.alerting.channels import delivery_entry, log_deliveries, send
from services.alerting.measuring import Measurement, breached, measure
from services.alerting.rules import (
    EVALUATOR,
    INCIDENT_KEY,
    LEASE,
    RETRY_AFTER,
    AlertRule,
    list_rules,
)
from services.errors import AgentOpsError, ConflictError
from services.notify import Kind
from services.settings import Settings

_logger = logging.getLogger(__name__)


class State(StrEnum):
    OK = "ok"
    FIRING = "firing"
    NO_DATA = "insufficient data"
    DISABLED = "disabled"
    ERROR = "error"


@dataclass(frozen=True)
class RuleOutcome:
    rule: str
    state: State
    value: float | None
    sample: int
    message: str
    sent: tuple[str, ...] = ()  # "firing → oncall" for each notification delivered in this evaluation
    failed: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvaluationReport:
    at: datetime
    outcomes: tuple[RuleOutcome, ...] = field(default_factory=tuple)

    @property
    def sent(self) -> int:
        return sum(len(o.sent) for o in self.outcomes)

    @property
    def failed(self) -> int:
        return sum(len(o.failed) for o in self.outcomes)

    def summary(self) -> str:
        firing = sum(o.state is State.FIRING for o in self.outcomes)
        return (f"{len(self.outcomes)} rule(s) evaluated, {firing} firing, {self.sent} notification(s) sent, "
                f"{self.failed} failed")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _parse(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except (TypeError, ValueError):
        return None


def evaluate_and_notify(settings: Settings, now: datetime | None = None, *, attempts: int = 3,
                        backoff_s: float = 1.0) -> EvaluationReport:
    """Evaluate every enabled rule once and send what their incidents owe; the background worker's task.

    Safe to run from two workers at once and after a restart: each transition is claimed in team
    state before it is sent, so every incident gets one firing and one resolved notification.
    """
    now = now or datetime.now(tz=UTC)
    records = team_state.read_all(settings, "alert-")
    outcomes = []
    for rule in list_rules(settings, records):
        if not rule.enabled:
            outcomes.append(RuleOutcome(rule.name, State.DISABLED, None, 0, "disabled"))
            continue
        try:
            outcomes.append(_evaluate(rule, records.get(INCIDENT_KEY + rule.name), settings, now, attempts, backoff_s))
        except AgentOpsError as exc:
            _logger.warning("alert rule %s not evaluated: %s", rule.name, notify.redact(str(exc)))
            outcomes.append(RuleOutcome(rule.name, State.ERROR, None, 0, notify.redact(str(exc))))
    report = EvaluationReport(now, tuple(outcomes))
    _logger.info("alerts: %s", report.summary())
    return report


def _evaluate(rule: AlertRule, incident: team_state.Record | None, settings: Settings, now: datetime,
              attempts: int, backoff_s: float) -> RuleOutcome:
    m = measure(rule, settings, now)
    current = dict(incident.value) if incident else {"status": "ok", "count": 0}
    version = incident.version if incident else 0
    enough = m.value is not None and m.sample >= rule.min_sample
    desired = (State.FIRING.value if breached(rule, m.value) else State.OK.value) if enough else None
    shown = f"{rule.measure.format(m.value, rule.threshold)} over {m.sample} {'assessed traces' if rule.measure.needs_assessment else 'requests'}"
    if not enough:
        message = f"{shown}: below the minimum sample of {rule.min_sample}, not judged"
    else:
        message = f"{shown} ({'breach' if desired == 'firing' else 'within'}: {rule.condition_against(m.value)})"
    if m.note:
        message += f"; {m.note}"

    claim: dict[str, Any] | None = None
    if desired is not None and desired != current.get("status"):
        if desired == State.FIRING.value:
            count = int(current.get("count", 0)) + 1
            claim = {"status": "firing", "count": count, "incident": f"{rule.name}#{count}", "since": _iso(now),
                     "value": m.value, "sample": m.sample, "pending": Kind.FIRING, "done": []}
        elif current.get("pending") == Kind.FIRING and not current.get("done"):
            # Nobody was told it fired: close it quietly.
            claim = {**current, "status": "ok", "pending": None, "done": [], "resolved_at": _iso(now),
                     "value": m.value, "sample": m.sample}
        else:
            claim = {**current, "status": "ok", "pending": Kind.RESOLVED, "done": [], "resolved_at": _iso(now),
                     "value": m.value, "sample": m.sample}
    elif current.get("pending"):
        lease = _parse(current.get("lease_until"))
        retry = _parse(current.get("next_try"))
        if (lease is None or lease <= now) and (retry is None or retry <= now):
            claim = dict(current)
    state = State(current.get("status", "ok")) if desired is None else State(desired)
    if desired is None and not enough:
        state = State.FIRING if current.get("status") == "firing" else State.NO_DATA
    if claim is None:
        return RuleOutcome(rule.name, state, m.value, m.sample, message)

    claim["lease_until"] = _iso(now + LEASE) if claim.get("pending") else None
    try:
        claimed = team_state.write(INCIDENT_KEY + rule.name, claim, expected_version=version, user=EVALUATOR,
                                   settings=settings, note=f"{rule.name}: {claim['status']} ({message})"[:400])
    except ConflictError:  # another worker took this transition: it sends
        return RuleOutcome(rule.name, state, m.value, m.sample, message + "; handled by another worker")
    if not claim.get("pending"):
        return RuleOutcome(rule.name, state, m.value, m.sample, message)
    return _deliver_owed(rule, claim, claimed.version, m, message, state, settings, now, attempts, backoff_s)


def _deliver_owed(rule: AlertRule, claim: dict[str, Any], version: int, m: Measurement, message: str, state: State,
                  settings: Settings, now: datetime, attempts: int, backoff_s: float) -> RuleOutcome:
    kind = claim["pending"]
    title = (f"[{'FIRING' if kind == Kind.FIRING else 'RESOLVED'}] {rule.name}: {rule.measure.label} "
             f"{rule.measure.format(m.value, rule.threshold)} ({rule.scope})")
    body = (f"Rule {rule.name} — {rule.condition_against(m.value)}.\nScope: {rule.scope}.\nNow: {message}.\n"
            f"Incident {claim.get('incident', '')}, firing since {claim.get('since', '')}.")
    done = list(claim.get("done") or [])
    entries, sent, failed = [], [], []
    for channel in rule.channels:
        if channel in done:
            continue
        result = send(settings, channel, title, body, kind, attempts=attempts, backoff_s=backoff_s)
        entries.append(delivery_entry(channel, kind, result, rule=rule.name, incident=str(claim.get("incident", "")),
                              by=EVALUATOR, value=m.value, sample=m.sample))
        if result.ok:
            done.append(channel)
            sent.append(f"{kind} → {channel}")
        else:
            failed.append(f"{kind} → {channel}: {result.error}")
    after = {**claim, "done": done, "lease_until": None}
    if all(c in done for c in rule.channels):
        after.update(pending=None, tries=0, next_try=None)
    else:
        tries = int(claim.get("tries", 0)) + 1
        after.update(tries=tries, next_try=_iso(now + min(RETRY_AFTER * 2 ** (tries - 1), timedelta(hours=1))))
    try:
        team_state.write(INCIDENT_KEY + rule.name, after, expected_version=version, user=EVALUATOR, settings=settings,
                         note=f"{rule.name}: {kind} delivered to {len(done)}/{len(rule.channels)} channel(s)")
    except ConflictError:
        _logger.warning("alert incident %s changed while delivering; the next evaluation re-reads it", rule.name)
    log_deliveries(settings, entries)
    return RuleOutcome(rule.name, state, m.value, m.sample, message, tuple(sent), tuple(failed))
