"""FastAPI app: ``POST /serving-endpoints/{name}/invocations`` routed by the endpoint's split.

Each request is served by one registered version (an arm), chosen by weight or stickily by
conversation/user id, and produces one MLflow trace linked to that version's LoggedModel and
tagged with agent, version, endpoint and arm. The split is re-read when the endpoint config
file changes, so a new split applies to the next request without a restart.

Traces: on a SQL store each finished trace is captured in-process (the agent's spans plus the
gateway's root span and metadata) and written in batches by ``TraceWriter`` with the store's
bulk path (``services._mlflow_internal.span_batch``); elsewhere MLflow's own exporter records them.
Either way the ``TraceLedger`` confirms every trace in the store, backpressure holds requests
while too many are unconfirmed, and anything that could not be recorded is counted in
``/stats`` and ``/health``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import mlflow
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from mlflow.entities import SpanType
from mlflow.entities.span import NO_OP_SPAN_TRACE_ID
from mlflow.entities.trace_location import MlflowExperimentLocation

from gateway.ledger import LedgerStats, TraceLedger
from gateway.router import choose_arm
from gateway.trace_process import ProcessTraceSink
from gateway.trace_writer import TraceWriter
from services import _mlflow_internal as internal
from services._mlflow_internal import span_batch
from services import registry, serving, traces
from services._clients import configure_mlflow, get_or_create_experiment, mlflow_client
from services.errors import ValidationError
from services.serving import Endpoint, ServedVersion
from services.settings import Backend, Settings

_logger = logging.getLogger(__name__)
FALLBACK_EXPERIMENT = "agentops-gateway"


@dataclass(frozen=True)
class LoadedVersion:
    model: Any
    model_id: str | None
    experiment_id: str
    aliases: tuple[str, ...]


class _LoadGate:
    """Keeps model loads and traced requests apart.

    ``mlflow.pyfunc.load_model`` is ``@trace_disabled``: while it runs, MLflow swaps the
    process-wide tracer provider for a no-op one, so a request traced in another thread at
    that moment would produce no trace. A load therefore waits for traced requests in flight
    and holds new ones back (loads happen once per served version, ~1 s at most).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._serving = 0
        self._loading = False
        self._loaders_waiting = 0

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        with self._cond:
            while self._loading or self._loaders_waiting:
                self._cond.wait()
            self._serving += 1
        try:
            yield
        finally:
            with self._cond:
                self._serving -= 1
                if not self._serving:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        with self._cond:
            self._loaders_waiting += 1
            while self._loading or self._serving:
                self._cond.wait()
            self._loaders_waiting -= 1
            self._loading = True
        try:
            yield
        finally:
            with self._cond:
                self._loading = False
                self._cond.notify_all()


class GatewayError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Gateway:
    """Routing, model loading, tracing and accounting, independent of the web framework."""

    def __init__(
        self,
        settings: Settings,
        *,
        seed: int | None = None,
        max_pending_traces: int = 2_000,
        batch_traces: bool | None = None,
        max_trace_batch: int = 200,
        writer_process: bool = True,
    ) -> None:
        """``batch_traces``: None picks the batched writer whenever the store supports it.

        ``writer_process``: write batches from a child process (``gateway.trace_process``) so
        the store's Python work does not compete with requests for this process's GIL.
        """
        self.settings = configure_mlflow(settings)
        self.client = mlflow_client(settings)
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._config_lock = threading.Lock()
        self._config_mtime: float | None = None
        self._endpoints: dict[str, Endpoint] = {}
        self._models: dict[tuple[str, str], LoadedVersion] = {}
        self._model_locks: dict[tuple[str, str], threading.Lock] = {}
        self._load_gate = _LoadGate()
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._counts_lock = threading.Lock()
        self.ledger = TraceLedger(lambda ids: internal.stored_trace_ids(self.client, ids), max_pending=max_pending_traces)
        self.writer: TraceWriter | None = None
        self._sink: ProcessTraceSink | None = None
        if batch_traces is not False and span_batch.supports_batching(self.client) and span_batch.install():
            spool = settings.data_dir / "gateway-spool" if settings.backend is Backend.LOCAL else None
            if writer_process:
                self._sink = ProcessTraceSink(self.settings)
            self.writer = TraceWriter(
                self._sink or (lambda traces: span_batch.write_traces(self.client, traces)),
                max_queue=max_pending_traces, max_batch=max_trace_batch,
                on_written=self.ledger.confirm, on_failed=self.ledger.fail, spool_dir=spool,
            )
        elif batch_traces:
            raise ValidationError(
                "Batched trace writing needs a SQL tracking store and MLflow's span processor hook; "
                "leave batch_traces unset to fall back to MLflow's exporter."
            )
        self._not_captured = 0
        _logger.info("gateway traces are written %s", "in batches" if self.writer else "by MLflow's exporter")

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
                with self._load_gate.loading():
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
        error: Exception | None = None
        response: Any = None
        # The experiment is given per root span: set_destination would rebuild MLflow's tracer
        # provider (and a new export queue with its threads) on every request.
        destination = MlflowExperimentLocation(loaded.experiment_id)
        with self._load_gate.serving(), span_batch.capture(enabled=self.writer is not None) as captured:
            with mlflow.start_span(name=endpoint.name, span_type=SpanType.AGENT, trace_destination=destination) as span:
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
        trace_id = span.trace_id
        if trace_id == NO_OP_SPAN_TRACE_ID:
            # Tracing is off in this process: the request is served but its trace is lost, loudly.
            trace_id = f"untraced-{uuid.uuid4().hex}"
            self.ledger.add(trace_id)
            self.ledger.fail([trace_id], "MLflow tracing is disabled in the gateway process")
        else:
            # A captured trace is confirmed by the writer's commit; others by polling the store.
            self.ledger.add(trace_id, poll=captured.trace is None)
        if captured.trace is not None:
            # Blocks while the writer's queue is full; if it stays full, the writer spools the
            # trace and reports it to the ledger as not recorded.
            self.writer.submit(captured.trace, timeout_s=30)
        elif self.writer is not None:
            # Not captured (MLflow rebuilt its provider without the hook, or lost the trace):
            # MLflow's exporter has it, and the ledger still confirms it or counts it lost.
            with self._counts_lock:
                self._not_captured += 1
            if captured.missing:
                self.ledger.fail([trace_id], captured.missing)
        with self._counts_lock:
            self._counts[(endpoint.name, served.entity_name, "error" if error else "ok")] += 1
        headers = {"X-AgentOps-Arm": served.entity_name, "X-AgentOps-Trace-Id": trace_id}
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
        writer = self.writer.stats() if self.writer is not None else None
        return {
            "requests": counts,
            "traces": {
                "produced": ledger.produced, "recorded": ledger.recorded, "pending": ledger.pending,
                "lost": ledger.lost, "could_not_record": ledger.failed,
            },
            "trace_writer": {
                "mode": "batched" if writer is not None else "mlflow-exporter",
                "writer_process": self._sink.pid if self._sink is not None else None,
                "queued": writer.queued + writer.in_flight if writer else 0,
                "written": writer.written if writer else 0,
                "failed": writer.failed if writer else 0,
                "spooled": writer.spooled if writer else 0,
                "batches": writer.batches if writer else 0,
                "largest_batch": writer.largest_batch if writer else 0,
                "retries": writer.retries if writer else 0,
                "not_captured": self._not_captured,
            },
        }

    def drain(self, timeout_s: float) -> LedgerStats:
        """Write queued traces, then confirm pending ones in the store; the ledger's stats."""
        deadline = time.monotonic() + timeout_s
        if self.writer is not None:
            self.writer.flush(timeout_s)
        else:
            mlflow.flush_trace_async_logging()
        return self.ledger.drain(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Record what is queued and stop the background threads."""
        if self.writer is not None:
            self.writer.close()
        if self._sink is not None:
            self._sink.close()
        mlflow.flush_trace_async_logging()
        self.ledger.drain(30, wait_for_lost=False)
        self.ledger.close()


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
            gateway.drain(min(drain_s, 120.0))
        return gateway.stats()

    @app.get("/health")
    def health() -> dict[str, Any]:
        # Always 200 while serving; "degraded" says traces were lost or could not be recorded.
        traces = gateway.stats()["traces"]
        return {"status": "degraded" if traces["lost"] else "ok", "traces": traces}

    @app.on_event("shutdown")
    def shutdown() -> None:
        gateway.close()

    return app


def _error(exc: GatewayError) -> JSONResponse:
    return JSONResponse({"error_code": exc.code, "message": exc.message}, status_code=exc.status)
