"""Measuring a rule: its measure over its window of traffic, and the sample it rests on."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services import monitoring, pricing, registry
from services._clients import mlflow_client, translate_errors
from services.alerting.rules import (
    MAX_SCANNED_TRACES,
    AlertRule,
    Measure,
    is_thumbs_down,
    parse_criterion,
)
from services.errors import NotFoundError, ValidationError
from services.settings import Settings
from services.traces import AGENT_TAG, ARM_TAG, ENDPOINT_TAG, VERSION_TAG
from services.filter_strings import escape


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
    data = monitoring.monitoring_data(query, prices=pricing.load_prices(settings), settings=settings,
                                      warehouse=monitoring.warehouse_for(settings))
    totals = data.totals.iloc[0]
    requests = int(totals["requests"])
    column = {Measure.ERROR_RATE: "error_rate", Measure.P95_LATENCY: "p95_ms",
              Measure.COST_PER_REQUEST: "cost_per_request"}[rule.measure]
    value = totals[column]
    value = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    return Measurement(value, requests)


def _filter_sets(rule: AlertRule, query: monitoring.TraceQuery, settings: Settings) -> list[list[str]]:
    base = [f"trace.timestamp_ms >= {query.start_ms}", f"trace.timestamp_ms < {query.end_ms}"]
    base += [f"tag.`{k}` = '{escape(v)}'" for k, v in ((ENDPOINT_TAG, rule.endpoint), (ARM_TAG, rule.arm)) if v]
    if not rule.agent:
        return [base]
    links = monitoring.attribution(rule.agent, settings)
    model_ids = links.model_ids(agent=rule.agent, version=rule.version)
    if model_ids:
        return [base + [f"metadata.`mlflow.modelId` = '{escape(m)}'"] for m in model_ids]
    legacy = [f"tag.`{AGENT_TAG}` = '{escape(rule.agent)}'"]
    if rule.version:
        legacy.append(f"tag.`{VERSION_TAG}` = '{escape(rule.version)}'")
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
