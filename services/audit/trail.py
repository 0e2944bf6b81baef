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

Every kind of change (an alias move, a traffic split, a deploy, a gate-rule edit, an experiment
link) is one record type, ``Change``: who, when, why, its request id and status, what was changed
(``target``), the state before, what was asked and what was observed after, and a few kind-specific
``detail`` tags. The tags each kind has always written are kept, so older records read back as they
were.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Iterable, Mapping

from services._clients import (
    get_experiment_by_name,
    get_or_create_experiment,
    get_settings,
    mlflow_client,
    translate_errors,
)
from services.errors import ValidationError
from services.settings import Settings
from services.filter_strings import escape

_PREFIX = "agentops.audit."
KIND_TAG = _PREFIX + "kind"
ACTION_TAG = _PREFIX + "action"
USER_TAG = _PREFIX + "user"
REASON_TAG = _PREFIX + "reason"
AT_NS_TAG = _PREFIX + "at_ns"
REQUEST_TAG = _PREFIX + "request_id"
STATE_TAG = _PREFIX + "state"  # intent | done | refused; records without it are complete (older trail)
OUTCOME_TAG = _PREFIX + "outcome"
# What was changed (``Change.target``): each key is stored as ``agentops.audit.<key>``.
MODEL_TAG = _PREFIX + "model"
ALIAS_TAG = _PREFIX + "alias"
ENDPOINT_TAG = _PREFIX + "endpoint"
# Before / asked / after: plain strings for alias changes and experiment links (their older format) ...
FROM_TAG = _PREFIX + "from_version"
TO_TAG = _PREFIX + "to_version"
REQUESTED_TAG = _PREFIX + "requested_version"
# ... JSON for the other kinds.
BEFORE_TAG = _PREFIX + "before"
AFTER_TAG = _PREFIX + "after"
REQUESTED_JSON_TAG = _PREFIX + "requested"
# Kind-specific detail tags (``Change.detail``).
GATE_TAG = _PREFIX + "gate"
OVERRIDE_TAG = _PREFIX + "override"
EVIDENCE_TAG = _PREFIX + "evidence"
EXPERIMENT_TAG = _PREFIX + "experiment_id"

INTERRUPTED = "interrupted"  # the outcome a change reads back with while it is an open intent
_INTENT, _DONE, _REFUSED = "intent", "done", "refused"
# Run tags hold at most 8,000 characters; evidence is a summary, trimmed to fit.
_MAX_TAG = 7_900
_PAGE = 1000
_REQUEST_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_TARGET_KEYS = ("model", "alias", "endpoint")


class ChangeKind(StrEnum):
    """What an audited change changed (the value of its ``agentops.audit.kind`` tag)."""

    ALIAS = "alias_change"
    TRAFFIC = "traffic_change"  # a split change, or creating / deleting a local endpoint
    DEPLOY = "deploy"  # databricks.agents.deploy of a version (older ones, tagged traffic_change, read back as this)
    GATE_RULES = "gate_rules"
    EXPERIMENT_LINK = "experiment_link"


# Kinds written with plain-string before/after tags (their format before the trail was unified).
_PLAIN = (ChangeKind.ALIAS, ChangeKind.EXPERIMENT_LINK)
ENDPOINT_KINDS = (ChangeKind.TRAFFIC, ChangeKind.DEPLOY)  # what an endpoint's history holds
# The action of a deploy (``deploy v<N>``), which tells the deploys among older traffic-change records.
_OLD_DEPLOY_ACTION = re.compile(r"deploy v\S+")
# Older names of the kind values, still used by readers of the raw tags.
ALIAS_CHANGE_KIND = ChangeKind.ALIAS.value
TRAFFIC_KIND = ChangeKind.TRAFFIC.value
EXPERIMENT_LINK_KIND = ChangeKind.EXPERIMENT_LINK.value


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
    """One audited change of any kind.

    ``before`` is what the changed thing held before, ``requested`` what the change asked for and
    ``after`` what it held afterwards. Alias changes hold versions (``str | None``), traffic changes
    and deploys splits (label -> percent), gate-rule edits lists of rules. While a change is an open
    intent, ``after`` is None for an alias change and the requested split for the other kinds.
    """

    kind: ChangeKind
    run_id: str
    target: Mapping[str, str]  # what was changed: {"model", "alias"} or {"endpoint"} (+ "model" for deploys)
    action: str
    user: str
    reason: str
    at: datetime
    at_ns: int
    request_id: str = ""
    status: ChangeStatus = ChangeStatus.COMPLETED
    before: Any = None
    requested: Any = None
    after: Any = None
    outcome: str = ""
    detail: Mapping[str, str] = field(default_factory=dict)  # kind-specific tags (gate, evidence, version…)

    @property
    def completed(self) -> bool:
        return self.status is ChangeStatus.COMPLETED

    @property
    def subject(self) -> str:
        """The changed thing, for messages: ``model@alias``, the endpoint, or the model."""
        if self.kind is ChangeKind.ALIAS:
            return f"{self.model}@{self.alias}"
        return self.endpoint or self.model

    # Kind-specific views, so callers read an alias change or a split the way they always have.
    @property
    def model(self) -> str:
        return self.target.get("model", "")

    @property
    def alias(self) -> str:
        return self.target.get("alias", "")

    @property
    def endpoint(self) -> str:
        return self.target.get("endpoint", "")

    @property
    def from_version(self) -> str | None:
        return self.before

    @property
    def to_version(self) -> str | None:
        return self.after

    @property
    def requested_version(self) -> str:
        return self.requested or ""

    @property
    def gate(self) -> GateOutcome:
        try:
            return GateOutcome(self.detail.get("gate", GateOutcome.NO_RULES.value))
        except ValueError:
            return GateOutcome.NO_RULES

    @property
    def override(self) -> bool:
        return self.detail.get("override") == "true"

    @property
    def evidence(self) -> dict[str, Any]:
        try:
            return json.loads(self.detail.get("evidence") or "{}")
        except ValueError:
            return {"unreadable": self.detail.get("evidence")}


# --- writing: intent, completion, refusal ---------------------------------------------------------


def open_change(
    kind: ChangeKind, target: Mapping[str, str], *, action: str, user: str, reason: str, before: Any,
    requested: Any, request_id: str, detail: Mapping[str, Any] | None = None, run_name: str | None = None,
    settings: Settings | None = None,
) -> Change:
    """Write the intent of a change before anything is touched; it reads back as interrupted until completed."""
    if not request_id:
        raise ValueError("an audited change needs a request id")
    unknown = set(target) - set(_TARGET_KEYS)
    if unknown:
        raise ValueError(f"unknown audit target keys {sorted(unknown)}")
    tags = {KIND_TAG: kind.value, ACTION_TAG: str(action), REASON_TAG: reason[:_MAX_TAG], OUTCOME_TAG: INTERRUPTED,
            **{_PREFIX + k: v for k, v in target.items()},
            **{_PREFIX + k: _detail_text(v) for k, v in (detail or {}).items()}}
    if kind in _PLAIN:
        tags.update({FROM_TAG: before or "", TO_TAG: "", REQUESTED_TAG: requested or ""})
    else:
        tags.update({BEFORE_TAG: _json(before), AFTER_TAG: _json(requested), REQUESTED_JSON_TAG: _json(requested)})
    settings = settings or get_settings()
    client = mlflow_client(settings)
    at_ns = time.time_ns()
    tags.update({USER_TAG: user, AT_NS_TAG: str(at_ns), REQUEST_TAG: request_id, STATE_TAG: _INTENT,
                 "mlflow.user": user})
    intent = _from_tags("", tags, at_ns)
    with translate_errors(f"the audit experiment {settings.audit_label!r}"):
        experiment_id = audit_experiment_id(client, settings, create=True)
        run = client.create_run(experiment_id, start_time=at_ns // 1_000_000, tags=tags,
                                run_name=run_name or _run_name(intent, requested))
    return replace(intent, run_id=run.info.run_id)


def complete_change(intent: Change, after: Any, *, outcome: str = "applied", run_name: str | None = None,
                    settings: Settings | None = None) -> Change:
    """Mark an intent done with what the backend holds afterwards, in one batch: the tags land together or not at all."""
    if intent.kind in _PLAIN:
        tags = {TO_TAG: after or ""}
        after = after or None
    else:
        tags = {AFTER_TAG: _json(after)}
    done = replace(intent, after=after, outcome=outcome, status=ChangeStatus.COMPLETED)
    tags.update({OUTCOME_TAG: outcome, STATE_TAG: _DONE, "mlflow.runName": run_name or _run_name(done, after)})
    settings = settings or get_settings()
    client = mlflow_client(settings)
    with translate_errors(f"the audit experiment {settings.audit_label!r}"):
        client.log_batch(intent.run_id, tags=[run_tag(k, v) for k, v in tags.items()])
        client.set_terminated(intent.run_id, status="FINISHED")
    return done


def record_change(kind: ChangeKind, target: Mapping[str, str], *, action: str, user: str, reason: str, before: Any,
                  after: Any, outcome: str = "applied", detail: Mapping[str, Any] | None = None,
                  run_name: str | None = None, settings: Settings | None = None) -> Change:
    """Write one complete record (intent and completion) of a change made in one step."""
    intent = open_change(kind, target, action=action, user=user, reason=reason, before=before, requested=after,
                         request_id=uuid.uuid4().hex, detail=detail, run_name=run_name, settings=settings)
    return complete_change(intent, after, outcome=outcome, run_name=run_name, settings=settings)


def abandon(change: Change, why: str, *, settings: Settings | None = None) -> None:
    """Close an intent whose change was definitely not made (refused), and delete it from the trail."""
    settings = settings or get_settings()
    client = mlflow_client(settings)
    with translate_errors(f"the audit experiment {settings.audit_label!r}"):
        client.log_batch(change.run_id, tags=[run_tag(STATE_TAG, _REFUSED),
                                              run_tag(REASON_TAG + ".refused", why[:_MAX_TAG])])
        client.set_terminated(change.run_id, status="FAILED")
        client.delete_run(change.run_id)


# --- reading ------------------------------------------------------------------------------------


def find_change(kind: ChangeKind | Iterable[ChangeKind], target: Mapping[str, str], request_id: str, *,
                settings: Settings | None = None) -> Change | None:
    """The record (completed or interrupted) written for ``request_id`` on ``target``, if any."""
    found = changes(kind, target, settings=settings, extra=[f"tags.`{REQUEST_TAG}` = '{escape(request_id)}'"])
    return found[0] if found else None


def changes(kind: ChangeKind | Iterable[ChangeKind], target: Mapping[str, str] | None = None, *,
            settings: Settings | None = None, completed_only: bool = False, limit: int | None = None,
            extra: list[str] | None = None) -> list[Change]:
    """Recorded changes of ``kind`` (one or several) on ``target`` (all its keys must match), newest first.

    Interrupted intents are included with ``status=INTERRUPTED`` unless ``completed_only``; all
    pages are read unless ``limit``.
    """
    kinds = (kind,) if isinstance(kind, ChangeKind) else tuple(kind)
    # The kind tags those records may carry: older deploys were written as traffic changes.
    stored = list(dict.fromkeys(v for k in kinds for v in ((k.value, ChangeKind.TRAFFIC.value)
                                                          if k is ChangeKind.DEPLOY else (k.value,))))
    clauses = [f"tags.`{_PREFIX + k}` = '{escape(v)}'" for k, v in (target or {}).items()] + (extra or [])
    if len(stored) == 1:
        runs = _search(settings, [f"tags.`{KIND_TAG}` = '{stored[0]}'", *clauses], limit=limit)
    elif clauses:  # a target narrows it enough: one search, kinds filtered here
        runs = _search(settings, clauses, limit=limit)
    else:  # search_runs has no IN for tags
        runs = [r for v in stored for r in _search(settings, [f"tags.`{KIND_TAG}` = '{v}'"], limit=limit)]
    found = [c for c in (_read(r) for r in runs) if c.kind in kinds and (c.completed or not completed_only)]
    found.sort(key=lambda c: c.at_ns, reverse=True)
    return found[:limit] if limit is not None else found


def alias_changes(model: str, alias: str | None = None, *, settings: Settings | None = None,
                  completed_only: bool = False) -> list[Change]:
    """Recorded changes of one agent's aliases (optionally one alias), newest first."""
    target = {"model": model, **({"alias": alias} if alias else {})}
    return changes(ChangeKind.ALIAS, target, settings=settings, completed_only=completed_only)


def traffic_changes(endpoint: str | None = None, *, settings: Settings | None = None, limit: int = 200) -> list[Change]:
    """An endpoint's history (split changes and deploys; of every endpoint when None), newest first."""
    return changes(ENDPOINT_KINDS, {"endpoint": endpoint} if endpoint else None, settings=settings, limit=limit)


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


def _read(run: Any) -> Change:
    tags = run.data.tags
    return _from_tags(run.info.run_id, tags, int(tags.get(AT_NS_TAG) or run.info.start_time * 1_000_000))


_CORE = {KIND_TAG, ACTION_TAG, USER_TAG, REASON_TAG, AT_NS_TAG, REQUEST_TAG, STATE_TAG, OUTCOME_TAG, FROM_TAG,
         TO_TAG, REQUESTED_TAG, BEFORE_TAG, AFTER_TAG, REQUESTED_JSON_TAG, REASON_TAG + ".refused",
         *(_PREFIX + k for k in _TARGET_KEYS)}


def _from_tags(run_id: str, tags: Mapping[str, str], at_ns: int) -> Change:
    try:
        kind = ChangeKind(tags.get(KIND_TAG, ""))
    except ValueError:
        kind = ChangeKind.TRAFFIC
    interrupted = tags.get(STATE_TAG) == _INTENT  # records written before intents existed are complete
    status = ChangeStatus.INTERRUPTED if interrupted else ChangeStatus.COMPLETED
    action: str = tags.get(ACTION_TAG, "")
    if kind is ChangeKind.TRAFFIC and _OLD_DEPLOY_ACTION.fullmatch(action):
        kind = ChangeKind.DEPLOY  # written as a traffic change before deploys had their own kind
    if kind in _PLAIN:
        before, after = tags.get(FROM_TAG) or None, tags.get(TO_TAG) or None
        requested: Any = tags.get(REQUESTED_TAG, "")
        if kind is ChangeKind.ALIAS:
            action = AliasAction(action) if action in AliasAction._value2member_map_ else AliasAction.PROMOTE
    else:
        before, after = _load(tags.get(BEFORE_TAG)), _load(tags.get(AFTER_TAG))
        # Older traffic intents held what they asked for in the after tag only.
        requested = _load(tags[REQUESTED_JSON_TAG]) if REQUESTED_JSON_TAG in tags else (after if interrupted else None)
    return Change(
        kind=kind, run_id=run_id, action=action, user=tags.get(USER_TAG, ""), reason=tags.get(REASON_TAG, ""),
        target={k: tags[_PREFIX + k] for k in _TARGET_KEYS if _PREFIX + k in tags},
        at=datetime.fromtimestamp(at_ns / 1e9, tz=timezone.utc), at_ns=at_ns,
        request_id=tags.get(REQUEST_TAG, ""), status=status, before=before, requested=requested, after=after,
        outcome=INTERRUPTED if interrupted else tags.get(OUTCOME_TAG, ""),
        detail={k[len(_PREFIX):]: v for k, v in tags.items() if k.startswith(_PREFIX) and k not in _CORE},
    )


def _run_name(change: Change, value: Any) -> str:
    pending = "" if change.completed else " (requested)"
    if change.kind is ChangeKind.ALIAS:
        return f"{change.subject}: v{change.before or '-'} -> v{value or '-'}{pending}"
    return f"{change.subject}: {change.action}{pending}"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _load(text: str | None) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {"unreadable": text}


def _detail_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value[:_MAX_TAG]
    text = json.dumps(value, default=str, sort_keys=True)
    if len(text) > _MAX_TAG:
        text = json.dumps({"truncated": True, "summary": text[: _MAX_TAG - 60]})
    return text


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


# --- experiments attached to an agent ----------------------------------------------------------


def record_experiment_link(*, model: str, action: str, experiment_id: str, before: list[str], after: list[str],
                           user: str, settings: Settings | None = None) -> str:
    """Write one audit run for attaching/detaching an experiment to an agent; returns the run id."""
    return record_change(ChangeKind.EXPERIMENT_LINK, {"model": model}, action=action, user=user, reason="",
                         before=",".join(before), after=",".join(after), detail={"experiment_id": experiment_id},
                         run_name=f"{model}: {action} experiment {experiment_id}", settings=settings).run_id


def experiment_links(model: str, *, settings: Settings | None = None) -> list[dict[str, str]]:
    """Recorded attach/detach changes of one agent's experiments, newest first."""
    return [{"action": c.action, "experiment_id": c.detail.get("experiment_id", ""), "user": c.user,
             "at_ns": str(c.at_ns)} for c in changes(ChangeKind.EXPERIMENT_LINK, {"model": model}, settings=settings,
                                                     limit=_PAGE)]
