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
from typing import Any

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
