"""Monitoring: time series, breakdowns, alerts, a trace explorer and trace detail.

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

import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, Mapping, Sequence

import pandas as pd

from services import _mlflow_internal as internal
from services._clients import mlflow_client, translate_errors
from services.errors import ConflictError, NotFoundError, ValidationError
from services.pricing import ModelPrice
from services.settings import Backend, Settings
from services.trace_sql import WarehouseSource
from services.traces import AGENT_TAG, ARM_TAG, ENDPOINT_TAG, VERSION_TAG, tag_filter

_logger = logging.getLogger(__name__)

ALIAS_TAG = "agentops.alias"
MAX_WINDOW = timedelta(days=90)
MAX_PAGE_SIZE = 500
THRESHOLDS_FILE = "alert_thresholds.json"
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
    from services import registry

    if agent:
        try:
            links, _ = registry.agent_links(agent, settings)
        except (NotFoundError, ValidationError):  # not a registered model (name unknown or not valid there)
            links = []
        return Attribution(tuple(links))
    return Attribution(tuple(registry.all_version_links(settings)))


def _filter_links(query: TraceQuery, attribution_: Attribution) -> list[internal.TraceLink]:
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


def _other_tags(query: TraceQuery) -> dict[str, str]:
    """The tag filters that stay tags (endpoint and arm, written by the gateway)."""
    return {k: v for k, v in query.tag_equalities().items() if k in (ENDPOINT_TAG, ARM_TAG)}


def _needs_attribution(query: TraceQuery, split: Split = Split.NONE) -> bool:
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


class _Runner:
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
        from services import trace_sql
        from services._clients import workspace_client

        trace_sql.aggregate_statement(warehouse, **window)  # refuses bad identifiers before any I/O
        aggregates = trace_sql.warehouse_aggregates(workspace_client(settings), warehouse, **window)
    elif not query.experiment_ids:
        return _empty(query, split, interval, labels)
    else:
        client = mlflow_client(settings)
        with translate_errors("trace metrics"):
            aggregates = internal.aggregate_traces(client, list(query.experiment_ids),
                                                   **_linked_window(query, split, labels, window, settings))

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


def _linked_window(query: TraceQuery, split: Split, labels: Sequence[str], window: dict[str, Any],
                   settings: Settings | None) -> dict[str, Any]:
    """``aggregate_traces`` arguments attributing traces to agents, versions and aliases by model id."""
    if not _needs_attribution(query, split):
        return window
    attribution_ = attribution(query.agent, settings)
    linked = {k: v for k, v in window.items() if k not in ("group_tag", "groups", "tag_equals")}
    linked["tag_equals"] = _other_tags(query)
    linked["links"] = _filter_links(query, attribution_)
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


# --- alerts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertThresholds:
    """Per-agent alert thresholds; ``None`` switches a check off."""

    p95_latency_ms: float | None = 5000.0
    error_rate: float | None = 0.05
    daily_cost: float | None = 10.0
    min_feedback_score: float | None = 0.6
    feedback_name: str = "thumbs_up"


def _threshold_number(name: str, value: Any) -> float | None:
    """``value`` as a float, or ``ValidationError`` naming the field when it is not a finite number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"{name} must be a number or empty to switch the check off (got {value!r}).")
    if not math.isfinite(value):
        raise ValidationError(f"{name} must be a finite number (got {value}).")
    return float(value)


def validate_thresholds(thresholds: AlertThresholds) -> AlertThresholds:
    """Check types and ranges; raise ``ValidationError`` naming the bad field."""
    if not isinstance(thresholds, AlertThresholds):
        raise ValidationError(f"Alert thresholds must be AlertThresholds (got {type(thresholds).__name__}).")
    values = {name: _threshold_number(name, getattr(thresholds, name))
              for name in ("p95_latency_ms", "error_rate", "daily_cost", "min_feedback_score")}
    for name in ("p95_latency_ms", "daily_cost"):
        if values[name] is not None and values[name] < 0:
            raise ValidationError(f"{name} must be zero or more (got {values[name]}).")
    if values["error_rate"] is not None and not 0 <= values["error_rate"] <= 1:
        raise ValidationError(f"error_rate is a share between 0 and 1 (got {values['error_rate']}).")
    name = thresholds.feedback_name
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "\"`\n\r") or len(name) > 250:
        raise ValidationError(f"feedback_name {name!r} is not a valid assessment name.")
    return thresholds


def validate_threshold_key(agent: Any) -> str:
    """The agent a threshold set belongs to: ``"*"`` (the default) or a registered-model name."""
    if (not isinstance(agent, str) or not agent or agent != agent.strip() or len(agent) > 256
            or any(not c.isprintable() or c in "`" for c in agent)):
        raise ValidationError(f"{agent!r} is not an agent name; pick an agent, or \"*\" for the default.")
    return agent


THRESHOLDS_KEY = "thresholds:"


def _parse_threshold_file(path: Any) -> dict[str, dict[str, Any]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        loaded = {validate_threshold_key(agent): validate_thresholds(AlertThresholds(**values))
                  for agent, values in raw.items()}
    except (OSError, json.JSONDecodeError, TypeError, AttributeError, ValidationError) as exc:
        raise ValidationError(f"Alert thresholds in {path} cannot be read ({exc}); fix or delete the file.") from None
    return {agent: asdict(t) for agent, t in loaded.items()}


def load_thresholds(settings: Settings) -> dict[str, AlertThresholds]:
    """Saved thresholds per agent (key ``"*"`` holds the default for agents without their own).

    They are team state in the tracking store (``services.team_state``, one record per agent), so a
    teammate's app and a CI runner's ``agentops gate`` see the same ones; an embedded store's former
    ``alert_thresholds.json`` is migrated once.
    """
    from services import team_state

    records = team_state.read_all(settings, THRESHOLDS_KEY)
    if not records:
        path = settings.data_dir / THRESHOLDS_FILE
        if settings.backend is Backend.LOCAL and path.exists():
            for agent, values in _parse_threshold_file(path).items():
                try:
                    team_state.write(THRESHOLDS_KEY + agent, values, expected_version=0, user=team_state.MIGRATED_BY,
                                     settings=settings, note=f"migrated from {path}")
                except ConflictError:
                    pass  # another process migrated it first
            records = team_state.read_all(settings, THRESHOLDS_KEY)
    loaded: dict[str, AlertThresholds] = {}
    for key, record in records.items():
        try:
            loaded[key[len(THRESHOLDS_KEY):]] = validate_thresholds(AlertThresholds(**record.value))
        except (TypeError, ValidationError) as exc:
            raise ValidationError(f"The stored alert thresholds {key!r} cannot be read ({exc}); save them again.") from None
    loaded.setdefault("*", AlertThresholds())
    return loaded


def threshold_versions(settings: Settings) -> dict[str, int]:
    """The stored version of each agent's thresholds (0: never saved), for a conflict-checked save."""
    from services import team_state

    return {k[len(THRESHOLDS_KEY):]: r.version for k, r in team_state.read_all(settings, THRESHOLDS_KEY).items()}


def save_thresholds(settings: Settings, agent: str, thresholds: AlertThresholds,
                    identity: Any = None, *, expected_version: int | None = None) -> dict[str, AlertThresholds]:
    """Store one agent's thresholds (``"*"`` for the default) with the team's data.

    With ``identity`` (pages should pass it), editing thresholds needs the admin role, like other settings.
    With ``expected_version`` (the version the editor loaded, 0 if none), a concurrent save by someone
    else gives ``ConflictError`` instead of being overwritten.
    """
    from services import team_state

    validate_threshold_key(agent)
    validate_thresholds(thresholds)
    if identity is not None:
        from services import roles

        roles.enforce(identity, roles.Action.EDIT_RULES, settings)
    load_thresholds(settings)  # migrates a former file first, so the save lands on top of it
    key = THRESHOLDS_KEY + agent
    if expected_version is None:
        current = team_state.read(key, settings)
        expected_version = current.version if current else 0
    team_state.write(key, asdict(thresholds), expected_version=expected_version,
                     user=getattr(identity, "user", None) or "unknown", settings=settings,
                     note=f"alert thresholds of {agent}")
    return load_thresholds(settings)


def thresholds_for(all_thresholds: Mapping[str, AlertThresholds], agent: str) -> AlertThresholds:
    return all_thresholds.get(agent) or all_thresholds.get("*") or AlertThresholds()


@dataclass(frozen=True)
class AgentHealth:
    """An agent's figures over a window, the values alerts are checked against."""

    agent: str
    requests: int
    error_rate: float | None
    p95_latency_ms: float | None
    cost_last_24h: float
    feedback_score: float | None
    feedback_count: int


@dataclass(frozen=True)
class Alert:
    agent: str
    check: str  # "p95 latency", "error rate", "daily cost", "feedback score"
    value: float
    threshold: float
    message: str


def agent_health(query: TraceQuery, *, feedback_name: str = "thumbs_up",
                 prices: Mapping[str, ModelPrice] | None = None, settings: Settings | None = None) -> AgentHealth:
    """Requests, error rate, p95, cost over the last 24 h of the window and mean feedback, for ``query.agent``."""
    validate_query(query)
    if not query.agent:
        raise ValidationError("Agent health needs an agent.")
    day = TraceQuery(**{**query.__dict__, "start": max(query.start, query.end - timedelta(days=1))})
    last_day = monitoring_data(day, prices=prices, settings=settings).totals.iloc[0]
    requests, errors, p95 = 0, 0, None
    score, count = None, 0
    if query.experiment_ids:
        client = mlflow_client(settings)
        # The whole window needs no cost, so no model mix: one statement on a SQL store.
        window = dict(start_ms=query.start_ms, end_ms=query.end_ms,
                      interval_seconds=choose_interval(query.start, query.end), tag_equals=query.tag_equalities(),
                      status=query.status.value if query.status else None)
        with translate_errors("trace metrics"):
            whole = internal.aggregate_traces(client, list(query.experiment_ids), with_models=False,
                                              **_linked_window(query, Split.NONE, [], window, settings))
        total = next((r for r in whole.rows if r.bucket_ms is None), None)
        if total is not None:
            requests, errors, p95 = total.requests, total.errors, total.p95_ms
        score, count = _feedback_score(client, query, feedback_name, settings)
    return AgentHealth(
        agent=query.agent,
        requests=requests,
        error_rate=errors / requests if requests else None,
        p95_latency_ms=p95,
        cost_last_24h=float(last_day["cost"]),
        feedback_score=score,
        feedback_count=count,
    )


def _feedback_score(client: Any, query: TraceQuery, feedback_name: str,
                    settings: Settings | None) -> tuple[float | None, int]:
    """Mean and count of one assessment on the query's traces, linked by model id where known.

    Assessment metrics filter with AND only: one query pair per model id with traffic in the
    window (the legacy agent/version tags when no model id of the agent has any), combined.
    """
    name = f'assessment.name = "{feedback_name}"'
    base = [tag_filter(k, v) for k, v in _other_tags(query).items()]
    if query.status:
        base.append(f'trace.status = "{query.status.value}"')
    filter_sets = [metric_filters(query) + [name]]
    if _needs_attribution(query):
        attribution_ = attribution(query.agent, settings)
        wanted = set(attribution_.model_ids(agent=query.agent, version=query.version, alias=query.alias))
        if wanted:
            with translate_errors("trace search"):
                active = set(internal.trace_model_ids(client, list(query.experiment_ids), start_ms=query.start_ms,
                                                      end_ms=query.end_ms))
            if wanted & active:
                from services.traces import model_filter

                filter_sets = [base + [model_filter(m), name] for m in sorted(wanted & active)]
    jobs: dict[Any, dict[str, Any]] = {}
    for i, filters in enumerate(filter_sets):
        jobs[(i, "avg")] = dict(metric="assessment_value", aggs=["AVG"], view_type="ASSESSMENTS", filters=filters)
        jobs[(i, "count")] = dict(metric="assessment_count", aggs=["COUNT"], view_type="ASSESSMENTS", filters=filters)
    with translate_errors("assessment metrics"):
        res = _Runner(client, query).run(jobs)
    total, weighted = 0, 0.0
    for i in range(len(filter_sets)):
        n = int(res[(i, "count")][0].values.get("COUNT", 0)) if res[(i, "count")] else 0
        mean = res[(i, "avg")][0].values.get("AVG") if res[(i, "avg")] else None
        if n and mean is not None:
            total += n
            weighted += float(mean) * n
    return (weighted / total if total else None), total


def check_alerts(health: AgentHealth, thresholds: AlertThresholds) -> list[Alert]:
    """The thresholds an agent's figures cross (nothing is checked without traffic)."""
    alerts: list[Alert] = []
    if not health.requests:
        return alerts
    t = thresholds
    if t.p95_latency_ms is not None and health.p95_latency_ms is not None and health.p95_latency_ms > t.p95_latency_ms:
        alerts.append(Alert(health.agent, "p95 latency", health.p95_latency_ms, t.p95_latency_ms,
                            f"p95 latency {health.p95_latency_ms:,.0f} ms is above {t.p95_latency_ms:,.0f} ms"))
    if t.error_rate is not None and health.error_rate is not None and health.error_rate > t.error_rate:
        alerts.append(Alert(health.agent, "error rate", health.error_rate, t.error_rate,
                            f"error rate {health.error_rate:.1%} is above {t.error_rate:.1%}"))
    if t.daily_cost is not None and health.cost_last_24h > t.daily_cost:
        alerts.append(Alert(health.agent, "daily cost", health.cost_last_24h, t.daily_cost,
                            f"cost over the last 24 h ${health.cost_last_24h:,.2f} is above ${t.daily_cost:,.2f}"))
    if (t.min_feedback_score is not None and health.feedback_score is not None
            and health.feedback_score < t.min_feedback_score):
        alerts.append(Alert(health.agent, "feedback score", health.feedback_score, t.min_feedback_score,
                            f"mean {t.feedback_name} {health.feedback_score:.2f} is below {t.min_feedback_score:.2f} "
                            f"({health.feedback_count} assessments)"))
    return alerts


# --- explorer ------------------------------------------------------------------------------

EXPLORER_COLUMNS = (
    "trace_id", "time", "agent", "version", "alias", "arm", "endpoint", "status", "latency_ms",
    "input_tokens", "output_tokens",  # NaN when the trace recorded no token usage
    "has_token_usage", "cost",  # MLflow's recorded cost (NaN when none)
    "request",  # request preview
    "model_id",  # the trace's mlflow.modelId (None: the trace records no LoggedModel)
    "link",  # how agent/version were found: "model id", "tags" (older app traces) or why they are missing
)


@dataclass(frozen=True)
class ExplorerQuery:
    """The explorer's filters: a ``TraceQuery`` plus latency range and feedback."""

    traces: TraceQuery
    min_latency_ms: int | None = None
    max_latency_ms: int | None = None
    feedback: FeedbackFilter = FeedbackFilter.ANY
    feedback_name: str = "thumbs_up"


@dataclass(frozen=True)
class TracePage:
    """One page of matching traces (``EXPLORER_COLUMNS``) and the token of the next page."""

    rows: pd.DataFrame
    next_token: str | None


def _search_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def search_filter(explorer: ExplorerQuery) -> str:
    """The explorer query as a ``search_traces`` filter string."""
    q = explorer.traces
    clauses = [f"trace.timestamp_ms >= {q.start_ms}", f"trace.timestamp_ms < {q.end_ms}"]
    clauses += [f"tag.`{k}` = '{_search_quote(v)}'" for k, v in q.tag_equalities().items()]
    if q.status:
        clauses.append(f"trace.status = '{q.status.value}'")
    if explorer.min_latency_ms is not None:
        clauses.append(f"trace.execution_time_ms >= {int(explorer.min_latency_ms)}")
    if explorer.max_latency_ms is not None:
        clauses.append(f"trace.execution_time_ms <= {int(explorer.max_latency_ms)}")
    if explorer.feedback is not FeedbackFilter.ANY:
        value = "false" if explorer.feedback is FeedbackFilter.NEGATIVE else "true"
        clauses.append(f"feedback.`{explorer.feedback_name}` = '{value}'")
    return " AND ".join(clauses)


def validate_explorer(explorer: ExplorerQuery, page_size: int) -> None:
    validate_query(explorer.traces)
    lo, hi = explorer.min_latency_ms, explorer.max_latency_ms
    for name, value in (("minimum latency", lo), ("maximum latency", hi)):
        if value is not None and value < 0:
            raise ValidationError(f"The {name} must be zero or more milliseconds (got {value}).")
    if lo is not None and hi is not None and lo > hi:
        raise ValidationError(f"The latency range {lo}–{hi} ms is empty; the minimum must not exceed the maximum.")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValidationError(f"Page size must be between 1 and {MAX_PAGE_SIZE} (got {page_size}).")
    if FeedbackFilter(explorer.feedback) is not FeedbackFilter.ANY and any(c in explorer.feedback_name for c in "`'\n"):
        raise ValidationError(f"Feedback name {explorer.feedback_name!r} is not a valid assessment name.")


def _status(info: Any) -> str:
    state = getattr(info, "state", None)
    return str(getattr(state, "value", state) or "")


def _explorer_row(info: Any, by_model: Mapping[str, Any] | None = None) -> dict[str, Any]:
    tags = info.tags or {}
    usage = info.token_usage or {}
    cost = (info.cost or {}).get("total_cost") if getattr(info, "cost", None) else None
    model_id = (getattr(info, "trace_metadata", None) or {}).get(internal.MODEL_ID_KEY)
    version_link = (by_model or {}).get(model_id or "")
    if version_link is not None:
        agent, version = version_link.agent, version_link.version
        alias, link = ",".join(version_link.aliases) or None, "model id"
    else:
        agent, version, alias = tags.get(AGENT_TAG), tags.get(VERSION_TAG), tags.get(ALIAS_TAG)
        if agent or version:
            link = "tags"
        elif model_id:
            link = "model id of no registered version"
        else:
            link = "no model id on the trace"
    return {
        "trace_id": info.trace_id,
        "time": pd.Timestamp(info.request_time, unit="ms", tz="UTC"),
        "agent": agent, "version": version, "alias": alias,
        "arm": tags.get(ARM_TAG), "endpoint": tags.get(ENDPOINT_TAG),
        "status": _status(info),
        "latency_ms": info.execution_duration,
        "input_tokens": usage.get("input_tokens", math.nan) if usage else math.nan,
        "output_tokens": usage.get("output_tokens", math.nan) if usage else math.nan,
        "has_token_usage": bool(usage),
        "cost": cost if cost is not None else math.nan,
        "request": (info.request_preview or "")[:200],
        "model_id": model_id,
        "link": link,
    }


# Pages of the store read at most per explorer page when matching several model ids client-side.
_MAX_SCAN_PAGES = 20


def _matches_link(info: Any, links: Sequence[internal.TraceLink]) -> bool:
    metadata = getattr(info, "trace_metadata", None) or {}
    model_id = metadata.get(internal.MODEL_ID_KEY)
    if model_id and metadata.get(internal.SOURCE_RUN_KEY):
        return False  # an evaluation row of that model, not live traffic (as in the aggregates)
    tags = info.tags or {}
    return all(model_id in link.model_ids or any(tags.get(k) == v for k, v in link.tags) for link in links)


def search_page(explorer: ExplorerQuery, *, page_size: int = 50, page_token: str | None = None,
                settings: Settings | None = None) -> TracePage:
    """One page of matching traces, newest first, paged in the store (no spans are read).

    Agent, version and alias filters follow the ``mlflow.modelId`` link: one linked model is a
    store-side filter; several (an agent's versions) are matched on each page read, a bounded
    number of store pages per explorer page.
    """
    validate_explorer(explorer, page_size)
    if not explorer.traces.experiment_ids:
        return TracePage(pd.DataFrame(columns=list(EXPLORER_COLUMNS)), None)
    client = mlflow_client(settings)
    q = explorer.traces
    attribution_ = attribution(None, settings)
    by_model = attribution_.by_model()
    links = _filter_links(q, attribution_) if _needs_attribution(q) else []
    filter_string = search_filter(explorer)
    post: list[internal.TraceLink] = []
    wanted = set.intersection(*(set(link.model_ids) for link in links)) if links else set()
    if links and wanted:
        plain = ExplorerQuery(TraceQuery(**{**q.__dict__, "agent": None, "version": None, "alias": None}),
                              explorer.min_latency_ms, explorer.max_latency_ms, explorer.feedback,
                              explorer.feedback_name)
        filter_string = search_filter(plain)
        if len(wanted) > 1:
            with translate_errors("trace search"):
                active = set(internal.trace_model_ids(client, list(q.experiment_ids), start_ms=q.start_ms,
                                                      end_ms=q.end_ms))
            wanted = (wanted & active) or wanted
        if len(wanted) == 1:
            filter_string += f" AND metadata.`{internal.MODEL_ID_KEY}` = '{_search_quote(next(iter(wanted)))}'"
        post = links
    rows: list[dict[str, Any]] = []
    token = page_token
    with translate_errors("trace search"):
        for _ in range(_MAX_SCAN_PAGES if post else 1):
            page = client.search_traces(
                locations=list(q.experiment_ids), filter_string=filter_string,
                max_results=page_size, page_token=token, include_spans=False,
                order_by=["timestamp_ms DESC"],
            )
            rows += [_explorer_row(t.info, by_model) for t in page if not post or _matches_link(t.info, post)]
            token = page.token or None
            if not token or len(rows) >= page_size:
                break
    return TracePage(pd.DataFrame(rows, columns=list(EXPLORER_COLUMNS)), token)


def count_matching(query: TraceQuery, settings: Settings | None = None) -> int:
    """How many traces match the agent/version/alias links, tag, status and window filters (counted in the store)."""
    validate_query(query)
    if not query.experiment_ids:
        return 0
    client = mlflow_client(settings)
    window = dict(start_ms=query.start_ms, end_ms=query.end_ms, interval_seconds=choose_interval(query.start, query.end),
                  tag_equals=query.tag_equalities(), status=query.status.value if query.status else None)
    with translate_errors("trace metrics"):
        result = internal.aggregate_traces(client, list(query.experiment_ids), with_models=False,
                                           **_linked_window(query, Split.NONE, [], window, settings))
    total = next((r for r in result.rows if r.bucket_ms is None), None)
    return total.requests if total else 0


# --- trace detail --------------------------------------------------------------------------

SPAN_COLUMNS = (
    "span_id", "parent_id", "depth", "name", "span_type", "start_offset_ms", "duration_ms", "status",
    "error",  # the error message of a failed span
    "model", "input_tokens", "output_tokens", "cost",  # LLM spans only
    "inputs", "outputs",  # JSON text
)
ASSESSMENT_COLUMNS = ("name", "value", "source", "source_type", "rationale", "time")


@dataclass(frozen=True)
class TraceDetail:
    """One trace with its span tree (``SPAN_COLUMNS``, depth-first order) and assessments."""

    trace_id: str
    time: datetime
    status: str
    latency_ms: int | None
    tags: dict[str, str]
    token_usage: dict[str, int]
    cost: float | None
    spans: pd.DataFrame
    assessments: pd.DataFrame
    errors: tuple[str, ...] = field(default_factory=tuple)


def _json(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str, ensure_ascii=False, indent=1)


def _span_error(span: Any) -> str:
    status = getattr(span, "status", None)
    code = str(getattr(getattr(status, "status_code", None), "value", getattr(status, "status_code", "")))
    message = getattr(status, "description", "") or ""
    for event in getattr(span, "events", None) or []:
        if event.name == "exception":
            message = message or str((event.attributes or {}).get("exception.message", ""))
    return message if "ERROR" in code or message else ""


def trace_detail(trace_id: str, settings: Settings | None = None) -> TraceDetail:
    """A trace's spans (timings, inputs, outputs, tokens, cost, errors) and its assessments."""
    if not trace_id or not trace_id.strip() or any(c.isspace() for c in trace_id.strip()):
        raise ValidationError(f"{trace_id!r} is not a trace id; pick a trace from the list.")
    client = mlflow_client(settings)
    with translate_errors(f"trace {trace_id}"):
        trace = client.get_trace(trace_id.strip())
    if trace is None:
        raise NotFoundError(f"Trace {trace_id} does not exist.")
    info, spans = trace.info, list(trace.data.spans)
    by_parent: dict[str | None, list[Any]] = {}
    for span in spans:
        by_parent.setdefault(span.parent_id, []).append(span)
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id is None or s.parent_id not in ids]
    origin = min((s.start_time_ns for s in spans), default=0)
    rows: list[dict[str, Any]] = []

    def walk(span: Any, depth: int) -> None:
        attrs = span.attributes or {}
        usage = attrs.get("mlflow.chat.tokenUsage") or {}
        cost = attrs.get("mlflow.llm.cost")
        cost_total = cost.get("total_cost") if isinstance(cost, dict) else cost
        status = getattr(span.status, "status_code", "")
        rows.append({
            "span_id": span.span_id, "parent_id": span.parent_id, "depth": depth, "name": span.name,
            "span_type": span.span_type, "start_offset_ms": (span.start_time_ns - origin) / 1e6,
            "duration_ms": ((span.end_time_ns or span.start_time_ns) - span.start_time_ns) / 1e6,
            "status": str(getattr(status, "value", status)), "error": _span_error(span),
            "model": attrs.get("mlflow.llm.model"),
            "input_tokens": usage.get("input_tokens") if isinstance(usage, dict) else None,
            "output_tokens": usage.get("output_tokens") if isinstance(usage, dict) else None,
            "cost": cost_total, "inputs": _json(span.inputs), "outputs": _json(span.outputs),
        })
        for child in sorted(by_parent.get(span.span_id, []), key=lambda s: s.start_time_ns):
            walk(child, depth + 1)

    for root in sorted(roots, key=lambda s: s.start_time_ns):
        walk(root, 0)
    span_frame = pd.DataFrame(rows, columns=list(SPAN_COLUMNS))
    assessments = []
    for a in getattr(info, "assessments", None) or []:
        value = a.feedback.value if getattr(a, "feedback", None) is not None else getattr(getattr(a, "expectation", None), "value", None)
        source = getattr(a, "source", None)
        assessments.append({
            "name": a.name, "value": value, "source": getattr(source, "source_id", None),
            "source_type": str(getattr(source, "source_type", "")), "rationale": a.rationale,
            "time": pd.Timestamp(a.create_time_ms, unit="ms", tz="UTC") if a.create_time_ms else None,
        })
    cost = (info.cost or {}).get("total_cost") if getattr(info, "cost", None) else None
    return TraceDetail(
        trace_id=info.trace_id,
        time=datetime.fromtimestamp(info.request_time / 1000, tz=timezone.utc),
        status=_status(info),
        latency_ms=info.execution_duration,
        tags={k: v for k, v in (info.tags or {}).items() if not k.startswith("mlflow.")},
        token_usage=dict(info.token_usage or {}),
        cost=cost,
        spans=span_frame,
        assessments=pd.DataFrame(assessments, columns=list(ASSESSMENT_COLUMNS)),
        errors=tuple(f"{r['name']}: {r['error']}" for r in rows if r["error"]),
    )


def warehouse_for(settings: Settings) -> WarehouseSource | None:
    """The SQL warehouse that aggregates chart windows, when the Databricks backend has one configured.

    Without both the warehouse and the spans table, charts use the MLflow store's own aggregates.
    """
    from services.settings import Backend

    if settings.backend is not Backend.DATABRICKS or not (settings.warehouse_id and settings.trace_spans_table):
        return None
    return WarehouseSource(settings.warehouse_id, settings.trace_spans_table)
