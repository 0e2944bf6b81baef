"""Monitoring: time series and breakdowns of traces, per version, alias or arm.

Alert thresholds and health checks are in ``services.alerts``; the trace explorer and trace detail in
``services.trace_explorer``.

Every chart figure is aggregated inside the store; no chart loads traces into pandas. On a SQL
store the charts, split or not, take two SQL statements over MLflow's trace tables
(``_mlflow_internal.aggregate_traces``: counts, errors, token and cost sums grouped by split tag
and time bucket with each bucket's durations for the percentiles, then the model mix); on
other stores one ``query_trace_metrics`` call per group and metric. The explorer pages through
``search_traces`` without spans, and only the one trace opened in detail is read with its spans.

Cost: MLflow records a cost on LLM spans whose model it knows. For LLM models without a
recorded cost, the cost is estimated as tokens x the workspace price table
(``services.pricing``). When a group mixes models, a group's tokens are attributed to its models
in proportion to their LLM call counts (the store cannot sum tokens per model).

- ``query``: ``TraceQuery`` (window, scope, split, filters) and its validation.
- ``links``: attribution of traces -> LoggedModel -> registered version, as trace links.
- ``series``: ``monitoring_data`` (series, totals, per-model costs) and the warehouse choice.
"""

from services.monitoring.links import (
    Attribution,
    attribution,
    filter_links,
    needs_attribution,
    other_tags,
    versions_with_traffic,
)
from services.monitoring.query import (
    ALIAS_TAG,
    ALL,
    BUCKET_CHOICES_S,
    MAX_PAGE_SIZE,
    MAX_WINDOW,
    SPLIT_TAGS,
    FeedbackFilter,
    Split,
    Status,
    TraceQuery,
    metric_filters,
    validate_query,
)
from services.monitoring.series import (
    MODEL_COLUMNS,
    SERIES_COLUMNS,
    TOTALS_COLUMNS,
    MetricRunner,
    MonitoringData,
    choose_interval,
    linked_window,
    monitoring_data,
    warehouse_for,
)
from services.pricing import ModelPrice  # the price type monitoring_data takes

__all__ = [
    "ALIAS_TAG",
    "ALL",
    "BUCKET_CHOICES_S",
    "MAX_PAGE_SIZE",
    "MAX_WINDOW",
    "MODEL_COLUMNS",
    "SERIES_COLUMNS",
    "SPLIT_TAGS",
    "TOTALS_COLUMNS",
    "Attribution",
    "FeedbackFilter",
    "MetricRunner",
    "ModelPrice",
    "MonitoringData",
    "Split",
    "Status",
    "TraceQuery",
    "attribution",
    "choose_interval",
    "filter_links",
    "linked_window",
    "metric_filters",
    "monitoring_data",
    "needs_attribution",
    "other_tags",
    "validate_query",
    "versions_with_traffic",
    "warehouse_for",
]
