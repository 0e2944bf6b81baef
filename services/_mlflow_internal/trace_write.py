"""Writing finished traces through the store: ``start_trace`` + ``log_spans`` in bulk, or MLflow's
public tracing API as the fallback."""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from mlflow import MlflowClient
from mlflow.entities import (
    Span,
    SpanStatus,
    SpanStatusCode,
    TraceInfo,
    TraceLocation,
    TraceState,
)
from mlflow.tracing.constant import SpanAttributeKey, TraceMetadataKey

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


def _span_dicts(spec: SpanSpec, trace_id: str, otel_trace_id: int, parent: int | None,
                rng: random.Random = _ID_RNG) -> Iterable[dict]:
    span_id = rng.getrandbits(64) or 1
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
        yield from _span_dicts(child, trace_id, otel_trace_id, span_id, rng)


def _preview(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else _dump(value)
    return text[:1000]


def _trace_parts(spec: TraceSpec, rng: random.Random = _ID_RNG) -> tuple[TraceInfo, list[Span]]:
    """The ``TraceInfo`` that ``start_trace`` takes and the spans that ``log_spans`` takes."""
    info, span_dicts = _trace_info_and_span_dicts(spec, rng)
    return info, [Span.from_dict(d) for d in span_dicts]


def _trace_info_and_span_dicts(spec: TraceSpec, rng: random.Random = _ID_RNG) -> tuple[TraceInfo, list[dict]]:
    """``_trace_parts`` with each span still as the dict ``Span.from_dict`` takes (same ids from ``rng``)."""
    otel_trace_id = rng.getrandbits(128) or 1
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
    return info, list(_span_dicts(root, trace_id, otel_trace_id, None, rng))


def _log_traces_bulk(client: MlflowClient, traces: Sequence[TraceSpec], rng: random.Random = _ID_RNG) -> list[str]:
    store = tracking_store(client)
    spans_by_experiment: dict[str, list[Span]] = {}
    trace_ids = []
    for spec in traces:
        info, spans = _trace_parts(spec, rng)
        # start_trace records metadata (model link, source run) that log_spans cannot; it
        # leaves token usage and cost empty so log_spans fills them from the span tree.
        store.start_trace(info)
        spans_by_experiment.setdefault(spec.experiment_id, []).extend(spans)
        trace_ids.append(info.trace_id)
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


def failure_text(exc: BaseException) -> str:
    """A write failure as reported per trace: the exception's class and the first line of its message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
