"""FastAPI app: ``POST /serving-endpoints/{name}/invocations`` routed by the endpoint's split.

Each request is served by one registered version (an arm), chosen by weight or stickily by
conversation/user id, and produces one MLflow trace linked to that version's LoggedModel and
tagged with agent, version, endpoint and arm. The split is re-read when the endpoint config
file changes, so a new split applies to the next request without a restart.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import mlflow
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from mlflow.entities import SpanType
from mlflow.entities.trace_location import MlflowExperimentLocation

from gateway.ledger import TraceLedger
from gateway.router import choose_arm
from services import _mlflow_internal as internal
from services import registry, serving, traces
from services._clients import configure_mlflow, get_or_create_experiment, mlflow_client
from services.serving import Endpoint, ServedVersion
from services.settings import Settings

_logger = logging.getLogger(__name__)
FALLBACK_EXPERIMENT = "agentops-gateway"


@dataclass(frozen=True)
class LoadedVersion:
    model: Any
    model_id: str | None
    experiment_id: str
    aliases: tuple[str, ...]


class GatewayError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Gateway:
    """Routing, model loading, tracing and accounting, independent of the web framework."""

    def __init__(self, settings: Settings, *, seed: int | None = None, max_pending_traces: int = 2_000) -> None:
        self.settings = configure_mlflow(settings)
        self.client = mlflow_client(settings)
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._config_lock = threading.Lock()
        self._config_mtime: float | None = None
        self._endpoints: dict[str, Endpoint] = {}
        self._models: dict[tuple[str, str], LoadedVersion] = {}
        self._model_locks: dict[tuple[str, str], threading.Lock] = {}
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._counts_lock = threading.Lock()
        self.ledger = TraceLedger(lambda ids: internal.stored_trace_ids(self.client, ids), max_pending=max_pending_traces)

    # --- configuration ---------------------------------------------------------------------

    def endpoints(self) -> dict[str, Endpoint]:
        """Current endpoint configs, re-read when the config file changed (hot reload)."""
        path = serving.local_config_path(self.settings)
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            mtime = None
        with self._config_lock:
            if mtime != self._config_mtime:
                # The file is replaced atomically, so a read sees the old or the new split whole.
                self._endpoints = {e.name: e for e in serving.list_endpoints(self.settings)}
                self._config_mtime = mtime
            return self._endpoints

    # --- models ------------------------------------------------------------------------------

    def load(self, served: ServedVersion) -> LoadedVersion:
        key = (served.model_name, served.model_version)
        if key in self._models:
            return self._models[key]
        lock = self._model_locks.setdefault(key, threading.Lock())
        with lock:
            if key in self._models:
                return self._models[key]
            try:
                version = self.client.get_model_version(served.model_name, served.model_version)
                model = self.client.get_registered_model(served.model_name)
                loaded = mlflow.pyfunc.load_model(f"models:/{served.model_name}/{served.model_version}")
            except Exception as exc:  # noqa: BLE001 - any load failure is the arm being unavailable
                raise GatewayError(
                    503, "SERVED_VERSION_UNAVAILABLE",
                    f"{served.model_name} v{served.model_version} could not be loaded: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                ) from exc
            source = version.source or ""
            model_id = source.removeprefix("models:/") if source.startswith("models:/m-") else version.model_id if hasattr(version, "model_id") else None
            experiment_id = (model.tags or {}).get(registry.EXPERIMENT_TAG) or get_or_create_experiment(
                self.client, FALLBACK_EXPERIMENT, self.settings
            )
            aliases = tuple(sorted(a for a, v in registry._aliases(model).items() if v == served.model_version))
            self._models[key] = LoadedVersion(loaded, model_id, experiment_id, aliases)
            return self._models[key]

    # --- serving -----------------------------------------------------------------------------

    def invoke(self, endpoint_name: str, body: Any) -> tuple[dict[str, Any], dict[str, str]]:
        """Serve one request; returns the ResponsesAgent response and headers naming the arm."""
        endpoint = self.endpoints().get(endpoint_name)
        if endpoint is None:
            raise GatewayError(404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint {endpoint_name!r} does not exist.")
        request = _validate_request(body)
        context = request.get("context") or {}
        sticky_key = context.get("conversation_id") or context.get("user_id")
        with self._rng_lock:
            served = choose_arm(endpoint, sticky_key=sticky_key, rng=self._rng)
        loaded = self.load(served)
        if not self.ledger.wait_for_room(timeout_s=30):
            raise GatewayError(503, "TRACE_BACKLOG_FULL", "Too many traces are waiting to be stored; retry shortly.")
        tags = {
            traces.AGENT_TAG: served.model_name,
            traces.VERSION_TAG: served.model_version,
            traces.ENDPOINT_TAG: endpoint.name,
            traces.ARM_TAG: served.entity_name,
        }
        if loaded.aliases:
            tags["agentops.alias"] = ",".join(loaded.aliases)
        mlflow.tracing.set_destination(MlflowExperimentLocation(loaded.experiment_id), context_local=True)
        error: Exception | None = None
        response: Any = None
        with mlflow.start_span(name=endpoint.name, span_type=SpanType.AGENT) as span:
            span.set_inputs(request)
            mlflow.update_current_trace(
                tags=tags,
                model_id=loaded.model_id,
                user=context.get("user_id"),
                session_id=context.get("conversation_id"),
            )
            try:
                response = loaded.model.predict(request)
                span.set_outputs(response)
            except Exception as exc:  # noqa: BLE001 - recorded on the trace, returned as 500
                error = exc
                span.record_exception(exc)
                span.set_status("ERROR")
        self.ledger.add(span.trace_id)
        with self._counts_lock:
            self._counts[(endpoint.name, served.entity_name, "error" if error else "ok")] += 1
        headers = {"X-AgentOps-Arm": served.entity_name, "X-AgentOps-Trace-Id": span.trace_id}
        if error is not None:
            raise GatewayError(500, "AGENT_ERROR", f"{type(error).__name__}: {error}") from error
        if hasattr(response, "model_dump"):
            response = response.model_dump(exclude_none=True)
        return response, headers

    def stats(self) -> dict[str, Any]:
        ledger = self.ledger.stats()
        with self._counts_lock:
            counts = [
                {"endpoint": e, "arm": a, "outcome": o, "requests": n} for (e, a, o), n in sorted(self._counts.items())
            ]
        return {
            "requests": counts,
            "traces": {"produced": ledger.produced, "recorded": ledger.recorded, "pending": ledger.pending, "lost": ledger.lost},
        }


def _validate_request(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise GatewayError(400, "INVALID_PARAMETER_VALUE", "The request body must be a JSON object.")
    items = body.get("input")
    if not isinstance(items, list) or not items:
        raise GatewayError(400, "INVALID_PARAMETER_VALUE", "'input' must be a non-empty list of messages.")
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "role" not in item and "type" not in item:
            raise GatewayError(400, "INVALID_PARAMETER_VALUE", f"input[{index}] is not a message object.")
    context = body.get("context")
    if context is not None and not isinstance(context, dict):
        raise GatewayError(400, "INVALID_PARAMETER_VALUE", "'context' must be an object.")
    return body


def create_app(settings: Settings, **gateway_options: Any) -> FastAPI:
    """The FastAPI application around one ``Gateway``."""
    gateway = Gateway(settings, **gateway_options)
    app = FastAPI(title="Agent Ops Console gateway")
    app.state.gateway = gateway

    @app.post("/serving-endpoints/{name}/invocations")
    async def invocations(name: str, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except Exception:  # noqa: BLE001 - any parse failure is a bad request
            return _error(GatewayError(400, "MALFORMED_REQUEST", "The request body is not valid JSON."))
        from starlette.concurrency import run_in_threadpool

        try:
            payload, headers = await run_in_threadpool(gateway.invoke, name, body)
        except GatewayError as exc:
            return _error(exc)
        return JSONResponse(payload, headers=headers)

    @app.get("/serving-endpoints")
    def list_endpoints() -> dict[str, Any]:
        return {"endpoints": [serving._endpoint_to_json(e) for e in gateway.endpoints().values()]}

    @app.get("/stats")
    def stats(drain_s: float = 0.0) -> dict[str, Any]:
        if drain_s > 0:
            gateway.ledger.drain(min(drain_s, 120.0))
        return gateway.stats()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.on_event("shutdown")
    def shutdown() -> None:
        mlflow.flush_trace_async_logging()
        gateway.ledger.drain(30)
        gateway.ledger.close()

    return app


def _error(exc: GatewayError) -> JSONResponse:
    return JSONResponse({"error_code": exc.code, "message": exc.message}, status_code=exc.status)
