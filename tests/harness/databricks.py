"""A local HTTP server that answers the Databricks REST shapes the app uses.

Responses are built from the SDK's own dataclasses (``as_dict()``), so a change in the SDK's
types shows up as a failing test rather than a silently drifting fake.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


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

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                harness.requests.append(RecordedRequest("GET", self.path, None))
                path = self.path.split("?")[0]
                if path == "/api/2.0/serving-endpoints":
                    self._send(200, {"endpoints": [_summary(e).as_dict() for e in harness.endpoints.values()]})
                elif path.startswith("/api/2.0/serving-endpoints/"):
                    name = path.rsplit("/", 1)[-1]
                    if name in harness.endpoints:
                        self._send(200, harness.endpoints[name].as_dict())
                    else:
                        self._send(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Endpoint {name} not found"})
                else:
                    self._send(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No API at {path}"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

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
