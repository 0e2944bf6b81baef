"""Monitoring aggregates on Databricks: SQL over the Unity Catalog trace table, run on a SQL warehouse.

MLflow on Databricks can keep an experiment's traces in Unity Catalog as OpenTelemetry spans,
one row per span (default table ``<catalog>.<schema>.mlflow_experiment_trace_otel_spans``).
For large windows the monitoring figures are computed there, by a SQL warehouse, rather than
by pulling traces into the app: one statement returns per split-tag value and time bucket the
request and error counts, latency percentiles (Databricks' exact ``percentile``, the same
linear interpolation as numpy), token and recorded-cost sums, plus LLM calls and cost per model.
The result has the same shape as the local SQL-store aggregate
(``_mlflow_internal.TraceAggregates``), so ``monitoring`` builds the same charts from either.

What the statement relies on (the OTel span table's documented columns, and MLflow's span
attributes, whose values MLflow stores JSON-encoded):

* ``trace_id``, ``parent_span_id`` (empty or NULL on the root span), ``start_time_unix_nano``,
  ``end_time_unix_nano``, ``status.code`` (``STATUS_CODE_ERROR`` on failure) and ``attributes``
  (a VARIANT, read with ``attributes:['key']``);
* trace tags set when the trace starts are written on the root span as
  ``mlflow.traceTag.<key>`` attributes (MLflow's OTel span processor), so tag filters and the
  split read the root span;
* LLM spans carry ``mlflow.chat.tokenUsage``, ``mlflow.llm.model`` and ``mlflow.llm.cost``.
  Tokens and cost are summed over spans, which matches MLflow's trace totals when usage sits on
  leaf LLM spans only (MLflow additionally skips spans whose ancestor already reports usage).

Identifiers (table name, tag keys) cannot be statement parameters, so they are validated before
anything is sent; every value (window, tag values, groups) goes as a typed named parameter.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from services import _mlflow_internal as internal
from services._clients import translate_errors
from services.errors import BackendUnavailableError, ValidationError

DEFAULT_SPANS_TABLE = "mlflow_experiment_trace_otel_spans"
TAG_ATTRIBUTE_PREFIX = "mlflow.traceTag."
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_]+$")
_KEY = re.compile(r"^[A-Za-z0-9_.\-]+$")
_WAREHOUSE_ID = re.compile(r"^[A-Za-z0-9_\-]+$")
_STATUS_CODES = {"OK": ("STATUS_CODE_OK", "OK"), "ERROR": ("STATUS_CODE_ERROR", "ERROR")}
RESULT_COLUMNS = ("kind", "grp", "bucket_ms", "model", "requests", "errors", "p50_ms", "p95_ms", "p99_ms",
                  "input_tokens", "output_tokens", "cached_input_tokens", "traces_with_tokens", "cost")


@dataclass(frozen=True)
class WarehouseSource:
    """Where the traces are: a SQL warehouse and the Unity Catalog spans table it reads."""

    warehouse_id: str
    spans_table: str  # catalog.schema.table

    @classmethod
    def for_schema(cls, warehouse_id: str, catalog: str, schema: str) -> "WarehouseSource":
        return cls(warehouse_id, f"{catalog}.{schema}.{DEFAULT_SPANS_TABLE}")


@dataclass(frozen=True)
class Statement:
    """SQL text and its named parameters (``StatementParameterListItem`` dicts)."""

    sql: str
    parameters: tuple[dict[str, str], ...]


def _table(source: WarehouseSource) -> str:
    if not source.warehouse_id or not _WAREHOUSE_ID.match(source.warehouse_id):
        raise ValidationError(f"SQL warehouse id {source.warehouse_id!r} is not a warehouse id.")
    parts = source.spans_table.split(".")
    if len(parts) != 3 or not all(_IDENTIFIER.match(p) for p in parts):
        raise ValidationError(
            f"Trace table {source.spans_table!r} must be catalog.schema.table (letters, digits, underscores)."
        )
    return ".".join(f"`{p}`" for p in parts)


def _attr(key: str, alias: str = "") -> str:
    if not _KEY.match(key):
        raise ValidationError(f"{key!r} cannot be read as a span attribute; use letters, digits, '.', '_' or '-'.")
    return f"{alias}attributes:['{key}']::string"


def aggregate_statement(
    source: WarehouseSource,
    *,
    start_ms: int,
    end_ms: int,
    interval_seconds: int,
    group_tag: str | None = None,
    groups: Sequence[str] = (),
    tag_equals: Mapping[str, str] | None = None,
    status: str | None = None,
) -> Statement:
    """The one statement computing every monitoring figure; raises ``ValidationError`` before any I/O."""
    table = _table(source)
    if start_ms >= end_ms:
        raise ValidationError("The window must start before it ends.")
    if interval_seconds < 60:
        raise ValidationError(f"A {interval_seconds} s bucket is too fine; use 60 s or more.")
    if group_tag and not groups:
        raise ValidationError("A split needs the group values to show.")
    if status is not None and status not in _STATUS_CODES:
        raise ValidationError(f"Status {status!r} is not one of {', '.join(_STATUS_CODES)}.")
    params: list[dict[str, str]] = [
        {"name": "start_ns", "type": "BIGINT", "value": str(start_ms * 1_000_000)},
        {"name": "end_ns", "type": "BIGINT", "value": str(end_ms * 1_000_000)},
        {"name": "step_ms", "type": "BIGINT", "value": str(interval_seconds * 1000)},
    ]
    root_filters = []
    for i, (key, value) in enumerate(sorted((tag_equals or {}).items())):
        root_filters.append(f"AND {_attr(TAG_ATTRIBUTE_PREFIX + key)} = :tag_{i}")
        params.append({"name": f"tag_{i}", "type": "STRING", "value": value})
    if status:
        codes = _STATUS_CODES[status]
        root_filters.append("AND status.code IN (:status_0, :status_1)")
        params += [{"name": f"status_{i}", "type": "STRING", "value": c} for i, c in enumerate(codes)]
    group_expr = _attr(TAG_ATTRIBUTE_PREFIX + group_tag) if group_tag else "CAST(NULL AS STRING)"
    usage, model, cost = _attr("mlflow.chat.tokenUsage", "s."), _attr("mlflow.llm.model", "s."), _attr("mlflow.llm.cost", "s.")
    filters = "\n    ".join(root_filters)
    sql = f"""WITH roots AS (
  SELECT trace_id,
    {group_expr} AS grp,
    CAST(FLOOR(start_time_unix_nano / 1000000 / :step_ms) AS BIGINT) * :step_ms AS bucket_ms,
    CAST(FLOOR((end_time_unix_nano - start_time_unix_nano) / 1000000) AS BIGINT) AS latency_ms,
    CASE WHEN status.code IN ('STATUS_CODE_ERROR', 'ERROR') THEN 1 ELSE 0 END AS is_error
  FROM {table}
  WHERE (parent_span_id IS NULL OR parent_span_id = '')
    AND start_time_unix_nano >= :start_ns AND start_time_unix_nano < :end_ns
    {filters}
),
calls AS (
  SELECT s.trace_id,
    get_json_object({model}, '$') AS model,
    CAST(get_json_object({usage}, '$.input_tokens') AS BIGINT) AS input_tokens,
    CAST(get_json_object({usage}, '$.output_tokens') AS BIGINT) AS output_tokens,
    CAST(get_json_object({usage}, '$.cache_read_input_tokens') AS BIGINT) AS cached_input_tokens,
    CAST(get_json_object({cost}, '$.total_cost') AS DOUBLE) AS cost
  FROM {table} s
  WHERE s.start_time_unix_nano >= :start_ns
    AND ({usage} IS NOT NULL OR {model} IS NOT NULL OR {cost} IS NOT NULL)
    AND s.trace_id IN (SELECT trace_id FROM roots)
),
per_trace AS (
  SELECT r.trace_id, r.grp, r.bucket_ms, r.latency_ms, r.is_error,
    SUM(c.input_tokens) AS input_tokens, SUM(c.output_tokens) AS output_tokens,
    SUM(c.cached_input_tokens) AS cached_input_tokens, SUM(c.cost) AS cost
  FROM roots r LEFT JOIN calls c ON c.trace_id = r.trace_id
  GROUP BY r.trace_id, r.grp, r.bucket_ms, r.latency_ms, r.is_error
)
SELECT 'bucket' AS kind, grp, bucket_ms, CAST(NULL AS STRING) AS model, COUNT(*) AS requests,
  SUM(is_error) AS errors, percentile(latency_ms, 0.5) AS p50_ms, percentile(latency_ms, 0.95) AS p95_ms,
  percentile(latency_ms, 0.99) AS p99_ms, SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens,
  SUM(cached_input_tokens) AS cached_input_tokens, COUNT(input_tokens) AS traces_with_tokens, SUM(cost) AS cost
FROM per_trace GROUP BY grp, bucket_ms
UNION ALL
SELECT 'window', grp, CAST(NULL AS BIGINT), CAST(NULL AS STRING), COUNT(*), SUM(is_error),
  percentile(latency_ms, 0.5), percentile(latency_ms, 0.95), percentile(latency_ms, 0.99),
  SUM(input_tokens), SUM(output_tokens), SUM(cached_input_tokens), COUNT(input_tokens), SUM(cost)
FROM per_trace GROUP BY grp
UNION ALL
SELECT 'model', r.grp, CAST(NULL AS BIGINT), c.model, COUNT(*), CAST(NULL AS BIGINT),
  CAST(NULL AS DOUBLE), CAST(NULL AS DOUBLE), CAST(NULL AS DOUBLE), CAST(NULL AS BIGINT), CAST(NULL AS BIGINT),
  CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), SUM(c.cost)
FROM calls c JOIN roots r ON r.trace_id = c.trace_id
WHERE c.model IS NOT NULL
GROUP BY r.grp, c.model"""
    return Statement(sql, tuple(params))


def _run(client: Any, source: WarehouseSource, statement: Statement, *, timeout_s: float,
         poll_s: float) -> list[dict[str, Any]]:
    from databricks.sdk.service import sql as dbsql

    with translate_errors("the SQL warehouse"):
        api = client.statement_execution
        response = api.execute_statement(
            statement.sql, source.warehouse_id,
            parameters=[dbsql.StatementParameterListItem.from_dict(p) for p in statement.parameters],
            disposition=dbsql.Disposition.INLINE, format=dbsql.Format.JSON_ARRAY, wait_timeout="30s",
            on_wait_timeout=dbsql.ExecuteStatementRequestOnWaitTimeout.CONTINUE,
        )
        deadline = time.monotonic() + timeout_s
        running = (dbsql.StatementState.PENDING, dbsql.StatementState.RUNNING)
        while response.status and response.status.state in running:
            if time.monotonic() > deadline:
                api.cancel_execution(response.statement_id)
                raise BackendUnavailableError(
                    f"The SQL warehouse did not finish the trace aggregate within {timeout_s:.0f} s; "
                    "pick a shorter window or a larger warehouse."
                )
            time.sleep(poll_s)
            response = api.get_statement(response.statement_id)
        state = response.status.state if response.status else None
        if state is not dbsql.StatementState.SUCCEEDED:
            error = response.status.error if response.status else None
            raise BackendUnavailableError(
                f"The SQL warehouse could not aggregate traces ({state.value if state else 'no state'}): "
                f"{error.message if error and error.message else 'no message'}"
            )
        columns = [c.name for c in response.manifest.schema.columns]
        if tuple(columns) != RESULT_COLUMNS:
            raise BackendUnavailableError(f"The SQL warehouse answered columns {columns}, not {list(RESULT_COLUMNS)}.")
        rows, chunk = [], response.result
        while chunk is not None:
            rows.extend(dict(zip(columns, values)) for values in chunk.data_array or [])
            next_index = chunk.next_chunk_index
            chunk = (api.get_statement_result_chunk_n(response.statement_id, next_index)
                     if next_index is not None else None)
    return rows


def _int(value: Any) -> int:
    return int(float(value)) if value is not None else 0


def _float(value: Any) -> float | None:
    return float(value) if value is not None else None


def warehouse_aggregates(client: Any, source: WarehouseSource, *, timeout_s: float = 120.0, poll_s: float = 1.0,
                         **window: Any) -> internal.TraceAggregates:
    """Run the aggregate on the warehouse (``client`` is a ``WorkspaceClient``) and parse its rows.

    ``window``: the window, split and filters, as :func:`aggregate_statement` takes them.
    """
    statement = aggregate_statement(source, **window)
    group_tag = window.get("group_tag")
    wanted = set(window.get("groups", ())) if group_tag else None
    rows, overall = [], {}
    models = []
    for row in _run(client, source, statement, timeout_s=timeout_s, poll_s=poll_s):
        group = row["grp"] if group_tag else None
        if row["kind"] == "model":
            calls, cost = _int(row["requests"]), _float(row["cost"]) or 0.0
            if wanted is not None and group in wanted:
                models.append(internal.ModelRow(group, row["model"], calls, cost))
            before = overall.get(row["model"], (0, 0.0))
            overall[row["model"]] = (before[0] + calls, before[1] + cost)
            continue
        if wanted is not None and group not in wanted:
            continue
        rows.append(internal.AggregateRow(
            group, _int(row["bucket_ms"]) if row["kind"] == "bucket" else None,
            _int(row["requests"]), _int(row["errors"]),
            _float(row["p50_ms"]), _float(row["p95_ms"]), _float(row["p99_ms"]),
            _int(row["input_tokens"]), _int(row["output_tokens"]), _int(row["cached_input_tokens"]),
            _int(row["traces_with_tokens"]), _float(row["cost"]) or 0.0,
        ))
    models.extend(internal.ModelRow(None, m, calls, cost) for m, (calls, cost) in overall.items())
    return internal.sorted_aggregates(rows, models, "warehouse", 1)
