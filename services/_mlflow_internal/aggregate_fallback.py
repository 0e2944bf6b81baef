"""The grouped aggregate through the public ``query_trace_metrics``: one call per group and metric."""

from __future__ import annotations

from typing import Any, Sequence

from services._mlflow_internal.aggregate_rows import (
    _ERROR_STATUS,
    PERCENTILES,
    AggregateRow,
    ModelRow,
    _window_rows,
    sorted_aggregates,
)
from services._mlflow_internal.trace_links import MODEL_ID_KEY, TraceLink
from services._mlflow_internal.trace_metrics import MetricPoint, query_trace_metrics
from services.filter_strings import escape_double

# --- fallback: one query_trace_metrics call per group and metric -------------------------------


def _metric_model(model_id: str) -> str:
    return f'trace.metadata.`{MODEL_ID_KEY}` = "{escape_double(model_id)}"'


def _metric_tag(key: str, value: str) -> str:
    return f'trace.tag.`{key}` = "{escape_double(value)}"'


def _fallback_units(base: list[str], group_links: dict[str, TraceLink], links: Sequence[TraceLink]
                    ) -> dict[str | None, list[list[str]]]:
    """Per label, AND-only filter lists whose traces are disjoint (one per linked model id).

    ``query_trace_metrics`` filters are AND-only, so a link is its model ids where it has any (each
    trace has one model id, so nothing counts twice) and its tag otherwise: traces linked only by
    the app's older tags are found here only when no model id is known for them.
    """
    allowed: set[str] | None = None
    base = list(base)
    for link in links:
        if link.model_ids:
            allowed = set(link.model_ids) if allowed is None else allowed & set(link.model_ids)
        elif link.tags:
            base.append(_metric_tag(*link.tags[0]))

    def parts(link: TraceLink | None) -> list[list[str]]:
        if link is not None and link.model_ids:
            ids = [m for m in link.model_ids if allowed is None or m in allowed]
            return [base + [_metric_model(m)] for m in ids]
        extra = [_metric_tag(*link.tags[0])] if link is not None and link.tags else []
        if allowed is None:
            return [base + extra]
        return [base + extra + [_metric_model(m)] for m in sorted(allowed)]

    if group_links:
        return {label: parts(link) for label, link in group_links.items()}
    return {None: parts(None)}


def _aggregate_metrics_api(client, experiment_ids, start_ms, end_ms, interval, group_links, tag_pairs, status,
                           with_models, links):
    from concurrent.futures import ThreadPoolExecutor

    base = [_metric_tag(k, v) for k, v in tag_pairs]
    if status:
        base.append(f'trace.status = "{escape_double(status)}"')
    # query_trace_metrics' window end is inclusive; ours is exclusive.
    window = {"start_time_ms": start_ms, "end_time_ms": end_ms - 1}
    units_by_label = _fallback_units(base, group_links, links)
    grouped = bool(group_links)
    overall_query = grouped and not any(link.model_ids for link in links)

    def count(filters: list[str]) -> int:
        points = query_trace_metrics(client, experiment_ids, "trace_count", ["COUNT"], filters=filters, **window)
        return int(points[0].values.get("COUNT", 0)) if points else 0

    # A label spanning many model ids (an agent's hundreds of versions): count first, then read
    # the full figures only of the models that had traffic in the window.
    many = [(label, i) for label, units in units_by_label.items() if len(units) > 1 for i in range(len(units))]
    if many:
        with ThreadPoolExecutor(max_workers=4) as pool:
            counts = dict(zip(many, pool.map(lambda key: count(units_by_label[key[0]][key[1]]), many)))
        units_by_label = {
            label: [u for i, u in enumerate(units) if len(units) == 1 or counts[(label, i)]]
            for label, units in units_by_label.items()
        }
    per_unit: dict[tuple, list[str]] = {
        (label, i): filters for label, units in units_by_label.items() for i, filters in enumerate(units)
    }
    aggregates = _aggregate_units(client, experiment_ids, window, interval, per_unit, base if overall_query else None,
                                  with_models)
    rows_by_label: dict[str | None, list[AggregateRow]] = {}
    totals_by_label: dict[str | None, list[AggregateRow]] = {}
    models_by_label: dict[str | None, dict[str, list]] = {}
    for (label, _), (rows, models) in aggregates["units"].items():
        rows_by_label.setdefault(label, []).extend(r for r in rows if r.bucket_ms is not None)
        totals_by_label.setdefault(label, []).extend(r for r in rows if r.bucket_ms is None)
        for m in models:
            entry = models_by_label.setdefault(label, {}).setdefault(m.model, [0, 0.0])
            entry[0] += m.llm_calls
            entry[1] += m.recorded_cost
    out_rows: list[AggregateRow] = []
    for label in units_by_label:
        merged: dict[int | None, list[AggregateRow]] = {}
        for r in rows_by_label.get(label, []) + totals_by_label.get(label, []):
            merged.setdefault(r.bucket_ms, []).append(r)
        out_rows.extend(_merge_rows(label if grouped else None, ms, parts) for ms, parts in merged.items())
    models: list[ModelRow] = []
    if with_models:
        overall: dict[str, list] = {}
        for label, by_model in models_by_label.items():
            for model, (calls, cost) in by_model.items():
                if grouped:
                    models.append(ModelRow(label, model, calls, cost))
                entry = overall.setdefault(model, [0, 0.0])
                entry[0] += calls
                entry[1] += cost
        if aggregates["overall"] is not None:
            overall = {m.model: [m.llm_calls, m.recorded_cost] for m in aggregates["overall"]}
        models.extend(ModelRow(None, model, calls, cost) for model, (calls, cost) in overall.items())
    return sorted_aggregates(out_rows, models, "query_trace_metrics", aggregates["queries"] + len(many))


def _merge_rows(group: str | None, bucket_ms: int | None, parts: list[AggregateRow]) -> AggregateRow:
    """One label's row from the rows of its model ids: sums add up; percentiles are the
    request-weighted mean of the parts' (exact for one part, an approximation for several)."""
    if len(parts) == 1:
        p = parts[0]
        return AggregateRow(group, bucket_ms, p.requests, p.errors, p.p50_ms, p.p95_ms, p.p99_ms, p.input_tokens,
                            p.output_tokens, p.cached_input_tokens, p.traces_with_tokens, p.recorded_cost)

    def weighted(attr: str) -> float | None:
        pairs = [(getattr(p, attr), p.requests) for p in parts if getattr(p, attr) is not None and p.requests]
        weight = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / weight if weight else None

    return AggregateRow(
        group, bucket_ms, sum(p.requests for p in parts), sum(p.errors for p in parts),
        weighted("p50_ms"), weighted("p95_ms"), weighted("p99_ms"),
        sum(p.input_tokens for p in parts), sum(p.output_tokens for p in parts),
        sum(p.cached_input_tokens for p in parts), sum(p.traces_with_tokens for p in parts),
        float(sum(p.recorded_cost for p in parts)),
    )


def _aggregate_units(client, experiment_ids, window, interval, per_group, overall_filters, with_models):
    """Rows and model rows of each unit (one AND-only filter list), in ``query_trace_metrics`` calls."""
    from concurrent.futures import ThreadPoolExecutor

    pct = [("PERCENTILE", p) for p in PERCENTILES]
    timed = {"time_interval_seconds": interval}
    jobs: dict[tuple, dict[str, Any]] = {}
    for group, filters in per_group.items():
        jobs.update({
            (group, "status"): dict(metric="trace_count", aggs=["COUNT"], dimensions=["trace_status"], **timed),
            (group, "latency"): dict(metric="latency", aggs=pct, **timed),
            (group, "latency_total"): dict(metric="latency", aggs=pct),
            (group, "input_tokens"): dict(metric="input_tokens", aggs=["SUM", "AVG"], **timed),
            (group, "output_tokens"): dict(metric="output_tokens", aggs=["SUM"], **timed),
            (group, "cached"): dict(metric="cache_read_input_tokens", aggs=["SUM"], **timed),
            (group, "cost"): dict(metric="total_cost", aggs=["SUM"], view_type="SPANS", **timed),
            (group, "model_calls"): dict(metric="span_count", aggs=["COUNT"], view_type="SPANS",
                                         dimensions=["span_model_name"]),
            (group, "model_cost"): dict(metric="total_cost", aggs=["SUM"], view_type="SPANS",
                                        dimensions=["span_model_name"]),
        })
        for key in [k for k in jobs if k[0] == group]:
            jobs[key]["filters"] = filters
        if not with_models:
            del jobs[(group, "model_calls")], jobs[(group, "model_cost")]
    if overall_filters is not None and with_models:
        jobs[("__all__", "model_calls")] = dict(metric="span_count", aggs=["COUNT"], view_type="SPANS",
                                                dimensions=["span_model_name"], filters=overall_filters)
        jobs[("__all__", "model_cost")] = dict(metric="total_cost", aggs=["SUM"], view_type="SPANS",
                                               dimensions=["span_model_name"], filters=overall_filters)

    def one(spec: dict[str, Any]) -> list[MetricPoint]:
        spec = dict(spec)
        metric, aggs = spec.pop("metric"), spec.pop("aggs")
        return query_trace_metrics(client, experiment_ids, metric, aggs, **window, **spec)

    # A few at a time: SQLite releases the GIL while it works.
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {key: pool.submit(one, spec) for key, spec in jobs.items()}
        results = {key: future.result() for key, future in futures.items()}

    def bucket_of(point: MetricPoint) -> int:
        from datetime import datetime

        return int(round(datetime.fromisoformat(point.dimensions["time_bucket"]).timestamp() * 1000))

    def pcts(values: dict[str, float]) -> list[float | None]:
        found = [values.get(f"P{float(p)}", values.get(f"P{p}")) for p in PERCENTILES]
        return [float(v) if v is not None else None for v in found]

    units: dict[tuple, tuple[list[AggregateRow], list[ModelRow]]] = {}
    for group in per_group:
        cells: dict[int, dict[str, Any]] = {}

        def cell(point: MetricPoint) -> dict[str, Any]:
            return cells.setdefault(bucket_of(point), {"requests": 0, "errors": 0, "input": 0, "output": 0,
                                                       "cached": 0, "with": 0, "cost": 0.0, "pct": [None] * 3})

        for p in results[(group, "status")]:
            c, count = cell(p), int(p.values.get("COUNT", 0))
            c["requests"] += count
            c["errors"] += count if p.dimensions.get("trace_status") == _ERROR_STATUS else 0
        for p in results[(group, "latency")]:
            cell(p)["pct"] = pcts(p.values)
        for p in results[(group, "input_tokens")]:
            total, mean = float(p.values.get("SUM", 0) or 0), float(p.values.get("AVG", 0) or 0)
            # The store skips traces without usage, so SUM / AVG counts the traces that have it.
            cell(p).update({"input": int(total), "with": int(round(total / mean)) if mean else 0})
        for kind, name in (("output_tokens", "output"), ("cached", "cached")):
            for p in results[(group, kind)]:
                cell(p)[name] = int(p.values.get("SUM", 0) or 0)
        for p in results[(group, "cost")]:
            cell(p)["cost"] = float(p.values.get("SUM", 0.0) or 0.0)
        rows = [
            AggregateRow(group, ms, c["requests"], c["errors"], *c["pct"], c["input"], c["output"], c["cached"],
                         c["with"], c["cost"])
            for ms, c in cells.items() if c["requests"]
        ]
        total_pct = pcts(results[(group, "latency_total")][0].values) if results[(group, "latency_total")] else [None] * 3
        rows.extend(_window_rows(rows, lambda _: total_pct))
        models: list[ModelRow] = []
        if with_models:
            calls = {p.dimensions["span_model_name"]: int(p.values.get("COUNT", 0)) for p in results[(group, "model_calls")]}
            costs = {p.dimensions["span_model_name"]: float(p.values.get("SUM", 0.0)) for p in results[(group, "model_cost")]}
            models = [ModelRow(group, m, calls.get(m, 0), costs.get(m, 0.0)) for m in sorted(set(calls) | set(costs))]
        units[group] = (rows, models)
    overall = None
    if ("__all__", "model_calls") in results:
        calls = {p.dimensions["span_model_name"]: int(p.values.get("COUNT", 0)) for p in results[("__all__", "model_calls")]}
        costs = {p.dimensions["span_model_name"]: float(p.values.get("SUM", 0.0)) for p in results[("__all__", "model_cost")]}
        overall = [ModelRow(None, m, calls.get(m, 0), costs.get(m, 0.0)) for m in sorted(set(calls) | set(costs))]
    return {"units": units, "overall": overall, "queries": len(jobs)}
