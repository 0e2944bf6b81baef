"""Trace figures for a time window, aggregated in the store where it can."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

from services import _mlflow_internal as internal
from services._clients import mlflow_client, translate_errors
from services.settings import Settings
from services.filter_strings import escape_double

_logger = logging.getLogger(__name__)

# Trace tags the gateway and the demo put on every served request.
AGENT_TAG = "agentops.agent"
VERSION_TAG = "agentops.version"
ENDPOINT_TAG = "agentops.endpoint"
ARM_TAG = "agentops.arm"


@dataclass(frozen=True)
class TraceWindowSummary:
    """Counts and latency over ``[start, end)``; ``p95_ms`` is None when there are no traces."""

    start: datetime
    end: datetime
    traces: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    total_cost: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.traces if self.traces else None


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def window_summary(
    experiment_ids: Sequence[str],
    start: datetime,
    end: datetime | None = None,
    *,
    filters: Sequence[str] | None = None,
    settings: Settings | None = None,
) -> TraceWindowSummary:
    """Trace count, errors, latency percentiles and cost in a window (store-side when possible)."""
    end = end or datetime.now(tz=timezone.utc)
    if not experiment_ids:
        return TraceWindowSummary(start, end, 0, 0, None, None, None)
    client = mlflow_client(settings)
    window = {"start_time_ms": _ms(start), "end_time_ms": _ms(end)}
    with translate_errors("trace metrics"):
        try:
            return _summary_in_store(client, experiment_ids, start, end, list(filters or []), window)
        except NotImplementedError:
            _logger.info("store has no query_trace_metrics; aggregating from search_traces")
            return _summary_by_search(client, experiment_ids, start, end, list(filters or []))


def _summary_in_store(client: Any, experiment_ids, start, end, filters, window) -> TraceWindowSummary:
    def one(metric: str, aggregations: list, *, extra: list[str] | None = None, view: str = "TRACES"):
        points = internal.query_trace_metrics(
            client, experiment_ids, metric, aggregations, view_type=view,
            filters=filters + (extra or []), **window,
        )
        return points[0].values if points else {}

    total = int(one("trace_count", ["COUNT"]).get("COUNT", 0))
    errors = int(one("trace_count", ["COUNT"], extra=['trace.status = "ERROR"']).get("COUNT", 0))
    latency = one("latency", [("PERCENTILE", 50), ("PERCENTILE", 95)]) if total else {}
    cost = one("total_cost", ["SUM"], view="SPANS") if total else {}
    return TraceWindowSummary(
        start, end, total, errors,
        latency.get("P50.0", latency.get("P50")),
        latency.get("P95.0", latency.get("P95")),
        cost.get("SUM"),
    )


def _summary_by_search(client: Any, experiment_ids, start, end, filters) -> TraceWindowSummary:
    import numpy as np

    clauses = [f"trace.timestamp_ms >= {_ms(start)}", f"trace.timestamp_ms < {_ms(end)}"]
    clauses += [_search_clause(f) for f in filters]
    infos = []
    token = None
    while True:
        page = client.search_traces(
            locations=list(experiment_ids), filter_string=" AND ".join(clauses),
            max_results=500, page_token=token, include_spans=False,
        )
        infos.extend(t.info for t in page)
        token = page.token
        if not token:
            break
    durations = [i.execution_duration for i in infos if i.execution_duration is not None]
    costs = [(i.cost or {}).get("total_cost") for i in infos]
    costs = [c for c in costs if c is not None]
    errors = sum(1 for i in infos if str(i.state) in ("ERROR", "TraceState.ERROR"))
    return TraceWindowSummary(
        start, end, len(infos), errors,
        float(np.percentile(durations, 50)) if durations else None,
        float(np.percentile(durations, 95)) if durations else None,
        float(sum(costs)) if costs else None,
    )


def _search_clause(metric_filter: str) -> str:
    # Metric filters are "trace.tag.`k` = "v"" / "trace.metadata.`k` = "v""; search_traces
    # spells them "tag.`k` = 'v'" / "metadata.`k` = 'v'".
    clause = metric_filter.removeprefix("trace.")
    if clause.startswith("status"):
        clause = "trace." + clause
    return clause.replace('"', "'")


def tag_filter(key: str, value: str) -> str:
    """A metric filter on a trace tag."""
    return f'trace.tag.`{key}` = "{escape_double(value)}"'


def model_filter(model_id: str) -> str:
    """A metric filter selecting traces linked to one LoggedModel."""
    return f'trace.metadata.`mlflow.modelId` = "{escape_double(model_id)}"'


def recent_tag_values(
    experiment_ids: Sequence[str],
    key: str,
    start: datetime,
    end: datetime,
    *,
    sample: int = 1000,
    settings: Settings | None = None,
) -> list[str]:
    """Distinct values of a trace tag among the traces of a window (no spans read).

    On a SQLite store every trace of the window counts (one SQL statement); elsewhere the store
    cannot group by tags, so the newest ``sample`` traces are read and rare values may be missed.
    """
    if not experiment_ids:
        return []
    with translate_errors("trace search"):
        return internal.trace_tag_values(mlflow_client(settings), list(experiment_ids), key, start_ms=_ms(start),
                                         end_ms=_ms(end), sample=sample)
