"""Audit records of traffic-split changes, in the same audit experiment as alias changes."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from services._clients import get_or_create_experiment, get_settings, mlflow_client, translate_errors
from services.settings import Settings

_PREFIX = "agentops.audit."
KIND_TAG = _PREFIX + "kind"  # same key as services.audit, so one trail holds both kinds
TRAFFIC_KIND = "traffic_change"
ENDPOINT_TAG = _PREFIX + "endpoint"
ACTION_TAG = _PREFIX + "action"
USER_TAG = _PREFIX + "user"
REASON_TAG = _PREFIX + "reason"
BEFORE_TAG = _PREFIX + "before"
AFTER_TAG = _PREFIX + "after"
OUTCOME_TAG = _PREFIX + "outcome"
AT_NS_TAG = _PREFIX + "at_ns"


@dataclass(frozen=True)
class TrafficChange:
    run_id: str
    endpoint: str
    action: str
    user: str
    reason: str
    before: dict[str, int]
    after: dict[str, int]
    outcome: str
    at: datetime


def record_traffic_change(
    endpoint: str, *, action: str, user: str, reason: str, before: dict[str, int], after: dict[str, int],
    outcome: str = "applied", settings: Settings | None = None,
) -> TrafficChange:
    """Write one audit run for a split change (who, when, before, after, reason, outcome)."""
    settings = settings or get_settings()
    client = mlflow_client(settings)
    at_ns = time.time_ns()
    tags = {
        KIND_TAG: TRAFFIC_KIND,
        ENDPOINT_TAG: endpoint,
        ACTION_TAG: action,
        USER_TAG: user,
        REASON_TAG: reason[:7_900],
        BEFORE_TAG: json.dumps(before, sort_keys=True),
        AFTER_TAG: json.dumps(after, sort_keys=True),
        OUTCOME_TAG: outcome,
        AT_NS_TAG: str(at_ns),
        "mlflow.user": user,
    }
    with translate_errors(f"the audit experiment {settings.audit_experiment!r}"):
        experiment_id = get_or_create_experiment(client, settings.audit_experiment, settings)
        run = client.create_run(experiment_id, start_time=at_ns // 1_000_000, tags=tags,
                                run_name=f"{endpoint}: {action}")
        client.set_terminated(run.info.run_id, status="FINISHED")
    return _change(run.info.run_id, tags)


def traffic_changes(endpoint: str | None = None, *, settings: Settings | None = None, limit: int = 200) -> list[TrafficChange]:
    """Recorded split changes, newest first (optionally of one endpoint)."""
    settings = settings or get_settings()
    client = mlflow_client(settings)
    with translate_errors("the audit trail"):
        experiment = client.get_experiment_by_name(settings.audit_experiment)
        if experiment is None:
            return []
        clauses = [f"tags.`{KIND_TAG}` = '{TRAFFIC_KIND}'"]
        if endpoint:
            clauses.append(f"tags.`{ENDPOINT_TAG}` = '{endpoint.replace(chr(39), chr(92) + chr(39))}'")
        runs = client.search_runs([experiment.experiment_id], " AND ".join(clauses), max_results=limit,
                                  order_by=["attributes.start_time DESC"])
    changes = [_change(r.info.run_id, r.data.tags) for r in runs]
    return sorted(changes, key=lambda c: c.at, reverse=True)


def _change(run_id: str, tags: dict[str, str]) -> TrafficChange:
    at_ns = int(tags.get(AT_NS_TAG) or 0)
    return TrafficChange(
        run_id=run_id,
        endpoint=tags.get(ENDPOINT_TAG, ""),
        action=tags.get(ACTION_TAG, ""),
        user=tags.get(USER_TAG, ""),
        reason=tags.get(REASON_TAG, ""),
        before=json.loads(tags.get(BEFORE_TAG) or "{}"),
        after=json.loads(tags.get(AFTER_TAG) or "{}"),
        outcome=tags.get(OUTCOME_TAG, ""),
        at=datetime.fromtimestamp(at_ns / 1e9, tz=timezone.utc),
    )
