"""MLflow REST on the Databricks harness: calls forwarded to a real ``mlflow server``.

Plug an ``MlflowForwarder`` into ``DatabricksHarness.handlers`` and point the app at the harness
(``AGENTOPS_BACKEND=databricks``, ``DATABRICKS_HOST=<harness url>``). MLflow's own Databricks
stores (``DatabricksTracingRestStore`` for the ``databricks`` tracking URI,
``UcModelRegistryStore`` for ``databricks-uc``) then talk to the harness, and this module answers:

* ``/api/2.0/mlflow/...`` and ``/api/3.0/mlflow/...`` (experiments, runs, traces V3, assessments):
  forwarded unchanged, query string and body included.
* ``/api/2.0/mlflow/unity-catalog/...`` (the UC registry: registered models, versions, aliases,
  tags): translated to the OSS server's workspace-registry calls and the answers rebuilt as the UC
  protos (``databricks_uc_registry_messages_pb2``), so MLflow's UC store parses what a workspace
  would send. Like Unity Catalog, a model-version search without a ``name``/``run_id`` filter is
  refused (400) and search results carry no tags or aliases.
* ``/api/4.0/mlflow/traces/<location>/batchGet``: what MLflow calls to load spans of a trace kept in
  the tracking store; answered from the OSS ``/api/3.0/mlflow/traces/batchGet`` and re-encoded as the
  Databricks tracing proto.
* Other ``/api/4.0`` and ``/api/5.0`` tracing calls: 404 ``ENDPOINT_NOT_FOUND``, which MLflow treats
  as "this workspace has no V4 API" and falls back to V3 (e.g. trace search).

Every call is recorded with the principal its bearer token belongs to (SCIM users of the harness,
plus service principals registered by ``AppServicePrincipal``); an unknown or missing token gets 401.
``deny(...)`` refuses chosen calls with 403 ``PERMISSION_DENIED`` (e.g. a user who does not own a
registered model setting an alias), so the app's message naming the missing grant can be tested.

Not forwarded faithfully (answered 501, or left to the OSS server's own shapes):

* UC model-version creation (``model-versions/create``, ``generate-temporary-credentials``,
  ``finalize``): a workspace hands out cloud-storage credentials for the upload; there is no such
  storage here. Seed versions straight into the OSS server with the local seeding code instead.
* Managed evaluations (``/api/2.0/managed-evals/...``): scheduled scorers and scorer versions are
  answered by ``managed_evals`` (``tests/harness/managed_evals.py``) when one is installed, after
  the token and ``deny`` checks; the rest 501. OTLP span export (``/api/2.0/otel/...``): 501; trace
  logging is seeded directly.
* Registered-model names pass through unchanged (no ``catalog.schema.`` prefix is added).
* Artifact downloads: not routed (MLflow resolves artifact credentials process-wide anyway).
"""

from __future__ import annotations

import base64
import inspect
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Mapping
from urllib.parse import parse_qs, urlencode

import httpx

_UC = "/api/2.0/mlflow/unity-catalog/"
_V4_TRACES = "/api/4.0/mlflow/traces/"
_MLFLOW_PREFIXES = ("/api/2.0/mlflow/", "/api/3.0/mlflow/", "/api/2.0/mlflow-artifacts/")
_DATABRICKS_ONLY = ("/api/4.0/mlflow/", "/api/5.0/mlflow/", "/api/2.0/otel/", "/api/2.0/managed-evals/")

# (method, path) -> key of the answer to rebuild as UC protos, or None. The UC routes forwarded have the
# same path under the OSS registry API.
_UC_ROUTES: dict[tuple[str, str], str | None] = {
    ("GET", "registered-models/get"): "registered_model",
    ("GET", "registered-models/search"): "registered_models",
    ("POST", "registered-models/create"): "registered_model",
    ("PATCH", "registered-models/update"): "registered_model",
    ("DELETE", "registered-models/delete"): None,
    ("POST", "registered-models/alias"): None,
    ("DELETE", "registered-models/alias"): None,
    ("GET", "registered-models/alias"): "model_version",
    ("POST", "registered-models/set-tag"): None,
    ("DELETE", "registered-models/delete-tag"): None,
    ("GET", "model-versions/get"): "model_version",
    ("GET", "model-versions/search"): "model_versions",
    ("PATCH", "model-versions/update"): "model_version",
    ("DELETE", "model-versions/delete"): None,
    ("POST", "model-versions/set-tag"): None,
    ("DELETE", "model-versions/delete-tag"): None,
    ("GET", "model-versions/get-download-uri"): None,
}
_UC_NOT_FORWARDED = {"model-versions/create", "model-versions/generate-temporary-credentials",
                     "model-versions/finalize"}
_RM_FIELDS = ("name", "creation_timestamp", "last_updated_timestamp", "user_id", "description", "tags", "aliases")
_MV_FIELDS = ("name", "version", "creation_timestamp", "last_updated_timestamp", "user_id", "description",
              "source", "run_id", "status", "status_message", "tags", "model_id")


@dataclass(frozen=True)
class ForwardedCall:
    """One MLflow REST call the harness received, and who made it."""

    method: str
    path: str
    query: str
    principal: str | None
    token_hint: str  # first characters of the bearer token only; never the whole token
    status: int
    body: Any = None


@dataclass(frozen=True)
class Denial:
    """Refuse ``method path`` for ``principal`` (on ``resource`` when given) with 403."""

    principal: str
    method: str
    path: str
    resource: str | None
    message: str


def _raw_request_path() -> str:
    """The request's path *with* its query string.

    ``DatabricksHarness`` hands extensions the path without the query, but MLflow sends every GET's
    fields in the query string. The request handler is the caller a few frames up; fail loudly if
    the harness changes shape.
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, BaseHTTPRequestHandler):
                return candidate.path
            frame = frame.f_back
    finally:
        del frame
    raise RuntimeError("mlflow_forward: no HTTP request handler on the stack; the harness changed")


def bearer_token(headers: Mapping[str, str] | Any) -> str | None:
    value = (headers.get("Authorization") or "") if headers is not None else ""
    return value[len("Bearer "):].strip() if value.startswith("Bearer ") else None


@dataclass
class AppServicePrincipal:
    """The app's own identity on Databricks Apps: OAuth M2M (client id/secret -> bearer token).

    A harness handler answering the SDK's host metadata, OIDC discovery and token endpoint, so
    ``WorkspaceClient()`` and MLflow's ``databricks`` store authenticate from
    ``DATABRICKS_CLIENT_ID`` / ``DATABRICKS_CLIENT_SECRET`` exactly as on Apps.
    """

    client_id: str
    client_secret: str
    name: str = "app-service-principal"
    host: str = ""
    issued: dict[str, str] = field(default_factory=dict)  # token -> principal name

    def __call__(self, method: str, path: str, body: Any, headers: Any) -> tuple[int, Any] | None:
        if method == "GET" and path == "/.well-known/databricks-config":
            return 200, {"oidc_endpoint": f"{self.host}/oidc", "workspace_id": "1234567890"}
        if method == "GET" and path == "/oidc/.well-known/oauth-authorization-server":
            return 200, {"authorization_endpoint": f"{self.host}/oidc/v1/authorize",
                         "token_endpoint": f"{self.host}/oidc/v1/token"}
        if method == "POST" and path == "/oidc/v1/token":
            basic = (headers.get("Authorization") or "").removeprefix("Basic ").strip()
            try:
                client_id, _, secret = base64.b64decode(basic).decode().partition(":")
            except ValueError:
                client_id, secret = "", ""
            if (client_id, secret) != (self.client_id, self.client_secret):
                return 401, {"error": "invalid_client", "error_description": "Client authentication failed"}
            token = "sp-" + secrets.token_hex(16)
            self.issued[token] = self.name
            return 200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
        return None


@dataclass
class MlflowForwarder:
    """A ``DatabricksHarness`` handler forwarding MLflow REST calls to ``server_url``."""

    server_url: str
    users: dict[str, Any] = field(default_factory=dict)  # token -> iam.User (share harness.users)
    service_principals: list[AppServicePrincipal] = field(default_factory=list)
    denials: list[Denial] = field(default_factory=list)
    calls: list[ForwardedCall] = field(default_factory=list)
    # Answers the scheduled-scorer calls under /api/2.0/managed-evals/ (a ``ManagedEvalsApi``); None: 501.
    managed_evals: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _http: httpx.Client | None = None

    # --- configuration ------------------------------------------------------------------------

    def deny(self, principal: str, method: str, path: str, *, resource: str | None = None,
             message: str | None = None) -> Denial:
        """Refuse a call with 403 PERMISSION_DENIED (``path`` is the full REST path)."""
        denial = Denial(principal, method.upper(), path, resource,
                        message or f"User {principal} does not have permission to call {path}"
                        + (f" on '{resource}'" if resource else "") + ".")
        self.denials.append(denial)
        return denial

    def principal_of(self, token: str | None) -> str | None:
        if not token:
            return None
        user = self.users.get(token)
        if user is not None:
            return user.user_name
        for sp in self.service_principals:
            if token in sp.issued:
                return sp.issued[token]
        return None

    def calls_by(self, principal: str) -> list[ForwardedCall]:
        return [c for c in self.calls if c.principal == principal]

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    # --- the handler ----------------------------------------------------------------------------

    def __call__(self, method: str, path: str, body: Any, headers: Any) -> tuple[int, Any] | None:
        if not path.startswith(_MLFLOW_PREFIXES + _DATABRICKS_ONLY):
            return None
        raw = _raw_request_path()
        query = raw.partition("?")[2]
        token = bearer_token(headers)
        principal = self.principal_of(token)
        if principal is None:
            answer = (401, {"error_code": "UNAUTHENTICATED", "message": "Invalid access token."})
        else:
            answer = self._answer(method, path, query, body, principal)
        with self._lock:
            self.calls.append(ForwardedCall(method, path, query, principal, (token or "")[:6], answer[0], body))
        return answer

    def _answer(self, method: str, path: str, query: str, body: Any, principal: str) -> tuple[int, Any]:
        fields = _fields(query, body)
        for denial in self.denials:
            if (denial.principal == principal and denial.method == method and denial.path == path
                    and (denial.resource is None or denial.resource == fields.get("name"))):
                return 403, {"error_code": "PERMISSION_DENIED", "message": denial.message}
        if path.startswith(_UC):
            return self._unity_catalog(method, path[len(_UC):], fields)
        if path.startswith(_V4_TRACES) and path.endswith("/batchGet"):
            return self._batch_get_traces(fields)
        if self.managed_evals is not None and self.managed_evals.handles(path):
            return self.managed_evals.answer(method, path, query, body)
        if path.startswith(_DATABRICKS_ONLY):
            if path.startswith(("/api/4.0/", "/api/5.0/")):
                return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No API found for '{method} {path}'"}
            return 501, {"error_code": "NOT_IMPLEMENTED", "message": f"{path} is not forwarded by the harness"}
        return self._forward(method, path, query, body)

    # --- plain forwarding -----------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.server_url, timeout=60)
        return self._http

    def _forward(self, method: str, path: str, query: str, body: Any) -> tuple[int, Any]:
        content = None
        if body is not None:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
        url = f"{path}?{query}" if query else path
        response = self._client().request(method, url, content=content,
                                          headers={"Content-Type": "application/json"} if content else None)
        try:
            payload = response.json()
        except ValueError:
            payload = {"error_code": "INTERNAL_ERROR", "message": response.text[:500]}
        return response.status_code, payload

    # --- Unity Catalog ----------------------------------------------------------------------------

    def _unity_catalog(self, method: str, route: str, fields: dict[str, Any]) -> tuple[int, Any]:
        if route in _UC_NOT_FORWARDED:
            return 501, {"error_code": "NOT_IMPLEMENTED",
                         "message": f"UC {route} needs cloud-storage credentials; seed versions into the mlflow server directly"}
        if (method, route) == ("GET", "registered-models:is-databricks-sdk-models-artifact-repository-enabled"):
            # No Databricks-SDK artifact repository here: MLflow then asks for temporary credentials (501 above).
            return 200, {"is_databricks_sdk_models_artifact_repository_enabled": False}
        if (method, route) not in _UC_ROUTES:
            return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No UC API found for '{method} {route}'"}
        oss_route, rebuild = route, _UC_ROUTES[(method, route)]
        if route == "model-versions/search" and not any(k in (fields.get("filter") or "") for k in ("name", "run_id")):
            return 400, {"error_code": "INVALID_PARAMETER_VALUE",
                         "message": "Unity Catalog model version search needs a filter on name or run_id."}
        oss_path = f"/api/2.0/mlflow/{oss_route}"
        if method in ("GET",):
            status, payload = self._forward(method, oss_path, urlencode(fields, doseq=True), None)
        else:
            status, payload = self._forward(method, oss_path, "", fields)
        if status != 200 or rebuild is None:
            return status, payload if status != 200 else {}
        return 200, _uc_answer(payload, rebuild)

    # --- V4 trace loading -----------------------------------------------------------------------

    def _batch_get_traces(self, fields: dict[str, Any]) -> tuple[int, Any]:
        from google.protobuf.json_format import MessageToDict, ParseDict
        from mlflow.entities import Trace
        from mlflow.protos import databricks_tracing_pb2 as pb
        from mlflow.protos.service_pb2 import BatchGetTraces
        from mlflow.utils.databricks_tracing_utils import trace_info_to_v4_proto

        def trace_to_proto(trace: Trace) -> Any:
            # mlflow.utils.databricks_tracing_utils.trace_to_proto puts a V3 TraceInfo into the V4
            # message (TypeError); build the V4 message the way a workspace answers.
            return pb.Trace(trace_info=trace_info_to_v4_proto(trace.info),
                            spans=[span.to_otel_proto() for span in trace.data.spans])

        ids = fields.get("trace_ids") or []
        ids = [ids] if isinstance(ids, str) else list(ids)
        status, payload = self._forward("GET", "/api/3.0/mlflow/traces/batchGet",
                                        urlencode({"trace_ids": ids}, doseq=True), None)
        if status != 200:
            return status, payload
        response = ParseDict(payload, BatchGetTraces.Response(), ignore_unknown_fields=True)
        traces = [trace_to_proto(Trace.from_proto(proto)) for proto in response.traces]
        return 200, {"traces": [MessageToDict(t, preserving_proto_field_name=True) for t in traces]}


def _fields(query: str, body: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, values in parse_qs(query, keep_blank_values=True).items():
        fields[key] = values[0] if len(values) == 1 and not key.endswith("_ids") else values
    if isinstance(body, dict):
        fields.update(body)
    return fields


def _uc_answer(payload: dict[str, Any], key: str) -> dict[str, Any]:
    """The OSS answer re-encoded through the UC protos (so a shape the UC store cannot parse fails here)."""
    from google.protobuf.json_format import MessageToDict, ParseDict
    from mlflow.protos import databricks_uc_registry_messages_pb2 as uc

    if key in ("registered_model", "registered_models"):
        convert, proto = _uc_registered_model, uc.RegisteredModel
    else:
        convert, proto = _uc_model_version, uc.ModelVersion

    def encode(item: dict[str, Any]) -> dict[str, Any]:
        return MessageToDict(ParseDict(convert(item), proto()), preserving_proto_field_name=True)

    value = payload.get(key)
    out: dict[str, Any] = {key: [encode(v) for v in value or []] if key.endswith("s") else encode(value or {})}
    if payload.get("next_page_token"):
        out["next_page_token"] = payload["next_page_token"]
    return out


def _uc_registered_model(item: dict[str, Any]) -> dict[str, Any]:
    return {k: item[k] for k in _RM_FIELDS if k in item}


def _uc_model_version(item: dict[str, Any]) -> dict[str, Any]:
    out = {k: item[k] for k in _MV_FIELDS if k in item}
    # OSS lists alias names; UC pairs each alias with the version it points to.
    out["aliases"] = [{"alias": a, "version": str(item.get("version", ""))} for a in item.get("aliases") or []]
    status = item.get("status") or "READY"
    out["status"] = status if status in ("PENDING_REGISTRATION", "FAILED_REGISTRATION", "READY") else "READY"
    return out

