"""The one place that touches MLflow APIs outside its public surface.

This package holds every non-public MLflow use: this module (bulk trace writing, store-side
aggregates), ``user_client`` (MLflow clients carrying one Databricks user's token) and
``span_batch`` (the gateway's batched trace writer). Each part has a public fallback or refuses
loudly, and a test that fails when an MLflow upgrade changes what it relies on.

Non-public store methods and tables that make the app fast on a SQL store:

* ``store.log_spans(experiment_id, spans)`` writes spans of many traces in one DB session
  (about 11x faster than exporting trace by trace, see shared/MLFLOW-NOTES.md), with
  ``store.start_trace(trace_info)`` to attach metadata such as ``mlflow.modelId``.
* ``bulk_load_traces`` writes finished traces straight into ``trace_info``, ``trace_tags``,
  ``trace_request_metadata`` and ``spans`` (thousands per transaction, for benchmarks and demo
  data), building the rows with MLflow's own span translation and aggregation.
* ``store.query_trace_metrics(...)`` aggregates trace metrics inside the store.
* ``aggregate_traces`` groups by a trace tag and time bucket in two SQL statements over the
  store's tables, which ``query_trace_metrics`` cannot (tags are not dimensions there);
  ``trace_tag_values`` lists a tag's distinct values in one (the filters of the Monitoring page).

Each has a public-API fallback, and ``tests/services/test_mlflow_internal.py`` checks that the
fast path still exists and gives the same result as the fallback (for the direct load: the same
rows in every table), so an MLflow upgrade that changes these internals fails loudly instead of
silently slowing down, losing data or miscounting.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

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
    spans = [Span.from_dict(d) for d in _span_dicts(root, trace_id, otel_trace_id, None, rng)]
    return info, spans


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


# --- direct bulk load (benchmarks, demo data) -------------------------------------------------

# Span attributes from which log_spans derives more trace fields (session, user, OTLP tags)
# than this loader writes; specs carrying them go through the store instead.
_DERIVED_SPAN_ATTRIBUTES = ("session.id", "gen_ai.conversation.id", "user.id")
_TRACE_TAG_ATTRIBUTE_PREFIX = "mlflow.traceTag."


def supports_direct_load(client: MlflowClient, traces: Sequence[TraceSpec] = ()) -> bool:
    """True when ``bulk_load_traces`` can write ``traces`` straight into the store's tables."""
    if not supports_bulk_span_logging(client):
        return False
    from mlflow.store.tracking.utils.sql_trace_rollups import rollups_enabled

    if rollups_enabled():  # rollups need rebuild markers this loader does not write
        return False

    def plain(spec: SpanSpec) -> bool:
        keys = spec.attributes.keys()
        return (not any(k in _DERIVED_SPAN_ATTRIBUTES or k.startswith(_TRACE_TAG_ATTRIBUTE_PREFIX) for k in keys)
                and all(plain(child) for child in spec.children))

    return all(plain(spec.root) for spec in traces)


def bulk_load_traces(
    client: MlflowClient, traces: Sequence[TraceSpec], *, chunk_size: int = 5000, rng: random.Random = _ID_RNG,
    workers: int = 1,
) -> list[str]:
    """Write finished traces straight into the SQL store's tables, thousands per transaction.

    For filling a store that nothing else writes to meanwhile (benchmarks, demo data): it takes
    none of the row locks of ``log_spans``. Rows are built with MLflow's own span translation
    (cost from the model catalog), token and cost aggregation and column mapping, and
    ``tests/services/test_mlflow_internal.py`` checks that every table ends up exactly as after
    ``start_trace`` + ``log_spans``. Falls back to ``log_traces`` where that is not possible.
    With ``workers`` > 1, that many forked processes build the rows (the costly part: MLflow's span
    translation and cost calculation) while this one inserts them; trace ids then come from
    per-piece generators seeded from ``rng``.
    """
    if not traces:
        return []
    if not supports_direct_load(client, traces):
        return log_traces(client, traces)
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlSpan, SqlTraceInfo, SqlTraceMetadata, SqlTraceTag

    store = tracking_store(client)
    experiments = {}
    for experiment_id in {spec.experiment_id for spec in traces}:
        experiment = client.get_experiment(experiment_id)
        if experiment.lifecycle_stage != "active":
            raise ValueError(f"Experiment {experiment_id} is {experiment.lifecycle_stage}; traces need an active one.")
        experiments[experiment_id] = experiment
    trace_ids: list[str] = []
    tables = (SqlTraceInfo.__table__, SqlTraceTag.__table__, SqlTraceMetadata.__table__, SqlSpan.__table__)
    context = _RowContext(store.db_type, experiments)

    def insert(built: tuple[list[str], tuple[list[dict], ...]]) -> None:
        ids, rows = built
        with store.engine.begin() as connection:
            for table, table_rows in zip(tables, rows):
                if table_rows:
                    connection.execute(sa.insert(table), table_rows)
        trace_ids.extend(ids)

    pieces = [traces[start : start + chunk_size] for start in range(0, len(traces), chunk_size)]
    with _without_missing_litellm():
        if workers <= 1 or len(pieces) < 2:
            for piece in pieces:
                insert(_build_rows(context, piece, rng))
            return trace_ids
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        seeds = [rng.getrandbits(64) for _ in pieces]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for built in pool.map(_build_rows_seeded, [context] * len(pieces), pieces, seeds):
                insert(built)  # while the workers build the next pieces
    return trace_ids


@dataclass(frozen=True)
class _RowContext:
    db_type: str  # what _trace_rows reads of the store
    experiments: dict[str, Any]


def _build_rows(context: _RowContext, specs: Sequence[TraceSpec], rng: random.Random):
    ids: list[str] = []
    rows: tuple[list[dict], ...] = ([], [], [], [])
    for spec in specs:
        info, spans = _trace_parts(spec, rng)
        for bucket, new in zip(rows, _trace_rows(context, context.experiments[spec.experiment_id], info, spans)):
            bucket.extend(new)
        ids.append(info.trace_id)
    return ids, rows


def _build_rows_seeded(context: _RowContext, specs: Sequence[TraceSpec], seed: int):
    with _without_missing_litellm():
        return _build_rows(context, specs, random.Random(seed))


@contextlib.contextmanager
def _without_missing_litellm() -> Iterator[None]:
    """MLflow's cost calculation tries ``import litellm`` for every costed span and falls back to its
    own price table when that fails; a failed import is not cached, so each try searches sys.path
    again (~0.35 ms, about 15% of building a trace's rows). When litellm is not installed, mark it
    missing for the duration: the import then fails at once, with the same result."""
    import importlib.util
    import sys

    if "litellm" in sys.modules or importlib.util.find_spec("litellm") is not None:
        yield
        return
    sys.modules["litellm"] = None  # type: ignore[assignment]  # "import litellm" raises ImportError
    try:
        yield
    finally:
        if sys.modules.get("litellm", 0) is None:
            del sys.modules["litellm"]


def _json_or_none(value: Any) -> dict | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _unquote(value: Any) -> Any:
    # Span attributes are stored JSON-encoded: '"gpt-4o"' -> 'gpt-4o' (as log_spans reads them).
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        return value
    return parsed if isinstance(parsed, str) else value


def _trace_rows(store: Any, experiment: Any, info: TraceInfo, spans: list[Span]) -> tuple[list[dict], ...]:
    """trace_info, trace_tags, trace_request_metadata and spans rows of one finished trace."""
    from mlflow.store.tracking.utils.trace_analytics import (
        COST_COLUMN_BY_KEY,
        PROMOTED_TRACE_METADATA_KEYS,
        TOKEN_COLUMN_BY_KEY,
        analytics_columns_from_metadata,
        bounded_model_dimension,
        finite_float_or_none,
        token_count_or_none,
        validate_trace_name,
    )
    from mlflow.tracing.constant import SpansLocation, TraceTagKey
    from mlflow.tracing.otel.translation import translate_span_when_storing
    from mlflow.tracing.utils import (
        SpanAggregationNode,
        TraceJSONEncoder,
        aggregate_cost_from_span_nodes,
        aggregate_usage_from_span_nodes,
    )
    from mlflow.utils.mlflow_tags import MLFLOW_ARTIFACT_LOCATION
    from mlflow.utils.uri import append_to_uri_path

    trace_id = info.trace_id
    experiment_id = int(experiment.experiment_id)
    span_rows, usage_nodes, cost_nodes = [], [], []
    for span in spans:
        span_dict = translate_span_when_storing(span)
        attributes = span_dict.get("attributes", {})
        usage_nodes.append(SpanAggregationNode(span.span_id, span.parent_id,
                                               _json_or_none(attributes.get(SpanAttributeKey.CHAT_USAGE))))
        cost_nodes.append(SpanAggregationNode(span.span_id, span.parent_id,
                                              _json_or_none(attributes.get(SpanAttributeKey.LLM_COST))))
        cost = _json_or_none(attributes.get(SpanAttributeKey.LLM_COST) or None) or {}
        span_rows.append({
            "trace_id": trace_id,
            "experiment_id": experiment_id,
            "span_id": span.span_id,
            "parent_span_id": span.parent_id,
            "name": span.name,
            "type": span.span_type,
            "status": span.status.status_code,
            "start_time_unix_nano": span.start_time_ns,
            "end_time_unix_nano": span.end_time_ns,
            "content": json.dumps(span_dict, cls=TraceJSONEncoder, ensure_ascii=store.db_type == "mssql"),
            "input_cost": finite_float_or_none(cost.get("input_cost")),
            "output_cost": finite_float_or_none(cost.get("output_cost")),
            "total_cost": finite_float_or_none(cost.get("total_cost")),
            "model_name": bounded_model_dimension(_unquote(attributes.get(SpanAttributeKey.MODEL))),
            "model_provider": bounded_model_dimension(_unquote(attributes.get(SpanAttributeKey.MODEL_PROVIDER))),
        })

    # Values given to start_trace win; log_spans fills token usage and cost from the spans.
    columns = {c: None for c in (*TOKEN_COLUMN_BY_KEY.values(), *COST_COLUMN_BY_KEY.values(), "session_id")}
    given = analytics_columns_from_metadata(dict(info.trace_metadata))
    columns.update(given)
    if not any(given.get(c) is not None for c in TOKEN_COLUMN_BY_KEY.values()):
        usage = aggregate_usage_from_span_nodes(usage_nodes) or {}
        columns.update({c: token_count_or_none(usage.get(k)) for k, c in TOKEN_COLUMN_BY_KEY.items()})
    if not any(given.get(c) is not None for c in COST_COLUMN_BY_KEY.values()):
        recorded = aggregate_cost_from_span_nodes(cost_nodes) or {}
        columns.update({c: finite_float_or_none(recorded.get(k)) for k, c in COST_COLUMN_BY_KEY.items()})
    trace_row = {
        "request_id": trace_id,
        "experiment_id": experiment_id,
        "timestamp_ms": info.request_time,
        "execution_time_ms": info.execution_duration,
        "status": info.state.value,
        "client_request_id": info.client_request_id,
        "request_preview": info.request_preview,
        "response_preview": info.response_preview,
        "db_payload_generation": 1,  # log_spans bumps it once per write
        "trace_name": validate_trace_name(info.tags.get(TraceTagKey.TRACE_NAME)),
        **columns,
    }
    artifact_uri = append_to_uri_path(experiment.artifact_location, "traces", trace_id, "artifacts")
    tags = {k: v for k, v in info.tags.items() if k != TraceTagKey.TRACE_NAME}
    tags[MLFLOW_ARTIFACT_LOCATION] = artifact_uri
    tags[TraceTagKey.SPANS_LOCATION] = SpansLocation.TRACKING_STORE.value
    metadata = {k: v for k, v in info.trace_metadata.items() if k not in PROMOTED_TRACE_METADATA_KEYS}
    metadata[TraceMetadataKey.TRACE_INFO_FINALIZED] = "true"
    return (
        [trace_row],
        [{"request_id": trace_id, "key": k, "value": v} for k, v in tags.items()],
        [{"request_id": trace_id, "key": k, "value": v} for k, v in sorted(metadata.items())],
        span_rows,
    )


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


# --- grouped aggregation pushed down to the SQL store ----------------------------------------
#
# ``query_trace_metrics`` cannot group by a tag, so a chart split by version needs one query
# per version per metric (about nine each). On a SQL store the same figures come from two
# statements over ``trace_info`` (whose token and cost columns MLflow denormalizes for its own
# analytics), ``trace_tags`` and ``spans``, whatever the number of groups.

PERCENTILES = (50, 95, 99)
_ERROR_STATUS = "ERROR"


@dataclass(frozen=True)
class AggregateRow:
    """Figures of one group in one time bucket (``bucket_ms`` None: the whole window).

    ``group`` is the split tag's value, None when the aggregate is not split. Latency
    percentiles interpolate linearly (numpy's default) over traces with a duration.
    """

    group: str | None
    bucket_ms: int | None
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    traces_with_tokens: int  # traces that recorded input token usage
    recorded_cost: float  # MLflow's recorded cost (USD)


@dataclass(frozen=True)
class ModelRow:
    """LLM calls and recorded cost of one model in one group (``group`` None: all matching traces)."""

    group: str | None
    model: str
    llm_calls: int
    recorded_cost: float


@dataclass(frozen=True)
class TraceAggregates:
    """Everything the monitoring charts need, with how it was computed.

    ``rows`` holds one row per group and non-empty bucket plus one whole-window row per
    non-empty group; ``models`` holds per-group model rows plus the ``group=None`` rows over
    every matching trace. ``path`` is ``"sql"`` or ``"query_trace_metrics"``.
    """

    rows: tuple[AggregateRow, ...]
    models: tuple[ModelRow, ...]
    path: str
    store_queries: int


MODEL_ID_KEY = "mlflow.modelId"
SOURCE_RUN_KEY = "mlflow.sourceRun"


@dataclass(frozen=True)
class TraceLink:
    """Which traces belong to something (an agent, a version, an alias holder).

    A trace matches when its ``mlflow.modelId`` metadata is one of ``model_ids`` (the link
    ``set_active_model``, loaded pyfunc models and Databricks serving record), or when it carries
    one of the ``tags`` pairs (traces written by earlier versions of this app, linked by its own
    tags). In a grouping, all links' tags must use one key.
    """

    model_ids: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.model_ids and not self.tags


def supports_sql_aggregation(client: MlflowClient) -> bool:
    """True when the fast aggregate can read the store's tables: an embedded SQL store on SQLite or
    PostgreSQL, or a server whose database URL was given (``store_db``)."""
    from services._mlflow_internal import store_db

    return store_db.sql_source(client) is not None


def aggregate_traces(
    client: MlflowClient,
    experiment_ids: Sequence[str],
    *,
    start_ms: int,
    end_ms: int,
    interval_seconds: int,
    group_tag: str | None = None,
    groups: Sequence[str] = (),
    tag_equals: dict[str, str] | None = None,
    status: str | None = None,
    with_models: bool = True,
    force_fallback: bool = False,
    links: Sequence[TraceLink] = (),
    group_links: dict[str, TraceLink] | None = None,
    evaluation_rows: bool = False,
) -> TraceAggregates:
    """Counts, errors, latency percentiles, tokens, cost and model mix per group and bucket.

    Traces are those of ``experiment_ids`` started in ``[start_ms, end_ms)`` whose tags equal
    ``tag_equals``, that match every one of ``links`` (and whose status is ``status``). Figures
    are split by ``group_links`` (label -> link; a trace may count in several labels, e.g. two
    aliases on one version) or, the older form, by ``group_tag``'s value among ``groups``. On a
    SQLite store this runs two SQL statements (the model link is a join on
    ``trace_request_metadata``); elsewhere (REST, Databricks, other databases) it falls back to
    ``query_trace_metrics`` calls per group and linked model. Without ``with_models`` the model
    mix (the costlier half on SQLite) is skipped and ``models`` is empty. Traces linked by model
    id are live traffic: evaluation rows of the same LoggedModel (``mlflow.sourceRun``) are left
    out on a SQL store unless ``evaluation_rows`` (the fallback cannot tell them apart).
    """
    if group_tag and not groups:
        raise ValueError("group_tag needs the group values to aggregate")
    if group_tag:
        group_links = {g: TraceLink(tags=((group_tag, g),)) for g in dict.fromkeys(groups)}
    group_links = dict(group_links or {})
    if group_links:
        keys = {k for link in group_links.values() for k, _ in link.tags}
        if len(keys) > 1:
            raise ValueError(f"the groups' tags use several keys ({sorted(keys)}); use one")
        if any(link.is_empty for link in group_links.values()):
            raise ValueError("every group needs a model id or a tag to select its traces")
    tag_pairs = tuple(sorted((tag_equals or {}).items()))
    links = tuple(link for link in links)
    if any(link.is_empty for link in links):
        # A filter that nothing can match (an agent without versions): no traces.
        return TraceAggregates((), (), "empty", 0)
    args = (list(experiment_ids), start_ms, end_ms, interval_seconds, group_links, tag_pairs, status,
            with_models, links)
    from services._mlflow_internal import store_db

    if supports_sql_aggregation(client) and not force_fallback:
        return _aggregate_sql(store_db.sql_source(client), *args, evaluation_rows=evaluation_rows)
    return _aggregate_metrics_api(client, *args)


def trace_model_ids(
    client: MlflowClient,
    experiment_ids: Sequence[str],
    *,
    start_ms: int,
    end_ms: int,
    sample: int = 1000,
    force_fallback: bool = False,
    live_only: bool = True,
) -> list[str]:
    """Distinct ``mlflow.modelId`` values among the traces of a window (which versions had traffic).

    With ``live_only``, evaluation rows (traces carrying ``mlflow.sourceRun``) do not count.

    On a SQLite store, one ``SELECT DISTINCT`` over ``trace_request_metadata``; elsewhere the
    newest ``sample`` traces are searched without spans, so rare values may be missed.
    """
    if not experiment_ids:
        return []
    if supports_sql_aggregation(client) and not force_fallback:
        import sqlalchemy as sa
        from mlflow.store.tracking.dbmodels.models import SqlTraceInfo, SqlTraceMetadata

        from services._mlflow_internal import store_db

        store = store_db.sql_source(client)
        ti, md = SqlTraceInfo.__table__, SqlTraceMetadata.__table__
        with store.ManagedSessionMaker() as session:
            ids = [int(i) for i in store._filter_experiment_ids(session, [int(i) for i in experiment_ids])]
        statement = (
            sa.select(md.c.value).distinct()
            .select_from(md.join(ti, md.c.request_id == ti.c.request_id))
            .where(ti.c.experiment_id.in_(ids), ti.c.timestamp_ms >= start_ms, ti.c.timestamp_ms < end_ms,
                   md.c.key == MODEL_ID_KEY)
        )
        if live_only:
            run = md.alias("source_run")
            statement = statement.where(~sa.exists().where(run.c.request_id == ti.c.request_id,
                                                            run.c.key == SOURCE_RUN_KEY))
        with store.engine.connect() as connection:
            values = {row[0] for row in connection.execute(statement)}
    else:
        values = set()
        for info in _newest_trace_infos(client, experiment_ids, start_ms, end_ms, sample):
            metadata = info.trace_metadata or {}
            if not (live_only and metadata.get(SOURCE_RUN_KEY)):
                values.add(metadata.get(MODEL_ID_KEY))
    return sorted(v for v in values if v)


# The most traces one `search_traces` page may ask `mlflow server` for (its handler refuses more).
SEARCH_TRACES_PAGE_LIMIT = 500


def _newest_trace_infos(client: MlflowClient, experiment_ids: Sequence[str], start_ms: int, end_ms: int,
                        sample: int) -> list[Any]:
    """The newest ``sample`` trace infos of a window, in pages the server accepts (no spans read)."""
    infos: list[Any] = []
    token = None
    while len(infos) < sample:
        page = client.search_traces(
            locations=list(experiment_ids), filter_string=f"trace.timestamp_ms >= {start_ms} AND "
                                                          f"trace.timestamp_ms < {end_ms}",
            max_results=min(SEARCH_TRACES_PAGE_LIMIT, sample - len(infos)), include_spans=False,
            order_by=["timestamp_ms DESC"], page_token=token,
        )
        infos.extend(t.info for t in page)
        token = page.token
        if not token or not page:
            break
    return infos


def trace_tag_values(
    client: MlflowClient,
    experiment_ids: Sequence[str],
    key: str,
    *,
    start_ms: int,
    end_ms: int,
    sample: int = 1000,
    force_fallback: bool = False,
) -> list[str]:
    """Distinct values of trace tag ``key`` among the traces of a window.

    On a SQLite store, one ``SELECT DISTINCT`` over ``trace_tags`` (every trace of the window);
    elsewhere the newest ``sample`` traces are searched without spans, so rare values may be missed.
    """
    if not experiment_ids:
        return []
    from services._mlflow_internal import store_db

    if supports_sql_aggregation(client) and not force_fallback:
        import sqlalchemy as sa
        from mlflow.store.tracking.dbmodels.models import SqlTraceInfo, SqlTraceTag

        store = store_db.sql_source(client)
        ti, tags = SqlTraceInfo.__table__, SqlTraceTag.__table__
        with store.ManagedSessionMaker() as session:  # the store's own experiment scoping (workspaces)
            ids = [int(i) for i in store._filter_experiment_ids(session, [int(i) for i in experiment_ids])]
        statement = (
            sa.select(tags.c.value).distinct()
            .select_from(tags.join(ti, tags.c.request_id == ti.c.request_id))
            .where(ti.c.experiment_id.in_(ids), ti.c.timestamp_ms >= start_ms, ti.c.timestamp_ms < end_ms,
                   tags.c.key == key)
        )
        with store.engine.connect() as connection:
            values = {row[0] for row in connection.execute(statement)}
    else:
        values = {info.tags.get(key) for info in _newest_trace_infos(client, experiment_ids, start_ms, end_ms, sample)}
    return sorted((v for v in values if v), key=lambda v: (len(v), v))


# SQLite reads pages through a syscall each unless they are memory-mapped; mapping the file
# makes the aggregate's scans about 40% cheaper (measured on the 100k-trace bench store).
_SQLITE_MMAP_BYTES = 1 << 31



def _percentiles(values: Any) -> list[float]:
    import numpy as np

    return [float(v) for v in np.percentile(values, PERCENTILES)]  # linear, as query_trace_metrics


def _durations(text: str | None) -> Any:
    import numpy as np

    return np.array(text.split(","), dtype=np.float64) if text else np.empty(0)


def _link_condition(ti, tags, md, link: TraceLink):
    """SQL: the trace ``ti`` matches ``link`` (plain EXISTS subqueries, valid on SQLite and PostgreSQL)."""
    import sqlalchemy as sa

    parts = []
    if link.model_ids:
        parts.append(sa.exists().where(md.c.request_id == ti.c.request_id, md.c.key == MODEL_ID_KEY,
                                       md.c.value.in_(list(link.model_ids))))
    for key, value in link.tags:
        parts.append(sa.exists().where(tags.c.request_id == ti.c.request_id, tags.c.key == key,
                                       tags.c.value == value))
    return sa.or_(*parts)


def _label_map(group_links: dict[str, TraceLink]) -> tuple[dict[str, list[str]], dict[str, list[str]], str | None]:
    """Labels by model id and by legacy tag value, and the legacy tag key (None when no group has one)."""
    by_model: dict[str, list[str]] = {}
    by_tag: dict[str, list[str]] = {}
    tag_key = None
    for label, link in group_links.items():
        for model_id in link.model_ids:
            by_model.setdefault(model_id, []).append(label)
        for key, value in link.tags:
            tag_key = key
            by_tag.setdefault(value, []).append(label)
    return by_model, by_tag, tag_key


def _labels_of(model_id: str | None, tag_value: str | None, by_model, by_tag) -> list[str]:
    # The model id is MLflow's own link and wins; the legacy tag counts for traces without one.
    if model_id is not None and model_id in by_model:
        return by_model[model_id]
    return by_tag.get(tag_value, []) if tag_value is not None else []


def _aggregate_sql(store, experiment_ids, start_ms, end_ms, interval, group_links, tag_pairs, status,
                   with_models, links, *, evaluation_rows=False):
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlSpan, SqlTraceInfo, SqlTraceMetadata, SqlTraceTag

    ti, tags, spans = SqlTraceInfo.__table__, SqlTraceTag.__table__, SqlSpan.__table__
    metadata = SqlTraceMetadata.__table__
    step = interval * 1000

    with store.ManagedSessionMaker() as session:  # the store's own experiment scoping (workspaces)
        ids = [int(i) for i in store._filter_experiment_ids(session, [int(i) for i in experiment_ids])]
    conditions = [ti.c.experiment_id.in_(ids), ti.c.timestamp_ms >= start_ms, ti.c.timestamp_ms < end_ms]
    for key, value in tag_pairs:
        if key == "mlflow.traceName":  # MLflow keeps this tag in a trace_info column
            conditions.append(ti.c.trace_name == value)
            continue
        conditions.append(sa.exists().where(tags.c.request_id == ti.c.request_id, tags.c.key == key,
                                            tags.c.value == value))
    filter_md = metadata.alias("filter_md")
    filter_tags = tags.alias("filter_tag")
    conditions += [_link_condition(ti, filter_tags, filter_md, link) for link in links]
    if not evaluation_rows and any(link.model_ids for link in [*links, *group_links.values()]):
        # Traffic linked by model id is live traffic: evaluation rows of the same LoggedModel
        # (``mlflow.genai.evaluate(model_id=...)`` links them too) carry their run and are left out.
        source_run = metadata.alias("source_run")
        conditions.append(~sa.exists().where(source_run.c.request_id == ti.c.request_id,
                                             source_run.c.key == SOURCE_RUN_KEY))
    if status:
        conditions.append(ti.c.status == status)

    grouped = bool(group_links)
    by_model, by_tag, tag_key = _label_map(group_links) if grouped else ({}, {}, None)
    # The group keys: the trace's model id (outer join on trace_request_metadata) and, for traces
    # written with the app's older tags, that tag's value (outer join on trace_tags).
    md = metadata.alias("group_md")
    group_tags = tags.alias("group_tag")
    joined = ti
    keys, in_groups = [], []
    if by_model:
        joined = joined.join(md, sa.and_(md.c.request_id == ti.c.request_id, md.c.key == MODEL_ID_KEY), isouter=True)
        keys.append(md.c.value.label("model_id"))
        in_groups.append(md.c.value.in_(list(by_model)))
    if tag_key:
        joined = joined.join(group_tags, sa.and_(group_tags.c.request_id == ti.c.request_id,
                                                 group_tags.c.key == tag_key), isouter=True)
        keys.append(group_tags.c.value.label("tag_value"))
        in_groups.append(group_tags.c.value.in_(list(by_tag)))
    by_keys = [k.element for k in keys]
    # Integer division (both dialects): a numeric floor() made PostgreSQL sort on numerics.
    bucket = ((ti.c.timestamp_ms // step) * step).label("bucket")

    # 1. Per group key and bucket: counts and sums grouped in the database, plus the durations as
    # one comma-joined string, from which numpy takes the percentiles (SQLite has no percentile
    # aggregate; MLflow registers a Python one, many times slower). One pass over the traces.
    buckets = (
        sa.select(
            *keys, bucket,
            sa.func.count().label("requests"),
            sa.func.sum(sa.case((ti.c.status == _ERROR_STATUS, 1), else_=0)).label("errors"),
            sa.func.sum(ti.c.input_tokens).label("input_tokens"),
            sa.func.sum(ti.c.output_tokens).label("output_tokens"),
            sa.func.sum(ti.c.cache_read_input_tokens).label("cached"),
            sa.func.count(ti.c.input_tokens).label("with_tokens"),
            sa.func.sum(ti.c.total_cost).label("cost"),
            sa.func.aggregate_strings(sa.cast(ti.c.execution_time_ms, sa.String), ",").label("durations"),
        )
        .select_from(joined).where(*conditions, *([sa.or_(*in_groups)] if in_groups else []))
        .group_by(*by_keys, bucket.element)
    )
    # 2. LLM calls and recorded cost per model: per group key, and over every matching trace.
    with_spans = spans.join(joined, spans.c.trace_id == ti.c.request_id)
    models = (
        sa.select(*keys, spans.c.model_name, sa.func.count().label("calls"),
                  sa.func.sum(spans.c.total_cost).label("cost"))
        .select_from(with_spans).where(*conditions, spans.c.model_name.isnot(None))
        .group_by(*by_keys, spans.c.model_name)
    )

    def run(statement):
        with store.engine.connect() as connection:
            if store.engine.dialect.name == "sqlite":
                connection.exec_driver_sql(f"PRAGMA mmap_size = {_SQLITE_MMAP_BYTES}")
            return connection.execute(statement).all()

    # Two pooled connections at once: SQLite works without the GIL, so two cores share the load.
    statements = (buckets, models) if with_models else (buckets,)
    with ThreadPoolExecutor(max_workers=len(statements)) as pool:
        bucket_rows, *more = (f.result() for f in [pool.submit(run, q) for q in statements])
    model_rows = more[0] if more else []

    def labels(row) -> list[str | None]:
        if not grouped:
            return [None]
        return _labels_of(getattr(row, "model_id", None), getattr(row, "tag_value", None), by_model, by_tag)

    # Rows of several keys with one label (a version's model id and its legacy tag, or one model
    # id under two aliases) are merged: sums add up, durations are pooled before the percentiles.
    cells: dict[tuple[str | None, int], list] = {}
    for row in bucket_rows:
        for group in labels(row):
            c = cells.setdefault((group, int(row.bucket)), [0, 0, 0, 0, 0, 0, 0.0, []])
            for i, value in enumerate((row.requests, row.errors, row.input_tokens, row.output_tokens, row.cached,
                                       row.with_tokens)):
                c[i] += int(value or 0)
            c[6] += float(row.cost or 0.0)
            c[7].append(_durations(row.durations))
    none = [None] * len(PERCENTILES)
    rows, by_group_durations = [], {}
    for (group, bucket_ms), c in cells.items():
        values = np.concatenate(c[7]) if c[7] else np.empty(0)
        by_group_durations.setdefault(group, []).append(values)
        rows.append(AggregateRow(
            group, bucket_ms, c[0], c[1], *(_percentiles(values) if len(values) else none),
            c[2], c[3], c[4], c[5], c[6],
        ))
    whole = {g: np.concatenate(parts) for g, parts in by_group_durations.items()}
    rows.extend(_window_rows(rows, lambda g: _percentiles(whole[g]) if len(whole[g]) else none))

    per_group: dict[tuple[str, str], tuple[int, float]] = {}
    overall: dict[str, tuple[int, float]] = {}
    for row in model_rows:
        calls, cost = int(row.calls), float(row.cost or 0.0)
        if grouped:
            for group in labels(row):
                total = per_group.get((group, row.model_name), (0, 0.0))
                per_group[(group, row.model_name)] = (total[0] + calls, total[1] + cost)
        total = overall.get(row.model_name, (0, 0.0))
        overall[row.model_name] = (total[0] + calls, total[1] + cost)
    model_list = [ModelRow(g, m, calls, cost) for (g, m), (calls, cost) in per_group.items()]
    model_list.extend(ModelRow(None, model, calls, cost) for model, (calls, cost) in overall.items())
    return TraceAggregates(tuple(sort_rows(rows)), tuple(sort_models(model_list)), "sql", len(statements))


def _window_rows(bucket_rows: list[AggregateRow], percentiles) -> list[AggregateRow]:
    """Whole-window rows: additive figures summed over buckets, percentiles from ``percentiles(group)``."""
    totals: dict[str | None, list] = {}
    for r in bucket_rows:
        t = totals.setdefault(r.group, [0] * 7)
        for i, value in enumerate((r.requests, r.errors, r.input_tokens, r.output_tokens, r.cached_input_tokens,
                                   r.traces_with_tokens, r.recorded_cost)):
            t[i] += value
    return [
        AggregateRow(group, None, t[0], t[1], *percentiles(group), t[2], t[3], t[4], t[5], float(t[6]))
        for group, t in totals.items()
    ]


def sort_rows(rows: Iterable[AggregateRow]) -> list[AggregateRow]:
    return sorted(rows, key=lambda r: (r.group or "", r.bucket_ms is None, r.bucket_ms or 0))


def sort_models(rows: Iterable[ModelRow]) -> list[ModelRow]:
    return sorted(rows, key=lambda r: (r.group is None, r.group or "", r.model))


# --- fallback: one query_trace_metrics call per group and metric -------------------------------


def _metric_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _metric_model(model_id: str) -> str:
    return f'trace.metadata.`{MODEL_ID_KEY}` = "{_metric_quote(model_id)}"'


def _metric_tag(key: str, value: str) -> str:
    return f'trace.tag.`{key}` = "{_metric_quote(value)}"'


def _fallback_units(base: list[str], group_links: dict[str, TraceLink], links: Sequence[TraceLink]
                    ) -> dict[str | None, list[list[str]]]:
    """Per label, AND-only filter lists whose traces are disjoint (one per linked model id).

    ``query_trace_metrics`` filters are AND-only, so a link is its model ids where it has any (each
    trace has one model id, so nothing counts twice) and its tag otherwise: traces linked only by
    the app's older tags are found here only when no model id is known for them.
    """
    allowed: set[str] | None = None
    base = list(base)
    for link in links:
        if link.model_ids:
            allowed = set(link.model_ids) if allowed is None else allowed & set(link.model_ids)
        elif link.tags:
            base.append(_metric_tag(*link.tags[0]))

    def parts(link: TraceLink | None) -> list[list[str]]:
        if link is not None and link.model_ids:
            ids = [m for m in link.model_ids if allowed is None or m in allowed]
            return [base + [_metric_model(m)] for m in ids]
        extra = [_metric_tag(*link.tags[0])] if link is not None and link.tags else []
        if allowed is None:
            return [base + extra]
        return [base + extra + [_metric_model(m)] for m in sorted(allowed)]

    if group_links:
        return {label: parts(link) for label, link in group_links.items()}
    return {None: parts(None)}


def _aggregate_metrics_api(client, experiment_ids, start_ms, end_ms, interval, group_links, tag_pairs, status,
                           with_models, links):
    from concurrent.futures import ThreadPoolExecutor

    base = [_metric_tag(k, v) for k, v in tag_pairs]
    if status:
        base.append(f'trace.status = "{_metric_quote(status)}"')
    # query_trace_metrics' window end is inclusive; ours is exclusive.
    window = {"start_time_ms": start_ms, "end_time_ms": end_ms - 1}
    units_by_label = _fallback_units(base, group_links, links)
    grouped = bool(group_links)
    overall_query = grouped and not any(link.model_ids for link in links)

    def count(filters: list[str]) -> int:
        points = query_trace_metrics(client, experiment_ids, "trace_count", ["COUNT"], filters=filters, **window)
        return int(points[0].values.get("COUNT", 0)) if points else 0

    # A label spanning many model ids (an agent's hundreds of versions): count first, then read
    # the full figures only of the models that had traffic in the window.
    many = [(label, i) for label, units in units_by_label.items() if len(units) > 1 for i in range(len(units))]
    if many:
        with ThreadPoolExecutor(max_workers=4) as pool:
            counts = dict(zip(many, pool.map(lambda key: count(units_by_label[key[0]][key[1]]), many)))
        units_by_label = {
            label: [u for i, u in enumerate(units) if len(units) == 1 or counts[(label, i)]]
            for label, units in units_by_label.items()
        }
    per_unit: dict[tuple, list[str]] = {
        (label, i): filters for label, units in units_by_label.items() for i, filters in enumerate(units)
    }
    aggregates = _aggregate_units(client, experiment_ids, window, interval, per_unit, base if overall_query else None,
                                  with_models)
    rows_by_label: dict[str | None, list[AggregateRow]] = {}
    totals_by_label: dict[str | None, list[AggregateRow]] = {}
    models_by_label: dict[str | None, dict[str, list]] = {}
    for (label, _), (rows, models) in aggregates["units"].items():
        rows_by_label.setdefault(label, []).extend(r for r in rows if r.bucket_ms is not None)
        totals_by_label.setdefault(label, []).extend(r for r in rows if r.bucket_ms is None)
        for m in models:
            entry = models_by_label.setdefault(label, {}).setdefault(m.model, [0, 0.0])
            entry[0] += m.llm_calls
            entry[1] += m.recorded_cost
    out_rows: list[AggregateRow] = []
    for label in units_by_label:
        merged: dict[int | None, list[AggregateRow]] = {}
        for r in rows_by_label.get(label, []) + totals_by_label.get(label, []):
            merged.setdefault(r.bucket_ms, []).append(r)
        out_rows.extend(_merge_rows(label if grouped else None, ms, parts) for ms, parts in merged.items())
    models: list[ModelRow] = []
    if with_models:
        overall: dict[str, list] = {}
        for label, by_model in models_by_label.items():
            for model, (calls, cost) in by_model.items():
                if grouped:
                    models.append(ModelRow(label, model, calls, cost))
                entry = overall.setdefault(model, [0, 0.0])
                entry[0] += calls
                entry[1] += cost
        if aggregates["overall"] is not None:
            overall = {m.model: [m.llm_calls, m.recorded_cost] for m in aggregates["overall"]}
        models.extend(ModelRow(None, model, calls, cost) for model, (calls, cost) in overall.items())
    return TraceAggregates(tuple(sort_rows(out_rows)), tuple(sort_models(models)), "query_trace_metrics",
                           aggregates["queries"] + len(many))


def _merge_rows(group: str | None, bucket_ms: int | None, parts: list[AggregateRow]) -> AggregateRow:
    """One label's row from the rows of its model ids: sums add up; percentiles are the
    request-weighted mean of the parts' (exact for one part, an approximation for several)."""
    if len(parts) == 1:
        p = parts[0]
        return AggregateRow(group, bucket_ms, p.requests, p.errors, p.p50_ms, p.p95_ms, p.p99_ms, p.input_tokens,
                            p.output_tokens, p.cached_input_tokens, p.traces_with_tokens, p.recorded_cost)

    def weighted(attr: str) -> float | None:
        pairs = [(getattr(p, attr), p.requests) for p in parts if getattr(p, attr) is not None and p.requests]
        weight = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / weight if weight else None

    return AggregateRow(
        group, bucket_ms, sum(p.requests for p in parts), sum(p.errors for p in parts),
        weighted("p50_ms"), weighted("p95_ms"), weighted("p99_ms"),
        sum(p.input_tokens for p in parts), sum(p.output_tokens for p in parts),
        sum(p.cached_input_tokens for p in parts), sum(p.traces_with_tokens for p in parts),
        float(sum(p.recorded_cost for p in parts)),
    )


def _aggregate_units(client, experiment_ids, window, interval, per_group, overall_filters, with_models):
    """Rows and model rows of each unit (one AND-only filter list), in ``query_trace_metrics`` calls."""
    from concurrent.futures import ThreadPoolExecutor

    pct = [("PERCENTILE", p) for p in PERCENTILES]
    timed = {"time_interval_seconds": interval}
    jobs: dict[tuple, dict[str, Any]] = {}
    for group, filters in per_group.items():
        jobs.update({
            (group, "status"): dict(metric="trace_count", aggs=["COUNT"], dimensions=["trace_status"], **timed),
            (group, "latency"): dict(metric="latency", aggs=pct, **timed),
            (group, "latency_total"): dict(metric="latency", aggs=pct),
            (group, "input_tokens"): dict(metric="input_tokens", aggs=["SUM", "AVG"], **timed),
            (group, "output_tokens"): dict(metric="output_tokens", aggs=["SUM"], **timed),
            (group, "cached"): dict(metric="cache_read_input_tokens", aggs=["SUM"], **timed),
            (group, "cost"): dict(metric="total_cost", aggs=["SUM"], view_type="SPANS", **timed),
            (group, "model_calls"): dict(metric="span_count", aggs=["COUNT"], view_type="SPANS",
                                         dimensions=["span_model_name"]),
            (group, "model_cost"): dict(metric="total_cost", aggs=["SUM"], view_type="SPANS",
                                        dimensions=["span_model_name"]),
        })
        for key in [k for k in jobs if k[0] == group]:
            jobs[key]["filters"] = filters
        if not with_models:
            del jobs[(group, "model_calls")], jobs[(group, "model_cost")]
    if overall_filters is not None and with_models:
        jobs[("__all__", "model_calls")] = dict(metric="span_count", aggs=["COUNT"], view_type="SPANS",
                                                dimensions=["span_model_name"], filters=overall_filters)
        jobs[("__all__", "model_cost")] = dict(metric="total_cost", aggs=["SUM"], view_type="SPANS",
                                               dimensions=["span_model_name"], filters=overall_filters)

    def one(spec: dict[str, Any]) -> list[MetricPoint]:
        spec = dict(spec)
        metric, aggs = spec.pop("metric"), spec.pop("aggs")
        return query_trace_metrics(client, experiment_ids, metric, aggs, **window, **spec)

    # A few at a time: SQLite releases the GIL while it works.
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {key: pool.submit(one, spec) for key, spec in jobs.items()}
        results = {key: future.result() for key, future in futures.items()}

    def bucket_of(point: MetricPoint) -> int:
        from datetime import datetime

        return int(round(datetime.fromisoformat(point.dimensions["time_bucket"]).timestamp() * 1000))

    def pcts(values: dict[str, float]) -> list[float | None]:
        found = [values.get(f"P{float(p)}", values.get(f"P{p}")) for p in PERCENTILES]
        return [float(v) if v is not None else None for v in found]

    units: dict[tuple, tuple[list[AggregateRow], list[ModelRow]]] = {}
    for group in per_group:
        cells: dict[int, dict[str, Any]] = {}

        def cell(point: MetricPoint) -> dict[str, Any]:
            return cells.setdefault(bucket_of(point), {"requests": 0, "errors": 0, "input": 0, "output": 0,
                                                       "cached": 0, "with": 0, "cost": 0.0, "pct": [None] * 3})

        for p in results[(group, "status")]:
            c, count = cell(p), int(p.values.get("COUNT", 0))
            c["requests"] += count
            c["errors"] += count if p.dimensions.get("trace_status") == _ERROR_STATUS else 0
        for p in results[(group, "latency")]:
            cell(p)["pct"] = pcts(p.values)
        for p in results[(group, "input_tokens")]:
            total, mean = float(p.values.get("SUM", 0) or 0), float(p.values.get("AVG", 0) or 0)
            # The store skips traces without usage, so SUM / AVG counts the traces that have it.
            cell(p).update({"input": int(total), "with": int(round(total / mean)) if mean else 0})
        for kind, name in (("output_tokens", "output"), ("cached", "cached")):
            for p in results[(group, kind)]:
                cell(p)[name] = int(p.values.get("SUM", 0) or 0)
        for p in results[(group, "cost")]:
            cell(p)["cost"] = float(p.values.get("SUM", 0.0) or 0.0)
        rows = [
            AggregateRow(group, ms, c["requests"], c["errors"], *c["pct"], c["input"], c["output"], c["cached"],
                         c["with"], c["cost"])
            for ms, c in cells.items() if c["requests"]
        ]
        total_pct = pcts(results[(group, "latency_total")][0].values) if results[(group, "latency_total")] else [None] * 3
        rows.extend(_window_rows(rows, lambda _: total_pct))
        models: list[ModelRow] = []
        if with_models:
            calls = {p.dimensions["span_model_name"]: int(p.values.get("COUNT", 0)) for p in results[(group, "model_calls")]}
            costs = {p.dimensions["span_model_name"]: float(p.values.get("SUM", 0.0)) for p in results[(group, "model_cost")]}
            models = [ModelRow(group, m, calls.get(m, 0), costs.get(m, 0.0)) for m in sorted(set(calls) | set(costs))]
        units[group] = (rows, models)
    overall = None
    if ("__all__", "model_calls") in results:
        calls = {p.dimensions["span_model_name"]: int(p.values.get("COUNT", 0)) for p in results[("__all__", "model_calls")]}
        costs = {p.dimensions["span_model_name"]: float(p.values.get("SUM", 0.0)) for p in results[("__all__", "model_cost")]}
        overall = [ModelRow(None, m, calls.get(m, 0), costs.get(m, 0.0)) for m in sorted(set(calls) | set(costs))]
    return {"units": units, "overall": overall, "queries": len(jobs)}
