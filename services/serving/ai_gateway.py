"""MLflow AI Gateway endpoints as a third serving backend (beside Databricks Model Serving and
the local agent gateway).

The gateway lives inside ``mlflow server``: endpoints are stored in its tracking store with
model configurations (a model definition = provider + model + secret; a ``weight``; a linkage
``PRIMARY`` or ``FALLBACK``), a routing strategy, a fallback config, and a usage-tracking
experiment that receives one trace per call. MLflow 3 has no public client API for any of it, so
``_rest`` below is the one place that calls its REST routes (``/api/3.0/mlflow/gateway/...``).

Mapping onto :mod:`services.serving.entities`: an arm (``ServedVersion``) is a PRIMARY model config;
``entity_name`` is the model definition's name, ``model_name`` is ``provider/model`` and
``model_version`` is empty (provider models have no registry version, hence no alias to move).

Usage traces name the endpoint in trace metadata ``mlflow.gateway.endpointId``; the model that
answered is only on the provider span (name ``provider/<provider>/<model>``, attributes
``mlflow.llm.provider`` and ``mlflow.llm.model``). Calls are attributed to an arm by that model
name; when two arms serve the same model name the traces cannot tell them apart and
:class:`CannotAttributeError` says so instead of guessing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

import httpx

from services._clients import get_settings, mlflow_client, translate_errors
from services.errors import (
    AgentOpsError,
    BackendUnavailableError,
    ConfigurationError,
    NotFoundError,
    error_class,
    typed_error,
)
from services.serving.base import ArmTraffic, SplitBackend
from services.serving.entities import Endpoint, EndpointBackend, EndpointState, ServedVersion, TrafficRoute, validate_routes
from services.settings import Backend, Settings, read

BACKEND = EndpointBackend.MLFLOW_GATEWAY
API_PREFIX = "/api/3.0/mlflow/gateway"
TRAFFIC_SPLIT = "REQUEST_BASED_TRAFFIC_SPLIT"
PRIMARY, FALLBACK = "PRIMARY", "FALLBACK"
ENDPOINT_ID_METADATA = "mlflow.gateway.endpointId"
MODEL_ATTRIBUTE = "mlflow.llm.model"
PROVIDER_ATTRIBUTE = "mlflow.llm.provider"
MAX_TRACES = 20_000
# The gateway routes by ``int(weight * 100)`` on a float32 weight, so 0.29 becomes 28. A tiny
# bump keeps the truncation on the intended percent; reading back rounds it away.
_WEIGHT_EPSILON = 1e-5
CONFIG_CACHE_NOTE = (
    "The gateway answers from a cached copy of each endpoint's configuration that an update through "
    "the REST API does not refresh, so requests can follow the previous weights for up to about a "
    "minute (MLflow's endpoint-config cache lifetime) after a change."
)


class CannotAttributeError(AgentOpsError):
    """The gateway's usage traces do not say which arm served a call."""


@dataclass(frozen=True)
class GatewayModel:
    """A model configuration of an endpoint."""

    model_definition_id: str
    name: str
    provider: str
    model_name: str
    linkage: str
    weight: float
    fallback_order: int | None

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.model_name}"


@dataclass(frozen=True)
class Budget:
    budget_policy_id: str
    amount: float
    unit: str
    window: str
    scope: str
    action: str


@dataclass(frozen=True)
class GatewayEndpoint:
    """An AI Gateway endpoint: the common ``Endpoint`` view plus what only the gateway has."""

    endpoint: Endpoint
    endpoint_id: str
    routing_strategy: str | None
    models: tuple[GatewayModel, ...]
    fallback_strategy: str | None
    fallback_max_attempts: int | None
    budgets: tuple[Budget, ...]
    experiment_id: str | None
    usage_tracking: bool
    last_updated_ms: int

    @property
    def primaries(self) -> tuple[GatewayModel, ...]:
        return tuple(m for m in self.models if m.linkage == PRIMARY)

    @property
    def fallbacks(self) -> tuple[GatewayModel, ...]:
        return tuple(sorted((m for m in self.models if m.linkage == FALLBACK),
                            key=lambda m: (m.fallback_order is None, m.fallback_order or 0)))

    @property
    def attribution_problem(self) -> str | None:
        """Why per-arm statistics cannot be read from this endpoint's usage traces, if they cannot."""
        if not self.usage_tracking or not self.experiment_id:
            return ("Usage tracking is off for this endpoint, so the gateway logs no traces to judge the "
                    "arms from. Turn it on in the MLflow AI Gateway settings of the endpoint.")
        names = [m.model_name for m in self.primaries]
        shared = sorted({n for n in names if names.count(n) > 1})
        if shared:
            return (f"Arms {', '.join(shared)} serve the same model name; the gateway's usage traces only "
                    "record the provider and model name of the call (span attributes mlflow.llm.provider / "
                    "mlflow.llm.model), not the model definition, so calls cannot be attributed to one arm.")
        return None


def available(settings: Settings | None = None) -> bool:
    """Whether this backend has an MLflow AI Gateway (an ``mlflow server``)."""
    return (settings or get_settings()).backend is Backend.MLFLOW


# --- the one place that calls the gateway's REST API -------------------------------------------


def _rest(settings: Settings, method: str, path: str, *, params: dict | None = None,
          body: dict | None = None, what: str = "the MLflow AI Gateway") -> dict[str, Any]:
    """Call ``/api/3.0/mlflow/gateway/<path>`` on the tracking server; typed errors on failure."""
    if settings.backend is not Backend.MLFLOW or not settings.mlflow_uri:
        raise ConfigurationError("The MLflow AI Gateway needs AGENTOPS_BACKEND=mlflow and AGENTOPS_MLFLOW_URI "
                                 "pointing at an `mlflow server`.")
    headers = {}
    auth = None
    # Same credentials the MLflow client uses for this server.
    if token := read("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    elif read("MLFLOW_TRACKING_USERNAME"):
        auth = (read("MLFLOW_TRACKING_USERNAME"), read("MLFLOW_TRACKING_PASSWORD"))
    url = f"{settings.mlflow_uri.rstrip('/')}{API_PREFIX}/{path}"
    try:
        response = httpx.request(method, url, params=params, json=body, headers=headers, auth=auth, timeout=30)
    except httpx.HTTPError as exc:
        raise BackendUnavailableError(f"Cannot reach {what} at {settings.mlflow_uri} ({exc}).") from exc
    if response.status_code < 400:
        return response.json() if response.content else {}
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    code = payload.get("error_code", "")
    message = payload.get("message") or response.text[:300] or f"HTTP {response.status_code}"
    if response.status_code == 501:
        raise BackendUnavailableError(f"The AI Gateway is disabled on this server ({message}); "
                                      "start it without MLFLOW_ENABLE_AI_GATEWAY=false.")
    raise typed_error(error_class(code=code, status=response.status_code), what, message)


# --- reading ----------------------------------------------------------------------------------


def _percent(weight: float) -> int:
    return int(math.floor(weight * 100 + 1e-3))


def _shares(primaries: Sequence[GatewayModel], routed: bool) -> list[int]:
    """Percent of requests per primary as the gateway routes them (weights normalised to 100)."""
    if not primaries:
        return []
    if not routed:  # without the traffic-split strategy the gateway uses the first primary only
        return [100] + [0] * (len(primaries) - 1)
    raw = [_percent(m.weight) for m in primaries]
    total = sum(raw)
    if total == 100:
        return raw
    if total <= 0:
        return [0] * len(raw)
    exact = [r * 100 / total for r in raw]
    shares = [int(math.floor(x)) for x in exact]
    for index in sorted(range(len(raw)), key=lambda i: exact[i] - shares[i], reverse=True)[: 100 - sum(shares)]:
        shares[index] += 1
    return shares


def _model(mapping: dict[str, Any]) -> GatewayModel:
    definition = mapping.get("model_definition") or {}
    return GatewayModel(
        model_definition_id=mapping.get("model_definition_id", ""),
        name=definition.get("name") or mapping.get("model_definition_id", ""),
        provider=definition.get("provider", ""),
        model_name=definition.get("model_name", ""),
        linkage=mapping.get("linkage_type", PRIMARY),
        weight=float(mapping.get("weight", 1.0)),
        fallback_order=mapping.get("fallback_order"),
    )


def _budget(raw: dict[str, Any]) -> Budget:
    duration = raw.get("duration") or {}
    return Budget(
        budget_policy_id=raw.get("budget_policy_id", ""),
        amount=float(raw.get("budget_amount", 0.0)),
        unit=raw.get("budget_unit", "USD"),
        window=f"{duration.get('value', '')} {str(duration.get('unit', '')).lower()}".strip(),
        scope=raw.get("target_scope", ""),
        action=raw.get("budget_action", ""),
    )


def _from_rest(raw: dict[str, Any], budgets: Sequence[dict[str, Any]]) -> GatewayEndpoint:
    models = tuple(_model(m) for m in raw.get("model_mappings", []))
    primaries = [m for m in models if m.linkage == PRIMARY]
    routed = raw.get("routing_strategy") == TRAFFIC_SPLIT
    served = tuple(ServedVersion(m.name, m.label, "") for m in primaries)
    routes = tuple(TrafficRoute(m.name, pct) for m, pct in zip(primaries, _shares(primaries, routed)))
    updated_ms = int(raw.get("last_updated_at") or raw.get("created_at") or 0)
    endpoint = Endpoint(
        name=raw.get("name", ""), served=served, routes=routes, state=EndpointState.READY,
        updated_at=datetime.fromtimestamp(updated_ms / 1000, tz=timezone.utc) if updated_ms else None,
        updated_by=raw.get("last_updated_by") or raw.get("created_by") or None, sticky=False, backend=BACKEND,
    )
    fallback = raw.get("fallback_config") or {}
    endpoint_id = raw.get("endpoint_id", "")
    mine = [b for b in budgets if b.get("target_scope") in ("GLOBAL", "WORKSPACE")
            or (b.get("target_scope") == "ENDPOINT" and b.get("target_value") == endpoint_id)]
    return GatewayEndpoint(
        endpoint=endpoint, endpoint_id=endpoint_id, routing_strategy=raw.get("routing_strategy"),
        models=models, fallback_strategy=fallback.get("strategy"), fallback_max_attempts=fallback.get("max_attempts"),
        budgets=tuple(_budget(b) for b in mine), experiment_id=raw.get("experiment_id") or None,
        usage_tracking=bool(raw.get("usage_tracking", True)), last_updated_ms=updated_ms,
    )


def _budget_policies(settings: Settings) -> list[dict[str, Any]]:
    policies: list[dict[str, Any]] = []
    token = None
    while True:
        page = _rest(settings, "GET", "budgets/list", params={"page_token": token} if token else None,
                     what="the AI Gateway budgets")
        policies.extend(page.get("budget_policies", []))
        token = page.get("next_page_token")
        if not token:
            return policies


def list_gateway_endpoints(settings: Settings | None = None) -> list[GatewayEndpoint]:
    """All AI Gateway endpoints with their models, weights, fallbacks and budgets."""
    settings = settings or get_settings()
    raw = _rest(settings, "GET", "endpoints/list", what="the AI Gateway endpoints").get("endpoints", [])
    budgets = _budget_policies(settings)
    return sorted((_from_rest(e, budgets) for e in raw), key=lambda g: g.endpoint.name)


def get_gateway_endpoint(name: str, settings: Settings | None = None) -> GatewayEndpoint:
    """One AI Gateway endpoint by name (``NotFoundError`` if it does not exist)."""
    settings = settings or get_settings()
    raw = _rest(settings, "GET", "endpoints/get", params={"name": name},
                what=f"AI Gateway endpoint {name!r}").get("endpoint")
    if not raw:
        raise NotFoundError(f"AI Gateway endpoint {name!r} does not exist.")
    return _from_rest(raw, _budget_policies(settings))


def list_endpoints(settings: Settings | None = None) -> list[Endpoint]:
    """AI Gateway endpoints in the common ``serving.Endpoint`` shape (backend ``mlflow-gateway``)."""
    return [g.endpoint for g in list_gateway_endpoints(settings)]


def get_endpoint(name: str, settings: Settings | None = None) -> Endpoint:
    return get_gateway_endpoint(name, settings).endpoint


# --- the split backend -----------------------------------------------------------------------


def _weight(pct: int) -> float:
    return 0.0 if pct == 0 else pct / 100 + _WEIGHT_EPSILON


class GatewayBackend(SplitBackend):
    """MLflow AI Gateway endpoints: an arm is a PRIMARY model config, its share the config's weight."""

    kind = EndpointBackend.MLFLOW_GATEWAY

    def list_endpoints(self) -> list[Endpoint]:
        return list_endpoints(self.settings)

    def read(self, name: str) -> Endpoint:
        return get_gateway_endpoint(name, self.settings).endpoint

    @classmethod
    def labels(cls, endpoint: Endpoint) -> dict[str, str]:
        """``definition (provider/model)``, as shown in previews and the audit trail."""
        return {s.entity_name: f"{s.entity_name} ({s.model_name})" for s in endpoint.served}

    def write(self, seen: Endpoint, after: Endpoint, *, user: str) -> Endpoint:
        """Write the planned weights to the gateway (fallbacks kept); returns the endpoint as it then reads."""
        validate_routes(after.served, after.routes)
        current = get_gateway_endpoint(seen.name, self.settings)
        share = {r.entity_name: r.percentage for r in after.routes}
        configs = []
        for model in current.models:
            config: dict[str, Any] = {"model_definition_id": model.model_definition_id, "linkage_type": model.linkage}
            if model.linkage == PRIMARY:
                config["weight"] = _weight(share[model.name])
            else:
                config["weight"] = model.weight
                if model.fallback_order is not None:
                    config["fallback_order"] = model.fallback_order
            configs.append(config)
        body: dict[str, Any] = {"endpoint_id": current.endpoint_id, "routing_strategy": TRAFFIC_SPLIT,
                                "model_configs": configs, "updated_by": user}
        # Replacing the model configs resets the fallback strategy unless it is sent again.
        if current.fallback_strategy or current.fallback_max_attempts:
            body["fallback_config"] = {k: v for k, v in (("strategy", current.fallback_strategy),
                                                         ("max_attempts", current.fallback_max_attempts)) if v}
        _rest(self.settings, "POST", "endpoints/update", body=body, what=f"AI Gateway endpoint {seen.name!r}")
        return get_gateway_endpoint(seen.name, self.settings).endpoint

    def arm_traffic(self, endpoint: Endpoint, experiment_ids: Sequence[str], start: datetime,
                    end: datetime) -> tuple[list[ArmTraffic], int]:
        """Each arm's calls from the endpoint's own usage traces (``experiment_ids`` is not used).

        Raises ``CannotAttributeError`` when the traces cannot say which arm served a call.
        """
        return usage_by_arm(endpoint.name, start, end, settings=self.settings)


# --- usage traces -> per-arm samples ----------------------------------------------------------


def _served_model(trace: Any) -> tuple[str | None, bool]:
    """Model name of the first provider span of a usage trace (the arm the router picked) and
    whether that call failed (a fallback may still have answered, leaving the trace OK)."""
    spans = [s for s in (trace.data.spans if trace.data else []) if s.parent_id is not None
             and s.get_attribute(MODEL_ATTRIBUTE)]
    if not spans:
        return None, False
    first = min(spans, key=lambda s: s.start_time_ns)
    return str(first.get_attribute(MODEL_ATTRIBUTE)), str(getattr(first.status, "status_code", "")).endswith("ERROR")


def usage_by_arm(endpoint_name: str, start: datetime, end: datetime, *,
                 settings: Settings | None = None) -> tuple[list[ArmTraffic], int]:
    """Each arm's usage traces in the window, and how many traces name no arm.

    Raises ``CannotAttributeError`` when the traces cannot say which arm served a call.
    """
    gateway = get_gateway_endpoint(endpoint_name, settings)
    if problem := gateway.attribution_problem:
        raise CannotAttributeError(problem)
    by_model = {m.model_name: m for m in gateway.primaries}
    client = mlflow_client(settings)
    clauses = [
        f"trace.timestamp_ms >= {int(start.timestamp() * 1000)}",
        f"trace.timestamp_ms < {int(end.timestamp() * 1000)}",
        f"metadata.`{ENDPOINT_ID_METADATA}` = '{gateway.endpoint_id}'",
    ]
    infos: dict[str, list[Any]] = {m.name: [] for m in gateway.primaries}
    failed: dict[str, int] = {m.name: 0 for m in gateway.primaries}
    unattributed = 0
    seen = 0
    token = None
    with translate_errors(f"usage traces of {endpoint_name}"):
        while seen < MAX_TRACES:
            page = client.search_traces(locations=[gateway.experiment_id], filter_string=" AND ".join(clauses),
                                        max_results=500, page_token=token, include_spans=True)
            for trace in page:
                seen += 1
                model_name, arm_failed = _served_model(trace)
                model = by_model.get(model_name or "")
                if model is None:
                    unattributed += 1
                else:
                    infos[model.name].append(trace.info)
                    failed[model.name] += int(arm_failed or str(trace.info.state).endswith("ERROR"))
            token = page.token
            if not token:
                break
    served = {s.entity_name: s for s in gateway.endpoint.served}
    # An arm's error is its own provider call failing, even when a fallback then answered.
    return [ArmTraffic(served[m.name], tuple(infos[m.name]), bool(token), failed[m.name])
            for m in gateway.primaries], unattributed


def percentages(endpoint: Endpoint) -> dict[str, int]:
    """Share per arm keyed ``definition (provider/model)``, as shown in previews and the audit trail."""
    return GatewayBackend.percentages(endpoint)
