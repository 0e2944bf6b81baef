"""The one interface every serving backend implements: read an endpoint's split with its concurrency
token, write a new split, name the arms' shares, and find each arm's traffic.

``services.serving.backends`` chooses the implementation (local, Databricks Model Serving, MLflow AI
Gateway); nothing else in the app asks which backend an endpoint lives on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, ClassVar, Sequence

from services import registry, traces
from services._clients import mlflow_client, translate_errors
from services.errors import ConflictError
from services.serving.entities import Endpoint, EndpointBackend, ServedVersion
from services.settings import Settings
from services.filter_strings import escape

MAX_TRACES_PER_ARM = 20_000


@dataclass(frozen=True)
class ArmTraffic:
    """The trace infos of one arm in a window; ``failed`` counts its failed calls when the backend knows
    better than the trace state (an AI Gateway fallback may have answered a failed call)."""

    served: ServedVersion
    infos: tuple[Any, ...]
    truncated: bool
    failed: int | None = None


class SplitBackend(ABC):
    """Reads and writes the traffic splits of one kind of endpoint."""

    kind: ClassVar[EndpointBackend]

    def __init__(self, settings: Settings, *, user_token: str | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.user_token = user_token
        self.progress = progress

    @abstractmethod
    def list_endpoints(self) -> list[Endpoint]:
        """Every endpoint of this backend, sorted for display."""

    @abstractmethod
    def read(self, name: str) -> Endpoint:
        """The endpoint as stored now, with its concurrency token (``config_version``) when it has one."""

    def get(self, name: str) -> Endpoint:
        """The endpoint as shown to people (with who changed it last, where the backend does not say)."""
        return self.read(name)

    @abstractmethod
    def write(self, seen: Endpoint, after: Endpoint, *, user: str) -> Endpoint:
        """Write ``after``'s split over ``seen`` (the state just read); returns the endpoint as stored.

        Refuses (``ConflictError``) when the stored configuration is no longer ``seen``.
        """

    def conflict(self, planned: Endpoint, current: Endpoint) -> ConflictError | None:
        """Why ``current`` is no longer the endpoint a plan was made against (None: unchanged)."""
        if (current.served, current.routes, current.sticky) == (planned.served, planned.routes, planned.sticky):
            return None
        return ConflictError(f"The split of {current.name!r} changed since this change was prepared "
                             f"(by {current.updated_by or 'someone'}); review the new split and try again.")

    def holds(self, endpoint: Endpoint, target: Endpoint) -> bool:
        """Whether ``endpoint`` serves ``target``'s split."""
        return self.percentages(endpoint) == self.percentages(target)

    @classmethod
    def labels(cls, endpoint: Endpoint) -> dict[str, str]:
        """How previews and the audit trail name each arm (entity name -> label)."""
        return {s.entity_name: s.label for s in endpoint.served}

    @classmethod
    def percentages(cls, endpoint: Endpoint) -> dict[str, int]:
        """Share per arm, keyed by the arm's label."""
        labels = cls.labels(endpoint)
        return {labels.get(r.entity_name, r.entity_name): r.percentage for r in endpoint.routes}

    def arm_traffic(self, endpoint: Endpoint, experiment_ids: Sequence[str], start: datetime,
                    end: datetime) -> tuple[list[ArmTraffic], int]:
        """Each arm's traces in the window (metadata only) and how many traces name no arm.

        An agent endpoint's traces carry its name (tag); an arm's are its version's, linked by
        ``mlflow.modelId`` (version -> LoggedModel), or by the arm tag when the version has no LoggedModel
        or one version serves two arms.
        """
        client = mlflow_client(self.settings)
        found = []
        for served in endpoint.served:
            clauses = [
                f"trace.timestamp_ms >= {int(start.timestamp() * 1000)}",
                f"trace.timestamp_ms < {int(end.timestamp() * 1000)}",
                f"tag.`{traces.ENDPOINT_TAG}` = '{escape(endpoint.name)}'",
            ]
            model_id = _model_id(client, served) if sum(
                (s.model_name, s.model_version) == (served.model_name, served.model_version) for s in endpoint.served
            ) == 1 else None
            if model_id:
                clauses.append(f"metadata.`mlflow.modelId` = '{escape(model_id)}'")
            else:
                clauses.append(f"tag.`{traces.ARM_TAG}` = '{escape(served.entity_name)}'")
            infos: list[Any] = []
            token = None
            with translate_errors(f"traces of {endpoint.name}"):
                while len(infos) < MAX_TRACES_PER_ARM:
                    page = client.search_traces(locations=list(experiment_ids), filter_string=" AND ".join(clauses),
                                                max_results=500, page_token=token, include_spans=False)
                    infos.extend(t.info for t in page)
                    token = page.token
                    if not token:
                        break
            found.append(ArmTraffic(served, tuple(infos), bool(token)))
        return found, 0


def _model_id(client: Any, served: ServedVersion) -> str | None:
    try:
        return registry.model_id_of(client.get_model_version(served.model_name, str(served.model_version)))
    except Exception:  # noqa: BLE001 - a version we cannot read: fall back to the arm tag
        return None
