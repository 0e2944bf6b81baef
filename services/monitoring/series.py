"""Time series, totals and the per-model breakdown of a monitoring question, aggregated in the store, with
costs estimated from the workspace price table where MLflow recorded none."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

import pandas as pd

from services import _mlflow_internal as internal
from services import trace_sql
from services._clients import mlflow_client, translate_errors, workspace_client
from services.errors import ValidationError
from services.monitoring.links import (
    attribution,
    filter_links,
    group_links,
    needs_attribution,
    other_tags,
)
from services.monitoring.query import (
    ALL,
    BUCKET_CHOICES_S,
    SPLIT_TAGS,
    Split,
    TraceQuery,
    validate_query,
)
from services.pricing import ModelPrice
from services.settings import Backend, Settings
from services.trace_sql import WarehouseSource


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
        linked["group_links"] = group_links(query, split, labels, attribution_)
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
