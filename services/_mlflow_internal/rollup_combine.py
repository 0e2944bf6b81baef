"""Turning roll-up rows into the Monitoring aggregate, with the links evaluated as ``aggregate_sql`` does in SQL."""

from __future__ import annotations

from typing import Any, Sequence

from services._mlflow_internal.aggregate_rows import AggregateRow, ModelRow, TraceAggregates, sorted_aggregates
from services._mlflow_internal.rollup_sketch import decode_sketch_into, sketch_percentiles
from services._mlflow_internal.rollup_tables import ROLLUP_TAG_KEYS, TAG_COLUMNS
from services._mlflow_internal.trace_links import TraceLink, _label_map, _labels_of


def combine(trace_rows: Sequence[Any], model_rows: Sequence[Any], interval: int, group_links: dict[str, TraceLink],
            tag_pairs: Sequence[tuple[str, str]], status: str | None, with_models: bool, links: Sequence[TraceLink],
            evaluation_rows: bool, queries: int) -> TraceAggregates:
    """The aggregate of roll-up rows (and rows scanned live) in buckets of ``interval`` seconds."""
    step = interval * 1000
    tag_of = dict(zip(ROLLUP_TAG_KEYS, TAG_COLUMNS))
    pairs = [(tag_of[k], v) for k, v in tag_pairs]
    link_tests = [(set(link.model_ids), [(tag_of[k], v) for k, v in link.tags]) for link in links]
    live_only = not evaluation_rows and any(link.model_ids for link in [*links, *group_links.values()])
    grouped = bool(group_links)
    by_model, by_tag, tag_key = _label_map(group_links) if grouped else ({}, {}, None)
    group_column = tag_of.get(tag_key) if tag_key else None

    def passes(row) -> bool:
        if (status and row["status"] != status) or (live_only and not row["live"]):
            return False
        if any(row[c] != v for c, v in pairs):
            return False
        return all(row["model_id"] in model_ids or any(row[c] == v for c, v in tags) for model_ids, tags in link_tests)

    def labels(row) -> list[str | None]:
        if not passes(row):
            return []
        if not grouped:
            return [None]
        model_id = row["model_id"] or None
        tag_value = (row[group_column] or None) if group_column else None
        return _labels_of(model_id if by_model else None, tag_value, by_model, by_tag)

    cells: dict[tuple[str | None, int], list] = {}
    sketches: dict[tuple[str | None, int], dict[int, int]] = {}
    whole: dict[str | None, dict[int, int]] = {}
    for row in trace_rows:
        for group in labels(row):
            key = (group, (int(row["bucket_ms"]) // step) * step)
            c = cells.setdefault(key, [0] * 6 + [0.0])
            for i, name in enumerate(("requests", "errors", "input_tokens", "output_tokens", "cached_input_tokens",
                                      "traces_with_tokens")):
                c[i] += int(row[name])
            c[6] += float(row["recorded_cost"])
            decode_sketch_into(row["latency_sketch"], sketches.setdefault(key, {}))
            decode_sketch_into(row["latency_sketch"], whole.setdefault(group, {}))
    rows = [AggregateRow(g, ms, c[0], c[1], *sketch_percentiles(sketches[(g, ms)]), c[2], c[3], c[4], c[5], c[6])
            for (g, ms), c in cells.items() if c[0]]
    models: list[ModelRow] = []
    if with_models:
        per_group: dict[tuple[str | None, str], list] = {}
        for row in model_rows:
            if not passes(row):  # as aggregate_sql: the overall mix counts matching traces outside the groups
                continue
            matched = labels(row)
            targets = ([(g, row["model_name"]) for g in matched] if grouped else []) + [(None, row["model_name"])]
            for target in targets:
                entry = per_group.setdefault(target, [0, 0.0])
                entry[0] += int(row["llm_calls"])
                entry[1] += float(row["recorded_cost"])
        models = [ModelRow(g, m, calls, cost) for (g, m), (calls, cost) in per_group.items()]
    return sorted_aggregates(rows, models, "rollup", queries,
                             window_percentiles=lambda g: sketch_percentiles(whole.get(g, {})))
