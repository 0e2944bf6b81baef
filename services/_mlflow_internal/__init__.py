"""The one place that touches MLflow APIs outside its public surface.

This package holds every non-public MLflow use, one module per topic: ``trace_write`` (writing
finished traces through the store), ``bulk_load`` (straight into its tables), ``trace_reads``
(single traces, SQLite statistics), ``trace_metrics`` (the store's ``query_trace_metrics``),
``aggregates`` with ``aggregate_rows``, ``aggregate_sql``, ``aggregate_fallback`` and ``trace_links``
(the grouped Monitoring aggregate), ``rollups`` (its incremental roll-ups on PostgreSQL, with
``rollup_sketch``, ``rollup_tables``, ``rollup_scan`` and ``rollup_combine``), ``distinct_values``
(a window's model ids and tag values),
``store_db`` (the server's database, read-only), ``user_client`` (MLflow clients carrying one
Databricks user's token) and ``span_batch`` (the gateway's batched trace writer, with
``rest_trace_batch`` for a remote ``mlflow server``). Each part has a public fallback or refuses
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

from services._mlflow_internal.aggregate_rows import (
    PERCENTILES,
    AggregateRow,
    ModelRow,
    TraceAggregates,
    sorted_aggregates,
)
from services._mlflow_internal.aggregates import aggregate_traces, supports_sql_aggregation
from services._mlflow_internal.bulk_load import bulk_load_traces, supports_direct_load
from services._mlflow_internal.distinct_values import SEARCH_TRACES_PAGE_LIMIT, trace_model_ids, trace_tag_values
from services._mlflow_internal.trace_links import MODEL_ID_KEY, SOURCE_RUN_KEY, TraceLink
from services._mlflow_internal.trace_metrics import MetricPoint, query_trace_metrics
from services._mlflow_internal.trace_reads import analyze_sqlite, stored_trace_ids, trace_info
from services._mlflow_internal.trace_write import (
    SpanSpec,
    TraceSpec,
    log_traces,
    supports_bulk_span_logging,
    tracking_store,
)

__all__ = [
    "MODEL_ID_KEY", "PERCENTILES", "SEARCH_TRACES_PAGE_LIMIT", "SOURCE_RUN_KEY", "AggregateRow", "MetricPoint",
    "ModelRow", "SpanSpec", "TraceAggregates", "TraceLink", "TraceSpec", "aggregate_traces", "analyze_sqlite",
    "bulk_load_traces", "log_traces", "query_trace_metrics", "sorted_aggregates", "stored_trace_ids",
    "supports_bulk_span_logging", "supports_direct_load", "supports_sql_aggregation", "trace_info",
    "trace_model_ids", "trace_tag_values", "tracking_store",
]
