"""The gateway: a request routed by the endpoint's split, served, traced and accounted for.

Each request is served by one registered version (an arm), chosen by weight or stickily by
conversation/user id, and produces one MLflow trace linked to that version's LoggedModel (its
``mlflow.modelId``) and tagged with the endpoint and arm. Endpoint configurations are re-read from
the tracking store on every request, so a new split, endpoint or deletion applies to the next
request without a restart.

Traces: each finished trace is captured in-process (the agent's spans plus the gateway's root
span and metadata) and written in batches by ``TraceWriter``: on a SQL store with the store's
bulk path (``services._mlflow_internal.span_batch``), on a remote ``mlflow server`` with one
``start_trace`` per trace and one OTLP span request per batch (``rest_trace_batch``); elsewhere
(or with ``batch_traces=False``) MLflow's own exporter records them.
Either way the ``TraceLedger`` confirms every trace in the store, backpressure holds requests
while too many are unconfirmed, and anything that could not be recorded is counted in
``/stats`` and ``/health``.

Restarts and retries (``gateway.journal``): every request that reached the model is journaled
on local disk, with its trace until the store has it, *before* the response is sent. A client
names a request with ``client_request_id`` in the body (the field Databricks Model Serving
records) or an ``X-Request-Id`` header; the gateway makes one up otherwise and returns it in
``X-Request-Id``. A retry with the same id is answered from the journal (``X-AgentOps-Replayed:
true``, same arm and trace id) without calling the model or tracing again, also after a restart;
the same id with a different request body is refused (409). After a crash the gateway writes the
journaled traces the store did not get, so a 200 never loses its trace.

Shutdown (SIGTERM/SIGINT under uvicorn): uvicorn stops accepting connections and lets in-flight
requests finish; then the app's shutdown hook (``Gateway.close``) writes every queued trace,
stops the writer process and confirms the traces in the store before the process exits.

The web layer around it is ``gateway.app``; what a request must look like is ``gateway.requests``;
loading served versions is ``gateway.models``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from collections import Counter
from typing import Any, Iterator

import mlflow
from mlflow.entities import SpanType
from mlflow.entities.span import NO_OP_SPAN_TRACE_ID
from mlflow.entities.trace_location import MlflowExperimentLocation
from mlflow.environment_variables import MLFLOW_ASYNC_TRACE_LOGGING_MAX_QUEUE_SIZE

from gateway.journal import JournalEntry, RequestJournal, fingerprint
from gateway.ledger import LedgerStats, TraceLedger
from gateway.models import ModelLoader
from gateway.requests import (
    REPLAYED_HEADER,
    REQUEST_ID_FIELD,
    REQUEST_ID_HEADER,
    GatewayError,
    split_request_id,
    validate_request,
)
from gateway.router import choose_arm
from gateway.trace_process import ProcessTraceSink
from gateway.trace_writer import TraceWriter
from services import _mlflow_internal as internal
from services import serving, traces
from services._clients import configure_mlflow, mlflow_client
from services._mlflow_internal import span_batch
from services.errors import ValidationError
from services.serving import Endpoint
from services.settings import Settings

_logger = logging.getLogger(__name__)


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
        trace_linger_s: float = 0.1,
        writer_process: bool = True,
        journal: bool = True,
        idempotency_window_s: float = 3_600.0,
    ) -> None:
        """``batch_traces``: None picks the batched writer whenever the store supports it.

        ``trace_linger_s``: how long the writer waits to gather a batch under light traffic.

        ``writer_process``: write batches from a child process (``gateway.trace_process``) so
        the store's Python work does not compete with requests for this process's GIL.

        ``journal``: keep the request journal (``<data dir>/gateway-journal.sqlite``): request-id
        idempotency for ``idempotency_window_s`` and traces that survive a crash of this process.
        """
        self.settings = configure_mlflow(settings)
        self.client = mlflow_client(settings)
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._config_lock = threading.Lock()
        self._endpoints: dict[str, Endpoint] = {}
        self.models = ModelLoader(self.client, self.settings)
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._counts_lock = threading.Lock()
        self.journal = (RequestJournal(settings.data_dir / "gateway-journal.sqlite", window_s=idempotency_window_s)
                        if journal else None)
        self._claims: dict[str, list[Any]] = {}  # request id -> [lock, holders]: one at a time per id
        self._claims_lock = threading.Lock()
        self._replayed_at_start = self._answered_from_journal = self._journal_errors = 0
        self._closing = threading.Event()
        self.writer: TraceWriter | None = None
        self._sink: ProcessTraceSink | None = None
        if batch_traces is not False and span_batch.supports_batching(self.client) and span_batch.install():
            # Traces given up on are kept here (JSON lines) as well as counted, on every backend.
            spool = settings.data_dir / "gateway-spool"
            if writer_process:
                self._sink = ProcessTraceSink(self.settings)
            self.writer = TraceWriter(
                self._sink or (lambda traces: span_batch.write_traces(self.client, traces)),
                max_queue=max_pending_traces, max_batch=max_trace_batch, linger_s=trace_linger_s,
                on_written=self._on_written, on_failed=self._on_failed, spool_dir=spool,
            )
        elif batch_traces:
            raise ValidationError(
                "Batched trace writing needs a SQL tracking store or an mlflow server, and MLflow's span "
                "processor hook; "
                "leave batch_traces unset to fall back to MLflow's exporter."
            )
        if self.writer is None:
            # MLflow's exporter discards a trace when its task queue is full (a trace takes one task
            # for its info and at least one for its spans), so the backpressure stops well before.
            max_pending_traces = min(max_pending_traces, max(1, MLFLOW_ASYNC_TRACE_LOGGING_MAX_QUEUE_SIZE.get() // 4))
        self.ledger = TraceLedger(lambda ids: internal.stored_trace_ids(self.client, ids), max_pending=max_pending_traces)
        self._not_captured = 0
        _logger.info("gateway traces are written %s", "in batches" if self.writer else "by MLflow's exporter")
        self._replay_thread: threading.Thread | None = None
        if self.journal is not None:
            self._replay_thread = threading.Thread(target=self._replay_journal, name="journal-replay", daemon=True)
            self._replay_thread.start()

    # --- the journal -------------------------------------------------------------------------

    def _on_written(self, trace_ids: list[str]) -> None:
        self.ledger.confirm(trace_ids)
        if self.journal is not None:
            try:
                self.journal.mark_written(trace_ids)
            except Exception:  # noqa: BLE001 - the traces are stored; at worst they are rewritten (idempotent)
                self._journal_error("could not mark traces written in the journal")

    def _on_failed(self, trace_ids: list[str], reason: str) -> None:
        self.ledger.fail(trace_ids, reason)
        if self.journal is not None:
            try:
                self.journal.mark_failed(trace_ids)
            except Exception:  # noqa: BLE001 - already counted and spooled by the writer
                self._journal_error("could not mark traces failed in the journal")

    def _journal_error(self, what: str) -> None:
        with self._counts_lock:
            self._journal_errors += 1
        _logger.exception(what)

    def _replay_journal(self) -> None:
        """Write the journaled traces a previous process served but did not get into the store."""
        try:
            pending = self.journal.stats().pending
            if not pending:
                return
            if self.writer is None:
                _logger.error("%d journaled traces wait to be written, but this gateway has no batched writer "
                              "(neither a SQL store nor an mlflow server, or batch_traces=False); they stay in %s", pending, self.journal.path)
                return
            _logger.warning("writing %d traces served before the last restart", pending)
            for captured in self.journal.unwritten():
                if self._closing.is_set():
                    return
                self.ledger.add(captured.trace_id, poll=False)
                self.writer.submit(captured, timeout_s=30)
                with self._counts_lock:
                    self._replayed_at_start += 1
        except Exception:  # noqa: BLE001 - the rows stay pending and are retried at the next start
            self._journal_error("replaying journaled traces failed")

    @contextlib.contextmanager
    def _claim(self, request_id: str) -> Iterator[None]:
        """Serialise requests with the same id in this process: a duplicate waits for the first."""
        with self._claims_lock:
            claim = self._claims.setdefault(request_id, [threading.Lock(), 0])
            claim[1] += 1
        try:
            with claim[0]:
                yield
        finally:
            with self._claims_lock:
                claim[1] -= 1
                if not claim[1]:
                    self._claims.pop(request_id, None)

    def _answer_from_journal(self, entry: JournalEntry, request_fingerprint: str) -> tuple[dict[str, Any], dict[str, str]]:
        if entry.fingerprint != request_fingerprint:
            raise GatewayError(
                409, "RESOURCE_CONFLICT",
                f"Request id {entry.request_id!r} was already used for a different request; "
                f"send a new {REQUEST_ID_FIELD} for a new request.",
                headers={REQUEST_ID_HEADER: entry.request_id},
            )
        with self._counts_lock:
            self._answered_from_journal += 1
        headers = {**entry.headers, REPLAYED_HEADER: "true"}
        if entry.status != 200:
            body = entry.body if isinstance(entry.body, dict) else {}
            raise GatewayError(entry.status, body.get("error_code", "AGENT_ERROR"), body.get("message", ""), headers)
        return entry.body, headers

    # --- configuration ---------------------------------------------------------------------

    def endpoints(self) -> dict[str, Endpoint]:
        """Current endpoint configs, read from the tracking store on every call (a split change applies at once)."""
        with self._config_lock:
            self._endpoints = {e.name: e for e in serving.list_endpoints(self.settings)}
            return self._endpoints

    # --- serving -----------------------------------------------------------------------------

    def invoke(self, endpoint_name: str, body: Any, *, request_id: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
        """Serve one request; returns the ResponsesAgent response and headers naming the arm.

        ``request_id`` is the ``X-Request-Id`` header, if any. A request named by the client (that
        header or ``client_request_id`` in the body) is served at most once per id: a retry gets
        the journaled answer. Errors before the model runs (404, 400, 503) journal nothing, so
        retrying them is always safe.
        """
        request = validate_request(body)
        request, request_id, named = split_request_id(request, request_id)
        request_fingerprint = fingerprint(endpoint_name, request)
        if self.journal is None or not named:
            return self._serve(endpoint_name, request, request_id, request_fingerprint)
        with self._claim(request_id):
            try:
                entry = self.journal.lookup(request_id)
            except Exception as exc:  # noqa: BLE001 - without the journal a retry could be served twice
                self._journal_error("reading the request journal failed")
                raise GatewayError(503, "TEMPORARILY_UNAVAILABLE", "The gateway cannot read its request journal; "
                                   "retry shortly.", headers={REQUEST_ID_HEADER: request_id}) from exc
            if entry is not None:
                return self._answer_from_journal(entry, request_fingerprint)
            return self._serve(endpoint_name, request, request_id, request_fingerprint)

    def _serve(self, endpoint_name: str, request: dict[str, Any], request_id: str,
               request_fingerprint: str) -> tuple[dict[str, Any], dict[str, str]]:
        endpoint = self.endpoints().get(endpoint_name)
        if endpoint is None:
            raise GatewayError(404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint {endpoint_name!r} does not exist.",
                               headers={REQUEST_ID_HEADER: request_id})
        context = request.get("context") or {}
        sticky_key = context.get("conversation_id") or context.get("user_id")
        with self._rng_lock:
            served = choose_arm(endpoint, sticky_key=sticky_key, rng=self._rng)
        loaded = self.models.load(served)
        if not self.ledger.wait_for_room(timeout_s=30):
            raise GatewayError(503, "TRACE_BACKLOG_FULL", "Too many traces are waiting to be stored; retry shortly.")
        # Agent and version are linked through the trace's mlflow.modelId (set below), as MLflow's
        # own serving does; the tags name only the endpoint and arm, which MLflow has no notion of.
        tags = {
            traces.ENDPOINT_TAG: endpoint.name,
            traces.ARM_TAG: served.entity_name,
        }
        error: Exception | None = None
        response: Any = None
        # The experiment is given per root span: set_destination would rebuild MLflow's tracer
        # provider (and a new export queue with its threads) on every request.
        destination = MlflowExperimentLocation(loaded.experiment_id)
        with self.models.gate.serving(), span_batch.capture(enabled=self.writer is not None) as captured:
            with mlflow.start_span(name=endpoint.name, span_type=SpanType.AGENT, trace_destination=destination) as span:
                span.set_inputs(request)
                mlflow.update_current_trace(
                    tags=tags,
                    model_id=loaded.model_id,
                    user=context.get("user_id"),
                    session_id=context.get("conversation_id"),
                    client_request_id=request_id,
                )
                try:
                    response = loaded.model.predict(request)
                    span.set_outputs(response)
                except Exception as exc:  # noqa: BLE001 - recorded on the trace, returned as 500
                    error = exc
                    span.record_exception(exc)
                    span.set_status("ERROR")
        trace_id = span.trace_id
        untraced = trace_id == NO_OP_SPAN_TRACE_ID
        if untraced:
            trace_id = f"untraced-{uuid.uuid4().hex}"
        headers = {"X-AgentOps-Arm": served.entity_name, "X-AgentOps-Trace-Id": trace_id, REQUEST_ID_HEADER: request_id}
        if error is None:
            status, payload = 200, response.model_dump(exclude_none=True) if hasattr(response, "model_dump") else response
        else:
            status, payload = 500, {"error_code": "AGENT_ERROR", "message": f"{type(error).__name__}: {error}"}
        if self.journal is not None:
            # Journaled before anything is answered: from here on, a crash loses neither the answer
            # nor the trace, and a retry with this id gets this answer.
            entry = JournalEntry(request_id, request_fingerprint, endpoint.name, served.entity_name, trace_id,
                                 status, payload, headers, "")
            try:
                held, inserted = self.journal.record(entry, captured.trace)
            except Exception:  # noqa: BLE001 - serve anyway; the trace still goes to the writer (in memory)
                self._journal_error(f"journaling request {request_id} failed")
            else:
                if not inserted:
                    # Another gateway on this data folder journaled the id first: its answer stands,
                    # and this trace is dropped so the id keeps exactly one trace.
                    return self._answer_from_journal(held, request_fingerprint)
        if untraced:
            # Tracing is off in this process: the request is served but its trace is lost, loudly.
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
        if error is not None:
            raise GatewayError(500, payload["error_code"], payload["message"], headers) from error
        return payload, headers

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
            "journal": self._journal_stats(),
        }

    def _journal_stats(self) -> dict[str, Any]:
        with self._counts_lock:
            replayed, answered, errors = self._replayed_at_start, self._answered_from_journal, self._journal_errors
        figures: dict[str, Any] = {"enabled": self.journal is not None, "replayed_at_start": replayed,
                                   "answered_from_journal": answered, "errors": errors}
        if self.journal is not None:
            try:
                journal = self.journal.stats()
            except Exception:  # noqa: BLE001 - reported as an error, stats still answer
                self._journal_error("reading journal stats failed")
                figures["errors"] += 1
            else:
                figures.update(requests=journal.requests, pending=journal.pending, written=journal.written,
                               could_not_record=journal.failed, untracked=journal.untracked)
        return figures

    def problems(self, stats: dict[str, Any] | None = None) -> list[str]:
        """Plain sentences for whatever a user should know: traces lost, not recorded, journal errors."""
        stats = stats or self.stats()
        traces, journal = stats["traces"], stats["journal"]
        found = []
        if traces["lost"]:
            found.append(f"{traces['lost']} traces of requests served by this process are not in the store "
                         f"({traces['could_not_record']} could not be recorded and were spooled).")
        earlier = journal.get("could_not_record", 0) - traces["could_not_record"]
        if earlier > 0:
            found.append(f"{earlier} traces of earlier requests could not be recorded (see the gateway spool).")
        if journal["errors"]:
            found.append(f"The request journal failed {journal['errors']} times: retries may not be deduplicated "
                         "and a crash may lose traces.")
        return found

    def drain(self, timeout_s: float) -> LedgerStats:
        """Write queued traces, then confirm pending ones in the store; the ledger's stats."""
        deadline = time.monotonic() + timeout_s
        if self.writer is not None:
            self.writer.flush(timeout_s)
        else:
            mlflow.flush_trace_async_logging()
        return self.ledger.drain(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Record what is queued and stop the background threads (the graceful-shutdown path).

        Called after the server stopped taking requests and let in-flight ones finish: writes
        every queued trace (``TraceWriter.close`` flushes), stops the writer process, confirms
        the traces in the store and marks them written in the journal. Whatever could not be
        written stays ``pending`` in the journal and is written at the next start.
        """
        self._closing.set()
        if self._replay_thread is not None:
            self._replay_thread.join(timeout=60)
        if self.writer is not None:
            self.writer.close()
        if self._sink is not None:
            self._sink.close()
        mlflow.flush_trace_async_logging()
        self.ledger.drain(30, wait_for_lost=False)
        self.ledger.close()
        if self.journal is not None:
            self.journal.close()

