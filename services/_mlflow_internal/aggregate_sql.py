"""The grouped aggregate in two portable SQL statements over MLflow's tables (SQLite, PostgreSQL)."""

from __future__ import annotations

from typing import Any

from services._mlflow_internal.aggregate_rows import (
    _ERROR_STATUS,
    PERCENTILES,
    AggregateRow,
    ModelRow,
    sorted_aggregates,
)
from services._mlflow_internal.trace_links import (
    MODEL_ID_KEY,
    SOURCE_RUN_KEY,
    _label_map,
    _labels_of,
    _link_condition,
)

# SQLite reads pages through a syscall each unless they are memory-mapped; mapping the file
# makes the aggregate's scans about 40% cheaper (measured on the 100k-trace bench store).
_SQLITE_MMAP_BYTES = 1 << 31



def _percentiles(values: Any) -> list[float]:
    import numpy as np

    return [float(v) for v in np.percentile(values, PERCENTILES)]  # linear, as query_trace_metrics


def _durations(text: str | None) -> Any:
    import numpy as np

    return np.array(text.split(","), dtype=np.float64) if text else np.empty(0)



def _aggregate_sql(store, experiment_ids, start_ms, end_ms, interval, group_links, tag_pairs, status,
                   with_models, links, *, evaluation_rows=False):
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import (
        SqlSpan,
        SqlTraceInfo,
        SqlTraceMetadata,
        SqlTraceTag,
    )

    ti, tags, spans = SqlTraceInfo.__table__, SqlTraceTag.__table__, SqlSpan.__table__
    metadata = SqlTraceMetadata.__table__
    step = interval * 1000

    with store.ManagedSessionMaker() as session:  # the store's own experiment scoping (workspaces)
        ids = [int(i) for i in store._filter_experiment_ids(session, [int(i) for i in experiment_ids])]
    conditions = [ti.c.experiment_id.in_(ids), ti.c.timestamp_ms >= start_ms, ti.c.timestamp_ms < end_ms]
    for key, value in tag_pairs:
        if key == "mlflow.traceName":  # MLflow keeps this tag in a trace_info column
            conditions.append(ti.c.trace_name == value)
            continue
        conditions.append(sa.exists().where(tags.c.request_id == ti.c.request_id, tags.c.key == key,
                                            tags.c.value == value))
    filter_md = metadata.alias("filter_md")
    filter_tags = tags.alias("filter_tag")
    conditions += [_link_condition(ti, filter_tags, filter_md, link) for link in links]
    if not evaluation_rows and any(link.model_ids for link in [*links, *group_links.values()]):
        # Traffic linked by model id is live traffic: evaluation rows of the same LoggedModel
        # (``mlflow.genai.evaluate(model_id=...)`` links them too) carry their run and are left out.
        source_run = metadata.alias("source_run")
        conditions.append(~sa.exists().where(source_run.c.request_id == ti.c.request_id,
                                             source_run.c.key == SOURCE_RUN_KEY))
    if status:
        conditions.append(ti.c.status == status)

    grouped = bool(group_links)
    by_model, by_tag, tag_key = _label_map(group_links) if grouped else ({}, {}, None)
    # The group keys: the trace's model id (outer join on trace_request_metadata) and, for traces
    # written with the app's older tags, that tag's value (outer join on trace_tags).
    md = metadata.alias("group_md")
    group_tags = tags.alias("group_tag")
    joined = ti
    keys, in_groups = [], []
    if by_model:
        joined = joined.join(md, sa.and_(md.c.request_id == ti.c.request_id, md.c.key == MODEL_ID_KEY), isouter=True)
        keys.append(md.c.value.label("model_id"))
        in_groups.append(md.c.value.in_(list(by_model)))
    if tag_key:
        joined = joined.join(group_tags, sa.and_(group_tags.c.request_id == ti.c.request_id,
                                                 group_tags.c.key == tag_key), isouter=True)
        keys.append(group_tags.c.value.label("tag_value"))
        in_groups.append(group_tags.c.value.in_(list(by_tag)))
    by_keys = [k.element for k in keys]
    # Integer division (both dialects): a numeric floor() made PostgreSQL sort on numerics.
    bucket = ((ti.c.timestamp_ms // step) * step).label("bucket")

    # 1. Per group key and bucket: counts and sums grouped in the database, plus the durations as
    # one comma-joined string, from which numpy takes the percentiles (SQLite has no percentile
    # aggregate; MLflow registers a Python one, many times slower). One pass over the traces.
    buckets = (
        sa.select(
            *keys, bucket,
            sa.func.count().label("requests"),
            sa.func.sum(sa.case((ti.c.status == _ERROR_STATUS, 1), else_=0)).label("errors"),
            sa.func.sum(ti.c.input_tokens).label("input_tokens"),
            sa.func.sum(ti.c.output_tokens).label("output_tokens"),
            sa.func.sum(ti.c.cache_read_input_tokens).label("cached"),
            sa.func.count(ti.c.input_tokens).label("with_tokens"),
            sa.func.sum(ti.c.total_cost).label("cost"),
            sa.func.aggregate_strings(sa.cast(ti.c.execution_time_ms, sa.String), ",").label("durations"),
        )
        .select_from(joined).where(*conditions, *([sa.or_(*in_groups)] if in_groups else []))
        .group_by(*by_keys, bucket.element)
    )
    # 2. LLM calls and recorded cost per model: per group key, and over every matching trace.
    with_spans = spans.join(joined, spans.c.trace_id == ti.c.request_id)
    models = (
        sa.select(*keys, spans.c.model_name, sa.func.count().label("calls"),
                  sa.func.sum(spans.c.total_cost).label("cost"))
        .select_from(with_spans).where(*conditions, spans.c.model_name.isnot(None))
        .group_by(*by_keys, spans.c.model_name)
    )

    def run(statement):
        with store.engine.connect() as connection:
            if store.engine.dialect.name == "sqlite":
                connection.exec_driver_sql(f"PRAGMA mmap_size = {_SQLITE_MMAP_BYTES}")
            return connection.execute(statement).all()

    # Two pooled connections at once: SQLite works without the GIL, so two cores share the load.
    statements = (buckets, models) if with_models else (buckets,)
    with ThreadPoolExecutor(max_workers=len(statements)) as pool:
        bucket_rows, *more = (f.result() for f in [pool.submit(run, q) for q in statements])
    model_rows = more[0] if more else []

    def labels(row) -> list[str | None]:
        if not grouped:
            return [None]
        return _labels_of(getattr(row, "model_id", None), getattr(row, "tag_value", None), by_model, by_tag)

    # Rows of several keys with one label (a version's model id and its legacy tag, or one model
    # id under two aliases) are merged: sums add up, durations are pooled before the percentiles.
    cells: dict[tuple[str | None, int], list] = {}
    for row in bucket_rows:
        for group in labels(row):
            c = cells.setdefault((group, int(row.bucket)), [0, 0, 0, 0, 0, 0, 0.0, []])
            for i, value in enumerate((row.requests, row.errors, row.input_tokens, row.output_tokens, row.cached,
                                       row.with_tokens)):
                c[i] += int(value or 0)
            c[6] += float(row.cost or 0.0)
            c[7].append(_durations(row.durations))
    none = [None] * len(PERCENTILES)
    rows, by_group_durations = [], {}
    for (group, bucket_ms), c in cells.items():
        values = np.concatenate(c[7]) if c[7] else np.empty(0)
        by_group_durations.setdefault(group, []).append(values)
        rows.append(AggregateRow(
            group, bucket_ms, c[0], c[1], *(_percentiles(values) if len(values) else none),
            c[2], c[3], c[4], c[5], c[6],
        ))
    whole = {g: np.concatenate(parts) for g, parts in by_group_durations.items()}

    per_group: dict[tuple[str, str], tuple[int, float]] = {}
    overall: dict[str, tuple[int, float]] = {}
    for row in model_rows:
        calls, cost = int(row.calls), float(row.cost or 0.0)
        if grouped:
            for group in labels(row):
                total = per_group.get((group, row.model_name), (0, 0.0))
                per_group[(group, row.model_name)] = (total[0] + calls, total[1] + cost)
        total = overall.get(row.model_name, (0, 0.0))
        overall[row.model_name] = (total[0] + calls, total[1] + cost)
    model_list = [ModelRow(g, m, calls, cost) for (g, m), (calls, cost) in per_group.items()]
    model_list.extend(ModelRow(None, model, calls, cost) for model, (calls, cost) in overall.items())
    return sorted_aggregates(rows, model_list, "sql", len(statements),
                             window_percentiles=lambda g: _percentiles(whole[g]) if len(whole[g]) else none)

