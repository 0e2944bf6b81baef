"""Capture finished traces in-process and write many of them per DB session (non-public MLflow).

MLflow's exporter writes every span and every trace to the store separately (one DB session
each, ~60 ms of CPU for a 5-span trace on SQLite) and, with async logging on, queues them in
bounded queues that discard on overflow (shared/MLFLOW-NOTES.md). For the serving gateway we
instead capture each finished trace exactly as MLflow built it and let the caller write traces
in batches with the SQL store's ``start_trace`` + ``log_spans`` (spans of many traces in one
session).

How the capture hooks in, and the non-public MLflow surface it relies on (all checked by
``tests/services/test_span_batch.py``, which fails loudly when an upgrade changes them):

* ``mlflow.tracing.provider._get_mlflow_span_processor(tracking_uri)`` is the factory MLflow
  calls whenever it (re)builds its tracer provider (first trace, ``set_tracking_uri``,
  ``set_destination``, ``reset``...). ``install()`` wraps it so the ``MlflowV3SpanProcessor`` it
  returns becomes a ``_CapturingSpanProcessor`` (a subclass adding no state), so the hook
  survives every rebuild.
* The processor keeps MLflow's own bookkeeping (span registration, trace-info finalisation with
  token usage and previews via ``_update_trace_info``, span metrics) and only replaces the
  *export* of traces whose root span started inside ``capture()``: their child spans are not
  exported one by one, and when the root ends the whole trace is popped from MLflow's
  ``InMemoryTraceManager`` (``pop_trace``) and handed to the capture, in the request's thread.
* Every other trace in the process goes through MLflow's exporter unchanged.
* ``write_traces`` uses ``SqlAlchemyStore.start_trace`` / ``log_spans`` through
  ``services._mlflow_internal.tracking_store``; its fast path runs them for a whole batch in
  one transaction by giving a shallow copy of the store a ``ManagedSessionMaker`` that hands
  out one session (and ``get_experiment`` read once per batch). Any rollback inside voids the
  batch, which is then written trace by trace through the store's own sessions.

On a remote ``mlflow server`` (a REST store) ``write_traces`` hands the batch to
``rest_trace_batch``: each trace's info through ``start_trace`` and the spans of the whole batch
in one OTLP request per experiment.

Public fallback: when ``install()`` cannot hook (MLflow changed) or the store is neither a SQL
store nor MLflow's REST store, ``capture(enabled=False)`` captures nothing and MLflow's exporter
records the trace as usual.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from mlflow import MlflowClient
from mlflow.entities import Trace
from mlflow.entities.model_registry import PromptVersion

from services._mlflow_internal import rest_trace_batch
from services._mlflow_internal.trace_write import failure_text, supports_bulk_span_logging, tracking_store

_logger = logging.getLogger(__name__)

# Marks the factory wrapper so install() is idempotent.
_HOOK_MARK = "_agentops_capturing_factory"


@dataclass(frozen=True)
class CapturedTrace:
    """One finished trace as MLflow built it, plus what its export would also have sent."""

    trace: Trace
    prompts: tuple[PromptVersion, ...] = ()
    attachments: dict[str, Any] = field(default_factory=dict)

    @property
    def trace_id(self) -> str:
        return self.trace.info.trace_id

    @property
    def experiment_id(self) -> str:
        return self.trace.info.experiment_id


class Capture:
    """Filled when the root span started inside ``capture()`` ends (same thread, synchronous)."""

    def __init__(self) -> None:
        self.trace_id: str | None = None  # the captured root's trace, once it started
        self.trace: CapturedTrace | None = None
        self.missing: str | None = None  # why a started trace could not be captured

    def _deliver(self, captured: CapturedTrace) -> None:
        self.trace = captured


_CURRENT: ContextVar[Capture | None] = ContextVar("agentops_trace_capture", default=None)
# OTel trace id -> Capture, for every captured trace still in flight. Process-wide, because a
# provider rebuilt mid-request hands the trace's later spans to a new processor instance.
_IN_FLIGHT: dict[int, Capture] = {}
_IN_FLIGHT_LOCK = threading.Lock()
_INSTALL_LOCK = threading.Lock()


@contextlib.contextmanager
def capture(*, enabled: bool = True) -> Iterator[Capture]:
    """Capture the trace whose root span starts in this block instead of exporting it."""
    result = Capture()
    if not enabled:
        yield result
        return
    token = _CURRENT.set(result)
    try:
        yield result
    finally:
        _CURRENT.reset(token)


def in_flight() -> int:
    """Captured traces whose root span has not ended yet (a leak check for tests)."""
    with _IN_FLIGHT_LOCK:
        return len(_IN_FLIGHT)


# --- the processor ----------------------------------------------------------------------------

try:
    from mlflow.tracing.processor.mlflow_v3 import MlflowV3SpanProcessor
except ImportError:  # an MLflow that moved it: install() reports False, MLflow's exporter is used
    MlflowV3SpanProcessor = None  # type: ignore[assignment,misc]

if MlflowV3SpanProcessor is not None:

    class _CapturingSpanProcessor(MlflowV3SpanProcessor):
        """MLflow's processor, except that captured traces are handed over instead of exported."""

        def _start_trace(self, root_span):  # noqa: ANN001, ANN202 - OTel span in, TraceInfo out
            info = super()._start_trace(root_span)
            target = _CURRENT.get()
            # One trace per capture: a second root inside the block is exported as usual.
            if target is not None and info is not None and target.trace_id is None:
                target.trace_id = info.trace_id
                with _IN_FLIGHT_LOCK:
                    _IN_FLIGHT[root_span.context.trace_id] = target
            return info

        def _on_end_impl(self, span) -> None:  # noqa: ANN001 - OTel ReadableSpan
            otel_trace_id = span.context.trace_id
            with _IN_FLIGHT_LOCK:
                target = _IN_FLIGHT.get(otel_trace_id)
            if target is None:
                super()._on_end_impl(span)
                return
            if self._export_metrics:
                self.record_metrics_for_span(span)
            if span.parent is not None:
                return  # a child: already recorded in the trace manager, written with the root
            with _IN_FLIGHT_LOCK:
                _IN_FLIGHT.pop(otel_trace_id, None)
            try:
                _finish_captured_trace(self, span, target)
            except Exception as exc:  # noqa: BLE001 - OTel would swallow it; the gateway must count it
                target.missing = f"capturing trace {target.trace_id} failed: {type(exc).__name__}: {exc}"
                _logger.exception("capturing trace %s failed", target.trace_id)

else:  # pragma: no cover - only with an MLflow that changed
    _CapturingSpanProcessor = None  # type: ignore[assignment,misc]


def _finish_captured_trace(processor: Any, root_span: Any, target: Capture) -> None:
    from mlflow.tracing.constant import SpanAttributeKey
    from mlflow.tracing.utils import add_size_stats_to_trace_metadata, get_otel_attribute

    trace_id = get_otel_attribute(root_span, SpanAttributeKey.REQUEST_ID)
    manager = processor._trace_manager
    # The same finalisation MLflow applies before exporting: end time, state, previews, and
    # token usage summed over the span tree.
    with processor._deduplication_lock:
        with manager.get_trace(trace_id) as live:
            if live is not None:
                processor._update_trace_info(live, root_span)
    if manager.has_open_spans(root_span.context.trace_id):
        # MLflow's exporter would wait for them; a gateway request ends all its spans first.
        _logger.warning("trace %s ended with spans still open; writing what has ended", trace_id)
    popped = manager.pop_trace(root_span.context.trace_id)
    if popped is None:
        target.missing = f"trace {trace_id} was no longer in MLflow's trace manager (timed out?)"
        _logger.error(target.missing)
        return
    trace = popped.trace
    add_size_stats_to_trace_metadata(trace)
    attachments: dict[str, Any] = {}
    for span in trace.data.spans:
        attachments.update(getattr(span, "_attachments", None) or {})
    target._deliver(CapturedTrace(trace, tuple(popped.prompts), attachments))


def install() -> bool:
    """Hook trace capture into MLflow's tracer provider (idempotent); False when MLflow changed."""
    from mlflow.tracing import provider as provider_module

    with _INSTALL_LOCK:
        factory = getattr(provider_module, "_get_mlflow_span_processor", None)
        if factory is None:
            _logger.warning("mlflow.tracing.provider._get_mlflow_span_processor is gone; traces use MLflow's exporter")
            return False
        if getattr(factory, _HOOK_MARK, False):
            return True
        if _CapturingSpanProcessor is None:
            _logger.warning("MLflow's MlflowV3SpanProcessor moved; traces use MLflow's exporter")
            return False

        def capturing_factory(tracking_uri: str):  # noqa: ANN202 - returns MLflow's processor type
            processor = factory(tracking_uri)
            # Only a plain MlflowV3SpanProcessor is converted; the subclass adds behaviour, no state.
            if type(processor) is MlflowV3SpanProcessor:
                processor.__class__ = _CapturingSpanProcessor
            return processor

        setattr(capturing_factory, _HOOK_MARK, True)
        capturing_factory._agentops_original = factory  # type: ignore[attr-defined]
        provider_module._get_mlflow_span_processor = capturing_factory
        _rebuild_provider()
        return True


def uninstall() -> None:
    """Restore MLflow's own processor factory (tests)."""
    from mlflow.tracing import provider as provider_module

    with _INSTALL_LOCK:
        factory = provider_module._get_mlflow_span_processor
        original = getattr(factory, "_agentops_original", None)
        if original is not None:
            provider_module._get_mlflow_span_processor = original
            _rebuild_provider()


def is_installed() -> bool:
    """True when the current tracer provider captures (the hook is in and MLflow built with it)."""
    from mlflow.tracing import provider as provider_module

    processor = provider_module._get_span_processor()
    return _CapturingSpanProcessor is not None and isinstance(processor, _CapturingSpanProcessor)


def _rebuild_provider() -> None:
    import mlflow
    from mlflow.tracing import provider as provider_module

    # An already built provider holds MLflow's processor: rebuild it lazily with the hooked
    # factory, keeping tracing off if the user turned it off.
    if provider_module.provider.once._done and provider_module.is_tracing_enabled():
        mlflow.tracing.reset()


def supports_batching(client: MlflowClient) -> bool:
    """True when traces for this client's store can be captured and written in batches: a SQL
    store, or a remote ``mlflow server`` (``rest_trace_batch``)."""
    return supports_bulk_span_logging(client) or rest_trace_batch.supports(client)


# --- writing --------------------------------------------------------------------------------------


def write_traces(client: MlflowClient, traces: Sequence[CapturedTrace]) -> dict[str, str]:
    """Write captured traces with the SQL store's ``start_trace`` + ``log_spans``, as MLflow's exporter does.

    Fast path: the whole batch in one transaction (one commit instead of two per trace, the
    experiment read once). If anything in it fails or rolls back, nothing of it is kept and
    each trace is written on its own through the store's own sessions, so one bad trace (say,
    its experiment was deleted) does not sink the others.

    Returns the traces that could not be written, trace id -> error. Idempotent, so a caller
    may retry those: ``start_trace`` of an existing trace merges, ``log_spans`` upserts.
    """
    if not traces:
        return {}
    if not supports_bulk_span_logging(client) and rest_trace_batch.supports(client):
        # A remote mlflow server: the batch goes through its REST API (rest_trace_batch).
        failures = rest_trace_batch.write_traces(client, traces)
        _after_write(client, [t for t in traces if t.trace_id not in failures])
        return failures
    store = tracking_store(client)
    try:
        _write_in_one_transaction(store, traces)
        failures: dict[str, str] = {}
    except Exception:  # noqa: BLE001 - the per-trace path below is the authority
        _logger.info("writing %d traces in one transaction failed; writing them one by one", len(traces),
                     exc_info=_logger.isEnabledFor(logging.DEBUG))
        failures = {}
        for captured in traces:
            try:
                _write(store, [captured])
            except Exception as exc:  # noqa: BLE001 - reported to the caller, per trace
                failures[captured.trace_id] = failure_text(exc)
    _after_write(client, [t for t in traces if t.trace_id not in failures])
    return failures



def _write(store: Any, traces: Sequence[CapturedTrace]) -> None:
    spans_by_experiment: dict[str, list] = {}
    for captured in traces:
        # start_trace records what log_spans cannot: metadata (mlflow.modelId, token usage,
        # sizes, source run), tags, previews and the final state, exactly as MLflow's exporter.
        store.start_trace(captured.trace.info)
        spans_by_experiment.setdefault(captured.experiment_id, []).extend(captured.trace.data.spans)
    for experiment_id, spans in spans_by_experiment.items():
        store.log_spans(experiment_id, spans)


class _BatchRolledBack(Exception):
    """Some statement of the batch rolled the shared transaction back (e.g. a trace id race)."""


def _write_in_one_transaction(store: Any, traces: Sequence[CapturedTrace]) -> None:
    """``_write`` on a copy of the store whose sessions are all one session, committed once."""
    import copy

    import sqlalchemy
    from sqlalchemy import event

    session_maker = sqlalchemy.orm.sessionmaker(bind=store.engine)
    with session_maker() as session:
        rolled_back: list[bool] = []
        # The store's merge paths roll back and carry on, which would silently discard the
        # earlier traces of this batch: any rollback voids the batch instead.
        event.listen(session, "after_soft_rollback", lambda *_: rolled_back.append(True))
        if store.db_type == "sqlite":
            # What the store's own managed sessions set on every SQLite connection.
            session.execute(sqlalchemy.text("PRAGMA foreign_keys = ON;"))
            session.execute(sqlalchemy.text("PRAGMA busy_timeout = 20000;"))
            session.execute(sqlalchemy.text("PRAGMA case_sensitive_like = true;"))

        @contextlib.contextmanager
        def shared_session(read_only: bool = True) -> Iterator[Any]:
            yield session

        batch_store = copy.copy(store)
        batch_store.ManagedSessionMaker = shared_session
        experiments: dict[str, Any] = {}
        read_experiment = batch_store.get_experiment

        def get_experiment(experiment_id: str) -> Any:
            if experiment_id not in experiments:
                experiments[experiment_id] = read_experiment(experiment_id)
            return experiments[experiment_id]

        batch_store.get_experiment = get_experiment
        try:
            _write(batch_store, traces)
            if rolled_back:
                raise _BatchRolledBack("a statement in the batch rolled the transaction back")
            session.commit()
        except BaseException:
            session.rollback()
            raise


def _after_write(client: MlflowClient, traces: Sequence[CapturedTrace]) -> None:
    """Prompt links and attachments, which MLflow's exporter also sends after the trace."""
    extra = [t for t in traces if t.prompts or t.attachments]
    if not extra:
        return
    from mlflow.tracing.client import TracingClient
    from mlflow.tracing.export.utils import try_link_prompts_to_trace

    tracing = TracingClient(client.tracking_uri)
    for captured in extra:
        # Best effort, as in MLflow's exporter: the trace itself is already stored.
        try:
            if captured.attachments:
                tracing._upload_attachments(captured.trace.info, captured.attachments)
            if captured.prompts:
                try_link_prompts_to_trace(
                    client=tracing, trace_id=captured.trace_id, prompts=list(captured.prompts), synchronous=True
                )
        except Exception:  # noqa: BLE001
            _logger.warning("could not upload attachments / link prompts of trace %s", captured.trace_id, exc_info=True)
