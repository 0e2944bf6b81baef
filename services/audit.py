"""Audit trail of alias changes, stored as runs in a dedicated MLflow experiment.

One run per change, everything in tags, so the trail needs no extra database and works the
same on a local store, an ``mlflow server`` and Databricks. Runs are never edited after they
are written; reading the trail is one paged ``search_runs``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from services._clients import get_or_create_experiment, mlflow_client, translate_errors
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
ALIAS_CHANGE_KIND = "alias_change"
# Run tags hold at most 8,000 characters; evidence is a summary, trimmed to fit.
_MAX_TAG = 7_900
_PAGE = 1000


class AliasAction(StrEnum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class GateOutcome(StrEnum):
    PASSED = "passed"
    NO_RULES = "no-rules"
    OVERRIDDEN = "overridden"


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
    """Write one audit run for an alias change and return it as recorded."""
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
        TO_TAG: to_version or "",
        REQUESTED_TAG: requested_version,
        USER_TAG: user,
        REASON_TAG: reason[:_MAX_TAG],
        GATE_TAG: gate.value,
        OVERRIDE_TAG: str(gate is GateOutcome.OVERRIDDEN).lower(),
        EVIDENCE_TAG: evidence_json,
        AT_NS_TAG: str(at_ns),
        "mlflow.user": user,
    }
    name = f"{model}@{alias}: v{from_version or '-'} -> v{to_version or '-'}"
    with translate_errors(f"the audit experiment {_experiment_name(settings)!r}"):
        experiment_id = get_or_create_experiment(client, _experiment_name(settings), settings)
        run = client.create_run(experiment_id, start_time=at_ns // 1_000_000, tags=tags, run_name=name)
        client.set_terminated(run.info.run_id, status="FINISHED")
    return _change(run.info.run_id, tags, at_ns)


def alias_changes(
    model: str, alias: str | None = None, *, settings: Settings | None = None
) -> list[AliasChange]:
    """Recorded changes of one agent's aliases (optionally one alias), newest first."""
    client = mlflow_client(settings)
    with translate_errors("the audit trail"):
        experiment = client.get_experiment_by_name(_experiment_name(settings))
        if experiment is None:
            return []
        clauses = [f"tags.`{KIND_TAG}` = '{ALIAS_CHANGE_KIND}'", f"tags.`{MODEL_TAG}` = '{_q(model)}'"]
        if alias:
            clauses.append(f"tags.`{ALIAS_TAG}` = '{_q(alias)}'")
        runs = []
        token = None
        while True:
            page = client.search_runs(
                [experiment.experiment_id], filter_string=" AND ".join(clauses),
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

    return (settings or get_settings()).audit_experiment


def _q(value: str) -> str:
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
    )
