"""Audit records of traffic-split changes, in the same audit experiment as alias changes.

Like alias changes (``services.audit``), a change made through ``serving.apply_split`` is written
in two steps: an *intent* (run RUNNING, state ``intent``, the request id, the split asked for)
before the endpoint is touched, then the *completion* (the split observed afterwards, state
``done``, in one ``log_batch``). An intent never completed reads back as interrupted; a retry with
the same request id finds it (``find_traffic_change``) and completes it instead of changing twice.
An intent the backend definitely refused is closed and deleted, so it never reads back.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from services.audit import REQUEST_TAG, STATE_TAG, audit_experiment_id, quote, run_tag
from services._clients import get_settings, mlflow_client, translate_errors
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
INTERRUPTED = "interrupted"  # the outcome of an intent that was never completed


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
    request_id: str = ""
    requested: dict[str, int] | None = None  # what the intent asked for; ``after`` is what was observed

    @property
    def completed(self) -> bool:
        return self.outcome != INTERRUPTED


def record_traffic_change(
    endpoint: str, *, action: str, user: str, reason: str, before: dict[str, int], after: dict[str, int],
    outcome: str = "applied", settings: Settings | None = None,
) -> TrafficChange:
    """Write one complete audit run for a split change (who, when, before, after, reason, outcome)."""
    intent = open_traffic_change(endpoint, action=action, user=user, reason=reason, before=before, after=after,
                                 request_id=uuid.uuid4().hex, settings=settings)
    return complete_traffic_change(intent, after, outcome=outcome, settings=settings)


def open_traffic_change(
    endpoint: str, *, action: str, user: str, reason: str, before: dict[str, int], after: dict[str, int],
    request_id: str, settings: Settings | None = None,
) -> TrafficChange:
    """Write the intent of a split change before the endpoint is touched; it reads back as interrupted until completed."""
    if not request_id:
        raise ValueError("a traffic change intent needs a request id")
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
        OUTCOME_TAG: INTERRUPTED,
        AT_NS_TAG: str(at_ns),
        REQUEST_TAG: request_id,
        STATE_TAG: "intent",
        "mlflow.user": user,
    }
    with translate_errors(f"the audit experiment {settings.audit_label!r}"):
        experiment_id = audit_experiment_id(client, settings, create=True)
        run = client.create_run(experiment_id, start_time=at_ns // 1_000_000, tags=tags,
                                run_name=f"{endpoint}: {action} (requested)")
    return _change(run.info.run_id, tags)


def complete_traffic_change(intent: TrafficChange, observed: dict[str, int], *, outcome: str = "applied",
                            settings: Settings | None = None) -> TrafficChange:
    """Complete an intent with the split the endpoint holds afterwards; returns the completed record."""
    settings = settings or get_settings()
    client = mlflow_client(settings)
    done = {AFTER_TAG: json.dumps(observed, sort_keys=True), OUTCOME_TAG: outcome, STATE_TAG: "done",
            "mlflow.runName": f"{intent.endpoint}: {intent.action}"}
    with translate_errors(f"the audit experiment {settings.audit_label!r}"):
        # One batch: the observed split and the done state land together or not at all.
        client.log_batch(intent.run_id, tags=[run_tag(k, v) for k, v in done.items()])
        client.set_terminated(intent.run_id, status="FINISHED")
    return replace(intent, after=dict(observed), outcome=outcome)


def abandon_traffic_change(intent: TrafficChange, why: str, *, settings: Settings | None = None) -> None:
    """Close an intent whose change was definitely not made (refused), and delete it from the trail."""
    settings = settings or get_settings()
    client = mlflow_client(settings)
    with translate_errors(f"the audit experiment {settings.audit_label!r}"):
        client.log_batch(intent.run_id, tags=[run_tag(STATE_TAG, "refused"), run_tag(REASON_TAG + ".refused", why[:7_900])])
        client.set_terminated(intent.run_id, status="FAILED")
        client.delete_run(intent.run_id)


def find_traffic_change(endpoint: str, request_id: str, *, settings: Settings | None = None) -> TrafficChange | None:
    """The record (completed or interrupted) written for ``request_id`` on ``endpoint``, if any."""
    found = _search(settings, [f"tags.`{ENDPOINT_TAG}` = '{quote(endpoint)}'", f"tags.`{REQUEST_TAG}` = '{quote(request_id)}'"])
    return found[0] if found else None


def traffic_changes(endpoint: str | None = None, *, settings: Settings | None = None, limit: int = 200) -> list[TrafficChange]:
    """Recorded split changes, newest first (optionally of one endpoint); interrupted intents included."""
    return _search(settings, [f"tags.`{ENDPOINT_TAG}` = '{quote(endpoint)}'"] if endpoint else [], limit=limit)


def _search(settings: Settings | None, extra: list[str], *, limit: int = 200) -> list[TrafficChange]:
    settings = settings or get_settings()
    client = mlflow_client(settings)
    with translate_errors("the audit trail"):
        experiment_id = audit_experiment_id(client, settings, create=False)
        if experiment_id is None:
            return []
        clauses = [f"tags.`{KIND_TAG}` = '{TRAFFIC_KIND}'", *extra]
        runs = client.search_runs([experiment_id], " AND ".join(clauses), max_results=limit,
                                  order_by=["attributes.start_time DESC"])
    changes = [_change(r.info.run_id, r.data.tags) for r in runs]
    return sorted(changes, key=lambda c: c.at, reverse=True)


def _change(run_id: str, tags: dict[str, str]) -> TrafficChange:
    at_ns = int(tags.get(AT_NS_TAG) or 0)
    state = tags.get(STATE_TAG)
    after = json.loads(tags.get(AFTER_TAG) or "{}")
    return TrafficChange(
        run_id=run_id,
        endpoint=tags.get(ENDPOINT_TAG, ""),
        action=tags.get(ACTION_TAG, ""),
        user=tags.get(USER_TAG, ""),
        reason=tags.get(REASON_TAG, ""),
        before=json.loads(tags.get(BEFORE_TAG) or "{}"),
        after=after,
        outcome=INTERRUPTED if state == "intent" else tags.get(OUTCOME_TAG, ""),
        at=datetime.fromtimestamp(at_ns / 1e9, tz=timezone.utc),
        request_id=tags.get(REQUEST_TAG, ""),
        requested=after if state == "intent" else None,
    )
