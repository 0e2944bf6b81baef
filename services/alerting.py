"""Alert rules on live traffic, their incidents, and the notifications they send.

A rule watches one measure (error rate, p95 latency, cost per request, a live scorer's pass rate,
a thumbs-down rate) over a window of traffic of one agent, version, endpoint or arm, and fires only
when the window holds at least ``min_sample`` requests (or assessed traces): three requests never
page anyone. ``evaluate_and_notify`` is the periodic task the background worker runs.

Everything is team state (``services.team_state``), so the app, a second worker and a restarted
worker share it:

* ``alert-rule:<name>`` and ``alert-channel:<name>`` records, written by operators (who and when is
  kept in the state history). A channel record holds what apprise says the URL is and a fingerprint,
  never the URL: that is a secret (``services.notify``).
* ``alert-incident:<rule>``: the rule's state (ok or firing) and the notification it still owes.
  A transition is claimed by writing the next version of that record, so of two workers that see the
  same breach exactly one sends; a worker that dies mid-delivery leaves a lease that expires, and
  the next evaluation sends what is still owed (each channel once).
* ``alert-deliveries``: the newest deliveries (rule, channel, kind, outcome, attempts), with no URL.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from services import monitoring, notify, registry, roles, team_state
from services._clients import mlflow_client, translate_errors
from services.errors import AgentOpsError, ConflictError, NotFoundError, ValidationError
from services.notify import Delivery, Kind
from services.settings import Settings
from services.traces import AGENT_TAG, ARM_TAG, ENDPOINT_TAG, VERSION_TAG

_logger = logging.getLogger(__name__)

RULE_KEY = "alert-rule:"
CHANNEL_KEY = "alert-channel:"
INCIDENT_KEY = "alert-incident:"
DELIVERIES_KEY = "alert-deliveries"
EVALUATOR = "alert evaluator"
HISTORY_SIZE = 100
WINDOW_MINUTES = (5, 7 * 24 * 60)
MIN_SAMPLE = (5, 100_000)
MAX_SCANNED_TRACES = 5000
LEASE = timedelta(minutes=2)  # a delivery claimed by a worker that died is taken over after this
RETRY_AFTER = timedelta(minutes=1)  # a channel that failed every attempt is retried, doubling, up to an hour


class Measure(StrEnum):
    ERROR_RATE = "error_rate"
    P95_LATENCY = "p95_latency_ms"
    COST_PER_REQUEST = "cost_per_request"
    SCORER_PASS_RATE = "scorer_pass_rate"
    THUMBS_DOWN_RATE = "thumbs_down_rate"

    @property
    def label(self) -> str:
        return _LABELS[self][0]

    @property
    def fires_below(self) -> bool:
        return self is Measure.SCORER_PASS_RATE

    @property
    def needs_assessment(self) -> bool:
        return self in (Measure.SCORER_PASS_RATE, Measure.THUMBS_DOWN_RATE)

    def format(self, value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        if self is Measure.P95_LATENCY:
            return f"{value:,.0f} ms"
        if self is Measure.COST_PER_REQUEST:
            return f"${value:,.4f}"
        return f"{value:.1%}"


_LABELS = {
    Measure.ERROR_RATE: ("error rate", (0.0, 1.0)),
    Measure.P95_LATENCY: ("p95 latency", (0.0, 3_600_000.0)),
    Measure.COST_PER_REQUEST: ("cost per request", (0.0, 1_000.0)),
    Measure.SCORER_PASS_RATE: ("live-scorer pass rate", (0.0, 1.0)),
    Measure.THUMBS_DOWN_RATE: ("thumbs-down rate", (0.0, 1.0)),
}


# --- pass criteria --------------------------------------------------------------------------

_TRUE_WORDS = {"yes", "true", "pass", "passed", "1"}
_FALSE_WORDS = {"no", "false", "fail", "failed", "0", "down", "thumbs_down"}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def parse_criterion(text: Any) -> Callable[[Any], bool]:
    """A pass criterion: ``yes`` (true/yes/pass), ``>= 0.7`` (and >, <, <=), or ``== text`` / ``!= text``."""
    if not isinstance(text, str) or not text.strip() or len(text) > 100:
        raise ValidationError("Give a pass criterion: yes, >= 0.7 (or >, <, <=), or == some-label.")
    t = text.strip()
    if t.lower() in ("yes", "true", "pass"):
        return lambda v: (v is True) or (isinstance(v, str) and v.strip().lower() in _TRUE_WORDS) or (
            not isinstance(v, bool) and isinstance(v, (int, float)) and v >= 1)
    match = re.fullmatch(r"(>=|<=|==|!=|>|<)\s*(.+)", t)
    if not match:
        raise ValidationError(f"Pass criterion {t!r} is not understood: use yes, >= 0.7 (or >, <, <=), or == label.")
    op, operand = match.group(1), match.group(2).strip().strip("'\"")
    number = _number(operand)
    if op in ("==", "!="):
        def equal(v: Any) -> bool:
            if number is not None and _number(v) is not None:
                return _number(v) == number
            return str(v).strip().lower() == operand.lower()
        return equal if op == "==" else (lambda v: not equal(v))
    if number is None:
        raise ValidationError(f"Pass criterion {t!r} compares with {operand!r}, which is not a number.")
    compare = {">=": float.__ge__, "<=": float.__le__, ">": float.__gt__, "<": float.__lt__}[op]
    return lambda v: _number(v) is not None and compare(_number(v), number)


def is_thumbs_down(value: Any) -> bool:
    """A boolean feedback that says no (False, "no", "false", 0)."""
    if isinstance(value, bool):
        return value is False
    if isinstance(value, str):
        return value.strip().lower() in _FALSE_WORDS
    number = _number(value)
    return number is not None and number == 0


# --- rules ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertRule:
    """What to watch, where, over which window, from how many requests on, and whom to tell."""

    name: str
    measure: Measure
    threshold: float
    window_minutes: int = 60
    min_sample: int = 20
    agent: str | None = None
    version: str | None = None
    endpoint: str | None = None
    arm: str | None = None
    assessment: str | None = None  # scorer or feedback name (pass-rate and thumbs-down rules)
    pass_criterion: str = "yes"  # scorer pass rate: when one assessment value passes
    channels: tuple[str, ...] = ()
    enabled: bool = True

    @property
    def scope(self) -> str:
        parts = [f"{k} {v}" for k, v in (("agent", self.agent), ("version", self.version),
                                          ("endpoint", self.endpoint), ("arm", self.arm)) if v]
        return ", ".join(parts) or "all traffic"

    @property
    def condition(self) -> str:
        what = self.measure.label + (f" of {self.assessment}" if self.measure.needs_assessment else "")
        side = "below" if self.measure.fires_below else "above"
        return (f"{what} {side} {self.measure.format(self.threshold)} over {self.window_minutes} min "
                f"(at least {self.min_sample} {'assessed traces' if self.measure.needs_assessment else 'requests'})")

    def to_record(self) -> dict[str, Any]:
        value = asdict(self)
        value["measure"] = self.measure.value
        value["channels"] = list(self.channels)
        return value


def _int_in(name: str, value: Any, bounds: tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ValidationError(f"{name} must be a whole number between {bounds[0]:,} and {bounds[1]:,} (got {value!r}).")
    if not bounds[0] <= int(value) <= bounds[1]:
        raise ValidationError(f"{name} must be between {bounds[0]:,} and {bounds[1]:,} (got {int(value):,}).")
    return int(value)


def _optional_text(name: str, value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or len(value) > 250 or any(c in value for c in "\n\r`\"'") or value != value.strip():
        raise ValidationError(f"The {name} {value!r} is not a valid name.")
    return value


def validate_rule(raw: AlertRule | Mapping[str, Any]) -> AlertRule:
    """A rule from a form or a stored record, checked; ``ValidationError`` names what is wrong."""
    data = raw.to_record() if isinstance(raw, AlertRule) else dict(raw)
    unknown = set(data) - {f for f in AlertRule.__dataclass_fields__}
    if unknown:
        raise ValidationError(f"Unknown rule fields: {', '.join(sorted(unknown))}.")
    name = data.get("name")
    if not isinstance(name, str) or not notify.CHANNEL_NAME.match(name):
        raise ValidationError(f"{name!r} is not a rule name: use 1-64 letters, digits, '-', '_' or '.'.")
    try:
        measure = Measure(data.get("measure"))
    except ValueError:
        raise ValidationError(f"Unknown measure {data.get('measure')!r}; use one of: "
                              f"{', '.join(m.value for m in Measure)}.") from None
    threshold = data.get("threshold")
    low, high = _LABELS[measure][1]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValidationError(f"The threshold must be a number (got {threshold!r}).")
    if not low <= threshold <= high:
        unit = "a share between 0 and 1" if high == 1.0 else f"between {low:g} and {high:,g}"
        raise ValidationError(f"The {measure.label} threshold must be {unit} (got {threshold}).")
    window = _int_in("The window (minutes)", data.get("window_minutes", 60), WINDOW_MINUTES)
    min_sample = _int_in("The minimum sample", data.get("min_sample", 20), MIN_SAMPLE)
    scope = {k: _optional_text(k, data.get(k)) for k in ("agent", "version", "endpoint", "arm")}
    if scope["version"] and not scope["agent"]:
        raise ValidationError("A version belongs to an agent: pick the agent too.")
    assessment = _optional_text("assessment", data.get("assessment"))
    if measure.needs_assessment and not assessment:
        what = "scorer" if measure is Measure.SCORER_PASS_RATE else "feedback"
        raise ValidationError(f"A {measure.label} rule needs the {what} name (the assessment to read).")
    criterion = data.get("pass_criterion") or "yes"
    if measure is Measure.SCORER_PASS_RATE:
        parse_criterion(criterion)
    channels = data.get("channels") or ()
    if isinstance(channels, str) or not all(isinstance(c, str) for c in channels):
        raise ValidationError("Channels must be a list of channel names.")
    for channel in channels:
        notify.validate_channel_name(channel)
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValidationError("enabled must be true or false.")
    return AlertRule(name, measure, float(threshold), window, min_sample, scope["agent"], scope["version"],
                     scope["endpoint"], scope["arm"], assessment if measure.needs_assessment else None,
                     str(criterion).strip() if measure is Measure.SCORER_PASS_RATE else "yes",
                     tuple(dict.fromkeys(channels)), enabled)


def _live(records: Mapping[str, team_state.Record], prefix: str) -> dict[str, team_state.Record]:
    return {k[len(prefix):]: r for k, r in records.items()
            if k.startswith(prefix) and isinstance(r.value, dict) and not r.value.get("deleted")}


def list_rules(settings: Settings, records: Mapping[str, team_state.Record] | None = None) -> list[AlertRule]:
    """The team's alert rules, by name (a stored rule that no longer validates is skipped, with a warning)."""
    records = team_state.read_all(settings, "alert-") if records is None else records
    rules = []
    for name, record in sorted(_live(records, RULE_KEY).items()):
        try:
            rules.append(validate_rule(record.value))
        except ValidationError as exc:
            _logger.warning("alert rule %s cannot be read: %s", name, exc)
    return rules


def rules_for(settings: Settings, agent: str) -> list[AlertRule]:
    """Enabled rules that watch ``agent`` (its own, or all traffic) and notify at least one channel."""
    return [r for r in list_rules(settings) if r.enabled and r.channels and r.agent in (None, agent)]


def rule_versions(settings: Settings) -> dict[str, int]:
    """The stored version of each rule record (deleted ones included), for conflict-checked edits."""
    return {k[len(RULE_KEY):]: r.version for k, r in team_state.read_all(settings, RULE_KEY).items()}


def save_rule(settings: Settings, rule: AlertRule | Mapping[str, Any], identity: Any, *,
              expected_version: int | None = None) -> AlertRule:
    """Create or change a rule (operator role; recorded with who did it). Channels must exist."""
    rule = validate_rule(rule)
    roles.enforce(identity, roles.Action.MANAGE_ALERTS, settings)
    records = team_state.read_all(settings, "alert-")
    known = _live(records, CHANNEL_KEY)
    missing = [c for c in rule.channels if c not in known]
    if missing:
        raise ValidationError(f"No channel named {', '.join(map(repr, missing))}; add the channel first. Nothing was saved.")
    current = records.get(RULE_KEY + rule.name)
    if expected_version is None:
        expected_version = current.version if current else 0
    team_state.write(RULE_KEY + rule.name, rule.to_record(), expected_version=expected_version,
                     user=_user(identity), settings=settings, note=f"alert rule {rule.name}: {rule.condition}")
    return rule


def delete_rule(settings: Settings, name: str, identity: Any) -> None:
    """Delete a rule (operator role; recorded). Its open incident closes without a notification."""
    roles.enforce(identity, roles.Action.MANAGE_ALERTS, settings)
    records = team_state.read_all(settings, "alert-")
    current = records.get(RULE_KEY + name)
    if current is None or current.value.get("deleted"):
        raise NotFoundError(f"There is no alert rule {name!r}.")
    team_state.write(RULE_KEY + name, {"name": name, "deleted": True}, expected_version=current.version,
                     user=_user(identity), settings=settings, note=f"deleted alert rule {name}")
    incident = records.get(INCIDENT_KEY + name)
    if incident is not None and incident.value.get("status") == "firing":
        try:
            team_state.write(INCIDENT_KEY + name, {**incident.value, "status": "ok", "pending": None, "lease_until": None,
                                                   "closed": "rule deleted"},
                             expected_version=incident.version, user=_user(identity), settings=settings,
                             note=f"incident closed: rule {name} deleted")
        except ConflictError:
            pass


# --- channels ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Channel:
    """A delivery channel as pages see it: never its URL."""

    name: str
    service: str
    scheme: str
    fingerprint: str
    where: str
    updated_by: str
    updated_at: datetime | None

    @property
    def masked(self) -> str:
        return notify.ChannelInfo(self.service, self.scheme, self.fingerprint).masked


def list_channels(settings: Settings, records: Mapping[str, team_state.Record] | None = None) -> list[Channel]:
    """The team's channels (names, services, fingerprints)."""
    records = team_state.read_all(settings, "alert-") if records is None else records
    return [Channel(name, str(r.value.get("service", "")), str(r.value.get("scheme", "")),
                    str(r.value.get("fingerprint", "")), str(r.value.get("where", "")), r.updated_by, r.updated_at)
            for name, r in sorted(_live(records, CHANNEL_KEY).items())]


def save_channel(settings: Settings, name: str, url: str, identity: Any, *, replace_existing: bool = False) -> Channel:
    """Add (or, with ``replace_existing``, change) a channel: the URL goes to the secret store, the rest to team state.

    The URL is checked with apprise before anything is stored; a URL apprise does not recognise is refused.
    """
    notify.validate_channel_name(name)
    info = notify.describe_url(url)
    roles.enforce(identity, roles.Action.MANAGE_ALERTS, settings)
    current = team_state.read(CHANNEL_KEY + name, settings)
    if current is not None and not current.value.get("deleted") and not replace_existing:
        raise ConflictError(f"A channel named {name!r} exists; pick another name or replace it. Nothing was saved.")
    store = notify.secret_store(settings)
    store.put(name, url.strip())
    value = {"name": name, "service": info.service, "scheme": info.scheme, "fingerprint": info.fingerprint,
             "where": store.where}
    record = team_state.write(CHANNEL_KEY + name, value, expected_version=current.version if current else 0,
                              user=_user(identity), settings=settings,
                              note=f"alert channel {name}: {info.service} #{info.fingerprint}")
    return Channel(name, info.service, info.scheme, info.fingerprint, store.where, record.updated_by, record.updated_at)


def delete_channel(settings: Settings, name: str, identity: Any) -> None:
    """Delete a channel and its secret (operator role; recorded); refused while a rule uses it."""
    roles.enforce(identity, roles.Action.MANAGE_ALERTS, settings)
    records = team_state.read_all(settings, "alert-")
    current = records.get(CHANNEL_KEY + name)
    if current is None or current.value.get("deleted"):
        raise NotFoundError(f"There is no channel {name!r}.")
    users = [r.name for r in list_rules(settings, records) if name in r.channels]
    if users:
        raise ValidationError(f"Channel {name!r} is used by rule(s) {', '.join(users)}; remove it from them first.")
    team_state.write(CHANNEL_KEY + name, {"name": name, "deleted": True}, expected_version=current.version,
                     user=_user(identity), settings=settings, note=f"deleted alert channel {name}")
    notify.secret_store(settings).delete(name)


def send_test_alert(settings: Settings, channel: str, identity: Any, *, attempts: int = 3,
                    backoff_s: float = 1.0) -> Delivery:
    """Send a test notification to one channel now (operator role); recorded in the delivery history."""
    roles.enforce(identity, roles.Action.MANAGE_ALERTS, settings)
    records = team_state.read_all(settings, "alert-")
    if CHANNEL_KEY + channel not in {CHANNEL_KEY + n for n in _live(records, CHANNEL_KEY)}:
        raise NotFoundError(f"There is no channel {channel!r}.")
    who = _user(identity)
    result = _send(settings, channel, f"[TEST] Agent Ops Console alert channel {channel}",
                   f"A test alert sent by {who}. If you read this, alerts reach this channel.", Kind.TEST,
                   attempts=attempts, backoff_s=backoff_s)
    _log_deliveries(settings, [_entry(channel, Kind.TEST, result, rule="", incident="", by=who)])
    return result


# --- measuring ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    value: float | None
    sample: int
    note: str = ""


def _experiments(rule: AlertRule, settings: Settings) -> list[str]:
    ids = list(settings.experiment_ids)
    if rule.agent:
        try:
            _, found = registry.agent_links(rule.agent, settings)
        except (NotFoundError, ValidationError):
            found = []
        ids += [e for e in found if e not in ids]
    else:
        for agent in registry.list_agents(settings):
            for e in agent.experiment_ids or ((agent.experiment_id,) if agent.experiment_id else ()):
                if e not in ids:
                    ids.append(e)
    return ids


def _query(rule: AlertRule, settings: Settings, now: datetime) -> monitoring.TraceQuery:
    return monitoring.TraceQuery(tuple(_experiments(rule, settings)), now - timedelta(minutes=rule.window_minutes),
                                 now, agent=rule.agent, version=rule.version, endpoint=rule.endpoint, arm=rule.arm)


def measure(rule: AlertRule, settings: Settings, now: datetime | None = None) -> Measurement:
    """The rule's measure over its window ending at ``now``, and the sample it rests on."""
    now = now or datetime.now(tz=UTC)
    query = _query(rule, settings, now)
    if not query.experiment_ids:
        return Measurement(None, 0, "no experiment holds traces for this scope")
    if rule.measure.needs_assessment:
        return _assessment_measure(rule, query, settings)
    from services import pricing

    data = monitoring.monitoring_data(query, prices=pricing.load_prices(settings), settings=settings,
                                      warehouse=monitoring.warehouse_for(settings))
    totals = data.totals.iloc[0]
    requests = int(totals["requests"])
    column = {Measure.ERROR_RATE: "error_rate", Measure.P95_LATENCY: "p95_ms",
              Measure.COST_PER_REQUEST: "cost_per_request"}[rule.measure]
    value = totals[column]
    value = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    return Measurement(value, requests)


def _q(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _filter_sets(rule: AlertRule, query: monitoring.TraceQuery, settings: Settings) -> list[list[str]]:
    base = [f"trace.timestamp_ms >= {query.start_ms}", f"trace.timestamp_ms < {query.end_ms}"]
    base += [f"tag.`{k}` = '{_q(v)}'" for k, v in ((ENDPOINT_TAG, rule.endpoint), (ARM_TAG, rule.arm)) if v]
    if not rule.agent:
        return [base]
    links = monitoring.attribution(rule.agent, settings)
    model_ids = links.model_ids(agent=rule.agent, version=rule.version)
    if model_ids:
        return [base + [f"metadata.`mlflow.modelId` = '{_q(m)}'"] for m in model_ids]
    legacy = [f"tag.`{AGENT_TAG}` = '{_q(rule.agent)}'"]
    if rule.version:
        legacy.append(f"tag.`{VERSION_TAG}` = '{_q(rule.version)}'")
    return [base + legacy]


def _assessment_measure(rule: AlertRule, query: monitoring.TraceQuery, settings: Settings) -> Measurement:
    """Pass or thumbs-down share among the window's traces carrying the named assessment (newest value each)."""
    judge = parse_criterion(rule.pass_criterion) if rule.measure is Measure.SCORER_PASS_RATE else is_thumbs_down
    client = mlflow_client(settings)
    seen: set[str] = set()
    hits = sample = 0
    truncated = False
    with translate_errors("trace search"):
        for filters in _filter_sets(rule, query, settings):
            token = None
            while True:
                page = client.search_traces(locations=list(query.experiment_ids), filter_string=" AND ".join(filters),
                                            max_results=500, page_token=token, include_spans=False,
                                            order_by=["timestamp_ms DESC"])
                for trace in page:
                    info = trace.info
                    if info.trace_id in seen:
                        continue
                    seen.add(info.trace_id)
                    found = [a for a in (info.assessments or []) if a.name == rule.assessment
                             and getattr(a, "feedback", None) is not None and a.valid is not False
                             and getattr(a.feedback, "error", None) is None]
                    if not found:
                        continue
                    latest = max(found, key=lambda a: a.last_update_time_ms or a.create_time_ms or 0)
                    sample += 1
                    hits += bool(judge(latest.feedback.value))
                token = page.token
                if not token or len(seen) >= MAX_SCANNED_TRACES:
                    truncated = truncated or bool(token)
                    break
    note = f"newest {MAX_SCANNED_TRACES:,} traces of the window read" if truncated else ""
    return Measurement(hits / sample if sample else None, sample, note)


def breached(rule: AlertRule, value: float) -> bool:
    return value < rule.threshold if rule.measure.fires_below else value > rule.threshold


# --- evaluating --------------------------------------------------------------------------------


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
    shown = f"{rule.measure.format(m.value)} over {m.sample} {'assessed traces' if rule.measure.needs_assessment else 'requests'}"
    if not enough:
        message = f"{shown}: below the minimum sample of {rule.min_sample}, not judged"
    else:
        message = f"{shown} ({'breach' if desired == 'firing' else 'within'}: {rule.condition})"
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
             f"{rule.measure.format(m.value)} ({rule.scope})")
    body = (f"Rule {rule.name} — {rule.condition}.\nScope: {rule.scope}.\nNow: {message}.\n"
            f"Incident {claim.get('incident', '')}, firing since {claim.get('since', '')}.")
    done = list(claim.get("done") or [])
    entries, sent, failed = [], [], []
    for channel in rule.channels:
        if channel in done:
            continue
        result = _send(settings, channel, title, body, kind, attempts=attempts, backoff_s=backoff_s)
        entries.append(_entry(channel, kind, result, rule=rule.name, incident=str(claim.get("incident", "")),
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
    _log_deliveries(settings, entries)
    return RuleOutcome(rule.name, state, m.value, m.sample, message, tuple(sent), tuple(failed))


def _send(settings: Settings, channel: str, title: str, body: str, kind: str, *, attempts: int,
          backoff_s: float) -> Delivery:
    try:
        url = notify.secret_store(settings).get(channel)
    except AgentOpsError as exc:
        return Delivery(False, 0, f"the channel URL cannot be read: {exc}")
    return notify.deliver(url, title, body, kind, attempts=attempts, backoff_s=backoff_s)


# --- history -----------------------------------------------------------------------------------


def _entry(channel: str, kind: str, result: Delivery, *, rule: str, incident: str, by: str,
           value: float | None = None, sample: int | None = None) -> dict[str, Any]:
    return {"at": datetime.now(tz=UTC).isoformat(), "rule": rule, "incident": incident, "kind": kind,
            "channel": channel, "ok": result.ok, "attempts": result.attempts, "error": notify.redact(result.error),
            "value": value, "sample": sample, "by": by}


def _log_deliveries(settings: Settings, entries: Iterable[dict[str, Any]]) -> None:
    entries = list(entries)
    if not entries:
        return
    for _ in range(5):
        try:
            team_state.update(DELIVERIES_KEY, lambda v: {"entries": (list((v or {}).get("entries", [])) + entries)[-HISTORY_SIZE:]},
                              user=EVALUATOR, settings=settings, default={"entries": []},
                              note=f"{len(entries)} alert delivery record(s)")
            return
        except ConflictError:
            continue
    _logger.warning("alert delivery history not updated after 5 conflicting writes")


def delivery_history(settings: Settings) -> list[dict[str, Any]]:
    """What was sent, newest first: time, rule, incident, kind, channel, outcome, attempts, error (no URLs)."""
    record = team_state.read(DELIVERIES_KEY, settings)
    return list(reversed((record.value or {}).get("entries", []))) if record else []


def incidents(settings: Settings) -> list[dict[str, Any]]:
    """Each rule's incident state: status, incident id, since, the notification still owed."""
    return list(snapshot(settings).incidents)


def change_history(settings: Settings, limit: int = 50) -> list[dict[str, Any]]:
    """Who changed which rule or channel, newest first."""
    return [h for h in team_state.history(settings, limit=limit * 3)
            if str(h.get("key", "")).startswith((RULE_KEY, CHANNEL_KEY))][:limit]


def _user(identity: Any) -> str:
    return getattr(identity, "user", None) or "unknown"


def rule_from_form(**values: Any) -> AlertRule:
    """A rule from a page's widgets (empty texts mean "not set"); ``ValidationError`` when invalid."""
    return validate_rule({k: v for k, v in values.items()})


def with_channels(rule: AlertRule, channels: Iterable[str]) -> AlertRule:
    return replace(rule, channels=tuple(channels))


@dataclass(frozen=True)
class AlertSnapshot:
    """Rules, channels and incidents as one read of the team state (what the Alerts page shows)."""

    rules: tuple[AlertRule, ...]
    channels: tuple[Channel, ...]
    incidents: tuple[dict[str, Any], ...]
    rule_versions: Mapping[str, int]
    secrets_where: str


def snapshot(settings: Settings) -> AlertSnapshot:
    """The team's alert configuration and incident states, read once."""
    records = team_state.read_all(settings, "alert-")
    found = []
    for key, record in sorted(records.items()):
        if key.startswith(INCIDENT_KEY):
            value = record.value or {}
            found.append({"rule": key[len(INCIDENT_KEY):], "status": value.get("status"),
                          "incident": value.get("incident"), "since": value.get("since"),
                          "resolved_at": value.get("resolved_at"), "owed": value.get("pending"),
                          "value": value.get("value"), "sample": value.get("sample")})
    try:
        where = notify.secret_store(settings).where
    except AgentOpsError as exc:
        where = f"not available: {exc}"
    return AlertSnapshot(tuple(list_rules(settings, records)), tuple(list_channels(settings, records)), tuple(found),
                         {k[len(RULE_KEY):]: r.version for k, r in records.items() if k.startswith(RULE_KEY)}, where)


NOTICE_KEY = "alert-notice:"


def notify_channels(settings: Settings, title: str, body: str, *, key: str, channels: Iterable[str] | None = None,
                    by: str = EVALUATOR, attempts: int = 3, backoff_s: float = 1.0) -> list[Delivery]:
    """Send a one-off notice (e.g. a rollout step) to ``channels`` (all channels when None), once per ``key``.

    The key is claimed in team state before anything is sent, so a second caller or a restarted worker with
    the same key sends nothing (returns ``[]``). Deliveries are recorded in the delivery history.
    """
    if not isinstance(key, str) or not key.strip() or len(key) > 500:
        raise ValidationError("A notice needs a key (what makes it unique), at most 500 characters.")
    import hashlib

    records = team_state.read_all(settings, "alert-")
    names = [c.name for c in list_channels(settings, records)] if channels is None else list(channels)
    slug = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    try:
        team_state.write(NOTICE_KEY + slug, {"key": key[:200], "title": title[:200], "channels": names},
                         expected_version=0, user=by, settings=settings, note=f"notice {title[:200]}")
    except ConflictError:
        return []  # sent (or being sent) by someone else
    results, entries = [], []
    for name in names:
        result = _send(settings, name, title, body, Kind.NOTICE, attempts=attempts,
                       backoff_s=backoff_s)
        results.append(result)
        entries.append(_entry(name, Kind.NOTICE, result, rule="", incident=key[:200], by=by))
    _log_deliveries(settings, entries)
    return results
