"""Direct bulk load (benchmarks, demo data): finished traces written straight into ``trace_info``,
``trace_tags``, ``trace_request_metadata`` and ``spans``, rows built with MLflow's own code."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Sequence

from mlflow import MlflowClient
from mlflow.entities import (
    Span,
    TraceInfo,
)
from mlflow.tracing.constant import SpanAttributeKey, TraceMetadataKey

from services._mlflow_internal import span_stamp
from services._mlflow_internal.span_stamp import without_missing_litellm
from services._mlflow_internal.trace_write import (
    _ID_RNG,
    SpanSpec,
    TraceSpec,
    _trace_info_and_span_dicts,
    _trace_parts,
    log_traces,
    supports_bulk_span_logging,
    tracking_store,
)

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
    workers: int = 1, stamp: bool = True,
) -> list[str]:
    """Write finished traces straight into the SQL store's tables, thousands per transaction.

    For filling a store that nothing else writes to meanwhile (benchmarks, demo data): it takes
    none of the row locks of ``log_spans``. Rows are built with MLflow's own span translation
    (cost from the model catalog), token and cost aggregation and column mapping, and
    ``tests/services/test_mlflow_internal.py`` checks that every table ends up exactly as after
    ``start_trace`` + ``log_spans``. Falls back to ``log_traces`` where that is not possible.
    With ``workers`` > 1, that many forked processes build the rows (the costly part: MLflow's span
    translation and cost calculation) while this one inserts them; trace ids then come from
    per-piece generators seeded from ``rng``. With ``stamp`` (the default) each distinct span shape
    goes through MLflow's translation once and later spans of that shape are stamped into a copy
    (``Stamper``); every 100th trace is also built through MLflow's path and the rows compared, a
    difference raises.
    """
    if not traces:
        return []
    if not supports_direct_load(client, traces):
        return log_traces(client, traces)
    store = tracking_store(client)
    experiments = {}
    for experiment_id in {spec.experiment_id for spec in traces}:
        experiment = client.get_experiment(experiment_id)
        if experiment.lifecycle_stage != "active":
            raise ValueError(f"Experiment {experiment_id} is {experiment.lifecycle_stage}; traces need an active one.")
        experiments[experiment_id] = experiment
    trace_ids: list[str] = []
    context = _RowContext(store.db_type, experiments, stamp=stamp)

    pieces = [traces[start : start + chunk_size] for start in range(0, len(traces), chunk_size)]
    with without_missing_litellm():
        if workers <= 1 or len(pieces) < 2:
            for piece in pieces:
                trace_ids.extend(_insert(store.engine, _build_rows(context, piece, rng)))
            return trace_ids
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        seeds = [rng.getrandbits(64) for _ in pieces]
        with store.engine.connect() as connection:
            copies = _copier(connection) is not None
        url = store.engine.url.render_as_string(hide_password=False) if copies else None
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            if copies:  # PostgreSQL: each builder COPYs its own piece on its own connection
                for ids in pool.map(_build_and_copy_seeded, [context] * len(pieces), pieces, seeds,
                                    [url] * len(pieces)):
                    trace_ids.extend(ids)
            else:  # one writer (SQLite): this process inserts while the workers build the next pieces
                for built in pool.map(_build_rows_seeded, [context] * len(pieces), pieces, seeds):
                    trace_ids.extend(_insert(store.engine, built))
    return trace_ids


def _tables() -> tuple:
    from mlflow.store.tracking.dbmodels.models import (
        SqlSpan,
        SqlTraceInfo,
        SqlTraceMetadata,
        SqlTraceTag,
    )

    return SqlTraceInfo.__table__, SqlTraceTag.__table__, SqlTraceMetadata.__table__, SqlSpan.__table__


def _insert(engine: Any, built: tuple[list[str], tuple[list[dict], ...]]) -> list[str]:
    """Write one piece's rows in one transaction (COPY on PostgreSQL through psycopg 3)."""
    import sqlalchemy as sa

    ids, rows = built
    with engine.begin() as connection:
        copy = _copier(connection)
        for table, table_rows in zip(_tables(), rows):
            if table_rows:
                if copy is not None:
                    copy(table, table_rows)
                else:
                    connection.execute(sa.insert(table), table_rows)
    return ids


def _build_and_copy_seeded(context: "_RowContext", specs: Sequence[TraceSpec], seed: int, url: str) -> list[str]:
    """In a forked builder: build one piece's rows and write them on a connection of its own."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)  # never the parent's pooled connections
    try:
        return _insert(engine, _build_rows_seeded(context, specs, seed))
    finally:
        engine.dispose()


@dataclass(frozen=True)
class _RowContext:
    db_type: str  # what _trace_rows reads of the store
    experiments: dict[str, Any]
    stamp: bool = True  # translate each span shape once (Stamper) instead of every span
    verify_every: int = 100  # with stamp: every so many traces also through MLflow's path, rows compared


def _build_rows(context: _RowContext, specs: Sequence[TraceSpec], rng: random.Random):
    ids: list[str] = []
    rows: tuple[list[dict], ...] = ([], [], [], [])
    stamper = span_stamp.stamper() if context.stamp else None
    for index, spec in enumerate(specs):
        experiment = context.experiments[spec.experiment_id]
        if stamper is None:
            info, spans = _trace_parts(spec, rng)
            built = _trace_rows(context, experiment, info, _translated(spans))
        else:
            info, span_dicts = _trace_info_and_span_dicts(spec, rng)
            stamped = stamper.spans(span_dicts)
            if stamped is None:  # a span MLflow's translation does not let us stamp
                stamped = _translated([Span.from_dict(d) for d in span_dicts])
            built = _trace_rows(context, experiment, info, stamped)
            if index % context.verify_every == 0:  # MLflow's own path for this trace must give the same rows
                own = _trace_rows(context, experiment, info, _translated([Span.from_dict(d) for d in span_dicts]))
                if own != built:
                    raise RuntimeError(f"Stamped rows of trace {info.trace_id} differ from MLflow's own path "
                                       "(an MLflow upgrade changed span translation?): load with stamp=False.")
        for bucket, new in zip(rows, built):
            bucket.extend(new)
        ids.append(info.trace_id)
    return ids, rows


# --- stamping: MLflow's span translation once per span shape ------------------------------------

def _build_rows_seeded(context: _RowContext, specs: Sequence[TraceSpec], seed: int):
    with without_missing_litellm():
        return _build_rows(context, specs, random.Random(seed))


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


def _translated(spans: list[Span]) -> list[tuple[Any, dict]]:
    """MLflow's own path: each span with the dict ``log_spans`` stores (``translate_span_when_storing``)."""
    from mlflow.tracing.otel.translation import translate_span_when_storing

    return [(span, translate_span_when_storing(span)) for span in spans]


def _trace_rows(store: Any, experiment: Any, info: TraceInfo, spans: list[tuple[Any, dict]]) -> tuple[list[dict], ...]:
    """trace_info, trace_tags, trace_request_metadata and spans rows of one finished trace.

    ``spans``: each span (a ``Span`` or a ``StampedSpan``: what is read of it is its ids, name,
    type, status and times) with its translated dict, as ``log_spans`` stores it."""
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
    from mlflow.tracing.utils import (
        SpanAggregationNode,
        TraceJSONEncoder,
        aggregate_cost_from_span_nodes,
        aggregate_usage_from_span_nodes,
    )
    from mlflow.utils.mlflow_tags import MLFLOW_ARTIFACT_LOCATION

    trace_id = info.trace_id
    experiment_id = int(experiment.experiment_id)
    span_rows, usage_nodes, cost_nodes = [], [], []
    for span, span_dict in spans:
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
    artifact_uri = _artifact_uri(experiment.artifact_location, trace_id)
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



_URI_PARTS: dict[str, tuple[str, str] | None] = {}
_URI_PROBE = "tr-0123456789abcdef0123456789abcdef"


def _artifact_uri(artifact_location: str, trace_id: str) -> str:
    """MLflow's ``append_to_uri_path(location, "traces", trace_id, "artifacts")``; for trace ids of
    letters, digits and dashes (what MLflow generates) by splicing the id into the path computed once
    per experiment for a probe id of that form."""
    from mlflow.utils.uri import append_to_uri_path

    if artifact_location not in _URI_PARTS:
        probe = append_to_uri_path(artifact_location, "traces", _URI_PROBE, "artifacts")
        _URI_PARTS[artifact_location] = tuple(probe.split(_URI_PROBE)) if probe.count(_URI_PROBE) == 1 else None
    parts = _URI_PARTS[artifact_location]
    if parts is None or not trace_id.replace("-", "").isalnum() or not trace_id.isascii():
        return append_to_uri_path(artifact_location, "traces", trace_id, "artifacts")
    return parts[0] + trace_id + parts[1]


def _copier(connection: Any) -> Any:
    """On PostgreSQL through psycopg 3, a function writing rows with ``COPY ... FROM STDIN`` in the
    connection's transaction (several times faster than multi-row INSERTs); None elsewhere.

    Columns are those the row dicts carry, as ``sa.insert`` would send them: every column the
    loader writes is given explicitly (``tests/services/test_mlflow_internal.py`` compares the
    rows with the store path's on PostgreSQL too).
    """
    if connection.dialect.name != "postgresql":
        return None
    raw = connection.connection.driver_connection
    if not hasattr(raw, "cursor") or not type(raw).__module__.startswith("psycopg"):
        return None
    import psycopg

    if not isinstance(raw, psycopg.Connection):
        return None

    def copy(table: Any, rows: list[dict]) -> None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        names = ", ".join(f'"{c}"' for c in columns)
        with raw.cursor() as cursor, cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as out:
            for row in rows:
                out.write_row([row.get(c) for c in columns])

    return copy
