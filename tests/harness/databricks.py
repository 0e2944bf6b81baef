"""A local HTTP server that answers the Databricks REST shapes the app uses, as strictly as a workspace.

Responses are built from the SDK's own dataclasses (``as_dict()``) and request bodies are parsed into
them (``from_dict``), so a change in the SDK's types shows up as a failing test rather than a silently
drifting fake. What it refuses, as a workspace does:

* an experiment name that is not an absolute path (``Got an invalid experiment name``);
* with user authorization, a user token used outside the scopes the app declares in
  ``databricks.yml`` (403 ``Invalid scope``); the app's service principal is not limited;
* a config update while another is in progress (409), a split that does not name served entities
  or does not add up to 100 (400).

And what it can be told to do: answer 429 with ``Retry-After`` (``throttle``), end a rollout in
``UPDATE_FAILED`` or ``UPDATE_CANCELED`` (``rollout_outcome``), delete an endpoint between the list
and the get (``vanish_after_list``), refuse reading one (``unreadable``), and change an endpoint
between two reads (``change_endpoint``). An accepted update shows as ``pending_config`` until rolled
out, keeps every served-entity field it was given, and bumps ``config.config_version``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

# An extension: given (method, path without query, parsed JSON body or None, request headers),
# answer (status, payload) or None to let the next handler try. Modules that speak other REST
# families (MLflow forwarding, databricks-agents) plug in here instead of editing this file.
Handler = Callable[[str, str, Any, Any], Optional[tuple[int, Any]]]


# Scopes Databricks grants every user token of an app, whatever it declares.
DEFAULT_USER_SCOPES = frozenset({"iam.current-user:read", "iam.access-control:read"})


def declared_user_scopes() -> frozenset[str]:
    """The ``user_api_scopes`` the project's ``databricks.yml`` declares, plus the default ones."""
    import yaml

    bundle = yaml.safe_load((Path(__file__).resolve().parents[2] / "databricks.yml").read_text(encoding="utf-8"))
    (app,) = bundle["resources"]["apps"].values()
    return frozenset(app.get("user_api_scopes") or ()) | DEFAULT_USER_SCOPES


def required_scope(method: str, path: str) -> str | None:
    """The Databricks Apps user scope a REST call needs; '' when no Apps scope covers it, None for
    the unauthenticated host-metadata and OAuth discovery calls."""
    if path.startswith(("/.well-known/", "/oidc/")):
        return None
    if path.startswith("/api/2.0/serving-endpoints"):
        return "serving.serving-endpoints"
    if path.startswith("/api/2.0/sql/"):
        return "sql"
    if path == "/api/2.0/preview/scim/v2/Me":
        return "iam.current-user:read"
    if path.startswith("/api/2.0/permissions/") and method == "GET":
        return "iam.access-control:read"
    return ""


@dataclass
class RecordedRequest:
    method: str
    path: str
    body: Any


@dataclass
class DatabricksHarness:
    """Serving endpoints keyed by name (SDK ``ServingEndpointDetailed`` objects)."""

    endpoints: dict[str, Any] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    # SCIM users by bearer token (``iam.User`` objects), answered at /api/2.0/preview/scim/v2/Me.
    users: dict[str, Any] = field(default_factory=dict)
    # Endpoints on which config updates are refused with 403 (the caller lacks CAN_MANAGE).
    forbidden: set[str] = field(default_factory=set)
    # How many GETs an accepted update stays IN_PROGRESS before it is rolled out.
    rollout_polls: int = 1
    _polls_left: dict[str, int] = field(default_factory=dict)
    # Extensions consulted before the built-in routes, in order.
    handlers: list[Handler] = field(default_factory=list)
    # Scopes of every user token (``users``); None turns the scope check off.
    user_scopes: frozenset[str] | None = field(default_factory=declared_user_scopes)
    # Calls refused for a missing scope: (method, path, user).
    scope_refusals: list[tuple[str, str, str]] = field(default_factory=list)
    # Answer every serving-endpoint call with 429 until this time.time(), with this Retry-After.
    throttled_until: float = 0.0
    retry_after_seconds: int = 1
    # How the next rollout of an endpoint ends (UPDATE_FAILED / UPDATE_CANCELED); default: rolled out.
    rollout_outcome: dict[str, Any] = field(default_factory=dict)
    # Endpoints deleted right after the next list call answered (a race between list and get).
    vanish_after_list: set[str] = field(default_factory=set)
    # Endpoints whose GET is refused with 403 (listed, but the caller may not read them).
    unreadable: set[str] = field(default_factory=set)
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def start(self) -> "DatabricksHarness":
        harness = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, payload: Any) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", str(harness.retry_after_seconds))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _extension(self, method: str) -> tuple[bool, Any]:
                """Read the body, record the request and let the extensions answer it first."""
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                harness.requests.append(RecordedRequest(method, self.path, body))
                path = self.path.split("?")[0]
                refusal = harness._workspace_rules(method, path, body, self.headers)
                if refusal is not None:
                    self._send(*refusal)
                    return True, body
                for handler in harness.handlers:
                    try:
                        answer = handler(method, path, body, self.headers)
                    except Exception as exc:  # noqa: BLE001 - a harness bug: fail fast, no SDK retries
                        answer = (400, {"error_code": "HARNESS_ERROR", "message": repr(exc)})
                    if answer is not None:
                        self._send(*answer)
                        return True, body
                return False, body

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                handled, _ = self._extension("GET")
                if handled:
                    return
                path = self.path.split("?")[0]
                if path == "/api/2.0/preview/scim/v2/Me":
                    token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
                    user = harness.users.get(token)
                    if user is None:
                        self._send(401, {"error_code": "UNAUTHENTICATED", "message": "Invalid access token"})
                    else:
                        self._send(200, user.as_dict())
                elif path == "/api/2.0/serving-endpoints":
                    self._send(200, {"endpoints": [_summary(e).as_dict() for e in harness.endpoints.values()]})
                    for name in list(harness.vanish_after_list):
                        harness.endpoints.pop(name, None)
                    harness.vanish_after_list.clear()
                elif path.startswith("/api/2.0/serving-endpoints/"):
                    name = path.rsplit("/", 1)[-1]
                    if name in harness.unreadable:
                        self._send(403, {"error_code": "PERMISSION_DENIED",
                                         "message": f"User does not have CAN_QUERY or higher on endpoint {name}"})
                    elif name in harness.endpoints:
                        harness._advance(name)
                        self._send(200, harness.endpoints[name].as_dict())
                    else:
                        self._send(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Endpoint {name} not found"})
                else:
                    self._send(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No API at {path}"})

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                self._fallthrough("POST")

            def do_PATCH(self) -> None:  # noqa: N802 - http.server naming
                self._fallthrough("PATCH")

            def do_DELETE(self) -> None:  # noqa: N802 - http.server naming
                self._fallthrough("DELETE")

            def _fallthrough(self, method: str) -> None:
                handled, _ = self._extension(method)
                if not handled:
                    self._send(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No API at {self.path}"})

            def do_PUT(self) -> None:  # noqa: N802 - http.server naming
                handled, body = self._extension("PUT")
                if handled:
                    return
                body = body or {}
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) == 5 and parts[:3] == ["api", "2.0", "serving-endpoints"] and parts[4] == "config":
                    try:
                        status, payload = harness._update_config(parts[3], body)
                    except Exception as exc:  # noqa: BLE001 - a harness bug: fail fast, no SDK retries
                        status, payload = 400, {"error_code": "HARNESS_ERROR", "message": repr(exc)}
                    self._send(status, payload)
                else:
                    self._send(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No API at {self.path}"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def _workspace_rules(self, method: str, path: str, body: Any, headers: Any) -> tuple[int, dict] | None:
        """What a workspace refuses before any service looks at the call."""
        token = (headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        user = self.users.get(token)
        if user is not None and self.user_scopes is not None:
            needed = required_scope(method, path)
            if needed is not None and needed not in self.user_scopes:
                self.scope_refusals.append((method, path, user.user_name))
                return 403, {"error_code": "PERMISSION_DENIED",
                             "message": f"Invalid scope: {method} {path} needs "
                                        f"{needed or 'a scope Databricks Apps cannot grant'}; the token has "
                                        f"{', '.join(sorted(self.user_scopes))}."}
        if path == "/api/2.0/mlflow/experiments/create" and method == "POST":
            name = (body or {}).get("name", "") if isinstance(body, dict) else ""
            if not name.startswith("/"):
                return 400, {"error_code": "INVALID_PARAMETER_VALUE",
                             "message": f"Got an invalid experiment name '{name}'. An experiment name must be an "
                                        "absolute path within the Databricks workspace, e.g. '/Users/<some-username>/my-experiment'."}
        if path.startswith("/api/2.0/serving-endpoints") and time.time() < self.throttled_until:
            return 429, {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "Too many requests. Please retry later."}
        return None

    def throttle(self, seconds: float, *, retry_after: int = 1) -> None:
        """Answer every serving-endpoint call with 429 (and ``Retry-After``) for ``seconds``."""
        self.retry_after_seconds = retry_after
        self.throttled_until = time.time() + seconds

    def change_endpoint(self, name: str, change: Callable[[Any], None]) -> None:
        """Change an endpoint's config as another client would (e.g. a colleague's deploy): bumps its version."""
        endpoint = self.endpoints[name]
        change(endpoint)
        endpoint.config.config_version = (endpoint.config.config_version or 1) + 1

    def _update_config(self, name: str, body: dict) -> tuple[int, dict]:
        from databricks.sdk.service import serving as sdk

        endpoint = self.endpoints.get(name)
        if endpoint is None:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Endpoint {name} not found"}
        if name in self.forbidden:
            return 403, {"error_code": "PERMISSION_DENIED", "message": f"User does not have CAN_MANAGE on {name}"}
        if endpoint.state and endpoint.state.config_update == sdk.EndpointStateConfigUpdate.IN_PROGRESS:
            return 409, {"error_code": "RESOURCE_CONFLICT", "message": f"Endpoint {name} is currently being updated"}
        request = sdk.EndpointCoreConfigInput.from_dict({**body, "name": name})
        if request.as_dict() != {**body, "name": name}:
            return 400, {"error_code": "INVALID_PARAMETER_VALUE",
                         "message": f"Unknown fields in the request: {_unknown({**body, 'name': name}, request.as_dict())}"}
        entities = request.served_entities or []
        names = [e.name for e in entities]
        routes = (request.traffic_config.routes if request.traffic_config else None) or []
        if not entities or len(set(names)) != len(names):
            return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "Served entity names must be unique."}
        for entity in entities:
            if not (entity.entity_name or entity.external_model):
                return 400, {"error_code": "INVALID_PARAMETER_VALUE",
                             "message": f"Served entity {entity.name} names no model."}
        if any((r.served_entity_name or r.served_model_name) not in names for r in routes) or \
                (routes and sum(r.traffic_percentage or 0 for r in routes) != 100):
            return 400, {"error_code": "INVALID_PARAMETER_VALUE",
                         "message": "The traffic config must route to served entities and add up to 100."}
        version = ((endpoint.config.config_version if endpoint.config else None) or 1) + 1
        previous = {e.name: e for e in ((endpoint.config.served_entities if endpoint.config else None) or [])}
        pending = sdk.EndpointPendingConfig(
            # Everything the request gave is kept (a PUT replaces the whole config); the output-only
            # fields of an entity that stays are the service's own.
            served_entities=[self._served_output(e, previous.get(e.name)) for e in entities],
            traffic_config=request.traffic_config, config_version=version,
            start_time=int(time.time() * 1000),
        )
        endpoint.pending_config = pending
        endpoint.state = sdk.EndpointState(config_update=sdk.EndpointStateConfigUpdate.IN_PROGRESS,
                                           ready=endpoint.state.ready if endpoint.state else None)
        self._polls_left[name] = self.rollout_polls
        return 200, endpoint.as_dict()

    @staticmethod
    def _served_output(entity: Any, previous: Any) -> Any:
        from databricks.sdk.service import serving as sdk

        data = entity.as_dict()
        if previous is not None:
            for key in ("creator", "creation_timestamp", "state", "foundation_model"):
                if getattr(previous, key, None) is not None:
                    data[key] = previous.as_dict()[key]
        return sdk.ServedEntityOutput.from_dict(data)

    def _advance(self, name: str) -> None:
        from databricks.sdk.service import serving as sdk

        if name not in self._polls_left:
            return
        self._polls_left[name] -= 1
        if self._polls_left[name] > 0:
            return
        del self._polls_left[name]
        endpoint = self.endpoints[name]
        pending = endpoint.pending_config
        outcome = self.rollout_outcome.pop(name, None)
        endpoint.pending_config = None
        if outcome is not None:  # the old config keeps serving
            endpoint.state = sdk.EndpointState(config_update=outcome, ready=endpoint.state.ready if endpoint.state else None)
            return
        endpoint.config = sdk.EndpointCoreConfigOutput(
            served_entities=pending.served_entities, traffic_config=pending.traffic_config,
            config_version=pending.config_version,
        )
        endpoint.last_updated_timestamp = int(time.time() * 1000)
        endpoint.state = sdk.EndpointState(config_update=sdk.EndpointStateConfigUpdate.NOT_UPDATING,
                                           ready=sdk.EndpointStateReady.READY)

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


def _summary(detailed: Any) -> Any:
    """The list call's ``ServingEndpoint`` (config summary, no traffic config) for a detailed endpoint."""
    from databricks.sdk.service import serving as sdk

    config = None
    if detailed.config is not None:
        config = sdk.EndpointCoreConfigSummary(
            served_entities=[
                sdk.ServedEntitySpec(name=e.name, entity_name=e.entity_name, entity_version=e.entity_version)
                for e in detailed.config.served_entities or []
            ]
        )
    return sdk.ServingEndpoint(
        name=detailed.name,
        creator=detailed.creator,
        creation_timestamp=detailed.creation_timestamp,
        last_updated_timestamp=detailed.last_updated_timestamp,
        state=detailed.state,
        config=config,
        task=detailed.task,
    )


def _unknown(sent: Any, parsed: Any, where: str = "") -> list[str]:
    """Paths of fields in ``sent`` that parsing into the SDK type dropped or changed."""
    if isinstance(sent, dict) and isinstance(parsed, dict):
        out = []
        for key, value in sent.items():
            out += [f"{where}{key}"] if key not in parsed else _unknown(value, parsed[key], f"{where}{key}.")
        return out
    if isinstance(sent, list) and isinstance(parsed, list) and len(sent) == len(parsed):
        return [p for i, (a, b) in enumerate(zip(sent, parsed)) for p in _unknown(a, b, f"{where}{i}.")]
    return [] if sent == parsed else [where.rstrip(".")]
