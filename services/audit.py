"""Audit trail of alias changes, stored as runs in a dedicated MLflow experiment.

One run per change, everything in tags, so the trail needs no extra database and works the
same on a local store, an ``mlflow server`` and Databricks. Reading the trail is one paged
``search_runs``.

A change is written in two steps so that a backend failure between them cannot lose it: an
*intent* (run RUNNING, state ``intent``, a request id, no to-version) before the alias moves,
then the *completion* (to-version observed, state ``done``, in one ``log_batch``) after it.
An intent that was never completed reads back as ``ChangeStatus.INTERRUPTED``; a retry with the
same request id finds it (``find_alias_change``) and completes it instead of changing twice.
An intent the registry definitely refused is closed and deleted, so it never reads back.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from services._clients import get_experiment_by_name, get_or_create_experiment, mlflow_client, translate_errors
from services.settings import Settings

_PREFIX = "agentops.audit."
KIND_TAG = _PREFIX + "kind"
MODEL_TAG = _PREFIX + "model"
ALIAS_TAG = _PREFIX + "alias"
ACTION_TAG = _PREFIX + "action"
FROM_TAG = _PREFIX + "from_version"
TO_TAG = _PREFIX + "to_version"
REQUESTED_TAG = _PREFIX + "requested_version"
USER_TAG = _PREFIX + "user"
REASON_TAG = _PREFIX + "reason"
GATE_TAG = _PREFIX + "gate"
OVERRIDE_TAG = _PREFIX + "override"
EVIDENCE_TAG = _PREFIX + "evidence"
AT_NS_TAG = _PREFIX + "at_ns"
REQUEST_TAG = _PREFIX + "request_id"
STATE_TAG = _PREFIX + "state"  # intent | done | refused; records without it are complete (older trail)
ALIAS_CHANGE_KIND = "alias_change"
# Run tags hold at most 8,000 characters; evidence is a summary, trimmed to fit.
_MAX_TAG = 7_900
_PAGE = 1000
_REQUEST_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class AliasAction(StrEnum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class GateOutcome(StrEnum):
    PASSED = "passed"
    NO_RULES = "no-rules"
    OVERRIDDEN = "overridden"


class ChangeStatus(StrEnum):
    COMPLETED = "completed"
    # The intent was written but never completed: the backend failed mid-change (or it is in flight).
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class AliasChange:
    """One recorded alias move; ``to_version`` is what the registry held right after it."""

    run_id: str
    model: str
    alias: str
    action: AliasAction
    from_version: str | None
    to_version: str | None
    requested_version: str
    user: str
    reason: str
    gate: GateOutcome
    override: bool
    evidence: dict[str, Any]
    at: datetime
    at_ns: int
    request_id: str = ""
    status: ChangeStatus = ChangeStatus.COMPLETED

    @property
    def completed(self) -> bool:
        return self.status is ChangeStatus.COMPLETED


def record_alias_change(
    *,
    model: str,
    alias: str,
    action: AliasAction,
    from_version: str | None,
    to_version: str | None,
    requested_version: str,
    user: str,
    reason: str,
    gate: GateOutcome,
    evidence: dict[str, Any],
    settings: Settings | None = None,
) -> AliasChange:
    """Write one complete audit run for an alias change (intent and completion) and return it."""
    intent = open_alias_change(
        model=model, alias=alias, action=action, from_version=from_version, requested_version=requested_version,
        user=user, reason=reason, gate=gate, evidence=evidence, request_id=uuid.uuid4().hex, settings=settings,
    )
    return complete_alias_change(intent, to_version, settings=settings)


def open_alias_change(
    *,
    model: str,
    alias: str,
    action: AliasAction,
    from_version: str | None,
    requested_version: str,
    user: str,
    reason: str,
    gate: GateOutcome,
    evidence: dict[str, Any],
    request_id: str,
    settings: Settings | None = None,
) -> AliasChange:
    """Write the intent of an alias change (before the alias moves); it reads back as interrupted until completed."""
    if not request_id:
        raise ValueError("an alias change intent needs a request id")
    client = mlflow_client(settings)
    at_ns = time.time_ns()
    evidence_json = json.dumps(evidence, default=str, sort_keys=True)
    if len(evidence_json) > _MAX_TAG:
        evidence_json = json.dumps({"truncated": True, "summary": evidence_json[: _MAX_TAG - 60]})
    tags = {
        KIND_TAG: ALIAS_CHANGE_KIND,
        MODEL_TAG: model,
        ALIAS_TAG: alias,
        ACTION_TAG: action.value,
        FROM_TAG: from_version or "",
        TO_TAG: "",
        REQUESTED_TAG: requested_version,
        USER_TAG: user,
        REASON_TAG: reason[:_MAX_TAG],
        GATE_TAG: gate.value,
        OVERRIDE_TAG: str(gate is GateOutcome.OVERRIDDEN).lower(),
        EVIDENCE_TAG: evidence_json,
        AT_NS_TAG: str(at_ns),
        REQUEST_TAG: request_id,
        STATE_TAG: "intent",
        "mlflow.user": user,
    }
    name = f"{model}@{alias}: v{from_version or '-'} -> v{requested_version} (requested)"
    with translate_errors(f"the audit experiment {_experiment_name(settings)!r}"):
        experiment_id = audit_experiment_id(client, settings, create=True)
        run = client.create_run(experiment_id, start_time=at_ns // 1_000_000, tags=tags, run_name=name)
    return _change(run.info.run_id, tags, at_ns)


def complete_alias_change(intent: AliasChange, to_version: str | None, *,
                          settings: Settings | None = None) -> AliasChange:
    """Complete an intent with the to-version observed in the registry; returns the completed record."""
    client = mlflow_client(settings)
    done = {TO_TAG: to_version or "", STATE_TAG: "done",
            "mlflow.runName": f"{intent.model}@{intent.alias}: v{intent.from_version or '-'} -> v{to_version or '-'}"}
    with translate_errors(f"the audit experiment {_experiment_name(settings)!r}"):
        # One batch: the to-version and the done state land together or not at all.
        client.log_batch(intent.run_id, tags=[run_tag(k, v) for k, v in done.items()])
        client.set_terminated(intent.run_id, status="FINISHED")
    return replace(intent, to_version=to_version or None, status=ChangeStatus.COMPLETED)


def abandon_alias_change(intent: AliasChange, why: str, *, settings: Settings | None = None) -> None:
    """Close an intent whose change was definitely not made (refused), and delete it from the trail."""
    client = mlflow_client(settings)
    with translate_errors(f"the audit experiment {_experiment_name(settings)!r}"):
        client.log_batch(intent.run_id, tags=[run_tag(STATE_TAG, "refused"), run_tag(REASON_TAG + ".refused", why[:_MAX_TAG])])
        client.set_terminated(intent.run_id, status="FAILED")
        client.delete_run(intent.run_id)


def find_alias_change(model: str, alias: str, request_id: str, *,
                      settings: Settings | None = None) -> AliasChange | None:
    """The record (completed or interrupted) written for ``request_id``, if any."""
    found = _search(model, alias, settings, extra=[f"tags.`{REQUEST_TAG}` = '{quote(request_id)}'"])
    return found[0] if found else None


def check_request_id(request_id: str | None) -> None:
    """Refuse a malformed request id (one per confirmation, e.g. a uuid); ``None`` means "no retry key"."""
    from services.errors import ValidationError

    if request_id is not None and not _REQUEST_RE.match(request_id):
        raise ValidationError("A request id is 1-128 letters, digits, '_' or '-' (one per confirmation, e.g. a uuid).")


def run_tag(key: str, value: str) -> Any:
    from mlflow.entities import RunTag

    return RunTag(key, value)


def alias_changes(
    model: str, alias: str | None = None, *, settings: Settings | None = None, completed_only: bool = False,
) -> list[AliasChange]:
    """Recorded changes of one agent's aliases (optionally one alias), newest first.

    Interrupted intents are included with ``status=INTERRUPTED`` unless ``completed_only``.
    """
    changes = _search(model, alias, settings)
    if completed_only:
        changes = [c for c in changes if c.completed]
    return changes


def _search(model: str, alias: str | None, settings: Settings | None, extra: list[str] | None = None) -> list[AliasChange]:
    client = mlflow_client(settings)
    with translate_errors("the audit trail"):
        experiment_id = audit_experiment_id(client, settings, create=False)
        if experiment_id is None:
            return []
        clauses = [f"tags.`{KIND_TAG}` = '{ALIAS_CHANGE_KIND}'", f"tags.`{MODEL_TAG}` = '{quote(model)}'"]
        if alias:
            clauses.append(f"tags.`{ALIAS_TAG}` = '{quote(alias)}'")
        clauses.extend(extra or [])
        runs = []
        token = None
        while True:
            page = client.search_runs(
                [experiment_id], filter_string=" AND ".join(clauses),
                max_results=_PAGE, page_token=token, order_by=["attributes.start_time DESC"],
            )
            runs.extend(page)
            token = page.token
            if not token:
                break
    changes = [_change(r.info.run_id, r.data.tags, int(r.data.tags.get(AT_NS_TAG) or r.info.start_time * 1_000_000))
               for r in runs]
    return sorted(changes, key=lambda c: c.at_ns, reverse=True)


def _experiment_name(settings: Settings | None) -> str:
    from services._clients import get_settings

    return (settings or get_settings()).audit_label


def audit_experiment_id(client: Any, settings: Settings | None, *, create: bool) -> str | None:
    """The audit trail's experiment: ``AGENTOPS_AUDIT_EXPERIMENT_ID`` when set, else the named one
    (created when ``create``; None when it does not exist yet)."""
    from services._clients import get_settings

    settings = settings or get_settings()
    if settings.audit_experiment_id:
        return settings.audit_experiment_id
    if create:
        return get_or_create_experiment(client, settings.audit_experiment, settings)
    experiment = get_experiment_by_name(client, settings.audit_experiment, settings)
    return experiment.experiment_id if experiment is not None else None


def quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _change(run_id: str, tags: dict[str, str], at_ns: int) -> AliasChange:
    try:
        evidence = json.loads(tags.get(EVIDENCE_TAG) or "{}")
    except ValueError:
        evidence = {"unreadable": tags.get(EVIDENCE_TAG)}
    try:
        gate = GateOutcome(tags.get(GATE_TAG, GateOutcome.NO_RULES.value))
    except ValueError:
        gate = GateOutcome.NO_RULES
    try:
        action = AliasAction(tags.get(ACTION_TAG, AliasAction.PROMOTE.value))
    except ValueError:
        action = AliasAction.PROMOTE
    return AliasChange(
        run_id=run_id,
        model=tags.get(MODEL_TAG, ""),
        alias=tags.get(ALIAS_TAG, ""),
        action=action,
        from_version=tags.get(FROM_TAG) or None,
        to_version=tags.get(TO_TAG) or None,
        requested_version=tags.get(REQUESTED_TAG, ""),
        user=tags.get(USER_TAG, ""),
        reason=tags.get(REASON_TAG, ""),
        gate=gate,
        override=tags.get(OVERRIDE_TAG) == "true",
        evidence=evidence,
        at=datetime.fromtimestamp(at_ns / 1e9, tz=timezone.utc),
        at_ns=at_ns,
        request_id=tags.get(REQUEST_TAG, ""),
        # Records written before intents existed carry no state and are complete.
        status=ChangeStatus.INTERRUPTED if tags.get(STATE_TAG) == "intent" else ChangeStatus.COMPLETED,
    )


# --- experiments attached to an agent ----------------------------------------------------------

EXPERIMENT_LINK_KIND = "experiment_link"
EXPERIMENT_TAG = _PREFIX + "experiment_id"


def record_experiment_link(*, model: str, action: str, experiment_id: str, before: list[str], after: list[str],
                           user: str, settings: Settings | None = None) -> str:
    """Write one audit run for attaching/detaching an experiment to an agent; returns the run id."""
    client = mlflow_client(settings)
    at_ns = time.time_ns()
    tags = {
        KIND_TAG: EXPERIMENT_LINK_KIND, MODEL_TAG: model, ACTION_TAG: action, EXPERIMENT_TAG: experiment_id,
        FROM_TAG: ",".join(before), TO_TAG: ",".join(after), USER_TAG: user, AT_NS_TAG: str(at_ns),
        STATE_TAG: "done", "mlflow.user": user,
    }
    with translate_errors(f"the audit experiment {_experiment_name(settings)!r}"):
        audit_experiment = audit_experiment_id(client, settings, create=True)
        run = client.create_run(audit_experiment, start_time=at_ns // 1_000_000, tags=tags,
                                run_name=f"{model}: {action} experiment {experiment_id}")
        client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id


def experiment_links(model: str, *, settings: Settings | None = None) -> list[dict[str, str]]:
    """Recorded attach/detach changes of one agent's experiments, newest first."""
    client = mlflow_client(settings)
    with translate_errors("the audit trail"):
        experiment_id = audit_experiment_id(client, settings, create=False)
        if experiment_id is None:
            return []
        runs = client.search_runs([experiment_id], max_results=_PAGE,
                                  filter_string=f"tags.`{KIND_TAG}` = '{EXPERIMENT_LINK_KIND}' AND "
                                                f"tags.`{MODEL_TAG}` = '{quote(model)}'",
                                  order_by=["attributes.start_time DESC"])
    return [{"action": r.data.tags.get(ACTION_TAG, ""), "experiment_id": r.data.tags.get(EXPERIMENT_TAG, ""),
             "user": r.data.tags.get(USER_TAG, ""), "at_ns": r.data.tags.get(AT_NS_TAG, "")} for r in runs]
