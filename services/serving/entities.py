"""What the serving services hand to pages: endpoints, their served versions and traffic routes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from services.errors import ValidationError


class EndpointBackend(StrEnum):
    """Where an endpoint lives, and so which ``SplitBackend`` reads and writes its split."""

    LOCAL = "local"  # the local agent gateway's endpoints, stored as team state in the tracking store
    DATABRICKS = "databricks"  # Databricks Model Serving
    MLFLOW_GATEWAY = "mlflow-gateway"  # MLflow AI Gateway endpoints inside an ``mlflow server``


class EndpointState(StrEnum):
    READY = "ready"
    UPDATING = "update in progress"
    FAILED = "update failed"
    CANCELED = "update canceled"
    NOT_READY = "not ready"


def version_label(model_name: str, version: str | None) -> str:
    """``model vN``, or just the model when it has no registry version (MLflow AI Gateway arms)."""
    return f"{model_name} v{version}" if version else model_name


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
        """How people name the arm: ``model vN`` for a registered version, ``provider/model`` for a gateway model."""
        return version_label(self.model_name, self.model_version)


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
    backend: EndpointBackend = EndpointBackend.LOCAL
    # The concurrency token of the stored configuration: Model Serving's config version on Databricks, the
    # version of the team-state record for local endpoints. A write names the one it read.
    config_version: int | None = field(default=None, compare=False)
    # Databricks: a rollout's pending split, why the endpoint cannot be edited, and why it could not be
    # read (an endpoint that fails alone).
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


def describe_split(percentages: dict[str, int]) -> str:
    """``arm 90%, arm 10%`` for messages."""
    return ", ".join(f"{arm} {pct}%" for arm, pct in percentages.items()) or "(no routes)"


def endpoint_to_json(endpoint: Endpoint) -> dict[str, Any]:
    """An endpoint as the JSON the team-state record and the local gateway's ``/endpoints`` hold."""
    data = asdict(endpoint)
    data.pop("config_version", None)
    data["state"] = endpoint.state.value
    data["backend"] = str(endpoint.backend)
    data["updated_at"] = endpoint.updated_at.isoformat() if endpoint.updated_at else None
    return data


def endpoint_from_json(item: dict[str, Any], version: int = 0) -> Endpoint:
    """A local endpoint from its stored JSON; ``version`` is the record's version (the concurrency token)."""
    return Endpoint(
        name=item["name"],
        served=tuple(ServedVersion(**s) for s in item.get("served", [])),
        routes=tuple(TrafficRoute(**r) for r in item.get("routes", [])),
        state=EndpointState(item.get("state", EndpointState.READY.value)),
        updated_at=datetime.fromisoformat(item["updated_at"]) if item.get("updated_at") else None,
        updated_by=item.get("updated_by"),
        sticky=bool(item.get("sticky", False)),
        backend=EndpointBackend.LOCAL,
        config_version=version,
    )
