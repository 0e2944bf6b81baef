"""Alert thresholds per agent and the health checks they drive on the Monitoring page.

These thresholds colour the Monitoring page for whoever opens it. Rules that page people (evaluated
by the background worker over a window with a minimum sample, delivered through apprise, one firing
and one resolved notification per incident) are ``services.alerting``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Mapping

from services import _mlflow_internal as internal
from services import roles, team_state
from services._clients import mlflow_client, translate_errors
from services.alerting.rules import apart
from services.errors import ConflictError, ValidationError
from services.monitoring import (
    MetricRunner,
    Split,
    TraceQuery,
    attribution,
    choose_interval,
    linked_window,
    metric_filters,
    monitoring_data,
    needs_attribution,
    other_tags,
    validate_query,
)
from services.pricing import ModelPrice
from services.settings import Backend, Settings
from services.traces import model_filter, tag_filter

_logger = logging.getLogger(__name__)

THRESHOLDS_FILE = "alert_thresholds.json"


@dataclass(frozen=True)
class AlertThresholds:
    """Per-agent alert thresholds; ``None`` switches a check off."""

    p95_latency_ms: float | None = 5000.0
    error_rate: float | None = 0.05
    daily_cost: float | None = 10.0
    min_feedback_score: float | None = 0.6
    feedback_name: str = "thumbs_up"


def _threshold_number(name: str, value: Any) -> float | None:
    """``value`` as a float, or ``ValidationError`` naming the field when it is not a finite number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"{name} must be a number or empty to switch the check off (got {value!r}).")
    if not math.isfinite(value):
        raise ValidationError(f"{name} must be a finite number (got {value}).")
    return float(value)


def validate_thresholds(thresholds: AlertThresholds) -> AlertThresholds:
    """Check types and ranges; raise ``ValidationError`` naming the bad field."""
    if not isinstance(thresholds, AlertThresholds):
        raise ValidationError(f"Alert thresholds must be AlertThresholds (got {type(thresholds).__name__}).")
    values = {name: _threshold_number(name, getattr(thresholds, name))
              for name in ("p95_latency_ms", "error_rate", "daily_cost", "min_feedback_score")}
    for name in ("p95_latency_ms", "daily_cost"):
        if values[name] is not None and values[name] < 0:
            raise ValidationError(f"{name} must be zero or more (got {values[name]}).")
    if values["error_rate"] is not None and not 0 <= values["error_rate"] <= 1:
        raise ValidationError(f"error_rate is a share between 0 and 1 (got {values['error_rate']}).")
    name = thresholds.feedback_name
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "\"`\n\r") or len(name) > 250:
        raise ValidationError(f"feedback_name {name!r} is not a valid assessment name.")
    return thresholds


def validate_threshold_key(agent: Any) -> str:
    """The agent a threshold set belongs to: ``"*"`` (the default) or a registered-model name."""
    if (not isinstance(agent, str) or not agent or agent != agent.strip() or len(agent) > 256
            or any(not c.isprintable() or c in "`" for c in agent)):
        raise ValidationError(f"{agent!r} is not an agent name; pick an agent, or \"*\" for the default.")
    return agent


THRESHOLDS_KEY = "thresholds:"


def _parse_threshold_file(path: Any) -> dict[str, dict[str, Any]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        loaded = {validate_threshold_key(agent): validate_thresholds(AlertThresholds(**values))
                  for agent, values in raw.items()}
    except (OSError, json.JSONDecodeError, TypeError, AttributeError, ValidationError) as exc:
        raise ValidationError(f"Alert thresholds in {path} cannot be read ({exc}); fix or delete the file.") from None
    return {agent: asdict(t) for agent, t in loaded.items()}


def load_thresholds(settings: Settings) -> dict[str, AlertThresholds]:
    """Saved thresholds per agent (key ``"*"`` holds the default for agents without their own).

    They are team state in the tracking store (``services.team_state``, one record per agent), so a
    teammate's app and a CI runner's ``agentops gate`` see the same ones; an embedded store's former
    ``alert_thresholds.json`` is migrated once.
    """

    records = team_state.read_all(settings, THRESHOLDS_KEY)
    if not records:
        path = settings.data_dir / THRESHOLDS_FILE
        if settings.backend is Backend.LOCAL and path.exists():
            for agent, values in _parse_threshold_file(path).items():
                try:
                    team_state.write(THRESHOLDS_KEY + agent, values, expected_version=0, user=team_state.MIGRATED_BY,
                                     settings=settings, note=f"migrated from {path}")
                except ConflictError:
                    pass  # another process migrated it first
            records = team_state.read_all(settings, THRESHOLDS_KEY)
    loaded: dict[str, AlertThresholds] = {}
    for key, record in records.items():
        try:
            loaded[key[len(THRESHOLDS_KEY):]] = validate_thresholds(AlertThresholds(**record.value))
        except (TypeError, ValidationError) as exc:
            raise ValidationError(f"The stored alert thresholds {key!r} cannot be read ({exc}); save them again.") from None
    loaded.setdefault("*", AlertThresholds())
    return loaded


def threshold_versions(settings: Settings) -> dict[str, int]:
    """The stored version of each agent's thresholds (0: never saved), for a conflict-checked save."""

    return {k[len(THRESHOLDS_KEY):]: r.version for k, r in team_state.read_all(settings, THRESHOLDS_KEY).items()}


def save_thresholds(settings: Settings, agent: str, thresholds: AlertThresholds,
                    identity: Any = None, *, expected_version: int | None = None) -> dict[str, AlertThresholds]:
    """Store one agent's thresholds (``"*"`` for the default) with the team's data.

    With ``identity`` (pages should pass it), editing thresholds needs the admin role, like other settings.
    With ``expected_version`` (the version the editor loaded, 0 if none), a concurrent save by someone
    else gives ``ConflictError`` instead of being overwritten.
    """

    validate_threshold_key(agent)
    validate_thresholds(thresholds)
    if identity is not None:
        roles.enforce(identity, roles.Action.EDIT_RULES, settings)
    load_thresholds(settings)  # migrates a former file first, so the save lands on top of it
    key = THRESHOLDS_KEY + agent
    if expected_version is None:
        current = team_state.read(key, settings)
        expected_version = current.version if current else 0
    team_state.write(key, asdict(thresholds), expected_version=expected_version,
                     user=getattr(identity, "user", None) or "unknown", settings=settings,
                     note=f"alert thresholds of {agent}")
    return load_thresholds(settings)


def thresholds_for(all_thresholds: Mapping[str, AlertThresholds], agent: str) -> AlertThresholds:
    return all_thresholds.get(agent) or all_thresholds.get("*") or AlertThresholds()


@dataclass(frozen=True)
class AgentHealth:
    """An agent's figures over a window, the values alerts are checked against."""

    agent: str
    requests: int
    error_rate: float | None
    p95_latency_ms: float | None
    cost_last_24h: float
    feedback_score: float | None
    feedback_count: int


@dataclass(frozen=True)
class Alert:
    agent: str
    check: str  # "p95 latency", "error rate", "daily cost", "feedback score"
    value: float
    threshold: float
    message: str


def agent_health(query: TraceQuery, *, feedback_name: str = "thumbs_up",
                 prices: Mapping[str, ModelPrice] | None = None, settings: Settings | None = None) -> AgentHealth:
    """Requests, error rate, p95, cost over the last 24 h of the window and mean feedback, for ``query.agent``."""
    validate_query(query)
    if not query.agent:
        raise ValidationError("Agent health needs an agent.")
    day = TraceQuery(**{**query.__dict__, "start": max(query.start, query.end - timedelta(days=1))})
    last_day = monitoring_data(day, prices=prices, settings=settings).totals.iloc[0]
    requests, errors, p95 = 0, 0, None
    score, count = None, 0
    if query.experiment_ids:
        client = mlflow_client(settings)
        # The whole window needs no cost, so no model mix: one statement on a SQL store.
        window = dict(start_ms=query.start_ms, end_ms=query.end_ms,
                      interval_seconds=choose_interval(query.start, query.end), tag_equals=query.tag_equalities(),
                      status=query.status.value if query.status else None)
        with translate_errors("trace metrics"):
            whole = internal.aggregate_traces(client, list(query.experiment_ids), with_models=False,
                                              **linked_window(query, Split.NONE, [], window, settings))
        total = next((r for r in whole.rows if r.bucket_ms is None), None)
        if total is not None:
            requests, errors, p95 = total.requests, total.errors, total.p95_ms
        score, count = _feedback_score(client, query, feedback_name, settings)
    return AgentHealth(
        agent=query.agent,
        requests=requests,
        error_rate=errors / requests if requests else None,
        p95_latency_ms=p95,
        cost_last_24h=float(last_day["cost"]),
        feedback_score=score,
        feedback_count=count,
    )


def _feedback_score(client: Any, query: TraceQuery, feedback_name: str,
                    settings: Settings | None) -> tuple[float | None, int]:
    """Mean and count of one assessment on the query's traces, linked by model id where known.

    Assessment metrics filter with AND only: one query pair per model id with traffic in the
    window (the legacy agent/version tags when no model id of the agent has any), combined.
    """
    name = f'assessment.name = "{feedback_name}"'
    base = [tag_filter(k, v) for k, v in other_tags(query).items()]
    if query.status:
        base.append(f'trace.status = "{query.status.value}"')
    filter_sets = [metric_filters(query) + [name]]
    if needs_attribution(query):
        attribution_ = attribution(query.agent, settings)
        wanted = set(attribution_.model_ids(agent=query.agent, version=query.version, alias=query.alias))
        if wanted:
            with translate_errors("trace search"):
                active = set(internal.trace_model_ids(client, list(query.experiment_ids), start_ms=query.start_ms,
                                                      end_ms=query.end_ms))
            if wanted & active:
                filter_sets = [base + [model_filter(m), name] for m in sorted(wanted & active)]
    jobs: dict[Any, dict[str, Any]] = {}
    for i, filters in enumerate(filter_sets):
        jobs[(i, "avg")] = dict(metric="assessment_value", aggs=["AVG"], view_type="ASSESSMENTS", filters=filters)
        jobs[(i, "count")] = dict(metric="assessment_count", aggs=["COUNT"], view_type="ASSESSMENTS", filters=filters)
    with translate_errors("assessment metrics"):
        res = MetricRunner(client, query).run(jobs)
    total, weighted = 0, 0.0
    for i in range(len(filter_sets)):
        n = int(res[(i, "count")][0].values.get("COUNT", 0)) if res[(i, "count")] else 0
        mean = res[(i, "avg")][0].values.get("AVG") if res[(i, "avg")] else None
        if n and mean is not None:
            total += n
            weighted += float(mean) * n
    return (weighted / total if total else None), total


def check_alerts(health: AgentHealth, thresholds: AlertThresholds) -> list[Alert]:
    """The thresholds an agent's figures cross (nothing is checked without traffic)."""
    alerts: list[Alert] = []
    if not health.requests:
        return alerts
    t = thresholds
    if t.p95_latency_ms is not None and health.p95_latency_ms is not None and health.p95_latency_ms > t.p95_latency_ms:
        seen, limit = apart(health.p95_latency_ms, t.p95_latency_ms, digits=0)
        alerts.append(Alert(health.agent, "p95 latency", health.p95_latency_ms, t.p95_latency_ms,
                            f"p95 latency {seen} ms is above {limit} ms"))
    if t.error_rate is not None and health.error_rate is not None and health.error_rate > t.error_rate:
        seen, limit = apart(health.error_rate * 100, t.error_rate * 100, digits=1)
        alerts.append(Alert(health.agent, "error rate", health.error_rate, t.error_rate,
                            f"error rate {seen}% is above {limit}%"))
    if t.daily_cost is not None and health.cost_last_24h > t.daily_cost:
        seen, limit = apart(health.cost_last_24h, t.daily_cost, digits=2)
        alerts.append(Alert(health.agent, "daily cost", health.cost_last_24h, t.daily_cost,
                            f"cost over the last 24 h ${seen} is above ${limit}"))
    if (t.min_feedback_score is not None and health.feedback_score is not None
            and health.feedback_score < t.min_feedback_score):
        seen, limit = apart(health.feedback_score, t.min_feedback_score, digits=2)
        alerts.append(Alert(health.agent, "feedback score", health.feedback_score, t.min_feedback_score,
                            f"mean {t.feedback_name} {seen} is below {limit} ({health.feedback_count} assessments)"))
    return alerts


