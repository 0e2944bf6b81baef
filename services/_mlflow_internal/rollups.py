"""Incremental roll-ups of the Monitoring aggregate, keyed by model id and 15-minute bucket.

Why: at 1,000,000 traces on PostgreSQL the two statements of ``aggregate_sql`` scan ``trace_info``
joined to ``trace_request_metadata`` and ``spans`` (~30 s on 2 cores). MLflow's own daily roll-ups
(``MLFLOW_SQL_TRACE_ROLLUPS_ENABLED``) are keyed by UTC day and span model and keep p50/p90/p99:
they cannot give 3-hour buckets, p95 or a split by model id. These roll-ups can.

What a roll-up row holds, per experiment, 15-minute bucket (``BASE_SECONDS``) and trace key (the
trace's ``mlflow.modelId``, whether it is live traffic or an evaluation row (``mlflow.sourceRun``),
its status and the app's tags in ``ROLLUP_TAG_KEYS``): requests, errors, token sums, traces with
token usage, recorded cost, and a latency sketch; a second table holds LLM calls and recorded cost
per model under the same key. Any query whose filters and split use only those dimensions, with a
bucket that is a multiple of 15 minutes, is answered from them: links are evaluated on the keys in
Python exactly as ``aggregate_sql`` evaluates them in SQL.

Latency sketch (DDSketch's log buckets, ``ALPHA`` = 1%): a duration d >= 1 ms falls in bucket
``ceil(log(d) / log(gamma))`` with ``gamma = (1 + ALPHA) / (1 - ALPHA)``; a bucket's representative
value is within ``ALPHA`` (relative) of every duration in it. A percentile takes the two ranks that
numpy's linear interpolation uses and interpolates between their representatives with numpy's
weight, so **each p50/p95/p99 is within 1% (relative) of the exact figure** of ``aggregate_sql``.
Counts, tokens and cost are exact.

Maintenance (``refresh``), incremental:

* A per-experiment watermark: buckets that ended more than ``GRACE_SECONDS`` ago are closed. Each
  refresh scans only the traces between the old watermark and the new one and stores their rows;
  the query reads closed buckets from the roll-ups and scans only the open tail (since the
  watermark) and the window's partial edge buckets live.
* Late or changed traces: every closed bucket stores a fingerprint of its ``trace_info`` rows
  (count, errors, summed durations and ``db_payload_generation``, which ``log_spans`` bumps on
  every write). At most every ``verify_seconds`` one statement over ``trace_info`` alone compares
  them and recomputes the buckets that differ (traces arriving late, finishing late, deleted).
  Between two verifications a late trace may be missing from a closed bucket; a tag set on an old
  trace afterwards is seen only when its bucket is recomputed for another reason (``rebuild``).
* Concurrent app processes: the watermark and the verification time advance with a compare-and-set
  in the same transaction as the rows, so two refreshers never store a bucket twice.

Where they live: a schema ``agentops`` in the server's PostgreSQL database, written through a
connection on the same URL as ``AGENTOPS_STORE_DB_URL`` without the read-only default (the reading
engine stays read-only). A team shares them with the store they summarize, and MLflow's own schema
(migrated by MLflow's alembic) stays untouched; a role that may not create that schema simply
keeps the direct statements (logged once). Tests and the bench may pass any writable engine.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Sequence

from services._mlflow_internal.aggregate_rows import (
    _ERROR_STATUS,
    PERCENTILES,
    AggregateRow,
    ModelRow,
    TraceAggregates,
    _window_rows,
    sort_models,
    sort_rows,
)
from services._mlflow_internal.trace_links import MODEL_ID_KEY, SOURCE_RUN_KEY, TraceLink, _label_map, _labels_of

_logger = logging.getLogger(__name__)

BASE_SECONDS = 900
BASE_MS = BASE_SECONDS * 1000
GRACE_SECONDS = 900  # traces usually land within this of their start; later ones wait for a verification
VERIFY_SECONDS = 300
ALPHA = 0.01
_GAMMA = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA = math.log(_GAMMA)
ROLLUP_TAG_KEYS = ("agentops.agent", "agentops.version", "agentops.alias", "agentops.endpoint", "agentops.arm")
_TAG_COLUMNS = ("tag_agent", "tag_version", "tag_alias", "tag_endpoint", "tag_arm")
SCHEMA = "agentops"


# --- the latency sketch -----------------------------------------------------------------------


def sketch_index(duration_ms: float) -> int:
    """The sketch bucket of a duration (0 for durations under 1 ms)."""
    return 0 if duration_ms < 1 else max(1, math.ceil(math.log(duration_ms) / _LOG_GAMMA))


def _value(index: int) -> float:
    return 0.0 if index <= 0 else 2 * _GAMMA ** index / (_GAMMA + 1)


def sketch_of(durations: Iterable[float]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for d in durations:
        i = sketch_index(d)
        counts[i] = counts.get(i, 0) + 1
    return counts


def _encode(counts: dict[int, int]) -> str:
    return ",".join(f"{i}:{n}" for i, n in sorted(counts.items()))


def _decode_into(text: str | None, into: dict[int, int]) -> None:
    if text:
        for part in text.split(","):
            i, n = part.split(":")
            into[int(i)] = into.get(int(i), 0) + int(n)


def sketch_percentiles(counts: dict[int, int], percentiles: Sequence[float] = PERCENTILES) -> list[float | None]:
    """numpy-style linear percentiles from a sketch, each within ``ALPHA`` of the exact one."""
    total = sum(counts.values())
    if not total:
        return [None] * len(percentiles)
    ordered = sorted(counts.items())

    def at(rank: int) -> float:
        seen = 0
        for index, n in ordered:
            seen += n
            if seen > rank:
                return _value(index)
        return _value(ordered[-1][0])

    out = []
    for p in percentiles:
        position = p / 100 * (total - 1)
        low = math.floor(position)
        frac = position - low
        lo = at(low)
        out.append(lo if frac == 0 else lo + frac * (at(low + 1) - lo))
    return out


# --- tables -------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def tables(schema: str | None) -> dict[str, Any]:
    import sqlalchemy as sa

    meta = sa.MetaData(schema=schema)
    keys = lambda: [  # noqa: E731 - the same key columns in both tables
        sa.Column("experiment_id", sa.Integer, nullable=False),
        sa.Column("bucket_ms", sa.BigInteger, nullable=False),
        sa.Column("model_id", sa.String(250), nullable=False),
        sa.Column("live", sa.SmallInteger, nullable=False),
        sa.Column("status", sa.String(50), nullable=False),
        *[sa.Column(c, sa.String(250), nullable=False) for c in _TAG_COLUMNS],
    ]
    traces = sa.Table(
        "agentops_trace_rollup", meta, *keys(),
        sa.Column("requests", sa.BigInteger, nullable=False), sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False), sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_input_tokens", sa.BigInteger, nullable=False),
        sa.Column("traces_with_tokens", sa.BigInteger, nullable=False), sa.Column("recorded_cost", sa.Float, nullable=False),
        sa.Column("latency_sketch", sa.Text, nullable=False),
        sa.Index("ix_agentops_trace_rollup_bucket", "experiment_id", "bucket_ms"),
    )
    models = sa.Table(
        "agentops_model_rollup", meta, *keys(), sa.Column("model_name", sa.String(500), nullable=False),
        sa.Column("llm_calls", sa.BigInteger, nullable=False), sa.Column("recorded_cost", sa.Float, nullable=False),
        sa.Index("ix_agentops_model_rollup_bucket", "experiment_id", "bucket_ms"),
    )
    buckets = sa.Table(
        "agentops_rollup_bucket", meta,
        sa.Column("experiment_id", sa.Integer, primary_key=True), sa.Column("bucket_ms", sa.BigInteger, primary_key=True),
        sa.Column("traces", sa.BigInteger, nullable=False), sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("duration_sum", sa.BigInteger, nullable=False), sa.Column("generation_sum", sa.BigInteger, nullable=False),
    )
    state = sa.Table(
        "agentops_rollup_state", meta,
        sa.Column("experiment_id", sa.Integer, primary_key=True),
        sa.Column("watermark_ms", sa.BigInteger, nullable=False),
        sa.Column("verified_ms", sa.BigInteger, nullable=False),
    )
    return {"meta": meta, "traces": traces, "models": models, "buckets": buckets, "state": state}


@dataclass(frozen=True)
class RollupStore:
    """Where roll-ups are written (``engine``, writable) and from where traces are read (``source``)."""

    engine: Any
    schema: str | None = None

    @property
    def t(self) -> dict[str, Any]:
        return tables(self.schema)

    def create(self) -> None:
        import sqlalchemy as sa

        with self.engine.begin() as connection:
            if (self.schema and connection.dialect.name == "postgresql"
                    and self.schema not in sa.inspect(connection).get_schema_names()):
                connection.execute(sa.text(f'CREATE SCHEMA "{self.schema}"'))  # needs CREATE on the database
            self.t["meta"].create_all(connection, checkfirst=True)


_target_lock = threading.Lock()
_targets: dict[str, RollupStore | None] = {}


def rollup_store_for(source: Any, url: str | None) -> RollupStore | None:
    """The roll-up store beside a PostgreSQL source (schema ``agentops``), or None (SQLite, no rights)."""
    if source.engine.dialect.name != "postgresql":
        return None
    key = url or str(source.engine.url)
    with _target_lock:
        if key in _targets:
            return _targets[key]
    import sqlalchemy as sa

    if url:
        parsed = sa.engine.make_url(url)
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        engine = sa.create_engine(parsed, pool_pre_ping=True, pool_size=2, connect_args={"connect_timeout": 5})
    else:
        engine = source.engine
    store: RollupStore | None = RollupStore(engine, SCHEMA)
    try:
        store.create()
    except Exception as exc:  # noqa: BLE001 - no rights: the direct statements stay
        _logger.warning("Monitoring roll-ups off: cannot create schema %s there (%s); aggregating directly.",
                        SCHEMA, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        store = None
    with _target_lock:
        _targets[key] = store
    return store


# --- scanning the store ----------------------------------------------------------------------


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
        *[sa.func.coalesce(tag(k, f"k_{c}"), "").label(c) for k, c in zip(ROLLUP_TAG_KEYS, _TAG_COLUMNS)],
    ]


_KEY_NAMES = ("model_id", "live", "status", *_TAG_COLUMNS)


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
    group = [k.experiment_id, k.bucket_ms, *[k[n] for n in _KEY_NAMES]]
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
        row = {n: r[n] for n in ("experiment_id", "bucket_ms", *_KEY_NAMES)}
        row.update(experiment_id=int(row["experiment_id"]), bucket_ms=int(row["bucket_ms"]), live=int(row["live"]),
                   requests=int(r["requests"]), errors=int(r["errors"] or 0), input_tokens=int(r["input_tokens"]),
                   output_tokens=int(r["output_tokens"]), cached_input_tokens=int(r["cached_input_tokens"]),
                   traces_with_tokens=int(r["traces_with_tokens"]), recorded_cost=float(r["recorded_cost"]),
                   latency_sketch=_encode(sketch_of(float(d) for d in (r["durations"] or "").split(",") if d)))
        out_traces.append(row)
        key = (row["experiment_id"], row["bucket_ms"])
        f = fingerprints.get(key, (0, 0, 0, 0))
        fingerprints[key] = (f[0] + row["requests"], f[1] + row["errors"], f[2] + int(r["duration_sum"]),
                             f[3] + int(r["generation_sum"]))
    out_models = []
    for r in model_rows:
        row = {n: r[n] for n in ("experiment_id", "bucket_ms", *_KEY_NAMES)}
        row.update(experiment_id=int(row["experiment_id"]), bucket_ms=int(row["bucket_ms"]), live=int(row["live"]),
                   model_name=r["model_name"], llm_calls=int(r["llm_calls"]), recorded_cost=float(r["recorded_cost"]))
        out_models.append(row)
    return out_traces, out_models, fingerprints


def _fingerprints(engine: Any, experiment_id: int, end_ms: int) -> dict[int, tuple]:
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


# --- maintenance -------------------------------------------------------------------------------


def _store_range(connection: Any, rs: RollupStore, experiment_id: int, buckets: Sequence[int] | None,
                 start_ms: int, end_ms: int, rows: tuple) -> None:
    """Replace the roll-ups of ``buckets`` (or of every bucket in ``[start_ms, end_ms)``) with ``rows``."""
    import sqlalchemy as sa

    t = rs.t
    trace_rows, model_rows, fingerprints = rows
    for table in (t["traces"], t["models"], t["buckets"]):
        where = [table.c.experiment_id == experiment_id]
        where.append(table.c.bucket_ms.in_(list(buckets)) if buckets is not None
                     else sa.and_(table.c.bucket_ms >= start_ms, table.c.bucket_ms < end_ms))
        connection.execute(sa.delete(table).where(*where))
    if trace_rows:
        connection.execute(sa.insert(t["traces"]), trace_rows)
    if model_rows:
        connection.execute(sa.insert(t["models"]), model_rows)
    if fingerprints:
        connection.execute(sa.insert(t["buckets"]), [
            {"experiment_id": e, "bucket_ms": b, "traces": f[0], "errors": f[1], "duration_sum": f[2],
             "generation_sum": f[3]} for (e, b), f in fingerprints.items()])


def refresh(rs: RollupStore, source_engine: Any, experiment_ids: Sequence[int], *, now_ms: int | None = None,
            verify_seconds: float | None = None) -> dict[int, int]:
    """Bring the roll-ups of ``experiment_ids`` up to date; return each experiment's watermark.

    Scans only traces since each watermark (its first refresh scans the experiment's history once),
    and, when the last verification is older than ``verify_seconds``, recomputes the closed buckets
    whose fingerprint changed (late, finished-late or deleted traces).
    """
    import sqlalchemy as sa

    t = rs.t
    verify_seconds = VERIFY_SECONDS if verify_seconds is None else verify_seconds
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    target = ((now_ms - GRACE_SECONDS * 1000) // BASE_MS) * BASE_MS
    with rs.engine.connect() as connection:
        state = {int(e): (int(w), int(v)) for e, w, v in connection.execute(
            sa.select(t["state"].c.experiment_id, t["state"].c.watermark_ms, t["state"].c.verified_ms)
            .where(t["state"].c.experiment_id.in_(list(experiment_ids))))}
    marks: dict[int, int] = {}
    for experiment_id in experiment_ids:
        old = state.get(experiment_id)
        if old is None or old[0] < target:
            start = old[0] if old else 0
            rows = scan(source_engine, [experiment_id], start, target)
            with rs.engine.begin() as connection:
                if old is None:
                    try:
                        with connection.begin_nested():
                            connection.execute(sa.insert(t["state"]).values(
                                experiment_id=experiment_id, watermark_ms=target, verified_ms=now_ms))
                    except sa.exc.IntegrityError:  # another process built it meanwhile
                        connection.rollback()
                        marks[experiment_id] = target
                        continue
                else:
                    moved = connection.execute(sa.update(t["state"]).where(
                        t["state"].c.experiment_id == experiment_id, t["state"].c.watermark_ms == old[0]
                    ).values(watermark_ms=target)).rowcount
                    if not moved:
                        connection.rollback()
                        marks[experiment_id] = target
                        continue
                _store_range(connection, rs, experiment_id, None, start, target, rows)
            marks[experiment_id] = target
        else:
            marks[experiment_id] = old[0]
        if old is not None and now_ms - old[1] >= verify_seconds * 1000:
            verify(rs, source_engine, experiment_id, marks[experiment_id], now_ms=now_ms, expected_verified=old[1])
    return marks


def verify(rs: RollupStore, source_engine: Any, experiment_id: int, watermark_ms: int, *, now_ms: int,
           expected_verified: int | None = None) -> list[int]:
    """Recompute the closed buckets whose ``trace_info`` fingerprint changed; return them."""
    import sqlalchemy as sa

    t = rs.t
    current = _fingerprints(source_engine, experiment_id, watermark_ms)
    with rs.engine.connect() as connection:
        stored = {int(b): (int(n), int(e), int(d), int(g)) for b, n, e, d, g in connection.execute(
            sa.select(t["buckets"].c.bucket_ms, t["buckets"].c.traces, t["buckets"].c.errors,
                      t["buckets"].c.duration_sum, t["buckets"].c.generation_sum)
            .where(t["buckets"].c.experiment_id == experiment_id))}
    dirty = sorted(b for b in set(current) | set(stored) if current.get(b) != stored.get(b))
    with rs.engine.begin() as connection:
        update = sa.update(t["state"]).where(t["state"].c.experiment_id == experiment_id)
        if expected_verified is not None:
            update = update.where(t["state"].c.verified_ms == expected_verified)
        if not connection.execute(update.values(verified_ms=now_ms)).rowcount:
            connection.rollback()  # another process verifies
            return []
        for first in range(0, len(dirty), 200):
            part = dirty[first:first + 200]
            trace_rows, model_rows, prints = [], [], {}
            for lo, hi in _runs(part):
                got = scan(source_engine, [experiment_id], lo, hi)
                trace_rows += got[0]
                model_rows += got[1]
                prints.update(got[2])
            _store_range(connection, rs, experiment_id, part, 0, 0, (trace_rows, model_rows, prints))
    return dirty


def _runs(buckets: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive buckets as ``[start, end)`` ranges."""
    runs: list[list[int]] = []
    for b in buckets:
        if runs and runs[-1][1] == b:
            runs[-1][1] = b + BASE_MS
        else:
            runs.append([b, b + BASE_MS])
    return [(a, b) for a, b in runs]


def rebuild(rs: RollupStore, experiment_ids: Sequence[int]) -> None:
    """Forget the roll-ups of ``experiment_ids``; the next refresh scans their history again."""
    import sqlalchemy as sa

    with rs.engine.begin() as connection:
        for table in ("traces", "models", "buckets", "state"):
            connection.execute(sa.delete(rs.t[table]).where(rs.t[table].c.experiment_id.in_(list(experiment_ids))))


# --- answering a query -------------------------------------------------------------------------


def can_answer(interval_seconds: int, group_links: dict[str, TraceLink], tag_pairs: Sequence[tuple[str, str]],
               links: Sequence[TraceLink]) -> bool:
    """True when every filter and the split use roll-up dimensions and the bucket is whole roll-up buckets."""
    keys = {k for k, _ in tag_pairs}
    keys |= {k for link in [*links, *group_links.values()] for k, _ in link.tags}
    return interval_seconds % BASE_SECONDS == 0 and keys <= set(ROLLUP_TAG_KEYS)


def aggregate(rs: RollupStore, source: Any, experiment_ids: Sequence[int], start_ms: int, end_ms: int,
              interval: int, group_links: dict[str, TraceLink], tag_pairs, status, with_models: bool,
              links: Sequence[TraceLink], *, evaluation_rows: bool = False, now_ms: int | None = None,
              verify_seconds: float | None = None) -> TraceAggregates:
    """``aggregate_sql``'s result from the roll-ups plus a live scan of the open tail and the edges."""
    import sqlalchemy as sa

    ids = [int(i) for i in experiment_ids]
    if not ids:
        return TraceAggregates((), (), "rollup", 0)
    marks = refresh(rs, source.engine, ids, now_ms=now_ms, verify_seconds=verify_seconds)
    first_full = -(-start_ms // BASE_MS) * BASE_MS
    last_full = (end_ms // BASE_MS) * BASE_MS
    queries = 0
    trace_rows: list[Any] = []
    model_rows: list[Any] = []
    # Live: the partial first and last buckets, and everything after each experiment's watermark.
    live_ranges: dict[int, list[tuple[int, int]]] = {}
    for e in ids:
        if first_full >= last_full:  # no whole bucket in the window
            live_ranges[e] = [(start_ms, end_ms)]
            continue
        closed_end = min(max(marks[e], first_full), last_full)
        ranges = [(start_ms, first_full)] if start_ms < first_full else []
        if closed_end < end_ms:
            ranges.append((closed_end, end_ms))
        live_ranges[e] = ranges
        if first_full < closed_end:
            t = rs.t
            with rs.engine.connect() as connection:
                queries += 1
                trace_rows += connection.execute(sa.select(t["traces"]).where(
                    t["traces"].c.experiment_id == e, t["traces"].c.bucket_ms >= first_full,
                    t["traces"].c.bucket_ms < closed_end)).mappings().all()
                if with_models:
                    queries += 1
                    model_rows += connection.execute(sa.select(t["models"]).where(
                        t["models"].c.experiment_id == e, t["models"].c.bucket_ms >= first_full,
                        t["models"].c.bucket_ms < closed_end)).mappings().all()
    for e, ranges in live_ranges.items():
        for a, b in ranges:
            got = scan(source.engine, [e], a, b, with_models=with_models)
            queries += 2 if with_models else 1
            trace_rows += got[0]
            model_rows += got[1]
    return _combine(trace_rows, model_rows, interval, group_links, tag_pairs, status, with_models, links,
                    evaluation_rows, queries)


def _combine(trace_rows, model_rows, interval, group_links, tag_pairs, status, with_models, links, evaluation_rows,
             queries) -> TraceAggregates:
    step = interval * 1000
    tag_of = dict(zip(ROLLUP_TAG_KEYS, _TAG_COLUMNS))
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
            _decode_into(row["latency_sketch"], sketches.setdefault(key, {}))
            _decode_into(row["latency_sketch"], whole.setdefault(group, {}))
    rows = [AggregateRow(g, ms, c[0], c[1], *sketch_percentiles(sketches[(g, ms)]), c[2], c[3], c[4], c[5], c[6])
            for (g, ms), c in cells.items() if c[0]]
    rows.extend(_window_rows(rows, lambda g: sketch_percentiles(whole.get(g, {}))))
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
    return TraceAggregates(tuple(sort_rows(rows)), tuple(sort_models(models)), "rollup", queries)
