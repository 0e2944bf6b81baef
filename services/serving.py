"""Serving endpoints and their traffic splits.

Locally and on an ``mlflow server``, endpoint configurations are versioned records in the tracking
store (``services.team_state``), shared by everyone on it, and the local gateway serves them; on Databricks they are Model Serving endpoints read through ``databricks-sdk``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable

from services._clients import app_workspace_client, get_settings, translate_errors, workspace_client
from services.errors import (
    AgentOpsError,
    BackendUnavailableError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from services.settings import Backend, Settings

_logger = logging.getLogger(__name__)


class EndpointState(StrEnum):
    READY = "ready"
    UPDATING = "update in progress"
    FAILED = "update failed"
    CANCELED = "update canceled"
    NOT_READY = "not ready"


@dataclass(frozen=True)
class ServedVersion:
    """What an endpoint serves under ``entity_name``: a registered model version, or (on Databricks) an
    external or foundation model, which has no version and is shown and edited by its entity name."""

    entity_name: str
    model_name: str
    model_version: str
    detail: str = ""  # e.g. "external model openai/gpt-4o"; empty for registered versions

    @property
    def label(self) -> str:
        return f"{self.model_name} v{self.model_version}" if self.model_version else self.entity_name

    @property
    def label(self) -> str:
        """How people name the arm: ``model vN`` for a registered version, ``provider/model`` for a gateway model."""
        return version_label(self.model_name, self.model_version)


def version_label(model_name: str, version: str | None) -> str:
    """``model vN``, or just the model when it has no registry version (MLflow AI Gateway arms)."""
    return f"{model_name} v{version}" if version else model_name


@dataclass(frozen=True)
class TrafficRoute:
    entity_name: str
    percentage: int


@dataclass(frozen=True)
class Endpoint:
    name: str
    served: tuple[ServedVersion, ...]
    routes: tuple[TrafficRoute, ...]
    state: EndpointState
    updated_at: datetime | None = None
    updated_by: str | None = None
    sticky: bool = False
    backend: str = "local"
    # Databricks: a rollout's pending split, why the
    # endpoint cannot be edited, and why it could not be read (an endpoint that fails alone).
    # The concurrency token of the stored configuration: Model Serving's config version on Databricks, the
    # version of the team-state record for local endpoints. A write names the one it read.
    config_version: int | None = field(default=None, compare=False)
    pending_routes: tuple[TrafficRoute, ...] = ()
    read_only: str | None = None
    error: str | None = None

    @property
    def pending_percentages(self) -> dict[str, int]:
        """The split a rollout in progress will serve (empty when none is rolling out)."""
        by_entity = {s.entity_name: s for s in self.served}
        return {by_entity[r.entity_name].label if r.entity_name in by_entity else r.entity_name: r.percentage
                for r in self.pending_routes}

    def percentage_for(self, entity_name: str) -> int:
        return next((r.percentage for r in self.routes if r.entity_name == entity_name), 0)


def validate_routes(served: tuple[ServedVersion, ...], routes: tuple[TrafficRoute, ...]) -> None:
    """Raise ``ValidationError`` unless the routes name served versions once each and sum to 100."""
    names = [s.entity_name for s in served]
    if not served:
        raise ValidationError("An endpoint needs at least one served version.")
    if len(set(names)) != len(names):
        raise ValidationError("Each served version needs a distinct name.")
    seen: set[str] = set()
    for route in routes:
        if route.entity_name not in names:
            raise ValidationError(f"Route {route.entity_name!r} does not name a served version.")
        if route.entity_name in seen:
            raise ValidationError(f"{route.entity_name!r} appears twice in the traffic split.")
        seen.add(route.entity_name)
        if not 0 <= route.percentage <= 100:
            raise ValidationError(
                f"{route.entity_name!r} has {route.percentage}%: each share must be 0-100."
            )
    total = sum(r.percentage for r in routes)
    if total != 100:
        raise ValidationError(f"The traffic split sums to {total}%, not 100%.")


def list_endpoints(settings: Settings | None = None) -> list[Endpoint]:
    """All serving endpoints of the backend with their served versions and split."""
    settings = settings or get_settings()
    if settings.backend is Backend.DATABRICKS:
        return _list_databricks(settings)
    return sorted(_read_local(settings).values(), key=lambda e: e.name)


# --- local store ---------------------------------------------------------------------------------
# Local and mlflow-backend endpoint configurations are team state: one versioned record per endpoint
# in the tracking store (``services.team_state``), so everyone on the store sees the same splits.

ENDPOINT_KEY = "endpoint:"


def local_config_path(settings: Settings) -> Path:
    """The embedded store's former endpoint file, migrated into the tracking store once."""
    return settings.data_dir / "endpoints.json"


def _read_local(settings: Settings) -> dict[str, Endpoint]:
    from services import team_state

    records = team_state.read_all(settings, ENDPOINT_KEY)
    if not records and _migrate_endpoint_file(settings):
        records = team_state.read_all(settings, ENDPOINT_KEY)
    return {r.value["name"]: _endpoint_from_json(r.value, r.version) for r in records.values()
            if not r.value.get("deleted")}  # a deleted endpoint is a tombstone record (delete_local_endpoint)


def _migrate_endpoint_file(settings: Settings) -> bool:
    from services import team_state

    path = local_config_path(settings)
    if settings.backend is not Backend.LOCAL or not path.exists():
        return False
    with translate_errors(f"endpoint configuration {path}"):
        raw = json.loads(path.read_text(encoding="utf-8"))
    for item in raw.get("endpoints", []):
        try:
            team_state.write(ENDPOINT_KEY + item["name"], item, expected_version=0, user=team_state.MIGRATED_BY,
                             settings=settings, note=f"migrated from {path}")
        except ConflictError:
            pass  # another process migrated it first
    return True


def save_local_endpoint(endpoint: Endpoint, settings: Settings | None = None, *,
                        expected_version: int | None = None) -> Endpoint:
    """Validate and store one endpoint configuration in the tracking store.

    With ``expected_version`` the write succeeds only if nobody changed the endpoint since that version
    (``ConflictError`` otherwise); without it, it is written over the current version.
    """
    from services import team_state

    settings = settings or get_settings()
    validate_routes(endpoint.served, endpoint.routes)
    key = ENDPOINT_KEY + endpoint.name
    if expected_version is None:
        current = team_state.read(key, settings)
        expected_version = current.version if current else 0
    record = team_state.write(key, _endpoint_to_json(endpoint), expected_version=expected_version,
                              user=endpoint.updated_by or "unknown", settings=settings,
                              note=_describe_split(_percentages(endpoint)))
    return _endpoint_from_json(record.value, record.version)


def _endpoint_to_json(endpoint: Endpoint) -> dict[str, Any]:
    data = asdict(endpoint)
    data.pop("config_version", None)
    data["state"] = endpoint.state.value
    data["updated_at"] = endpoint.updated_at.isoformat() if endpoint.updated_at else None
    return data


def _endpoint_from_json(item: dict[str, Any], version: int = 0) -> Endpoint:
    return Endpoint(
        name=item["name"],
        served=tuple(ServedVersion(**s) for s in item.get("served", [])),
        routes=tuple(TrafficRoute(**r) for r in item.get("routes", [])),
        state=EndpointState(item.get("state", EndpointState.READY.value)),
        updated_at=datetime.fromisoformat(item["updated_at"]) if item.get("updated_at") else None,
        updated_by=item.get("updated_by"),
        sticky=bool(item.get("sticky", False)),
        backend="local",
        config_version=version,
    )


# --- Databricks --------------------------------------------------------------------------------


def _served_from_sdk(entity: Any) -> ServedVersion:
    name = entity.name or ""
    if entity.external_model is not None:
        model = entity.external_model
        provider = getattr(model.provider, "value", model.provider) or ""
        return ServedVersion(name, name, "", f"external model {provider}/{model.name or ''}".rstrip("/"))
    if entity.foundation_model is not None:
        model = entity.foundation_model
        return ServedVersion(name, name, "", f"foundation model {model.display_name or model.name or ''}".strip())
    if not entity.entity_name:
        return ServedVersion(name, name, "", "")
    return ServedVersion(name, entity.entity_name, str(entity.entity_version or ""))


def _routes_from_sdk(traffic_config: Any) -> tuple[TrafficRoute, ...]:
    return tuple(
        TrafficRoute(route.served_entity_name or route.served_model_name or "", int(route.traffic_percentage or 0))
        for route in ((traffic_config.routes if traffic_config else None) or [])
    )


def _from_sdk(endpoint: Any, updated_by: str | None = None) -> Endpoint:
    """An SDK ``ServingEndpointDetailed`` as an ``Endpoint``; ``updated_by`` comes from the audit trail
    (the endpoint itself only names its creator)."""
    config = endpoint.config
    entities = (config.served_entities if config else None) or []
    served = tuple(_served_from_sdk(entity) for entity in entities)
    routes = _routes_from_sdk(config.traffic_config if config else None)
    if not routes and len(served) == 1:
        routes = (TrafficRoute(served[0].entity_name, 100),)  # one entity, no traffic config: it takes everything
    read_only = None
    if any(e.foundation_model is not None for e in entities):
        read_only = ("a pay-per-token foundation model endpoint: Databricks manages its configuration, so its "
                     "traffic cannot be changed")
    pending = endpoint.pending_config
    state = EndpointState.NOT_READY
    if endpoint.state is not None:
        update = str(getattr(endpoint.state.config_update, "value", endpoint.state.config_update) or "")
        ready = str(getattr(endpoint.state.ready, "value", endpoint.state.ready) or "")
        if update == "IN_PROGRESS":
            state = EndpointState.UPDATING
        elif update == "UPDATE_FAILED":
            state = EndpointState.FAILED
        elif update == "UPDATE_CANCELED":
            state = EndpointState.CANCELED
        elif ready == "READY":
            state = EndpointState.READY
    updated = (
        datetime.fromtimestamp(endpoint.last_updated_timestamp / 1000, tz=timezone.utc)
        if endpoint.last_updated_timestamp
        else None
    )
    return Endpoint(endpoint.name, served, routes, state, updated, updated_by, False, "databricks",
                    config_version=config.config_version if config else None,
                    pending_routes=_routes_from_sdk(pending.traffic_config) if pending else (),
                    read_only=read_only)


def _last_changed_by(settings: Settings, endpoint: str | None = None) -> dict[str, str]:
    """Who made the latest recorded change of each endpoint (the audit trail; empty when unreadable)."""
    from services import traffic_audit

    try:
        changes = traffic_audit.traffic_changes(endpoint, settings=settings)
    except AgentOpsError as exc:
        _logger.warning("Could not read the audit trail for 'last updated by': %s", exc)
        return {}
    latest: dict[str, str] = {}
    for change in changes:  # newest first
        if change.completed:
            latest.setdefault(change.endpoint, change.user)
    return latest


def _list_databricks(settings: Settings) -> list[Endpoint]:
    """Every endpoint, each read on its own: one that fails (deleted meanwhile, forbidden, throttled)
    comes back with ``error`` set instead of failing the list."""
    from databricks.sdk.errors import NotFound

    from services._clients import classify_error

    with translate_errors("Model Serving"):
        api = workspace_client(settings).serving_endpoints
        # The list call returns config summaries without traffic routes; get() has them.
        names = [summary.name for summary in api.list()]
    if settings.serving_endpoint and settings.serving_endpoint not in names:
        names.insert(0, settings.serving_endpoint)  # the app's own resource, even if the list leaves it out
    who = _last_changed_by(settings)
    found: list[Endpoint] = []
    for name in names:
        try:
            found.append(_from_sdk(api.get(name), who.get(name)))
        except NotFound:
            _logger.info("Serving endpoint %s was deleted after it was listed.", name)
        except Exception as exc:  # noqa: BLE001 - one endpoint's failure is shown on that endpoint
            error = classify_error(exc, f"serving endpoint {name!r}")
            found.append(Endpoint(name, (), (), EndpointState.NOT_READY, backend="databricks", error=str(error),
                                  read_only=str(error)))
    first = settings.serving_endpoint
    return sorted(found, key=lambda e: (e.name != first, e.name))


# --- changing a split ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitPlan:
    """A validated change: ``before`` is what the plan was made against, ``after`` what it sets."""

    before: Endpoint
    after: Endpoint

    def percentages(self) -> tuple[dict[str, int], dict[str, int]]:
        return _percentages(self.before), _percentages(self.after)


def _percentages(endpoint: Endpoint) -> dict[str, int]:
    if endpoint.backend == "mlflow-gateway":
        from services import ai_gateway

        return ai_gateway.percentages(endpoint)
    by_entity = {s.entity_name: s for s in endpoint.served}
    return {by_entity[r.entity_name].label if r.entity_name in by_entity else r.entity_name: r.percentage
            for r in endpoint.routes}


# databricks-agents' naming (``databricks/agents/deployments.py``): names are cut to 63 characters,
# dots become dashes and a trailing "_" or "-" is dropped.
_MAX_NAME = 63


def _sanitize(model_name: str) -> str:
    return model_name.replace(".", "-").rstrip("_-")


def entity_name_for(model_name: str, version: str) -> str:
    """Served-entity name for a registered version, as ``databricks.agents.deploy`` names it."""
    suffix = f"_{version}"
    return f"{_sanitize(model_name[: _MAX_NAME - len(suffix)])}{suffix}"


def agents_endpoint_name(model_name: str) -> str:
    """The endpoint ``databricks.agents.deploy`` serves a UC model on: ``agents_<catalog>-<schema>-<model>``."""
    prefix = "agents_"
    return f"{prefix}{_sanitize(model_name[: _MAX_NAME - len(prefix)])}"


def get_endpoint(name: str, settings: Settings | None = None) -> Endpoint:
    """One endpoint by name (``NotFoundError`` if it does not exist)."""
    from services.errors import NotFoundError

    settings = settings or get_settings()
    if settings.backend is Backend.DATABRICKS:
        with translate_errors(f"serving endpoint {name!r}"):
            detailed = workspace_client(settings).serving_endpoints.get(name)
        return _from_sdk(detailed, _last_changed_by(settings, name).get(name))
    endpoint = _read_local(settings).get(name)
    if endpoint is None:
        raise NotFoundError(f"Serving endpoint {name!r} does not exist.")
    return endpoint


_VERSION = re.compile(r"[0-9]+")


def normalise_version(version: Any) -> str:
    """A registry version number as the registry writes it ("01" and 1 are "1"); ``ValidationError`` otherwise."""
    text = str(version).strip() if isinstance(version, (str, int)) and not isinstance(version, bool) else ""
    if not _VERSION.fullmatch(text):
        raise ValidationError(f"{version!r} is not a version number; versions are whole numbers such as 3.")
    return str(int(text))


def _normalised_weights(weights: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """The split keyed by normalised versions; a version named twice (e.g. "1" and "01") is refused."""
    normalised: dict[tuple[str, str], int] = {}
    for (model_name, version), pct in weights.items():
        # An external or foundation model has no version: it is named by its served entity.
        key = (model_name, "") if version in ("", None) else (model_name, normalise_version(version))
        if key in normalised:
            raise ValidationError(f"{model_name} v{key[1]} is listed twice in the split; give each version one share.")
        normalised[key] = pct
    return normalised


def plan_split(
    endpoint_name: str,
    weights: dict[tuple[str, str], int],
    *,
    sticky: bool | None = None,
    settings: Settings | None = None,
) -> SplitPlan:
    """Validate a proposed split (``(model, version) -> percent``) against the current endpoint.

    Nothing is written. Raises ``ValidationError`` for a split that does not sum to 100, a
    negative share or an empty split, and ``NotFoundError`` for an unknown endpoint or version.
    """
    from services._clients import mlflow_client

    if not weights:
        raise ValidationError("Choose at least one served version.")
    for (model_name, version), pct in weights.items():
        if not isinstance(pct, int) or isinstance(pct, bool):
            raise ValidationError(f"{model_name} v{version}: the share must be a whole number of percent.")
    weights = _normalised_weights(weights)
    before = get_endpoint(endpoint_name, settings)
    if before.read_only:
        raise ValidationError(f"{endpoint_name!r} is {before.read_only}.")
    existing = {(s.model_name, s.model_version): s for s in before.served}
    for model_name, version in weights:
        if not version and (model_name, version) not in existing:
            raise ValidationError(f"{model_name!r} is not served by {endpoint_name!r}; name a registered model version "
                                  "or one of the endpoint's served entities.")
    served = tuple(
        existing.get((m, v)) or ServedVersion(entity_name_for(m, v), m, v) for (m, v) in weights
    )
    routes = tuple(TrafficRoute(s.entity_name, weights[(s.model_name, s.model_version)]) for s in served)
    validate_routes(served, routes)
    # The registry must hold every version we are about to route to.
    client = mlflow_client(settings)
    for model_name, version in weights:
        if (model_name, version) in existing:
            continue
        with translate_errors(f"registered model {model_name!r}"):
            client.get_model_version(model_name, version)
    after = Endpoint(
        name=before.name, served=served, routes=routes, state=before.state,
        updated_at=before.updated_at, updated_by=before.updated_by,
        sticky=before.sticky if sticky is None else sticky, backend=before.backend,
    )
    return SplitPlan(before, after)


def apply_split(
    plan: SplitPlan,
    *,
    user: str,
    reason: str,
    action: str = "edit split",
    settings: Settings | None = None,
    user_token: str | None = None,
    progress: Callable[[str], None] | None = None,
    identity: Any = None,
    request_id: str | None = None,
) -> Endpoint:
    """Apply a planned split and record it in the audit trail; returns the endpoint as stored.

    With ``identity`` (pages pass it), the acting user's role is checked first: changing traffic
    needs the operator role, and on Databricks with user authorization a user token.

    The audit intent is written before the endpoint is touched, and completed with the split the
    endpoint holds afterwards. ``request_id`` (one per confirmation) makes a retry after a backend
    failure safe: it completes the recorded attempt (writing the split only if it was not written)
    instead of changing or recording twice, and a retry of a completed one changes nothing.
    """
    from services import audit, roles, traffic_audit

    settings = settings or get_settings()
    if not reason.strip():
        raise ValidationError("Give a reason for the traffic change; it goes into the audit trail.")
    audit.check_request_id(request_id)
    if identity is not None:
        roles.enforce(identity, roles.Action.CHANGE_TRAFFIC, settings)
    write = _SplitWriter(plan, user, settings, user_token, progress)
    before_pct, after_pct = plan.percentages()
    name = plan.before.name
    with _split_lock(name):
        if request_id:
            earlier = traffic_audit.find_traffic_change(name, request_id, settings=settings)
            if earlier is not None:
                return _resume_split(write, earlier)
        write.check_unchanged()
        try:
            intent = traffic_audit.open_traffic_change(
                name, action=action, user=user, reason=reason, before=before_pct, after=after_pct,
                request_id=request_id or uuid.uuid4().hex, settings=settings,
            )
        except BackendUnavailableError as exc:
            raise BackendUnavailableError(
                f"The MLflow backend stopped answering before the traffic change on {name!r} was recorded. "
                f"Nothing changed: the endpoint keeps its split {_describe_split(before_pct)}. "
                f"Retry once the backend is back. ({exc})"
            ) from exc
        return _write_and_record(write, intent)


class _SplitWriter:
    """Writes one plan's split to its backend: the local config file, Model Serving or MLflow's AI Gateway."""

    def __init__(self, plan: SplitPlan, user: str, settings: Settings, user_token: str | None, progress) -> None:
        self.plan, self.user, self.settings = plan, user, settings
        self.user_token, self.progress = user_token, progress
        self._read_version: int | None = None

    @property
    def name(self) -> str:
        return self.plan.before.name

    def current(self) -> Endpoint:
        if self.plan.before.backend == "mlflow-gateway":
            from services import ai_gateway

            return ai_gateway.get_gateway_endpoint(self.name, self.settings).endpoint
        if self.settings.backend is Backend.DATABRICKS:
            with translate_errors(f"serving endpoint {self.name!r}"):
                return _from_sdk(workspace_client(self.settings, user_token=self.user_token).serving_endpoints.get(self.name))
        current = _read_local(self.settings).get(self.name)
        if current is None:
            raise NotFoundError(f"Endpoint {self.name!r} does not exist any more.")
        self._read_version = current.config_version  # the version the check saw; the write must find it
        return current

    def holds(self, endpoint: Endpoint, target: Endpoint) -> bool:
        """Whether ``endpoint`` serves ``target``'s split (and stickiness, locally)."""
        return _percentages(endpoint) == _percentages(target) and (
            self.plan.before.backend != "local" or endpoint.sticky == target.sticky)

    def check_unchanged(self) -> None:
        """Refuse a plan made against a split that has changed since; nothing is recorded or sent."""
        if self.plan.before.backend == "databricks":
            current = self.current()
            if _changed_since(self.plan.before, current):
                raise _conflict(self.plan.before, _from_sdk_with_author(current, self.settings))
            return
        if self.plan.before.backend == "mlflow-gateway" or self.settings.backend is not Backend.DATABRICKS:
            current = self.current()
            if (current.served, current.routes, current.sticky) != (
                self.plan.before.served, self.plan.before.routes, self.plan.before.sticky
            ):
                raise ConflictError(
                    f"The split of {self.name!r} changed since this change was prepared "
                    f"(by {current.updated_by or 'someone'}); review the new split and try again."
                )

    def write(self) -> Endpoint:
        plan = self.plan
        if plan.before.backend == "mlflow-gateway":
            from services import ai_gateway

            return ai_gateway.write_weights(plan, user=self.user, settings=self.settings)
        if self.settings.backend is Backend.DATABRICKS:
            return _apply_databricks(plan, self.settings, self.user_token, self.progress)
        return save_local_endpoint(
            Endpoint(
                name=plan.after.name, served=plan.after.served, routes=plan.after.routes,
                state=EndpointState.READY, updated_at=datetime.now(tz=timezone.utc), updated_by=self.user,
                sticky=plan.after.sticky, backend="local",
            ),
            self.settings,
            expected_version=self._read_version,
        )


def _write_and_record(write: _SplitWriter, intent: Any) -> Endpoint:
    """Write the split for an open intent, then complete the intent with the split the endpoint holds."""
    from services import traffic_audit

    try:
        stored = write.write()
    except (PermissionDeniedError, ValidationError, NotFoundError, ConflictError) as exc:
        # The backend answered and refused: the split did not change, so the intent leaves the trail.
        _quietly_abandon(intent, str(exc), write.settings)
        raise
    except BackendUnavailableError as exc:
        raise _split_interrupted(intent, "while the new split was being written", exc) from exc
    try:
        traffic_audit.complete_traffic_change(intent, _percentages(stored), settings=write.settings)
    except BackendUnavailableError as exc:
        raise _split_interrupted(intent, "after the new split was applied, before its audit record was completed",
                                 exc) from exc
    return stored


def _resume_split(write: _SplitWriter, earlier: Any) -> Endpoint:
    """A retry of a recorded request: return it if complete, else complete it exactly once."""
    _, after_pct = write.plan.percentages()
    asked = earlier.requested if earlier.requested is not None else earlier.after
    if asked != after_pct:
        raise ValidationError(
            f"Request {earlier.request_id} changed {write.name!r} to {_describe_split(asked)}, not "
            f"{_describe_split(after_pct)}; start a new confirmation for this one."
        )
    current = write.current()
    if earlier.completed:
        return current
    if write.holds(current, write.plan.after):
        # The split was written before the failure; only the record is missing its completion.
        from services import traffic_audit

        try:
            traffic_audit.complete_traffic_change(earlier, _percentages(current), settings=write.settings)
        except BackendUnavailableError as exc:
            raise _split_interrupted(earlier, "while completing the audit record", exc) from exc
        return current
    if write.holds(current, write.plan.before):
        return _write_and_record(write, earlier)
    # Someone else changed the split since: completing would overwrite their change.
    _quietly_abandon(earlier, f"superseded: the endpoint held {_describe_split(_percentages(current))} on retry",
                     write.settings)
    raise ConflictError(
        f"{write.name!r} now splits {_describe_split(_percentages(current))}, neither the split before the "
        f"interrupted change nor the one it asked for: another change happened since. The interrupted attempt "
        "is closed without changing anything; review the new split and try again."
    )


def settle_interrupted(endpoint: Endpoint, change: Any, *, user: str, settings: Settings | None = None,
                       identity: Any = None) -> str:
    """Settle an interrupted traffic change from the split ``endpoint`` serves now; returns what was recorded.

    For when the confirmation that would retry it is gone (another session, a reload): if the
    endpoint serves the split the change asked for, the record is completed as applied; otherwise
    the change did not take effect (or was overwritten since) and the attempt is closed.
    """
    from services import roles, traffic_audit

    settings = settings or get_settings()
    if identity is not None:
        roles.enforce(identity, roles.Action.CHANGE_TRAFFIC, settings)
    if change.completed:
        return "This change is already recorded as done."
    if endpoint.backend == "mlflow-gateway":
        from services import ai_gateway

        current = ai_gateway.get_gateway_endpoint(endpoint.name, settings).endpoint
    else:
        current = get_endpoint(endpoint.name, settings)
    now = _percentages(current)
    if now == (change.requested or change.after):
        traffic_audit.complete_traffic_change(change, now, outcome="applied (settled by " + user + ")",
                                              settings=settings)
        return f"{endpoint.name} serves the split the change asked for; it is now recorded as applied."
    why = "not applied" if now == change.before else "overwritten by a later change"
    traffic_audit.abandon_traffic_change(change, f"settled by {user}: {why}; the endpoint served {_describe_split(now)}",
                                         settings=settings)
    return f"{endpoint.name} serves {_describe_split(now)}: the interrupted change was {why}, and is closed."


def _split_interrupted(intent: Any, when: str, exc: Exception) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"The backend stopped answering {when} (traffic change on {intent.endpoint!r} to "
        f"{_describe_split(intent.requested or intent.after)}), so the split may or may not have changed. "
        f"It is recorded as interrupted (request {intent.request_id}); retry the same confirmation once the "
        f"backend is back and it completes exactly once. ({exc})"
    )


def _quietly_abandon(intent: Any, why: str, settings: Settings) -> None:
    from services import traffic_audit

    try:
        traffic_audit.abandon_traffic_change(intent, why, settings=settings)
    except BackendUnavailableError:
        pass  # stays "interrupted" in the trail; a retry reconciles it


def _describe_split(percentages: dict[str, int]) -> str:
    return ", ".join(f"{arm} {pct}%" for arm, pct in percentages.items()) or "(no routes)"


_split_locks: dict[str, threading.Lock] = {}
_split_locks_guard = threading.Lock()


def _split_lock(endpoint_name: str) -> threading.Lock:
    """One lock per endpoint: two operators in this process never interleave check-write-record."""
    with _split_locks_guard:
        return _split_locks.setdefault(endpoint_name, threading.Lock())


def _entity_input(output: Any) -> Any:
    """The ``ServedEntityInput`` that re-sends a served entity exactly as Model Serving returned it.

    ``update_config`` replaces the whole config: a field left out (``environment_vars`` with the
    tracing experiment and secret references, ``workload_type``, ``instance_profile_arn``, provisioned
    throughput, ``external_model``…) is gone afterwards. Every input field is copied from the output.
    """
    import dataclasses

    from databricks.sdk.service import serving as sdk

    fields = {f.name for f in dataclasses.fields(sdk.ServedEntityInput)}
    return sdk.ServedEntityInput.from_dict({k: v for k, v in output.as_dict().items() if k in fields})


def _describe_endpoint(endpoint: Endpoint) -> str:
    text = _describe_split(_percentages(endpoint))
    if endpoint.pending_routes:
        text += f" (rolling out: {_describe_split(endpoint.pending_percentages)})"
    return text


def _changed_since(plan_before: Endpoint, current: Endpoint) -> bool:
    if plan_before.config_version is not None and current.config_version is not None:
        return plan_before.config_version != current.config_version or bool(current.pending_routes)
    return (current.served, current.routes) != (plan_before.served, plan_before.routes)


def _conflict(plan_before: Endpoint, current: Endpoint) -> ConflictError:
    return ConflictError(
        f"{current.name!r} changed since this change was prepared (config version "
        f"{plan_before.config_version} → {current.config_version}"
        + (f", last recorded change by {current.updated_by}" if current.updated_by else "")
        + f"): it now serves {_describe_endpoint(current)}. Nothing was sent; review the new state and try again."
    )


def _from_sdk_with_author(endpoint: Endpoint, settings: Settings) -> Endpoint:
    from dataclasses import replace

    return replace(endpoint, updated_by=_last_changed_by(settings, endpoint.name).get(endpoint.name))


def _apply_databricks(plan: SplitPlan, settings: Settings, user_token: str | None, progress) -> Endpoint:
    """Send the planned split with ``update_config``, every served entity re-sent as read.

    Refused (``ConflictError``, nothing sent) when the endpoint's config changed since the plan was made:
    a colleague's deploy between preview and confirm would otherwise be silently removed.
    """
    from datetime import timedelta

    from databricks.sdk.errors import OperationFailed, PermissionDenied, ResourceConflict
    from databricks.sdk.service import serving as sdk

    from services.errors import ConflictError, PermissionDeniedError

    client = workspace_client(settings, user_token=user_token)
    name = plan.before.name
    try:
        current = client.serving_endpoints.get(name)
        if _changed_since(plan.before, _from_sdk(current)):
            raise _conflict(plan.before, _from_sdk(current, _last_changed_by(settings, name).get(name)))
        outputs = {e.name: e for e in (current.config.served_entities or [])} if current.config else {}
        registered = [e for e in outputs.values() if e.entity_name and e.external_model is None]
        template = registered[0] if registered else None
        entities = []
        for served in plan.after.served:
            if served.entity_name in outputs:
                entities.append(_entity_input(outputs[served.entity_name]))
                continue
            # A version new to the endpoint: sized and configured like the endpoint's other versions
            # (same workload, scale-to-zero and environment, where agents.deploy keeps the tracing setup).
            base = _entity_input(template).as_dict() if template is not None else {}
            keep = {k: base[k] for k in ("workload_size", "workload_type", "scale_to_zero_enabled", "environment_vars",
                                         "instance_profile_arn") if k in base}
            entities.append(sdk.ServedEntityInput.from_dict({
                "workload_size": "Small", "scale_to_zero_enabled": True, **keep,
                "name": served.entity_name, "entity_name": served.model_name, "entity_version": served.model_version,
            }))
        routes = [sdk.Route(served_entity_name=r.entity_name, traffic_percentage=r.percentage) for r in plan.after.routes]
        waiter = client.serving_endpoints.update_config(
            name, served_entities=entities, traffic_config=sdk.TrafficConfig(routes=routes))
        if progress:
            progress(f"Update of {name!r} submitted; waiting for Model Serving to roll it out…")

        def report(endpoint: Any) -> None:
            if progress and endpoint.state is not None:
                progress(f"{name}: config update {getattr(endpoint.state.config_update, 'value', endpoint.state.config_update)}")

        detailed = waiter.result(timeout=timedelta(minutes=30), callback=report)
    except AgentOpsError:
        raise
    except OperationFailed as exc:
        raise ConflictError(
            f"Model Serving could not apply the new split on {name!r} ({exc}); the endpoint keeps serving "
            "its previous configuration."
        ) from exc
    except ResourceConflict as exc:
        raise ConflictError(
            f"Endpoint {name!r} already has an update in progress; wait for it to finish, then try again. ({exc})"
        ) from exc
    except PermissionDenied as exc:
        raise PermissionDeniedError(
            f"Changing traffic on {name!r} needs CAN_MANAGE on the serving endpoint. ({exc})"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - classified below
        from services._clients import classify_error

        raise classify_error(exc, f"serving endpoint {name!r}") from exc
    return _from_sdk(detailed)


# --- deploying a version with databricks.agents.deploy ------------------------------------------
#
# ``databricks.agents.deploy`` builds its own ``WorkspaceClient()`` and MLflow clients from the
# environment; it takes no credentials. Running it in this process as the signed-in user would
# mean putting their token into ``os.environ``, where every other session's client would pick it
# up. So it runs in a short-lived child process whose environment carries only the identity it
# acts as (the user's token when given, else the app's own credentials). That also keeps its
# ~4 s import and its process-wide MLflow settings (it switches the registry URI) out of the app.

MONITOR_EXPERIMENT_TAG = "MONITOR_EXPERIMENT_ID"  # the endpoint tag databricks-agents traces by
_MAX_SERVED_ENTITIES = 15  # Model Serving refuses more served entities on one endpoint
_UC_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_LOCAL_DEPLOY = ("Deploying with databricks.agents.deploy needs the Databricks backend. Locally, add the version "
                 "to a gateway endpoint in the split editor.")


@dataclass(frozen=True)
class DeployPlan:
    """What ``deploy_version`` will do: ``before`` is None when the endpoint does not exist yet."""

    model_name: str
    model_version: str
    endpoint_name: str
    entity_name: str
    before: Endpoint | None
    after: dict[str, int]  # "<model> v<version>" -> percent once deployed
    experiment_id: str | None

    @property
    def creates_endpoint(self) -> bool:
        return self.before is None

    def percentages(self) -> tuple[dict[str, int], dict[str, int]]:
        return (_percentages(self.before) if self.before else {}), dict(self.after)


@dataclass(frozen=True)
class Deployment:
    """A finished deploy: the endpoint as stored and the links databricks-agents returned."""

    plan: DeployPlan
    endpoint: Endpoint
    endpoint_url: str | None
    review_app_url: str | None
    query_endpoint: str | None


def validate_uc_model_name(model_name: str) -> str:
    """``catalog.schema.model`` with plain name parts, or ``ValidationError``."""
    name = (model_name or "").strip()
    parts = name.split(".")
    if len(parts) != 3 or not all(_UC_PART.fullmatch(p) for p in parts):
        raise ValidationError(
            f"{model_name!r} is not a Unity Catalog model name: databricks.agents.deploy needs "
            "catalog.schema.model (letters, digits, '_' or '-' in each part)."
        )
    return name


def _validate_version(version: Any) -> str:
    text = str(version).strip() if version is not None else ""
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValidationError(f"{version!r} is not a model version: use the version number (1, 2, …).")
    return str(int(text))


def plan_deploy(model_name: str, version: Any, *, experiment_id: str | None = None,
                settings: Settings | None = None, user_token: str | None = None) -> DeployPlan:
    """Validate deploying ``model_name`` v``version`` to its agents endpoint; nothing is written.

    Reads the version from Unity Catalog and the endpoint from Model Serving. Raises
    ``ValidationError`` for a malformed name or version, a version the endpoint already serves or
    an endpoint that is full, ``NotFoundError`` for a version that does not exist and
    ``ConflictError`` while the endpoint is updating.
    """
    from databricks.sdk.errors import NotFound

    settings = settings or get_settings()
    if settings.backend is not Backend.DATABRICKS:
        raise ValidationError(_LOCAL_DEPLOY)
    name = validate_uc_model_name(model_name)
    number = _validate_version(version)
    endpoint_name = agents_endpoint_name(name)
    entity = entity_name_for(name, number)
    client = workspace_client(settings, user_token=user_token)
    try:
        # Unity Catalog is outside every Databricks Apps user scope: the app reads the version.
        app_workspace_client(settings).model_versions.get(name, int(number))
    except NotFound:
        raise NotFoundError(f"Version {number} of {name} does not exist in Unity Catalog; nothing was deployed.") from None
    except Exception as exc:  # noqa: BLE001 - classified below
        from services._clients import classify_error

        raise classify_error(exc, f"Unity Catalog model {name}") from exc
    try:
        detailed = client.serving_endpoints.get(endpoint_name)
    except NotFound:
        detailed = None
    except Exception as exc:  # noqa: BLE001 - classified below
        from services._clients import classify_error

        raise classify_error(exc, f"serving endpoint {endpoint_name!r}") from exc
    before = _from_sdk(detailed) if detailed is not None else None
    label = f"{name} v{number}"
    if before is not None:
        if before.state is EndpointState.UPDATING:
            raise ConflictError(f"Endpoint {endpoint_name!r} already has an update in progress; wait for it to finish, "
                                "then deploy.")
        if any(s.entity_name == entity or (s.model_name, s.model_version) == (name, number) for s in before.served):
            raise ValidationError(f"{endpoint_name!r} already serves {label}. To send it more traffic, use the split "
                                  "editor instead of deploying it again.")
        if len(before.served) >= _MAX_SERVED_ENTITIES:
            raise ValidationError(f"{endpoint_name!r} already serves {len(before.served)} versions, the most Model Serving "
                                  "allows; remove one in the split editor first.")
        tags = {t.key: t.value for t in (detailed.tags or [])}
        experiment_id = tags.get(MONITOR_EXPERIMENT_TAG) or experiment_id
    # databricks.agents.deploy routes everything to the new version and keeps the others at 0%.
    after = {label: 100, **{k: 0 for k in (_percentages(before) if before else {}) if k != label}}
    return DeployPlan(name, number, endpoint_name, entity, before, after, experiment_id)


def deploy_version(
    model_name: str,
    version: Any,
    *,
    user: str,
    reason: str,
    identity: Any = None,
    user_token: str | None = None,
    experiment_id: str | None = None,
    plan: DeployPlan | None = None,
    settings: Settings | None = None,
    progress: Callable[[str], None] | None = None,
    wait: bool = True,
) -> Deployment:
    """Deploy a UC model version with ``databricks.agents.deploy`` (new version gets 100%), audited.

    Validates first (name, version, role and user token, the version in Unity Catalog, the endpoint's
    state) and sends nothing when that fails. With ``plan`` (the preview the user confirmed), the
    endpoint must still look as it did then. With ``wait``, follows the rollout to the end.
    """
    from services import roles, traffic_audit

    settings = settings or get_settings()
    say = progress or (lambda _message: None)
    if settings.backend is not Backend.DATABRICKS:
        raise ValidationError(_LOCAL_DEPLOY)
    validate_uc_model_name(model_name)
    _validate_version(version)
    if not reason.strip():
        raise ValidationError("Give a reason for the deployment; it goes into the audit trail.")
    if identity is not None:
        roles.enforce(identity, roles.Action.CHANGE_TRAFFIC, settings)
        user_token = user_token or getattr(identity, "access_token", None)
    if roles.user_authorization_required() and not user_token:
        raise PermissionDeniedError(
            "User authorization is on, but this request carries no user token; the app will not deploy as its "
            "service principal. Reload the app, or ask an admin to enable user authorization scopes for it."
        )
    say(f"Checking {model_name} v{version} in Unity Catalog and its endpoint…")
    fresh = plan_deploy(model_name, version, experiment_id=experiment_id, settings=settings, user_token=user_token)
    if plan is not None and (plan.model_name, plan.model_version, plan.endpoint_name) != (
            fresh.model_name, fresh.model_version, fresh.endpoint_name):
        raise ValidationError("The confirmed plan is for another model or version; review the deployment again.")
    if plan is not None and (plan.percentages()[0] != fresh.percentages()[0] or (
            plan.before is not None and fresh.before is not None
            and plan.before.config_version != fresh.before.config_version)):
        raise ConflictError(f"The split of {fresh.endpoint_name!r} changed since this deployment was prepared; "
                            "review it again.")
    before_pct, after_pct = fresh.percentages()
    args = {"model_name": fresh.model_name, "model_version": int(fresh.model_version),
            "endpoint_name": fresh.endpoint_name, "experiment_id": fresh.experiment_id}
    say(f"{'Creating' if fresh.creates_endpoint else 'Updating'} {fresh.endpoint_name} with databricks.agents.deploy…")
    action = f"deploy v{fresh.model_version}"

    def record_failure(outcome: str) -> None:
        # The attempt may have changed the endpoint before failing: keep who tried, even then.
        try:
            traffic_audit.record_traffic_change(fresh.endpoint_name, action=action, user=user, reason=reason,
                                                before=before_pct, after=after_pct, outcome=outcome[:500], settings=settings)
        except AgentOpsError as audit_error:  # the deploy's own error is the one to show
            _logger.warning("Could not record the failed deployment of %s v%s: %s", fresh.model_name,
                            fresh.model_version, audit_error)

    try:
        # databricks-agents calls Unity Catalog, MLflow and the agents API, which no Databricks Apps user
        # scope covers: it runs as the app's service principal, after the role check, with the user audited.
        result = run_agents_call("deploy", args, settings)
    except AgentOpsError as exc:
        record_failure(f"failed: {exc}")
        raise
    client = workspace_client(settings, user_token=user_token)
    if wait:
        say("Deployment submitted; waiting for Model Serving to roll it out…")
        stored = _wait_for_rollout(client, fresh, progress)
        if isinstance(stored, AgentOpsError):
            record_failure(f"rollout failed: {stored}")
            raise stored
    else:
        with translate_errors(f"serving endpoint {fresh.endpoint_name!r}"):
            stored = _from_sdk(client.serving_endpoints.get(fresh.endpoint_name))
    if stored.routes:
        after_pct = _percentages(stored)
    traffic_audit.record_traffic_change(
        fresh.endpoint_name, action=action, user=user, reason=reason,
        before=before_pct, after=after_pct, outcome="applied" if wait else "submitted", settings=settings)
    return Deployment(fresh, stored, result.get("endpoint_url"), result.get("review_app_url"), result.get("query_endpoint"))


def _wait_for_rollout(client: Any, plan: DeployPlan, progress: Callable[[str], None] | None) -> "Endpoint | AgentOpsError":
    from datetime import timedelta

    from databricks.sdk.errors import OperationFailed

    def report(endpoint: Any) -> None:
        if progress and endpoint.state is not None:
            progress(f"{plan.endpoint_name}: config update "
                     f"{getattr(endpoint.state.config_update, 'value', endpoint.state.config_update)}")

    try:
        detailed = client.serving_endpoints.wait_get_serving_endpoint_not_updating(
            plan.endpoint_name, timeout=timedelta(minutes=30), callback=report)
    except OperationFailed as exc:
        return ConflictError(f"Model Serving could not roll out {plan.model_name} v{plan.model_version} on "
                             f"{plan.endpoint_name!r} ({exc}); the endpoint keeps its previous configuration.")
    except TimeoutError as exc:
        return BackendUnavailableError(f"The rollout on {plan.endpoint_name!r} did not finish in 30 minutes ({exc}); "
                                       "check the endpoint's events in the Serving UI.")
    except Exception as exc:  # noqa: BLE001 - classified below
        from services._clients import classify_error

        return classify_error(exc, f"serving endpoint {plan.endpoint_name!r}")
    return _from_sdk(detailed)


# --- running databricks-agents calls in a child process ------------------------------------------

_RESULT_MARK = "AGENTOPS-AGENTS-RESULT "
# The operations a child may run ("module:function", each taking and returning JSON-able dicts).
_CHILD_OPERATIONS = {
    "deploy": "services.serving:_child_deploy",
    "labeling_session": "services.review_queue:_child_labeling_session",
}
# Credentials the child must not inherit when it acts as the signed-in user.
_APP_CREDENTIALS = ("DATABRICKS_TOKEN", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET", "DATABRICKS_AUTH_TYPE",
                    "DATABRICKS_CONFIG_PROFILE")


def run_agents_call(operation: str, args: dict[str, Any], settings: Settings, *, user_token: str | None = None,
                    timeout_seconds: float = 600) -> dict[str, Any]:
    """Run one databricks-agents operation in a child process as the user (token) or the app.

    Returns the operation's JSON result; a failure comes back as the matching typed error.
    """
    import subprocess
    import sys

    from services.settings import PROJECT_ROOT

    if operation not in _CHILD_OPERATIONS:
        raise ValidationError(f"{operation!r} is not a databricks-agents operation this app runs.")
    env = {k: v for k, v in os.environ.items() if not (user_token and k in _APP_CREDENTIALS)}
    # ``mlflow.set_experiment`` in this process leaves MLFLOW_EXPERIMENT_ID behind; an id from
    # another tracking store makes databricks-agents refuse the deploy.
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    env.update({"DATABRICKS_HOST": settings.databricks_host or "", "MLFLOW_TRACKING_URI": "databricks",
                "MLFLOW_REGISTRY_URI": "databricks-uc", "PYTHONUNBUFFERED": "1"})
    # The token travels on stdin, not in the child's environment block (readable in /proc).
    request = json.dumps({"operation": operation, "args": args, "user_token": user_token})
    try:
        done = subprocess.run([sys.executable, "-m", "services.serving"], input=request, env=env, cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        raise BackendUnavailableError(f"databricks-agents did not finish {operation} within "
                                      f"{timeout_seconds:.0f} s; check the workspace, then try again.") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith(_RESULT_MARK)]
    if not lines:
        tail = (done.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise BackendUnavailableError(f"databricks-agents stopped during {operation} (exit {done.returncode}): {tail[0]}")
    answer = json.loads(lines[-1][len(_RESULT_MARK):])
    if answer.get("ok"):
        return answer.get("result") or {}
    raise _child_error(answer, operation)


def _child_error(answer: dict[str, Any], operation: str) -> AgentOpsError:
    kind, message, code = answer.get("error", ""), answer.get("message", ""), answer.get("error_code") or ""
    what = "databricks.agents.deploy" if operation == "deploy" else "the Databricks Review App"
    if kind in ("PermissionDenied", "Unauthenticated") or code in ("PERMISSION_DENIED", "UNAUTHENTICATED") \
            or answer.get("status") in (401, 403):
        hint = (" Deploying needs CAN_MANAGE on the endpoint (or the right to create one) and EXECUTE on the model."
                if operation == "deploy" else "")
        return PermissionDeniedError(f"{what} was refused: {message}.{hint}")
    if kind in ("NotFound", "ResourceDoesNotExist") or code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") \
            or answer.get("status") == 404:
        return NotFoundError(f"{what}: {message}")
    if kind in ("ResourceConflict", "Aborted") or code in ("RESOURCE_CONFLICT", "ABORTED") \
            or "currently updating" in message:
        return ConflictError(f"{what}: {message}")
    if kind in ("ValueError", "BadRequest", "InvalidParameterValue") or code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"):
        return ValidationError(f"{what} refused the request: {message}")
    return BackendUnavailableError(f"{what} failed: {kind}: {message}")


def _child_main() -> int:
    """Child side of ``run_agents_call``: read the request on stdin, print one result line."""
    import contextlib
    import importlib
    import sys

    request = json.loads(sys.stdin.read())
    if request.get("user_token"):
        os.environ["DATABRICKS_TOKEN"] = request["user_token"]
        os.environ["DATABRICKS_AUTH_TYPE"] = "pat"
    module_name, _, function = _CHILD_OPERATIONS[request["operation"]].partition(":")
    out = sys.stdout
    try:
        # databricks-agents prints summaries; keep stdout for the one result line.
        with contextlib.redirect_stdout(sys.stderr):
            result = getattr(importlib.import_module(module_name), function)(request["args"])
        answer: dict[str, Any] = {"ok": True, "result": result}
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which classifies it
        answer = {"ok": False, "error": type(exc).__name__, **_describe(exc)}
    out.write(_RESULT_MARK + json.dumps(answer, default=str) + "\n")
    out.flush()
    return 0


def _describe(exc: Exception) -> dict[str, Any]:
    """Message, error code and HTTP status of a failure, preferring the service's own JSON error."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    code = getattr(exc, "error_code", None)
    text = str(exc).strip().splitlines()
    message = text[0] if text else type(exc).__name__
    if response is not None and status is not None:
        try:
            payload = response.json()
        except Exception:  # noqa: BLE001 - not JSON: keep the exception's text
            payload = None
        if isinstance(payload, dict) and payload.get("message"):
            message, code = str(payload["message"]), payload.get("error_code") or code
    return {"message": message[:1000], "error_code": str(code) if code is not None else None,
            "status": status if isinstance(status, int) else None}


def _child_deploy(args: dict[str, Any]) -> dict[str, Any]:
    """Child side of ``deploy_version``: the real ``databricks.agents.deploy`` call."""
    from databricks import agents

    environment = {"MLFLOW_EXPERIMENT_ID": str(args["experiment_id"])} if args.get("experiment_id") else None
    deployment = agents.deploy(args["model_name"], int(args["model_version"]), endpoint_name=args["endpoint_name"],
                               environment_vars=environment)
    if deployment is None:
        raise RuntimeError("the agents service accepted the deployment but returned no deployment record")
    return {"endpoint_name": deployment.endpoint_name, "served_entity_name": deployment.served_entity_name,
            "endpoint_url": deployment.endpoint_url, "review_app_url": deployment.review_app_url,
            "query_endpoint": deployment.query_endpoint}


if __name__ == "__main__":
    raise SystemExit(_child_main())


def delete_local_endpoint(name: str, *, user: str, expected_version: int, settings: Settings | None = None) -> int:
    """Delete a local endpoint: its record becomes a tombstone (recorded like any write); returns its version.

    A tombstone rather than a removed record keeps the record's version history, so an endpoint
    created again under the same name continues it. ``ConflictError`` if someone changed the
    endpoint since ``expected_version``; ``NotFoundError`` if it does not exist.
    """
    from services import team_state

    settings = settings or get_settings()
    if settings.backend is Backend.DATABRICKS:
        raise ValidationError("Model Serving endpoints are deleted in the Databricks workspace, not from this app.")
    current = team_state.read(ENDPOINT_KEY + name, settings)
    if current is None or current.value.get("deleted"):
        raise NotFoundError(f"Serving endpoint {name!r} does not exist.")
    tombstone = {"name": name, "deleted": True, "updated_by": user,
                 "updated_at": datetime.now(tz=timezone.utc).isoformat()}
    record = team_state.write(ENDPOINT_KEY + name, tombstone, expected_version=expected_version, user=user,
                              settings=settings, note="deleted")
    return record.version
