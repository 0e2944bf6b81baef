"""The one place that chooses a serving backend: by the endpoint's ``EndpointBackend``, or for the
app's own agent endpoints by the configured ``AGENTOPS_BACKEND``."""

from __future__ import annotations

from typing import Callable

from services.serving.ai_gateway import GatewayBackend
from services.serving.base import SplitBackend
from services.serving.entities import Endpoint, EndpointBackend
from services.serving.local import LocalBackend
from services.serving.model_serving import ModelServingBackend
from services.settings import Backend, Settings

_BACKENDS: dict[EndpointBackend, type[SplitBackend]] = {
    EndpointBackend.LOCAL: LocalBackend,
    EndpointBackend.DATABRICKS: ModelServingBackend,
    EndpointBackend.MLFLOW_GATEWAY: GatewayBackend,
}
# Agent endpoints: Model Serving on Databricks, the local gateway's team-state records otherwise.
_AGENT_ENDPOINTS: dict[Backend, EndpointBackend] = {
    Backend.DATABRICKS: EndpointBackend.DATABRICKS,
    Backend.LOCAL: EndpointBackend.LOCAL,
    Backend.MLFLOW: EndpointBackend.LOCAL,
}


def agent_endpoints_backend(settings: Settings) -> EndpointBackend:
    """Where the app's agent endpoints live under these settings."""
    return _AGENT_ENDPOINTS[settings.backend]


def split_backend(kind: EndpointBackend | None, settings: Settings, *, user_token: str | None = None,
                  progress: Callable[[str], None] | None = None) -> SplitBackend:
    """The backend for endpoints of ``kind`` (None: the app's agent endpoints)."""
    chosen = EndpointBackend(kind) if kind is not None else agent_endpoints_backend(settings)
    return _BACKENDS[chosen](settings, user_token=user_token, progress=progress)


def percentages(endpoint: Endpoint) -> dict[str, int]:
    """Share per arm of ``endpoint``, keyed by the labels its backend uses in previews and the audit trail."""
    return _BACKENDS[EndpointBackend(endpoint.backend)].percentages(endpoint)


def arm_labels(endpoint: Endpoint) -> dict[str, str]:
    """How previews, the split editor and the audit trail name each arm of ``endpoint`` (entity -> label)."""
    return _BACKENDS[EndpointBackend(endpoint.backend)].labels(endpoint)
