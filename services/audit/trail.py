"""The audit trail: every audited change as one run in a dedicated MLflow experiment.

One run per change, everything in tags, so the trail needs no extra database and works the same on
a local store, an ``mlflow server`` and Databricks. Reading it is one (paged) ``search_runs``.

Every change is written in two steps so that a backend failure between them cannot lose it: an
*intent* (run RUNNING, state ``intent``, a request id, what was asked) before anything changes, then
the *completion* (what the backend holds afterwards, state ``done``, in one ``log_batch``). An intent
never completed reads back as ``ChangeStatus.INTERRUPTED``; a retry with the same request id finds it
and completes it instead of changing twice. An intent the backend definitely refused is closed and
deleted, so it never reads back. ``services.audit.two_phase`` drives that sequence for every kind
of change.

Records of each kind share ``Change`` (who, when, why, request id, status): ``AliasChange`` adds the
alias and versions, ``TrafficChange`` the split before and after.
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

from services._clients import (
    get_experiment_by_name,
    get_or_create_experiment,
    get_settings,
    mlflow_client,
    translate_errors,
)
from services.errors import ValidationError
from services.settings import Settings

_PREFIX = "agentops.audit."
KIND_TAG = _PREFIX + "kind"
ACTION_TAG = _PREFIX + "action"
USER_TAG = _PREFIX + "user"
REASON_TAG = _PREFIX + "reason"
AT_NS_TAG = _PREFIX + "at_ns"
REQUEST_TAG = _PREFIX + "request_id"
STATE_TAG = _PREFIX + "state"  # intent | done | refused; records without it are complete (older trail)
# Alias changes
MODEL_TAG = _PREFIX + "model"
ALIAS_TAG = _PREFIX + "alias"
FROM_TAG = _PREFIX + "from_version"
TO_TAG = _PREFIX + "to_version"
REQUESTED_TAG = _PREFIX + "requested_version"
GATE_TAG = _PREFIX + "gate"
OVERRIDE_TAG = _PREFIX + "override"
EVIDENCE_TAG = _PREFIX + "evidence"
# Traffic changes (splits and deploys)
ENDPOINT_TAG = _PREFIX + "endpoint"
BEFORE_TAG = _PREFIX + "before"
AFTER_TAG = _PREFIX + "after"
OUTCOME_TAG = _PREFIX + "outcome"

ALIAS_CHANGE_KIND = "alias_change"
TRAFFIC_KIND = "traffic_change"
INTERRUPTED = "interrupted"  # the outcome a traffic change reads back with while it is an open intent
_INTENT, _DONE, _REFUSED = "intent", "done", "refused"
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


@dataclass(frozen=True, kw_only=True)
class Change:
    """What every audited change records: who, when, why, its request id and whether it completed."""

    run_id: str
    user: str
    reason: str
    at: datetime
    request_id: str = ""
    status: ChangeStatus = ChangeStatus.COMPLETED

    @property
    def completed(self) -> bool:
        return self.status is ChangeStatus.COMPLETED


@dataclass(frozen=True, kw_only=True)
class AliasChange(Change):
    """One recorded alias move; ``to_version`` is what the registry held right after it."""

    model: str
    alias: str
    action: AliasAction
    from_version: str | None
    to_version: str | None
    requested_version: str
    gate: GateOutcome
    override: bool
    evidence: dict[str, Any]
    at_ns: int


@dataclass(frozen=True, kw_only=True)
class TrafficChange(Change):
    """One recorded split change or deploy; ``after`` is the split the endpoint served afterwards."""

    endpoint: str
    action: str
    before: dict[str, int]
    after: dict[str, int]
    outcome: str
    requested: dict[str, int] | None = None  # what the intent asked for, while it is open


# --- writing: intent, completion, refusal (every kind) -------------------------------------------


def _open(tags: dict[str, str], *, user: str, request_id: str, run_name: str,
          settings: Settings | None) -> tuple[str, int]:
    """Write an intent run with ``tags``; returns its run id and time (ns)."""
    if not request_id:
        raise ValueError("an audited change needs a request id")
    settings = settings or get_settings()
    client = mlflow_client(settings)
    at_ns = time.time_ns()
    tags = {**tags, USER_TAG: user, AT_NS_TAG: str(at_ns), REQUEST_TAG: request_id, STATE_TAG: _INTENT,
            "mlflow.user": user}
    with translate_errors(f"the audit experiment {settings.audit_label!r}"):
        experiment_id = audit_experiment_id(client, settings, create=True)
        run = client.create_run(experiment_id, start_time=at_ns // 1_000_000, tags=tags, run_name=run_name)
    return run.info.run_id, at_ns


def _complete(run_id: str, tags: dict[str, str], *, run_name: str, settings: Settings | None) -> None:
    """Mark an intent done with the observed ``tags``, in one batch: they land together or not at all."""
    settings = settings or get_settings()
    client = mlflow_client(settings)
    done = {**tags, STATE_TAG: _DONE, "mlflow.runName": run_name}
    with translate_errors(f"the audit experiment {settings.audit_label!r}"):
        client.log_batch(run_id, tags=[run_tag(k, v) for k, v in done.items()])
        client.set_terminated(run_id, status="FINISHED")


def abandon(change: Change, why: str, *, settings: Settings | None = None) -> None:
    """Close an intent whose change was definitely not made (refused), and delete it from the trail."""
    settings = settings or get_settings()
    client = mlflow_client(settings)
    with translate_errors(f"the audit experiment {settings.audit_label!r}"):
        client.log_batch(change.run_id, tags=[run_tag(STATE_TAG, _REFUSED),
                                              run_tag(REASON_TAG + ".refused", why[:_MAX_TAG])])
        client.set_terminated(change.run_id, status="FAILED")
        client.delete_run(change.run_id)


def _search(settings: Settings | None, clauses: list[str], *, limit: int | None = None) -> list[Any]:
    """Runs of the trail matching ``clauses``, newest first (all pages unless ``limit``)."""
    settings = settings or get_settings()
    client = mlflow_client(settings)
    with translate_errors("the audit trail"):
        experiment_id = audit_experiment_id(client, settings, create=False)
        if experiment_id is None:
            return []
        runs: list[Any] = []
        token = None
        while True:
            page = client.search_runs([experiment_id], filter_string=" AND ".join(clauses),
                                      max_results=limit or _PAGE, page_token=token,
                                      order_by=["attributes.start_time DESC"])
            runs.extend(page)
            token = page.token
            if not token or limit is not None:
                return runs


def _status(tags: dict[str, str]) -> ChangeStatus:
    # Records written before intents existed carry no state and are complete.
    return ChangeStatus.INTERRUPTED if tags.get(STATE_TAG) == _INTENT else ChangeStatus.COMPLETED


# --- alias changes ----------------------------------------------------------------------------


def record_alias_change(
    *, model: str, alias: str, action: AliasAction, from_version: str | None, to_version: str | None,
    requested_version: str, user: str, reason: str, gate: GateOutcome, evidence: dict[str, Any],
    settings: Settings | None = None,
) -> AliasChange:
    """Write one complete audit run for an alias change (intent and completion) and return it."""
    intent = open_alias_change(
        model=model, alias=alias, action=action, from_version=from_version, requested_version=requested_version,
        user=user, reason=reason, gate=gate, evidence=evidence, request_id=uuid.uuid4().hex, settings=settings,
    )
    return complete_alias_change(intent, to_version, settings=settings)


def open_alias_change(
    *, model: str, alias: str, action: AliasAction, from_version: str | None, requested_version: str, user: str,
    reason: str, gate: GateOutcome, evidence: dict[str, Any], request_id: str, settings: Settings | None = None,
) -> AliasChange:
    """Write the intent of an alias change (before the alias moves); it reads back as interrupted until completed."""
    evidence_json = json.dumps(evidence, default=str, sort_keys=True)
    if len(evidence_json) > _MAX_TAG:
        evidence_json = json.dumps({"truncated": True, "summary": evidence_json[: _MAX_TAG - 60]})
    tags = {
        KIND_TAG: ALIAS_CHANGE_KIND, MODEL_TAG: model, ALIAS_TAG: alias, ACTION_TAG: action.value,
        FROM_TAG: from_version or "", TO_TAG: "", REQUESTED_TAG: requested_version, REASON_TAG: reason[:_MAX_TAG],
        GATE_TAG: gate.value, OVERRIDE_TAG: str(gate is GateOutcome.OVERRIDDEN).lower(), EVIDENCE_TAG: evidence_json,
    }
    name = f"{model}@{alias}: v{from_version or '-'} -> v{requested_version} (requested)"
    run_id, at_ns = _open(tags, user=user, request_id=request_id, run_name=name, settings=settings)
    return _alias_change(run_id, {**tags, USER_TAG: user, REQUEST_TAG: request_id, STATE_TAG: _INTENT}, at_ns)


def complete_alias_change(intent: AliasChange, to_version: str | None, *,
                          settings: Settings | None = None) -> AliasChange:
    """Complete an intent with the to-version observed in the registry; returns the completed record."""
    _complete(intent.run_id, {TO_TAG: to_version or ""}, settings=settings,
              run_name=f"{intent.model}@{intent.alias}: v{intent.from_version or '-'} -> v{to_version or '-'}")
    return replace(intent, to_version=to_version or None, status=ChangeStatus.COMPLETED)


def abandon_alias_change(intent: AliasChange, why: str, *, settings: Settings | None = None) -> None:
    """Close an alias-change intent that was refused (``abandon``)."""
    abandon(intent, why, settings=settings)


def find_alias_change(model: str, alias: str, request_id: str, *,
                      settings: Settings | None = None) -> AliasChange | None:
    """The record (completed or interrupted) written for ``request_id``, if any."""
    found = _alias_search(model, alias, settings, extra=[f"tags.`{REQUEST_TAG}` = '{quote(request_id)}'"])
    return found[0] if found else None


def alias_changes(
    model: str, alias: str | None = None, *, settings: Settings | None = None, completed_only: bool = False,
) -> list[AliasChange]:
    """Recorded changes of one agent's aliases (optionally one alias), newest first.

    Interrupted intents are included with ``status=INTERRUPTED`` unless ``completed_only``.
    """
    changes = _alias_search(model, alias, settings)
    if completed_only:
        changes = [c for c in changes if c.completed]
    return changes


def _alias_search(model: str, alias: str | None, settings: Settings | None,
                  extra: list[str] | None = None) -> list[AliasChange]:
    clauses = [f"tags.`{KIND_TAG}` = '{ALIAS_CHANGE_KIND}'", f"tags.`{MODEL_TAG}` = '{quote(model)}'"]
    if alias:
        clauses.append(f"tags.`{ALIAS_TAG}` = '{quote(alias)}'")
    runs = _search(settings, clauses + (extra or []))
    changes = [_alias_change(r.info.run_id, r.data.tags,
                             int(r.data.tags.get(AT_NS_TAG) or r.info.start_time * 1_000_000)) for r in runs]
    return sorted(changes, key=lambda c: c.at_ns, reverse=True)


def _alias_change(run_id: str, tags: dict[str, str], at_ns: int) -> AliasChange:
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
        run_id=run_id, model=tags.get(MODEL_TAG, ""), alias=tags.get(ALIAS_TAG, ""), action=action,
        from_version=tags.get(FROM_TAG) or None, to_version=tags.get(TO_TAG) or None,
        requested_version=tags.get(REQUESTED_TAG, ""), user=tags.get(USER_TAG, ""), reason=tags.get(REASON_TAG, ""),
        gate=gate, override=tags.get(OVERRIDE_TAG) == "true", evidence=evidence,
        at=datetime.fromtimestamp(at_ns / 1e9, tz=timezone.utc), at_ns=at_ns,
        request_id=tags.get(REQUEST_TAG, ""), status=_status(tags),
    )


# --- traffic changes (splits, deploys) ---------------------------------------------------------


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
    tags = {
        KIND_TAG: TRAFFIC_KIND, ENDPOINT_TAG: endpoint, ACTION_TAG: action, REASON_TAG: reason[:_MAX_TAG],
        BEFORE_TAG: json.dumps(before, sort_keys=True), AFTER_TAG: json.dumps(after, sort_keys=True),
        OUTCOME_TAG: INTERRUPTED,
    }
    run_id, at_ns = _open(tags, user=user, request_id=request_id, run_name=f"{endpoint}: {action} (requested)",
                          settings=settings)
    return _traffic_change(run_id, {**tags, USER_TAG: user, AT_NS_TAG: str(at_ns), REQUEST_TAG: request_id,
                                    STATE_TAG: _INTENT})


def complete_traffic_change(intent: TrafficChange, observed: dict[str, int], *, outcome: str = "applied",
                            settings: Settings | None = None) -> TrafficChange:
    """Complete an intent with the split the endpoint holds afterwards; returns the completed record."""
    _complete(intent.run_id, {AFTER_TAG: json.dumps(observed, sort_keys=True), OUTCOME_TAG: outcome},
              run_name=f"{intent.endpoint}: {intent.action}", settings=settings)
    return replace(intent, after=dict(observed), outcome=outcome, status=ChangeStatus.COMPLETED, requested=None)


def abandon_traffic_change(intent: TrafficChange, why: str, *, settings: Settings | None = None) -> None:
    """Close a traffic-change intent that was refused (``abandon``)."""
    abandon(intent, why, settings=settings)


def find_traffic_change(endpoint: str, request_id: str, *, settings: Settings | None = None) -> TrafficChange | None:
    """The record (completed or interrupted) written for ``request_id`` on ``endpoint``, if any."""
    found = _traffic_search(settings, [f"tags.`{ENDPOINT_TAG}` = '{quote(endpoint)}'",
                                       f"tags.`{REQUEST_TAG}` = '{quote(request_id)}'"])
    return found[0] if found else None


def traffic_changes(endpoint: str | None = None, *, settings: Settings | None = None, limit: int = 200) -> list[TrafficChange]:
    """Recorded split changes, newest first (optionally of one endpoint); interrupted intents included."""
    return _traffic_search(settings, [f"tags.`{ENDPOINT_TAG}` = '{quote(endpoint)}'"] if endpoint else [], limit=limit)


def _traffic_search(settings: Settings | None, extra: list[str], *, limit: int = 200) -> list[TrafficChange]:
    runs = _search(settings, [f"tags.`{KIND_TAG}` = '{TRAFFIC_KIND}'", *extra], limit=limit)
    return sorted((_traffic_change(r.info.run_id, r.data.tags) for r in runs), key=lambda c: c.at, reverse=True)


def _traffic_change(run_id: str, tags: dict[str, str]) -> TrafficChange:
    status = _status(tags)
    after = json.loads(tags.get(AFTER_TAG) or "{}")
    return TrafficChange(
        run_id=run_id, endpoint=tags.get(ENDPOINT_TAG, ""), action=tags.get(ACTION_TAG, ""),
        user=tags.get(USER_TAG, ""), reason=tags.get(REASON_TAG, ""), before=json.loads(tags.get(BEFORE_TAG) or "{}"),
        after=after, outcome=INTERRUPTED if status is ChangeStatus.INTERRUPTED else tags.get(OUTCOME_TAG, ""),
        at=datetime.fromtimestamp(int(tags.get(AT_NS_TAG) or 0) / 1e9, tz=timezone.utc),
        request_id=tags.get(REQUEST_TAG, ""), status=status,
        requested=after if status is ChangeStatus.INTERRUPTED else None,
    )


# --- shared helpers ----------------------------------------------------------------------------


def check_request_id(request_id: str | None) -> None:
    """Refuse a malformed request id (one per confirmation, e.g. a uuid); ``None`` means "no retry key"."""
    if request_id is not None and not _REQUEST_RE.match(request_id):
        raise ValidationError("A request id is 1-128 letters, digits, '_' or '-' (one per confirmation, e.g. a uuid).")


def run_tag(key: str, value: str) -> Any:
    from mlflow.entities import RunTag  # mlflow's import is slow: only when a record is written

    return RunTag(key, value)


def audit_experiment_id(client: Any, settings: Settings | None, *, create: bool) -> str | None:
    """The audit trail's experiment: ``AGENTOPS_AUDIT_EXPERIMENT_ID`` when set, else the named one
    (created when ``create``; None when it does not exist yet)."""
    settings = settings or get_settings()
    if settings.audit_experiment_id:
        return settings.audit_experiment_id
    if create:
        return get_or_create_experiment(client, settings.audit_experiment, settings)
    experiment = get_experiment_by_name(client, settings.audit_experiment, settings)
    return experiment.experiment_id if experiment is not None else None


def quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


# --- experiments attached to an agent ----------------------------------------------------------

EXPERIMENT_LINK_KIND = "experiment_link"
EXPERIMENT_TAG = _PREFIX + "experiment_id"


def record_experiment_link(*, model: str, action: str, experiment_id: str, before: list[str], after: list[str],
                           user: str, settings: Settings | None = None) -> str:
    """Write one audit run for attaching/detaching an experiment to an agent; returns the run id."""
    tags = {KIND_TAG: EXPERIMENT_LINK_KIND, MODEL_TAG: model, ACTION_TAG: action, EXPERIMENT_TAG: experiment_id,
            FROM_TAG: ",".join(before), TO_TAG: ",".join(after)}
    run_name = f"{model}: {action} experiment {experiment_id}"
    run_id, _ = _open(tags, user=user, request_id=uuid.uuid4().hex, run_name=run_name, settings=settings)
    _complete(run_id, {}, run_name=run_name, settings=settings)
    return run_id


def experiment_links(model: str, *, settings: Settings | None = None) -> list[dict[str, str]]:
    """Recorded attach/detach changes of one agent's experiments, newest first."""
    runs = _search(settings, [f"tags.`{KIND_TAG}` = '{EXPERIMENT_LINK_KIND}'", f"tags.`{MODEL_TAG}` = '{quote(model)}'"],
                   limit=_PAGE)
    return [{"action": r.data.tags.get(ACTION_TAG, ""), "experiment_id": r.data.tags.get(EXPERIMENT_TAG, ""),
             "user": r.data.tags.get(USER_TAG, ""), "at_ns": r.data.tags.get(AT_NS_TAG, "")} for r in runs]
