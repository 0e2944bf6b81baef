"""The store's ``query_trace_metrics`` (not in MLflow's top-level API), paged, with typed points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mlflow import MlflowClient
from mlflow.entities.trace_metrics import (
    AggregationType,
    MetricAggregation,
    MetricViewType,
)

from services._mlflow_internal.trace_write import tracking_store

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

