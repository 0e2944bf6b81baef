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
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Mapping, Sequence

import pandas as pd

from services import _mlflow_internal as internal
from services import registry, trace_sql
from services._clients import mlflow_client, translate_errors, workspace_client
from services.errors import NotFoundError, ValidationError
from services.pricing import ModelPrice
from services.settings import Backend, Settings
from services.trace_sql import WarehouseSource
from services.traces import AGENT_TAG, ARM_TAG, ENDPOINT_TAG, VERSION_TAG, tag_filter

_logger = logging.getLogger(__name__)

ALIAS_TAG = "agentops.alias"
MAX_WINDOW = timedelta(days=90)
MAX_PAGE_SIZE = 500
# Bucket sizes the charts choose from: the smallest giving at most ~72 points.
BUCKET_CHOICES_S = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)


class Split(StrEnum):
    """How charts are split into series."""

    NONE = "none"
    VERSION = "version"
    ALIAS = "alias"
    ARM = "arm"


# Tags that earlier versions of the app (demo seeder, gateway) wrote on traces. Versions and aliases
# are now attributed through the ``mlflow.modelId`` trace metadata (``_links``); these tags still
# count for traces that carry no model id. The arm split stays a tag (the gateway's own notion).
SPLIT_TAGS = {Split.VERSION: VERSION_TAG, Split.ALIAS: ALIAS_TAG, Split.ARM: ARM_TAG}
ALL = "all traffic"


class Status(StrEnum):
    OK = "OK"
    ERROR = "ERROR"


class FeedbackFilter(StrEnum):
    """Assessment filter of the explorer."""

    ANY = "any"
    NEGATIVE = "negative"  # thumbs_up is false
    POSITIVE = "positive"  # thumbs_up is true


# --- query ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceQuery:
    """Which traces: experiments, the window ``[start, end)`` and equality filters on trace tags."""

    experiment_ids: tuple[str, ...]
    start: datetime
    end: datetime
    agent: str | None = None
    version: str | None = None
    alias: str | None = None
    endpoint: str | None = None
    arm: str | None = None
    status: Status | None = None

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return int(self.end.timestamp() * 1000)

    def tag_equalities(self) -> dict[str, str]:
        pairs = {AGENT_TAG: self.agent, VERSION_TAG: self.version, ALIAS_TAG: self.alias,
                 ENDPOINT_TAG: self.endpoint, ARM_TAG: self.arm}
        return {k: v for k, v in pairs.items() if v}


def validate_query(query: TraceQuery) -> None:
    """Raise ``ValidationError`` naming the problem; called before any I/O."""
    for name, moment in (("start", query.start), ("end", query.end)):
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            raise ValidationError(f"The window {name} must be a timezone-aware datetime (got {moment!r}).")
    if query.start >= query.end:
        raise ValidationError(
            f"The window starts ({query.start:%Y-%m-%d %H:%M}) after it ends ({query.end:%Y-%m-%d %H:%M}); "
            "pick a start before the end."
        )
    if query.end - query.start > MAX_WINDOW:
        raise ValidationError(f"The window is longer than {MAX_WINDOW.days} days; pick a shorter one.")
    if query.status is not None and query.status not in tuple(Status):
        raise ValidationError(f"Status {query.status!r} is not one of {', '.join(Status)}.")
    for key, value in query.tag_equalities().items():
        if any(ch in value for ch in "\n\r`") or len(value) > 250:
            raise ValidationError(f"The filter value {value!r} for {key} is not a valid tag value.")


def metric_filters(query: TraceQuery) -> list[str]:
    """The query as ``query_trace_metrics`` filters (the window is passed separately)."""
    filters = [tag_filter(k, v) for k, v in query.tag_equalities().items()]
    if query.status:
        filters.append(f'trace.status = "{query.status.value}"')
    return filters


# --- attribution: trace -> LoggedModel -> registered version -------------------------------------


@dataclass(frozen=True)
class Attribution:
    """How traces map to agents and versions: ``mlflow.modelId`` -> LoggedModel -> registered version."""

    versions: tuple[Any, ...]  # registry.VersionLink of the agents in scope

    def by_model(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for link in self.versions:
            if link.model_id and link.model_id not in found:
                found[link.model_id] = link
        return found

    def model_ids(self, *, agent: str | None = None, version: str | None = None,
                  alias: str | None = None) -> tuple[str, ...]:
        return tuple(dict.fromkeys(
            link.model_id for link in self.versions
            if link.model_id and (agent is None or link.agent == agent)
            and (version is None or link.version == version) and (alias is None or alias in link.aliases)
        ))


def attribution(agent: str | None = None, settings: Settings | None = None) -> Attribution:
    """The versions of ``agent`` (every agent when None) with their LoggedModel ids and aliases.

    An agent that is not (or no longer) registered has no versions: its traces are then found
    only through the app's older trace tags.
    """
    if agent:
        try:
            links, _ = registry.agent_links(agent, settings)
        except (NotFoundError, ValidationError):  # not a registered model (name unknown or not valid there)
            links = []
        return Attribution(tuple(links))
    return Attribution(tuple(registry.all_version_links(settings)))


def filter_links(query: TraceQuery, attribution_: Attribution) -> list[internal.TraceLink]:
    """Agent, version and alias filters as trace links: the model ids, or the legacy tag."""
    links = []
    if query.agent:
        links.append(internal.TraceLink(attribution_.model_ids(agent=query.agent), ((AGENT_TAG, query.agent),)))
    if query.version:
        links.append(internal.TraceLink(attribution_.model_ids(agent=query.agent, version=query.version),
                                        ((VERSION_TAG, query.version),)))
    if query.alias:
        links.append(internal.TraceLink(attribution_.model_ids(agent=query.agent, alias=query.alias),
                                        ((ALIAS_TAG, query.alias),)))
    return links


def _group_links(query: TraceQuery, split: Split, labels: Sequence[str],
                 attribution_: Attribution) -> dict[str, internal.TraceLink]:
    if split is Split.VERSION:
        return {v: internal.TraceLink(attribution_.model_ids(agent=query.agent, version=v), ((VERSION_TAG, v),))
                for v in labels}
    if split is Split.ALIAS:
        return {a: internal.TraceLink(attribution_.model_ids(agent=query.agent, alias=a), ((ALIAS_TAG, a),))
                for a in labels}
    return {g: internal.TraceLink(tags=((SPLIT_TAGS[split], g),)) for g in labels}


def other_tags(query: TraceQuery) -> dict[str, str]:
    """The tag filters that stay tags (endpoint and arm, written by the gateway)."""
    return {k: v for k, v in query.tag_equalities().items() if k in (ENDPOINT_TAG, ARM_TAG)}


def needs_attribution(query: TraceQuery, split: Split = Split.NONE) -> bool:
    return bool(query.agent or query.version or query.alias) or split in (Split.VERSION, Split.ALIAS)


def versions_with_traffic(query: TraceQuery, settings: Settings | None = None) -> list[str]:
    """Version numbers (of ``query.agent``, or of any agent) whose LoggedModel has traces in the window.

    Traces written with the app's older version tag count too. Newest version first.
    """
    validate_query(query)
    if not query.experiment_ids:
        return []
    attribution_ = attribution(query.agent, settings)
    client = mlflow_client(settings)
    with translate_errors("trace search"):
        model_ids = set(internal.trace_model_ids(client, list(query.experiment_ids), start_ms=query.start_ms,
                                                 end_ms=query.end_ms))
        legacy = internal.trace_tag_values(client, list(query.experiment_ids), VERSION_TAG, start_ms=query.start_ms,
                                           end_ms=query.end_ms)
    found = {link.version for link in attribution_.versions if link.model_id in model_ids}
    if query.agent is None or not attribution_.versions:
        found |= set(legacy)
    return sorted(found, key=lambda v: (-int(v) if v.isdigit() else 0, v))


def choose_interval(start: datetime, end: datetime, max_points: int = 72) -> int:
    """Bucket size in seconds: the smallest choice giving at most ``max_points`` buckets."""
    span = (end - start).total_seconds()
    for seconds in BUCKET_CHOICES_S:
        if span / seconds <= max_points:
            return seconds
    return BUCKET_CHOICES_S[-1]


# --- time series and totals --------------------------------------------------------------

SERIES_COLUMNS = (
    "bucket",  # start of the time bucket (UTC)
    "group",  # series label: a version, alias, arm, or "all traffic"
    "requests",  # traces started in the bucket
    "errors",  # traces whose status is ERROR
    "error_rate",  # errors / requests (NaN without requests)
    "p50_ms", "p95_ms", "p99_ms",  # latency percentiles (NaN without requests)
    "input_tokens", "output_tokens", "cached_input_tokens",  # sums over traces with token usage
    "traces_with_tokens",  # traces that recorded token usage
    "traces_without_tokens",  # requests - traces_with_tokens
    "recorded_cost",  # sum of MLflow's recorded span cost (USD)
    "estimated_cost",  # tokens x price table for LLM models without a recorded cost (USD)
    "cost",  # recorded_cost + estimated_cost
    "cost_per_request",  # cost / requests
)
TOTALS_COLUMNS = tuple(c for c in SERIES_COLUMNS if c != "bucket") + ("unpriced_models",)
MODEL_COLUMNS = ("model", "llm_calls", "recorded_cost", "estimated_cost", "cost", "cost_source")


@dataclass(frozen=True)
class MonitoringData:
    """Charts' data for one query and split.

    ``series`` has ``SERIES_COLUMNS`` (one row per group and bucket, missing buckets filled
    with zero requests); ``totals`` has ``TOTALS_COLUMNS`` (one row per group, whole window);
    ``by_model`` has ``MODEL_COLUMNS``.
    """

    query: TraceQuery
    split: Split
    interval_seconds: int
    series: pd.DataFrame
    totals: pd.DataFrame
    by_model: pd.DataFrame
    elapsed_s: float = 0.0
    aggregation_path: str = ""  # "sql": pushed down to the store's tables; else "query_trace_metrics"
    store_queries: int = 0

    @property
    def is_empty(self) -> bool:
        return int(self.totals["requests"].sum()) == 0 if len(self.totals) else True


class MetricRunner:
    """Runs a few ``query_trace_metrics`` calls of one request at a time (SQLite releases the GIL)."""

    def __init__(self, client: Any, query: TraceQuery) -> None:
        self.client = client
        self.query = query
        self.window = {"start_time_ms": query.start_ms, "end_time_ms": query.end_ms}

    def run(self, jobs: dict[Any, dict[str, Any]]) -> dict[Any, list[internal.MetricPoint]]:
        def one(kwargs: dict[str, Any]) -> list[internal.MetricPoint]:
            kwargs = dict(kwargs)
            metric, aggs = kwargs.pop("metric"), kwargs.pop("aggs")
            return internal.query_trace_metrics(
                self.client, list(self.query.experiment_ids), metric, aggs, **self.window, **kwargs
            )

        if not jobs:
            return {}
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {key: pool.submit(one, kwargs) for key, kwargs in jobs.items()}
            return {key: future.result() for key, future in futures.items()}


@dataclass(frozen=True)
class _ModelMix:
    calls: dict[str, int]
    recorded: dict[str, float]

    def uncosted_shares(self) -> dict[str, float]:
        total = sum(self.calls.values())
        if not total:
            return {}
        return {m: n / total for m, n in self.calls.items() if not self.recorded.get(m)}


def _model_mix(aggregates: internal.TraceAggregates, group: str | None) -> _ModelMix:
    rows = [m for m in aggregates.models if m.group == group]
    return _ModelMix({m.model: m.llm_calls for m in rows}, {m.model: m.recorded_cost for m in rows})


def _estimate(mix: _ModelMix, prices: Mapping[str, ModelPrice], input_tokens: float, output_tokens: float,
              cached: float) -> tuple[float, list[str]]:
    estimated, unpriced = 0.0, []
    for model, share in mix.uncosted_shares().items():
        price = prices.get(model)
        if price is None:
            unpriced.append(model)
            continue
        estimated += share * price.cost(input_tokens, output_tokens, cached)
    return estimated, unpriced


_ADDITIVE = ("requests", "errors", "input_tokens", "output_tokens", "cached_input_tokens", "traces_with_tokens",
             "recorded_cost")


def _record(row: internal.AggregateRow | None, group: str) -> dict[str, Any]:
    if row is None:
        return {"group": group, "requests": 0, "errors": 0, "p50_ms": math.nan, "p95_ms": math.nan,
                "p99_ms": math.nan, "input_tokens": 0.0, "output_tokens": 0.0, "cached_input_tokens": 0.0,
                "traces_with_tokens": 0, "recorded_cost": 0.0}
    pct = {f"p{p}_ms": math.nan if v is None else float(v)
           for p, v in zip((50, 95, 99), (row.p50_ms, row.p95_ms, row.p99_ms))}
    return {"group": group, "requests": row.requests, "errors": row.errors, **pct,
            "input_tokens": float(row.input_tokens), "output_tokens": float(row.output_tokens),
            "cached_input_tokens": float(row.cached_input_tokens), "traces_with_tokens": row.traces_with_tokens,
            "recorded_cost": row.recorded_cost}


def _group_frames(label: str, rows: Sequence[internal.AggregateRow], buckets: list[pd.Timestamp], mix: _ModelMix,
                  prices: Mapping[str, ModelPrice]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One group's series (every bucket, zeros where empty) and its whole-window totals row."""
    by_bucket = {r.bucket_ms: r for r in rows if r.bucket_ms is not None}
    whole = next((r for r in rows if r.bucket_ms is None), None)
    records, unpriced = [], set()
    for bucket in buckets:
        record = {"bucket": bucket, **_record(by_bucket.get(int(bucket.timestamp() * 1000)), label)}
        record["estimated_cost"], missing = _estimate(mix, prices, record["input_tokens"], record["output_tokens"],
                                                      record["cached_input_tokens"])
        unpriced.update(missing)
        records.append(record)
    series = _derive(pd.DataFrame(records))
    total = _record(whole, label)
    for column in _ADDITIVE:  # the buckets tile the window, so their sums are the totals
        total[column] = series[column].sum()
    total["estimated_cost"] = series["estimated_cost"].sum()
    total["unpriced_models"] = ", ".join(sorted(unpriced))
    return series, total


def _derive(frame: pd.DataFrame) -> pd.DataFrame:
    frame["cost"] = frame["recorded_cost"] + frame["estimated_cost"]
    requests = frame["requests"].where(frame["requests"] > 0)
    frame["error_rate"] = frame["errors"] / requests
    frame["cost_per_request"] = frame["cost"] / requests
    frame["traces_without_tokens"] = (frame["requests"] - frame["traces_with_tokens"]).clip(lower=0)
    return frame


def _buckets(query: TraceQuery, interval: int) -> list[pd.Timestamp]:
    step_ms = interval * 1000
    first = (query.start_ms // step_ms) * step_ms
    return [pd.Timestamp(ms, unit="ms", tz="UTC") for ms in range(first, query.end_ms, step_ms)]


def monitoring_data(
    query: TraceQuery,
    split: Split | str = Split.NONE,
    groups: Sequence[str] = (),
    *,
    prices: Mapping[str, ModelPrice] | None = None,
    interval_seconds: int | None = None,
    settings: Settings | None = None,
    warehouse: WarehouseSource | None = None,
) -> MonitoringData:
    """Time series, per-group totals and cost by model, all aggregated in the store.

    On a SQL store this is two SQL statements whatever the number of groups
    (``_mlflow_internal.aggregate_traces``); elsewhere, per-group ``query_trace_metrics`` calls.
    With ``warehouse`` (Databricks traces kept in Unity Catalog), one statement on that SQL
    warehouse (``trace_sql``).

    Args:
        split: series per value of the version, alias or arm tag (``groups`` lists the values).
        prices: the price table for models without a recorded cost (``pricing.load_prices``).
        warehouse: the SQL warehouse and Unity Catalog spans table holding the traces.
    """
    import time

    started = time.perf_counter()
    validate_query(query)
    try:
        split = Split(split)
    except ValueError:
        raise ValidationError(f"Cannot split by {split!r}; use one of {', '.join(Split)}.") from None
    if split is not Split.NONE and not groups:
        raise ValidationError(f"Splitting by {split.value} needs the {split.value} values to show; none were given.")
    for group in groups:
        if not isinstance(group, str) or not group or any(ch in group for ch in "\n\r`") or len(group) > 250:
            raise ValidationError(f"The {split.value} value {group!r} is not a valid tag value.")
    interval = interval_seconds or choose_interval(query.start, query.end)
    if interval < 60 or (query.end - query.start).total_seconds() / interval > 2000:
        raise ValidationError(f"A {interval} s bucket is too fine for this window; use a larger bucket.")
    prices = prices or {}
    labels = list(dict.fromkeys(groups)) if split is not Split.NONE else [ALL]
    window = dict(start_ms=query.start_ms, end_ms=query.end_ms, interval_seconds=interval,
                  group_tag=SPLIT_TAGS.get(split), groups=labels if split is not Split.NONE else (),
                  tag_equals=query.tag_equalities(), status=query.status.value if query.status else None)
    if warehouse is not None:
        trace_sql.aggregate_statement(warehouse, **window)  # refuses bad identifiers before any I/O
        aggregates = trace_sql.warehouse_aggregates(workspace_client(settings), warehouse, **window)
    elif not query.experiment_ids:
        return _empty(query, split, interval, labels)
    else:
        client = mlflow_client(settings)
        with translate_errors("trace metrics"):
            aggregates = internal.aggregate_traces(client, list(query.experiment_ids),
                                                   **linked_window(query, split, labels, window, settings))

    buckets = _buckets(query, interval)
    series, totals = [], []
    for label in labels:
        key = None if split is Split.NONE else label
        frame, total = _group_frames(label, [r for r in aggregates.rows if r.group == key], buckets,
                                     _model_mix(aggregates, key), prices)
        series.append(frame)
        totals.append(total)
    series_frame = pd.concat(series, ignore_index=True)[list(SERIES_COLUMNS)]
    totals_frame = _derive(pd.DataFrame(totals))
    totals_frame = totals_frame.astype({"p50_ms": float, "p95_ms": float, "p99_ms": float})[list(TOTALS_COLUMNS)]

    overall_mix = _model_mix(aggregates, None)
    if split is Split.NONE:
        whole = {c: float(totals_frame[c].sum()) for c in ("input_tokens", "output_tokens", "cached_input_tokens")}
        estimates = _estimates_by_model(overall_mix, prices, whole)
    else:
        # Each group's tokens are attributed to that group's models (exact when a version
        # runs one model), then summed per model.
        estimates = {}
        for _, row in totals_frame.iterrows():
            tokens = {c: float(row[c]) for c in ("input_tokens", "output_tokens", "cached_input_tokens")}
            for model, value in _estimates_by_model(_model_mix(aggregates, row["group"]), prices, tokens).items():
                estimates[model] = estimates.get(model, 0.0) + value
    by_model = _by_model(overall_mix, prices, estimates)
    return MonitoringData(query, split, interval, series_frame, totals_frame, by_model,
                          elapsed_s=time.perf_counter() - started, aggregation_path=aggregates.path,
                          store_queries=aggregates.store_queries)


def linked_window(query: TraceQuery, split: Split, labels: Sequence[str], window: dict[str, Any],
                   settings: Settings | None) -> dict[str, Any]:
    """``aggregate_traces`` arguments attributing traces to agents, versions and aliases by model id."""
    if not needs_attribution(query, split):
        return window
    attribution_ = attribution(query.agent, settings)
    linked = {k: v for k, v in window.items() if k not in ("group_tag", "groups", "tag_equals")}
    linked["tag_equals"] = other_tags(query)
    linked["links"] = filter_links(query, attribution_)
    if split is not Split.NONE:
        linked["group_links"] = _group_links(query, split, labels, attribution_)
    return linked


def _estimates_by_model(mix: _ModelMix, prices: Mapping[str, ModelPrice], tokens: Mapping[str, float]) -> dict[str, float]:
    """Estimated cost per priced model without a recorded cost, tokens split by LLM call share."""
    return {
        model: share * prices[model].cost(tokens["input_tokens"], tokens["output_tokens"], tokens["cached_input_tokens"])
        for model, share in mix.uncosted_shares().items()
        if model in prices
    }


def _by_model(mix: _ModelMix, prices: Mapping[str, ModelPrice], estimates: Mapping[str, float]) -> pd.DataFrame:
    shares = mix.uncosted_shares()
    rows = []
    for model in sorted(set(mix.calls) | set(mix.recorded)):
        recorded = mix.recorded.get(model, 0.0)
        source = "recorded"
        if model in shares:
            source = "estimated" if model in prices else "no price"
        estimated = estimates.get(model, 0.0)
        rows.append({"model": model, "llm_calls": mix.calls.get(model, 0), "recorded_cost": recorded,
                     "estimated_cost": estimated, "cost": recorded + estimated, "cost_source": source})
    return pd.DataFrame(rows, columns=list(MODEL_COLUMNS))


def _empty(query: TraceQuery, split: Split, interval: int, labels: list[str]) -> MonitoringData:
    empty = internal.TraceAggregates((), (), "", 0)
    parts = [_group_frames(label, [], _buckets(query, interval), _model_mix(empty, None), {}) for label in labels]
    series = pd.concat([frame for frame, _ in parts], ignore_index=True)[list(SERIES_COLUMNS)]
    totals = _derive(pd.DataFrame([total for _, total in parts]))
    totals = totals.astype({"p50_ms": float, "p95_ms": float, "p99_ms": float})[list(TOTALS_COLUMNS)]
    return MonitoringData(query, split, interval, series, totals, pd.DataFrame(columns=list(MODEL_COLUMNS)))




def warehouse_for(settings: Settings) -> WarehouseSource | None:
    """The SQL warehouse that aggregates chart windows, when the Databricks backend has one configured.

    Without both the warehouse and the spans table, charts use the MLflow store's own aggregates.
    """
    if settings.backend is not Backend.DATABRICKS or not (settings.warehouse_id and settings.trace_spans_table):
        return None
    return WarehouseSource(settings.warehouse_id, settings.trace_spans_table)
