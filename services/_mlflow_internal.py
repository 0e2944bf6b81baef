"""The one place that touches MLflow APIs outside its public surface.

Two non-public store methods make the app fast on a SQL store:

* ``store.log_spans(experiment_id, spans)`` writes spans of many traces in one DB session
  (about 11x faster than exporting trace by trace, see shared/MLFLOW-NOTES.md), with
  ``store.start_trace(trace_info)`` to attach metadata such as ``mlflow.modelId``.
* ``store.query_trace_metrics(...)`` aggregates trace metrics inside the store.

Each has a public-API fallback, and ``tests/services/test_mlflow_internal.py`` checks that the
fast path still exists and gives the same result as the fallback, so an MLflow upgrade that
changes these internals fails loudly instead of silently slowing down or losing data.
"""

from __future__ import annotations

import base64
import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from mlflow import MlflowClient
from mlflow.entities import Span, SpanStatus, SpanStatusCode, TraceInfo, TraceLocation, TraceState
from mlflow.entities.trace_metrics import AggregationType, MetricAggregation, MetricViewType
from mlflow.tracing.constant import SpanAttributeKey, TraceMetadataKey

_logger = logging.getLogger(__name__)

# A local RNG: MLflow derives OTel ids from the global ``random``; seeding that one would
# repeat trace ids across runs and overwrite earlier traces.
_ID_RNG = random.SystemRandom()


@dataclass(frozen=True)
class SpanSpec:
    """A span to write: times in nanoseconds since the epoch, attributes as plain values."""

    name: str
    span_type: str
    start_ns: int
    end_ns: int
    inputs: Any = None
    outputs: Any = None
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    children: tuple["SpanSpec", ...] = ()


@dataclass(frozen=True)
class TraceSpec:
    """A whole trace: its root span tree plus trace-level tags and metadata."""

    experiment_id: str
    root: SpanSpec
    tags: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def tracking_store(client: MlflowClient) -> Any:
    """The tracking store behind a client (private attribute, hence here)."""
    return client._tracking_client.store


def supports_bulk_span_logging(client: MlflowClient) -> bool:
    """True when the store can take many traces' spans in one call (SQL stores)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    return isinstance(tracking_store(client), SqlAlchemyStore)


def log_traces(
    client: MlflowClient, traces: Sequence[TraceSpec], *, chunk_size: int = 500
) -> list[str]:
    """Write finished traces with their original timestamps; return their trace ids.

    Uses the store's bulk ``log_spans`` where available and MLflow's public imperative
    tracing API otherwise. Either way every trace is written synchronously: nothing goes
    through the async export queue, which drops traces when it overflows.
    """
    if not traces:
        return []
    if supports_bulk_span_logging(client):
        ids: list[str] = []
        for start in range(0, len(traces), chunk_size):
            ids.extend(_log_traces_bulk(client, traces[start : start + chunk_size]))
        return ids
    return [_log_trace_public(client, spec) for spec in traces]


# --- fast path -------------------------------------------------------------------------


def _b64(value: int, n_bytes: int) -> str:
    return base64.b64encode(value.to_bytes(n_bytes, "big")).decode()


def _dump(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def _span_dicts(spec: SpanSpec, trace_id: str, otel_trace_id: int, parent: int | None) -> Iterable[dict]:
    span_id = _ID_RNG.getrandbits(64) or 1
    attributes = {
        SpanAttributeKey.REQUEST_ID: _dump(trace_id),
        SpanAttributeKey.SPAN_TYPE: _dump(spec.span_type),
    }
    if spec.inputs is not None:
        attributes[SpanAttributeKey.INPUTS] = _dump(spec.inputs)
    if spec.outputs is not None:
        attributes[SpanAttributeKey.OUTPUTS] = _dump(spec.outputs)
    attributes.update({key: _dump(value) for key, value in spec.attributes.items()})
    events = []
    if spec.error:
        events.append({
            "name": "exception",
            "time_unix_nano": spec.end_ns,
            "attributes": {"exception.message": spec.error, "exception.type": "Exception"},
        })
    yield {
        "trace_id": _b64(otel_trace_id, 16),
        "span_id": _b64(span_id, 8),
        "parent_span_id": _b64(parent, 8) if parent is not None else None,
        "name": spec.name,
        "start_time_unix_nano": spec.start_ns,
        "end_time_unix_nano": spec.end_ns,
        "events": events,
        "status": {
            "code": "STATUS_CODE_ERROR" if spec.error else "STATUS_CODE_OK",
            "message": spec.error or "",
        },
        "attributes": attributes,
        "links": [],
    }
    for child in spec.children:
        yield from _span_dicts(child, trace_id, otel_trace_id, span_id)


def _preview(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else _dump(value)
    return text[:1000]


def _log_traces_bulk(client: MlflowClient, traces: Sequence[TraceSpec]) -> list[str]:
    store = tracking_store(client)
    spans_by_experiment: dict[str, list[Span]] = {}
    trace_ids = []
    for spec in traces:
        otel_trace_id = _ID_RNG.getrandbits(128) or 1
        trace_id = f"tr-{otel_trace_id:032x}"
        root = spec.root
        metadata = {
            TraceMetadataKey.INPUTS: _preview(root.inputs) or "",
            TraceMetadataKey.OUTPUTS: _preview(root.outputs) or "",
            **spec.metadata,
        }
        info = TraceInfo(
            trace_id=trace_id,
            trace_location=TraceLocation.from_experiment_id(spec.experiment_id),
            request_time=root.start_ns // 1_000_000,
            execution_duration=(root.end_ns - root.start_ns) // 1_000_000,
            state=TraceState.ERROR if root.error else TraceState.OK,
            request_preview=_preview(root.inputs),
            response_preview=_preview(root.outputs),
            trace_metadata=metadata,
            tags={"mlflow.traceName": root.name, **spec.tags},
        )
        # start_trace records metadata (model link, source run) that log_spans cannot; it
        # leaves token usage and cost empty so log_spans fills them from the span tree.
        store.start_trace(info)
        spans = [Span.from_dict(d) for d in _span_dicts(root, trace_id, otel_trace_id, None)]
        spans_by_experiment.setdefault(spec.experiment_id, []).extend(spans)
        trace_ids.append(trace_id)
    for experiment_id, spans in spans_by_experiment.items():
        store.log_spans(experiment_id, spans)
    return trace_ids


# --- public fallback ---------------------------------------------------------------------


def _log_trace_public(client: MlflowClient, spec: TraceSpec) -> str:
    import mlflow

    root = spec.root
    model_id = spec.metadata.get(TraceMetadataKey.MODEL_ID)
    if model_id:
        mlflow.set_active_model(model_id=model_id)
    try:
        root_span = client.start_trace(
            name=root.name,
            span_type=root.span_type,
            inputs=root.inputs,
            attributes=root.attributes,
            tags=spec.tags,
            experiment_id=spec.experiment_id,
            start_time_ns=root.start_ns,
        )
        trace_id = root_span.trace_id

        def write_children(parent_id: str, children: tuple[SpanSpec, ...]) -> None:
            for child in children:
                span = client.start_span(
                    name=child.name,
                    trace_id=trace_id,
                    parent_id=parent_id,
                    span_type=child.span_type,
                    inputs=child.inputs,
                    attributes=child.attributes,
                    start_time_ns=child.start_ns,
                )
                write_children(span.span_id, child.children)
                client.end_span(
                    trace_id,
                    span.span_id,
                    outputs=child.outputs,
                    status=_status(child),
                    end_time_ns=child.end_ns,
                )

        write_children(root_span.span_id, root.children)
        client.end_trace(trace_id, outputs=root.outputs, status=_status(root), end_time_ns=root.end_ns)
    finally:
        if model_id:
            mlflow.clear_active_model()
    mlflow.flush_trace_async_logging()
    return trace_id


def _status(spec: SpanSpec) -> SpanStatus:
    if spec.error:
        return SpanStatus(SpanStatusCode.ERROR, spec.error)
    return SpanStatus(SpanStatusCode.OK)


# --- confirming stored traces ------------------------------------------------------------------


def stored_trace_ids(client: MlflowClient, trace_ids: Sequence[str]) -> set[str]:
    """The subset of ``trace_ids`` whose trace and spans are in the store.

    Uses the SQL store's ``batch_get_trace_infos`` (one query) where present, else one public
    ``get_trace`` call per id. A trace counts once its spans landed (the
    ``mlflow.trace.spansLocation`` tag that ``log_spans`` writes).
    """
    store = tracking_store(client)
    batch = getattr(store, "batch_get_trace_infos", None)
    infos = []
    if batch is not None:
        infos = batch(list(trace_ids))
    else:
        for trace_id in trace_ids:
            try:
                infos.append(client.get_trace(trace_id).info)
            except Exception:  # noqa: BLE001 - not stored (yet)
                continue
    return {
        info.trace_id for info in infos if info.tags.get("mlflow.trace.spansLocation")
    }


def trace_info(client: MlflowClient, trace_id: str) -> TraceInfo:
    """One trace's info without loading its spans (``MlflowClient`` has no public accessor).

    Uses the client's private tracing client; falls back to the public ``get_trace``.
    """
    tracing = getattr(client, "_tracing_client", None)
    if tracing is not None and hasattr(tracing, "get_trace_info"):
        return tracing.get_trace_info(trace_id)
    return client.get_trace(trace_id).info


# --- SQLite maintenance ----------------------------------------------------------------------


def analyze_sqlite(db_path: str) -> bool:
    """Refresh SQLite planner statistics after a bulk load; return False if not a SQLite file.

    Without statistics, span name/type trace filters on a freshly loaded store take minutes;
    ``ANALYZE`` (a fraction of a second) brings them to seconds (shared/MLFLOW-NOTES.md).
    """
    import sqlite3
    from pathlib import Path

    if not Path(db_path).is_file():
        return False
    with sqlite3.connect(db_path) as connection:
        connection.execute("ANALYZE")
    return True


# --- store-side aggregation ----------------------------------------------------------------


@dataclass(frozen=True)
class MetricPoint:
    """One aggregated value: ``values`` maps aggregation name (COUNT, AVG, P95, ...) to a number."""

    dimensions: dict[str, str]
    values: dict[str, float]


def query_trace_metrics(
    client: MlflowClient,
    experiment_ids: Sequence[str],
    metric_name: str,
    aggregations: Sequence[str | tuple[str, float]],
    *,
    view_type: str = "TRACES",
    dimensions: Sequence[str] | None = None,
    filters: Sequence[str] | None = None,
    start_time_ms: int | None = None,
    end_time_ms: int | None = None,
    time_interval_seconds: int | None = None,
) -> list[MetricPoint]:
    """Aggregate a trace metric in the store (``query_trace_metrics``, not in MLflow's top-level API).

    ``aggregations`` are names (``"COUNT"``, ``"SUM"``, ``"AVG"``...) or ``("PERCENTILE", 95)``.
    Raises ``NotImplementedError`` when the store has no such method, so callers can fall back.
    """
    store = tracking_store(client)
    method = getattr(store, "query_trace_metrics", None)
    if method is None:
        raise NotImplementedError(f"{type(store).__name__} has no query_trace_metrics")
    parsed = [
        MetricAggregation(AggregationType(a[0]), percentile_value=a[1])
        if isinstance(a, tuple)
        else MetricAggregation(AggregationType(a))
        for a in aggregations
    ]
    points: list[MetricPoint] = []
    page_token = None
    while True:
        page = method(
            experiment_ids=list(experiment_ids),
            view_type=MetricViewType(view_type),
            metric_name=metric_name,
            aggregations=parsed,
            dimensions=list(dimensions) if dimensions else None,
            filters=list(filters) if filters else None,
            time_interval_seconds=time_interval_seconds,
            start_time_ms=start_time_ms,
            end_time_ms=end_time_ms,
            page_token=page_token,
        )
        points.extend(MetricPoint(dict(p.dimensions), dict(p.values)) for p in page)
        page_token = getattr(page, "token", None)
        if not page_token:
            return points
