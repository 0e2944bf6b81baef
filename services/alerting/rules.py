"""Alert rules: the measures they watch, their validation, and storing them as team state (who and when is
kept in the state history)."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from enum import StrEnum
from typing import Any

from services import notify, roles, team_state
from services.errors import ConflictError, NotFoundError, ValidationError
from services.settings import Settings

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

    def format(self, value: float | None, against: float | None = None) -> str:
        """``value`` as shown; next to ``against`` (a threshold, or the value it is checked against) with as
        many more decimals as it takes for the two to read differently."""
        if _missing(value):
            return "n/a"
        scale, digits, before, after = {Measure.P95_LATENCY: (1, 0, "", " ms"),
                                        Measure.COST_PER_REQUEST: (1, 4, "$", "")}.get(self, (100, 1, "", "%"))
        if _missing(against):
            return f"{before}{value * scale:,.{digits}f}{after}"
        return before + apart(value * scale, against * scale, digits=digits)[0] + after


def apart(value: float, limit: float, *, digits: int) -> tuple[str, str]:
    """``value`` and ``limit`` written with ``digits`` decimals, or with as many more (up to 6) as it takes to
    tell them apart: an alert never reads "0.60 is below 0.60"."""
    for places in range(digits, 7):
        written = f"{value:,.{places}f}", f"{limit:,.{places}f}"
        if written[0] != written[1]:
            break
    return written


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


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
        return self.condition_against(None)

    def condition_against(self, value: float | None) -> str:
        """The condition, its threshold written apart from ``value`` (the measured figure shown beside it)."""
        what = self.measure.label + (f" of {self.assessment}" if self.measure.needs_assessment else "")
        side = "below" if self.measure.fires_below else "above"
        return (f"{what} {side} {self.measure.format(self.threshold, value)} over {self.window_minutes} min "
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
    if not isinstance(channels, (list, tuple)) or not all(isinstance(c, str) for c in channels):
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


def live_records(records: Mapping[str, team_state.Record], prefix: str) -> dict[str, team_state.Record]:
    return {k[len(prefix):]: r for k, r in records.items()
            if k.startswith(prefix) and isinstance(r.value, dict) and not r.value.get("deleted")}


def list_rules(settings: Settings, records: Mapping[str, team_state.Record] | None = None) -> list[AlertRule]:
    """The team's alert rules, by name (a stored rule that no longer validates is skipped, with a warning)."""
    records = team_state.read_all(settings, "alert-") if records is None else records
    rules = []
    for name, record in sorted(live_records(records, RULE_KEY).items()):
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
    known = live_records(records, CHANNEL_KEY)
    missing = [c for c in rule.channels if c not in known]
    if missing:
        raise ValidationError(f"No channel named {', '.join(map(repr, missing))}; add the channel first. Nothing was saved.")
    current = records.get(RULE_KEY + rule.name)
    if expected_version is None:
        expected_version = current.version if current else 0
    team_state.write(RULE_KEY + rule.name, rule.to_record(), expected_version=expected_version,
                     user=user_of(identity), settings=settings, note=f"alert rule {rule.name}: {rule.condition}")
    return rule


def delete_rule(settings: Settings, name: str, identity: Any) -> None:
    """Delete a rule (operator role; recorded). Its open incident closes without a notification."""
    records = delete_record(settings, RULE_KEY, name, identity, "alert rule")
    incident = records.get(INCIDENT_KEY + name)
    if incident is not None and incident.value.get("status") == "firing":
        try:
            team_state.write(INCIDENT_KEY + name, {**incident.value, "status": "ok", "pending": None, "lease_until": None,
                                                   "closed": "rule deleted"},
                             expected_version=incident.version, user=user_of(identity), settings=settings,
                             note=f"incident closed: rule {name} deleted")
        except ConflictError:
            pass



def delete_record(settings: Settings, key: str, name: str, identity: Any, what: str,
                  check: Callable[[Mapping[str, Any]], None] | None = None) -> dict[str, Any]:
    """Mark the ``what`` called ``name`` (record ``key + name``) deleted (operator role; recorded).

    ``check(records)`` may refuse first. Returns the alert records as read before the delete.
    """
    roles.enforce(identity, roles.Action.MANAGE_ALERTS, settings)
    records = team_state.read_all(settings, "alert-")
    current = records.get(key + name)
    if current is None or current.value.get("deleted"):
        raise NotFoundError(f"There is no {what} {name!r}.")
    if check is not None:
        check(records)
    team_state.write(key + name, {"name": name, "deleted": True}, expected_version=current.version,
                     user=user_of(identity), settings=settings, note=f"deleted {what} {name}")
    return records


def user_of(identity: Any) -> str:
    return getattr(identity, "user", None) or "unknown"


def rule_from_form(**values: Any) -> AlertRule:
    """A rule from a page's widgets (empty texts mean "not set"); ``ValidationError`` when invalid."""
    return validate_rule({k: v for k, v in values.items()})


def with_channels(rule: AlertRule, channels: Iterable[str]) -> AlertRule:
    return replace(rule, channels=tuple(channels))
