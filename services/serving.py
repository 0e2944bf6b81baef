"""Serving endpoints and their traffic splits.

Locally, endpoint configurations live in ``<data dir>/endpoints.json`` and the local gateway
serves them; on Databricks they are Model Serving endpoints read through ``databricks-sdk``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable

from services._clients import get_settings, translate_errors, workspace_client
from services.errors import ValidationError
from services.settings import Backend, Settings


class EndpointState(StrEnum):
    READY = "ready"
    UPDATING = "update in progress"
    FAILED = "update failed"
    NOT_READY = "not ready"


@dataclass(frozen=True)
class ServedVersion:
    """A registered model version served under ``entity_name``."""

    entity_name: str
    model_name: str
    model_version: str


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
        with translate_errors("Model Serving"):
            endpoints = workspace_client(settings).serving_endpoints
            # The list call returns config summaries without traffic routes; get() has them.
            return [_from_sdk(endpoints.get(summary.name)) for summary in endpoints.list()]
    return sorted(_read_local(settings).values(), key=lambda e: e.name)


# --- local store -----------------------------------------------------------------------------


def local_config_path(settings: Settings) -> Path:
    return settings.data_dir / "endpoints.json"


def _read_local(settings: Settings) -> dict[str, Endpoint]:
    path = local_config_path(settings)
    if not path.exists():
        return {}
    with translate_errors(f"endpoint configuration {path}"):
        raw = json.loads(path.read_text(encoding="utf-8"))
    return {item["name"]: _endpoint_from_json(item) for item in raw.get("endpoints", [])}


def save_local_endpoint(endpoint: Endpoint, settings: Settings | None = None) -> Endpoint:
    """Validate and store one local endpoint configuration atomically."""
    settings = settings or get_settings()
    validate_routes(endpoint.served, endpoint.routes)
    endpoints = _read_local(settings)
    endpoints[endpoint.name] = endpoint
    path = local_config_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"endpoints": [_endpoint_to_json(e) for e in sorted(endpoints.values(), key=lambda e: e.name)]}
    # Write-then-rename so a crash never leaves a half-written config for the gateway.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".endpoints.", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
    os.replace(tmp, path)
    return endpoint


def _endpoint_to_json(endpoint: Endpoint) -> dict[str, Any]:
    data = asdict(endpoint)
    data["state"] = endpoint.state.value
    data["updated_at"] = endpoint.updated_at.isoformat() if endpoint.updated_at else None
    return data


def _endpoint_from_json(item: dict[str, Any]) -> Endpoint:
    return Endpoint(
        name=item["name"],
        served=tuple(ServedVersion(**s) for s in item.get("served", [])),
        routes=tuple(TrafficRoute(**r) for r in item.get("routes", [])),
        state=EndpointState(item.get("state", EndpointState.READY.value)),
        updated_at=datetime.fromisoformat(item["updated_at"]) if item.get("updated_at") else None,
        updated_by=item.get("updated_by"),
        sticky=bool(item.get("sticky", False)),
        backend="local",
    )


# --- Databricks --------------------------------------------------------------------------------


def _from_sdk(endpoint: Any) -> Endpoint:
    config = endpoint.config
    served = tuple(
        ServedVersion(
            entity_name=entity.name or "",
            model_name=entity.entity_name or "",
            model_version=str(entity.entity_version or ""),
        )
        for entity in ((config.served_entities if config else None) or [])
    )
    routes = tuple(
        TrafficRoute(route.served_entity_name or route.served_model_name or "", int(route.traffic_percentage or 0))
        for route in ((config.traffic_config.routes if config and config.traffic_config else None) or [])
    )
    state = EndpointState.NOT_READY
    if endpoint.state is not None:
        update = str(getattr(endpoint.state.config_update, "value", endpoint.state.config_update) or "")
        ready = str(getattr(endpoint.state.ready, "value", endpoint.state.ready) or "")
        if update == "IN_PROGRESS":
            state = EndpointState.UPDATING
        elif update == "UPDATE_FAILED":
            state = EndpointState.FAILED
        elif ready == "READY":
            state = EndpointState.READY
    updated = (
        datetime.fromtimestamp(endpoint.last_updated_timestamp / 1000, tz=timezone.utc)
        if endpoint.last_updated_timestamp
        else None
    )
    return Endpoint(endpoint.name, served, routes, state, updated, endpoint.creator, False, "databricks")


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
    return {
        f"{by_entity[r.entity_name].model_name} v{by_entity[r.entity_name].model_version}"
        if r.entity_name in by_entity else r.entity_name: r.percentage
        for r in endpoint.routes
    }


def entity_name_for(model_name: str, version: str) -> str:
    """Served-entity name for a registered version, in Databricks' agents.deploy style."""
    return f"{model_name.replace('.', '-')}_{version}"


def get_endpoint(name: str, settings: Settings | None = None) -> Endpoint:
    """One endpoint by name (``NotFoundError`` if it does not exist)."""
    from services.errors import NotFoundError

    settings = settings or get_settings()
    if settings.backend is Backend.DATABRICKS:
        with translate_errors(f"serving endpoint {name!r}"):
            return _from_sdk(workspace_client(settings).serving_endpoints.get(name))
    endpoint = _read_local(settings).get(name)
    if endpoint is None:
        raise NotFoundError(f"Serving endpoint {name!r} does not exist.")
    return endpoint


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
    before = get_endpoint(endpoint_name, settings)
    existing = {(s.model_name, s.model_version): s for s in before.served}
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
) -> Endpoint:
    """Apply a planned split and record it in the audit trail; returns the endpoint as stored.

    With ``identity`` (pages pass it), the acting user's role is checked first: changing traffic
    needs the operator role, and on Databricks with user authorization a user token.
    """
    from services import roles, traffic_audit
    from services.errors import ConflictError

    settings = settings or get_settings()
    if not reason.strip():
        raise ValidationError("Give a reason for the traffic change; it goes into the audit trail.")
    if identity is not None:
        roles.enforce(identity, roles.Action.CHANGE_TRAFFIC, settings)
    if plan.before.backend == "mlflow-gateway":
        from services import ai_gateway

        return ai_gateway.apply_weights(plan, user=user, reason=reason, action=action, settings=settings)
    before_pct, after_pct = plan.percentages()
    if settings.backend is Backend.DATABRICKS:
        stored = _apply_databricks(plan, settings, user_token, progress)
    else:
        current = _read_local(settings).get(plan.before.name)
        if current is None or (current.served, current.routes, current.sticky) != (
            plan.before.served, plan.before.routes, plan.before.sticky
        ):
            raise ConflictError(
                f"The split of {plan.before.name!r} changed since this change was prepared "
                f"(by {current.updated_by if current else 'someone'}); review the new split and try again."
            )
        stored = save_local_endpoint(
            Endpoint(
                name=plan.after.name, served=plan.after.served, routes=plan.after.routes,
                state=EndpointState.READY, updated_at=datetime.now(tz=timezone.utc), updated_by=user,
                sticky=plan.after.sticky, backend="local",
            ),
            settings,
        )
    traffic_audit.record_traffic_change(
        plan.before.name, action=action, user=user, reason=reason, before=before_pct, after=after_pct, settings=settings,
    )
    return stored


def _apply_databricks(plan: SplitPlan, settings: Settings, user_token: str | None, progress) -> Endpoint:
    from datetime import timedelta

    from databricks.sdk.errors import OperationFailed, PermissionDenied, ResourceConflict
    from databricks.sdk.service import serving as sdk

    from services.errors import ConflictError, PermissionDeniedError

    client = workspace_client(settings, user_token=user_token)
    name = plan.before.name
    try:
        current = client.serving_endpoints.get(name)
        templates = {e.name: e for e in (current.config.served_entities or [])} if current.config else {}
        default = next(iter(templates.values()), None)
        entities = []
        for served in plan.after.served:
            template = templates.get(served.entity_name) or default
            entities.append(
                sdk.ServedEntityInput(
                    name=served.entity_name,
                    entity_name=served.model_name,
                    entity_version=served.model_version,
                    workload_size=getattr(template, "workload_size", None) or "Small",
                    scale_to_zero_enabled=getattr(template, "scale_to_zero_enabled", True),
                )
            )
        routes = [sdk.Route(served_entity_name=r.entity_name, traffic_percentage=r.percentage) for r in plan.after.routes]
        waiter = client.serving_endpoints.update_config(
            name, served_entities=entities, traffic_config=sdk.TrafficConfig(routes=routes)
        )
        if progress:
            progress(f"Update of {name!r} submitted; waiting for Model Serving to roll it out…")

        def report(endpoint: Any) -> None:
            if progress and endpoint.state is not None:
                progress(f"{name}: config update {getattr(endpoint.state.config_update, 'value', endpoint.state.config_update)}")

        detailed = waiter.result(timeout=timedelta(minutes=30), callback=report)
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
