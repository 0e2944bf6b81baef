"""What the grouped aggregates return: rows per group and bucket, model rows, and their order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

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


def sorted_aggregates(rows: Iterable[AggregateRow], models: Iterable[ModelRow], path: str, store_queries: int,
                      *, window_percentiles=None) -> TraceAggregates:
    """The result of one aggregate, its rows and models in reading order (``sort_rows``, ``sort_models``).

    With ``window_percentiles`` (group -> percentiles), ``rows`` are bucket rows and the whole-window
    rows are added (``_window_rows``).
    """
    rows = list(rows)
    if window_percentiles is not None:
        rows.extend(_window_rows(rows, window_percentiles))
    return TraceAggregates(tuple(sort_rows(rows)), tuple(sort_models(models)), path, store_queries)
