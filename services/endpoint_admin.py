"""Creating, editing and deleting local gateway endpoints (the embedded store and an ``mlflow server``).

A local endpoint is a team-state record (``services.serving``) that the local gateway re-reads on
every request, so a change here is served at once. Each change is planned first (validated, nothing
written; the plan is the preview), then applied by an operator: the audit trail gets an intent
before the store is touched and its completion afterwards, in the same trail as split changes
(``services.audit``, its one two-phase mechanism), with who did it and why. Edits go through ``serving.apply_split``
(the same conflict check, lock and retry-by-request-id as a split change).

On Databricks, endpoints are Model Serving endpoints: they are created by deploying a version
(``serving.deploy_version``) and deleted in the workspace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from services import audit, roles, serving, team_state
from services._clients import get_settings, mlflow_client, translate_errors
from services.errors import ConflictError, NotFoundError, ValidationError
from services.settings import Backend, Settings

# The gateway serves ``/serving-endpoints/<name>/invocations``; Model Serving allows the same characters.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
MAX_SERVED = 15  # as many as a Model Serving endpoint takes, so a split can move to Databricks unchanged


class ChangeKind(StrEnum):
    CREATE = "create endpoint"
    EDIT = "edit endpoint"
    DELETE = "delete endpoint"


@dataclass(frozen=True)
class EndpointPlan:
    """A validated change, nothing written yet: ``before`` is None for a create, ``after`` None for a delete."""

    kind: ChangeKind
    name: str
    before: serving.Endpoint | None
    after: serving.Endpoint | None
    base_version: int = 0  # the record version the change was planned against (0: never written)

    def percentages(self) -> tuple[dict[str, int], dict[str, int]]:
        """Share per served version before and after (empty for the side that does not exist)."""
        return (_pct(self.before), _pct(self.after))

    def rows(self) -> list[dict[str, Any]]:
        """The preview: one row per served version with its current and proposed share."""
        before, after = self.percentages()
        return [{"Served version": label, "Current %": before.get(label), "Proposed %": after.get(label),
                 "Change": _change(before.get(label), after.get(label))}
                for label in dict.fromkeys([*before, *after])]

    def summary(self) -> str:
        """One sentence saying what applying the plan does."""
        before, after = self.percentages()
        if self.kind is ChangeKind.CREATE:
            return (f"Creates endpoint {self.name!r} serving {_describe(after)}"
                    f"{' with sticky assignment' if self.after and self.after.sticky else ''}; the local gateway "
                    f"serves it at /serving-endpoints/{self.name}/invocations from its next request.")
        if self.kind is ChangeKind.DELETE:
            return (f"Deletes endpoint {self.name!r} (now serving {_describe(before)}); the local gateway answers "
                    "404 for it from its next request. Its traces and audit history stay.")
        sticky = ""
        if self.before and self.after and self.before.sticky != self.after.sticky:
            sticky = f"; sticky assignment {'on' if self.after.sticky else 'off'}"
        return f"Changes {self.name!r} from {_describe(before)} to {_describe(after)}{sticky}."


def _pct(endpoint: serving.Endpoint | None) -> dict[str, int]:
    if endpoint is None:
        return {}
    by_entity = {s.entity_name: s.label for s in endpoint.served}
    return {by_entity.get(r.entity_name, r.entity_name): r.percentage for r in endpoint.routes}


def _change(before: int | None, after: int | None) -> str:
    if before is None:
        return "added"
    if after is None:
        return "removed"
    return f"{after - before:+d}" if after != before else "—"


def _describe(percentages: dict[str, int]) -> str:
    return ", ".join(f"{label} {pct}%" for label, pct in percentages.items()) or "nothing"


# --- validation (no I/O) ----------------------------------------------------------------------


def validate_name(name: Any) -> str:
    """An endpoint name the gateway can serve: letters, digits, ``-`` and ``_``, at most 63, no spaces."""
    text = name.strip() if isinstance(name, str) else ""
    if not text:
        raise ValidationError("Give the endpoint a name, e.g. support-prod.")
    if not _NAME.fullmatch(text):
        raise ValidationError(
            f"{text!r} cannot be an endpoint name: use letters, digits, '-' and '_' only (no spaces or dots), "
            "start with a letter or digit, at most 63 characters.")
    return text


def _routes_from(weights: dict[tuple[str, str], Any]) -> tuple[tuple[serving.ServedVersion, ...],
                                                               tuple[serving.TrafficRoute, ...]]:
    """Served versions and routes for ``(model, version) -> percent``; ``ValidationError`` on any bad entry."""
    if not weights:
        raise ValidationError("Choose at least one registered version to serve.")
    if len(weights) > MAX_SERVED:
        raise ValidationError(f"An endpoint serves at most {MAX_SERVED} versions; {len(weights)} were chosen.")
    normalised: dict[tuple[str, str], int] = {}
    for (model, version), pct in weights.items():
        if not isinstance(model, str) or not model.strip():
            raise ValidationError("Each served version needs a registered model name.")
        if not isinstance(pct, int) or isinstance(pct, bool):
            raise ValidationError(f"{model} v{version}: the share must be a whole number of percent, not {pct!r}.")
        key = (model, serving.normalise_version(version))
        if key in normalised:
            raise ValidationError(f"{model} v{key[1]} is listed twice; give each version one share.")
        normalised[key] = pct
    served = tuple(serving.ServedVersion(serving.entity_name_for(m, v), m, v) for (m, v) in normalised)
    routes = tuple(serving.TrafficRoute(s.entity_name, normalised[(s.model_name, s.model_version)]) for s in served)
    try:
        serving.validate_routes(served, routes)
    except ValidationError as exc:
        if "distinct name" in str(exc):
            raise ValidationError("Two of the chosen versions would be served under the same name "
                                  f"({', '.join(s.entity_name for s in served)}); choose distinct versions.") from None
        raise
    return served, routes


def _local_only(settings: Settings) -> None:
    if settings.backend is Backend.DATABRICKS:
        raise ValidationError("On Databricks, endpoints are Model Serving endpoints: create one by deploying a "
                              "version (Deploy version tab) and delete it in the workspace.")


def _check_versions_exist(served: tuple[serving.ServedVersion, ...], settings: Settings) -> None:
    client = mlflow_client(settings)
    for s in served:
        try:
            with translate_errors(f"the registry ({s.model_name} v{s.model_version})"):
                client.get_model_version(s.model_name, s.model_version)
        except NotFoundError:
            raise NotFoundError(f"{s.model_name} v{s.model_version} is not in the registry; choose a registered "
                                "version.") from None


def _record(name: str, settings: Settings) -> Any:
    return team_state.read(serving.ENDPOINT_KEY + name, settings)


# --- planning (reads only) ----------------------------------------------------------------------


def plan_create(name: Any, weights: dict[tuple[str, str], Any], *, sticky: bool = False,
                settings: Settings | None = None) -> EndpointPlan:
    """Validate a new endpoint serving ``(model, version) -> percent``; nothing is written."""
    settings = settings or get_settings()
    _local_only(settings)
    name = validate_name(name)
    served, routes = _routes_from(weights)
    existing = _record(name, settings)
    if existing is not None and not existing.value.get("deleted"):
        raise ConflictError(f"An endpoint named {name!r} already exists; edit it, or choose another name.")
    _check_versions_exist(served, settings)
    after = serving.Endpoint(name, served, routes, serving.EndpointState.READY, sticky=bool(sticky))
    return EndpointPlan(ChangeKind.CREATE, name, None, after, existing.version if existing else 0)


def plan_edit(name: str, weights: dict[tuple[str, str], Any], *, sticky: bool | None = None,
              settings: Settings | None = None) -> EndpointPlan:
    """Validate new served versions and split for an existing endpoint; nothing is written."""
    settings = settings or get_settings()
    _local_only(settings)
    _routes_from(weights)  # the same messages as a create, before any read
    split = serving.plan_split(name, {k: v for k, v in weights.items()}, sticky=sticky, settings=settings)
    if (split.before.served, split.before.routes, split.before.sticky) == (
            split.after.served, split.after.routes, split.after.sticky):
        raise ValidationError(f"{name!r} already serves exactly this; nothing to change.")
    return EndpointPlan(ChangeKind.EDIT, name, split.before, split.after, split.before.config_version or 0)


def plan_delete(name: str, *, settings: Settings | None = None) -> EndpointPlan:
    """Validate deleting an endpoint; nothing is written."""
    settings = settings or get_settings()
    _local_only(settings)
    before = serving.get_endpoint(name, settings)
    return EndpointPlan(ChangeKind.DELETE, name, before, None, before.config_version or 0)


# --- applying (operator role, audited) ----------------------------------------------------------


def apply(plan: EndpointPlan, *, identity: Any, reason: str, settings: Settings | None = None,
          request_id: str | None = None) -> serving.Endpoint | None:
    """Apply a plan as ``identity`` (operator role), recorded in the audit trail; returns the stored endpoint.

    ``request_id`` (one per confirmation) makes a retry after an interruption complete the same
    change once. A plan made against a state that changed since is refused (``ConflictError``).
    """
    settings = settings or get_settings()
    _local_only(settings)
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationError("Give a reason for the change; it goes into the audit trail.")
    audit.check_request_id(request_id)
    roles.enforce(identity, roles.Action.CHANGE_TRAFFIC, settings)
    user = identity.user
    if plan.kind is ChangeKind.EDIT:
        return serving.apply_split(serving.SplitPlan(plan.before, plan.after), user=user, reason=reason,
                                   action=ChangeKind.EDIT.value, settings=settings, identity=identity,
                                   request_id=request_id)
    done = audit.run_two_phase(_EndpointChange(plan, user, reason, settings), request_id)
    return done.state


class _EndpointChange(audit.TwoPhaseChange["serving.Endpoint | None"]):
    """Creating or deleting a local endpoint, as the steps of the audit trail's two-phase change."""

    kind = audit.ChangeKind.TRAFFIC

    def __init__(self, plan: EndpointPlan, user: str, reason: str, settings: Settings) -> None:
        self.plan, self.user, self.reason, self.settings = plan, user, reason, settings
        self.action, self.target = plan.kind.value, {"endpoint": plan.name}
        self.lock_key = serving.endpoint_lock(plan.name)  # the same lock as a split change of this endpoint
        self.before_pct, self.after_pct = plan.percentages()

    def check(self) -> None:
        _check_unchanged(self.plan, self.settings)

    def planned(self) -> tuple[dict[str, int], dict[str, int]]:
        return self.before_pct, self.after_pct

    def act(self, intent: audit.Change) -> serving.Endpoint | None:
        return _write(self.plan, self.user, self.settings)

    def observe(self) -> serving.Endpoint | None:
        return _current(self.plan.name, self.settings)

    def recorded(self, state: serving.Endpoint | None) -> dict[str, int]:
        return _pct(state)

    def holds_requested(self, intent: audit.Change, state: serving.Endpoint | None) -> bool:
        return _pct(state) == self.after_pct and (state is None) == (self.plan.after is None)

    def holds_before(self, intent: audit.Change, state: serving.Endpoint | None) -> bool:
        return _pct(state) == self.before_pct and (state is None) == (self.plan.before is None)

    def what(self, intent: audit.Change | None = None) -> str:
        return f"{self.plan.kind.value} {self.plan.name!r}"

    def superseded(self, earlier: audit.Change, state: serving.Endpoint | None) -> ConflictError:
        return ConflictError(
            f"{self.plan.name!r} was changed by someone else after the interrupted attempt; that attempt is closed "
            "without changing anything. Review the endpoint and try again.")

    def describe(self, state: serving.Endpoint | None) -> str:
        return "no endpoint" if state is None else serving.describe_split(_pct(state))


def _current(name: str, settings: Settings) -> serving.Endpoint | None:
    try:
        return serving.get_endpoint(name, settings)
    except NotFoundError:
        return None


def _check_unchanged(plan: EndpointPlan, settings: Settings) -> None:
    record = _record(plan.name, settings)
    version = record.version if record else 0
    if version != plan.base_version:
        who = f" by {record.updated_by}" if record and record.updated_by else ""
        raise ConflictError(f"Endpoint {plan.name!r} changed{who} since this change was prepared; nothing was "
                            "written. Review the endpoint again and redo the change.")


def _write(plan: EndpointPlan, user: str, settings: Settings) -> serving.Endpoint | None:
    if plan.kind is ChangeKind.DELETE:
        serving.delete_local_endpoint(plan.name, user=user, expected_version=plan.base_version, settings=settings)
        return None
    after = plan.after
    assert after is not None
    endpoint = serving.Endpoint(after.name, after.served, after.routes, serving.EndpointState.READY,
                                updated_at=datetime.now(tz=timezone.utc), updated_by=user, sticky=after.sticky)
    return serving.save_local_endpoint(endpoint, settings, expected_version=plan.base_version)
