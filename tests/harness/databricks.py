"""A local HTTP server that answers the Databricks REST shapes the app uses.

Responses are built from the SDK's own dataclasses (``as_dict()``), so a change in the SDK's
types shows up as a failing test rather than a silently drifting fake.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

# An extension: given (method, path without query, parsed JSON body or None, request headers),
# answer (status, payload) or None to let the next handler try. Modules that speak other REST
# families (MLflow forwarding, databricks-agents) plug in here instead of editing this file.
Handler = Callable[[str, str, Any, Any], Optional[tuple[int, Any]]]


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
                elif path.startswith("/api/2.0/serving-endpoints/"):
                    name = path.rsplit("/", 1)[-1]
                    if name in harness.endpoints:
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
        pending = sdk.EndpointPendingConfig(
            served_entities=[
                sdk.ServedEntityOutput(name=e.name, entity_name=e.entity_name, entity_version=e.entity_version,
                                       workload_size=e.workload_size, scale_to_zero_enabled=e.scale_to_zero_enabled)
                for e in request.served_entities or []
            ],
            traffic_config=request.traffic_config,
        )
        endpoint.pending_config = pending
        endpoint.state = sdk.EndpointState(config_update=sdk.EndpointStateConfigUpdate.IN_PROGRESS,
                                           ready=endpoint.state.ready if endpoint.state else None)
        self._polls_left[name] = self.rollout_polls
        return 200, endpoint.as_dict()

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
        endpoint.config = sdk.EndpointCoreConfigOutput(
            served_entities=pending.served_entities, traffic_config=pending.traffic_config,
        )
        endpoint.pending_config = None
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
