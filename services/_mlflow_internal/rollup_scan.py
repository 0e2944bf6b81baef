"""Reading the tracking store's tables into roll-up rows and bucket fingerprints.

A bucket's fingerprint is the count, errors, summed durations and summed ``db_payload_generation``
(which ``log_spans`` bumps on every write) of its ``trace_info`` rows: when it changes, a trace
arrived late, finished late or was deleted, and the bucket is recomputed.
"""

from __future__ import annotations

from typing import Any, Sequence

from services._mlflow_internal.aggregate_rows import _ERROR_STATUS
from services._mlflow_internal.rollup_sketch import encode_sketch, sketch_of
from services._mlflow_internal.rollup_tables import BASE_MS, ROLLUP_TAG_KEYS, TAG_COLUMNS
from services._mlflow_internal.trace_links import MODEL_ID_KEY, SOURCE_RUN_KEY


def _key_columns(ti):
    """Correlated look-ups of each trace's key (index probes per trace; only the scanned range)."""
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlTraceMetadata, SqlTraceTag

    md, tags = SqlTraceMetadata.__table__, SqlTraceTag.__table__

    def meta(key, alias):
        m = md.alias(alias)
        return sa.select(m.c.value).where(m.c.request_id == ti.c.request_id, m.c.key == key).limit(1).scalar_subquery()

    def tag(key, alias):
        t = tags.alias(alias)
        return sa.select(t.c.value).where(t.c.request_id == ti.c.request_id, t.c.key == key).limit(1).scalar_subquery()

    run = md.alias("k_run")
    live = sa.case((sa.exists().where(run.c.request_id == ti.c.request_id, run.c.key == SOURCE_RUN_KEY), 0), else_=1)
    return [
        sa.func.coalesce(meta(MODEL_ID_KEY, "k_model"), "").label("model_id"),
        live.label("live"),
        sa.func.coalesce(ti.c.status, "").label("status"),
        *[sa.func.coalesce(tag(k, f"k_{c}"), "").label(c) for k, c in zip(ROLLUP_TAG_KEYS, TAG_COLUMNS)],
    ]


KEY_NAMES = ("model_id", "live", "status", *TAG_COLUMNS)


def scan(engine: Any, experiment_ids: Sequence[int], start_ms: int, end_ms: int, *, with_models: bool = True
         ) -> tuple[list[dict], list[dict], dict[tuple[int, int], tuple]]:
    """Roll-up rows of the traces started in ``[start_ms, end_ms)``, and each bucket's fingerprint.

    Both statements run in one repeatable-read transaction, so rows and fingerprints agree.
    """
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlSpan, SqlTraceInfo

    ti, spans = SqlTraceInfo.__table__, SqlSpan.__table__
    inner_cols = [ti.c.request_id, ti.c.experiment_id,
                  ((ti.c.timestamp_ms // BASE_MS) * BASE_MS).label("bucket_ms"),
                  ti.c.execution_time_ms, ti.c.db_payload_generation, ti.c.input_tokens, ti.c.output_tokens,
                  ti.c.cache_read_input_tokens, ti.c.total_cost, *_key_columns(ti)]
    keyed = (sa.select(*inner_cols)
             .where(ti.c.experiment_id.in_(list(experiment_ids)), ti.c.timestamp_ms >= start_ms,
                    ti.c.timestamp_ms < end_ms)
             .subquery("keyed"))
    k = keyed.c
    group = [k.experiment_id, k.bucket_ms, *[k[n] for n in KEY_NAMES]]
    traces_q = sa.select(
        *group, sa.func.count().label("requests"),
        sa.func.sum(sa.case((k.status == _ERROR_STATUS, 1), else_=0)).label("errors"),
        sa.func.coalesce(sa.func.sum(k.input_tokens), 0).label("input_tokens"),
        sa.func.coalesce(sa.func.sum(k.output_tokens), 0).label("output_tokens"),
        sa.func.coalesce(sa.func.sum(k.cache_read_input_tokens), 0).label("cached_input_tokens"),
        sa.func.count(k.input_tokens).label("traces_with_tokens"),
        sa.func.coalesce(sa.func.sum(k.total_cost), 0.0).label("recorded_cost"),
        sa.func.coalesce(sa.func.sum(k.execution_time_ms), 0).label("duration_sum"),
        sa.func.coalesce(sa.func.sum(k.db_payload_generation), 0).label("generation_sum"),
        sa.func.aggregate_strings(sa.cast(k.execution_time_ms, sa.String), ",").label("durations"),
    ).group_by(*group)
    models_q = (
        sa.select(*group, spans.c.model_name, sa.func.count().label("llm_calls"),
                  sa.func.coalesce(sa.func.sum(spans.c.total_cost), 0.0).label("recorded_cost"))
        .select_from(spans.join(keyed, spans.c.trace_id == k.request_id))
        .where(spans.c.model_name.isnot(None))
        .group_by(*group, spans.c.model_name)
    )
    options = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name == "postgresql" else {}
    with engine.connect().execution_options(**options) as connection, connection.begin():
        trace_rows = connection.execute(traces_q).mappings().all()
        model_rows = connection.execute(models_q).mappings().all() if with_models else []
    out_traces, fingerprints = [], {}
    for r in trace_rows:
        row = {n: r[n] for n in ("experiment_id", "bucket_ms", *KEY_NAMES)}
        row.update(experiment_id=int(row["experiment_id"]), bucket_ms=int(row["bucket_ms"]), live=int(row["live"]),
                   requests=int(r["requests"]), errors=int(r["errors"] or 0), input_tokens=int(r["input_tokens"]),
                   output_tokens=int(r["output_tokens"]), cached_input_tokens=int(r["cached_input_tokens"]),
                   traces_with_tokens=int(r["traces_with_tokens"]), recorded_cost=float(r["recorded_cost"]),
                   latency_sketch=encode_sketch(sketch_of(float(d) for d in (r["durations"] or "").split(",") if d)))
        out_traces.append(row)
        key = (row["experiment_id"], row["bucket_ms"])
        f = fingerprints.get(key, (0, 0, 0, 0))
        fingerprints[key] = (f[0] + row["requests"], f[1] + row["errors"], f[2] + int(r["duration_sum"]),
                             f[3] + int(r["generation_sum"]))
    out_models = []
    for r in model_rows:
        row = {n: r[n] for n in ("experiment_id", "bucket_ms", *KEY_NAMES)}
        row.update(experiment_id=int(row["experiment_id"]), bucket_ms=int(row["bucket_ms"]), live=int(row["live"]),
                   model_name=r["model_name"], llm_calls=int(r["llm_calls"]), recorded_cost=float(r["recorded_cost"]))
        out_models.append(row)
    return out_traces, out_models, fingerprints


def bucket_fingerprints(engine: Any, experiment_id: int, end_ms: int) -> dict[int, tuple]:
    """Each bucket's fingerprint before ``end_ms``, from ``trace_info`` alone."""
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlTraceInfo

    ti = SqlTraceInfo.__table__
    bucket = (ti.c.timestamp_ms // BASE_MS) * BASE_MS
    statement = (
        sa.select(bucket.label("b"), sa.func.count(), sa.func.sum(sa.case((ti.c.status == _ERROR_STATUS, 1), else_=0)),
                  sa.func.coalesce(sa.func.sum(ti.c.execution_time_ms), 0),
                  sa.func.coalesce(sa.func.sum(ti.c.db_payload_generation), 0))
        .where(ti.c.experiment_id == experiment_id, ti.c.timestamp_ms < end_ms)
        .group_by(bucket)
    )
    with engine.connect() as connection:
        return {int(b): (int(n), int(e or 0), int(d), int(g)) for b, n, e, d, g in connection.execute(statement)}
