"""Local endpoints: the local agent gateway's configurations, stored as team state.

Local and mlflow-backend endpoint configurations are one versioned record per endpoint in the
tracking store (``services.team_state``), so everyone on the store sees the same splits. The record's
version is the concurrency token: a write names the version it read.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from services import team_state
from services._clients import get_settings, translate_errors
from services.errors import ConflictError, NotFoundError, ValidationError
from services.serving.base import SplitBackend
from services.serving.entities import (
    Endpoint,
    EndpointBackend,
    EndpointState,
    describe_split,
    endpoint_from_json,
    endpoint_to_json,
    validate_routes,
)
from services.settings import Backend, Settings

ENDPOINT_KEY = "endpoint:"


def local_config_path(settings: Settings) -> Path:
    """The embedded store's former endpoint file, migrated into the tracking store once."""
    return settings.data_dir / "endpoints.json"


def read_local(settings: Settings) -> dict[str, Endpoint]:
    """Every local endpoint by name, each with its record version."""
    records = team_state.read_all(settings, ENDPOINT_KEY)
    if not records and _migrate_endpoint_file(settings):
        records = team_state.read_all(settings, ENDPOINT_KEY)
    return {r.value["name"]: endpoint_from_json(r.value, r.version) for r in records.values()
            if not r.value.get("deleted")}  # a deleted endpoint is a tombstone record (delete_local_endpoint)


def _migrate_endpoint_file(settings: Settings) -> bool:
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
    settings = settings or get_settings()
    validate_routes(endpoint.served, endpoint.routes)
    key = ENDPOINT_KEY + endpoint.name
    if expected_version is None:
        current = team_state.read(key, settings)
        expected_version = current.version if current else 0
    record = team_state.write(key, endpoint_to_json(endpoint), expected_version=expected_version,
                              user=endpoint.updated_by or "unknown", settings=settings,
                              note=describe_split(LocalBackend.percentages(endpoint)))
    return endpoint_from_json(record.value, record.version)


class LocalBackend(SplitBackend):
    """Endpoints of the local gateway (embedded store or ``mlflow server``)."""

    kind = EndpointBackend.LOCAL

    def list_endpoints(self) -> list[Endpoint]:
        return sorted(read_local(self.settings).values(), key=lambda e: e.name)

    def read(self, name: str) -> Endpoint:
        endpoint = read_local(self.settings).get(name)
        if endpoint is None:
            raise NotFoundError(f"Serving endpoint {name!r} does not exist.")
        return endpoint

    def write(self, seen: Endpoint, after: Endpoint, *, user: str) -> Endpoint:
        return save_local_endpoint(
            Endpoint(name=after.name, served=after.served, routes=after.routes, state=EndpointState.READY,
                     updated_at=datetime.now(tz=timezone.utc), updated_by=user, sticky=after.sticky,
                     backend=EndpointBackend.LOCAL),
            self.settings,
            expected_version=seen.config_version,
        )

    def holds(self, endpoint: Endpoint, target: Endpoint) -> bool:
        """The split and the stickiness (only local endpoints have sticky routing)."""
        return super().holds(endpoint, target) and endpoint.sticky == target.sticky


def delete_local_endpoint(name: str, *, user: str, expected_version: int, settings: Settings | None = None) -> int:
    """Delete a local endpoint: its record becomes a tombstone (recorded like any write); returns its version.

    A tombstone rather than a removed record keeps the record's version history, so an endpoint
    created again under the same name continues it. ``ConflictError`` if someone changed the
    endpoint since ``expected_version``; ``NotFoundError`` if it does not exist.
    """
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
