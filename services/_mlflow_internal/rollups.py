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

The parts: ``rollup_sketch`` (the latency sketch), ``rollup_tables`` (the tables and where they
live), ``rollup_scan`` (reading the store's tables into rows and fingerprints) and
``rollup_combine`` (rows to the aggregate); this module keeps them up to date and answers a query.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Sequence

from services._mlflow_internal.aggregate_rows import TraceAggregates
from services._mlflow_internal.rollup_combine import combine
from services._mlflow_internal.rollup_scan import bucket_fingerprints, scan
from services._mlflow_internal.rollup_sketch import ALPHA, sketch_index, sketch_of, sketch_percentiles
from services._mlflow_internal.rollup_tables import BASE_MS, BASE_SECONDS, ROLLUP_TAG_KEYS, SCHEMA, RollupStore, tables
from services._mlflow_internal.trace_links import TraceLink

__all__ = [
    "ALPHA", "BASE_MS", "BASE_SECONDS", "GRACE_SECONDS", "ROLLUP_TAG_KEYS", "SCHEMA", "VERIFY_SECONDS", "RollupStore",
    "aggregate", "can_answer", "rebuild", "refresh", "rollup_store_for", "scan", "sketch_index", "sketch_of",
    "sketch_percentiles", "tables", "verify",
]

_logger = logging.getLogger(__name__)

GRACE_SECONDS = 900  # traces usually land within this of their start; later ones wait for a verification
VERIFY_SECONDS = 300


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
    current = bucket_fingerprints(source_engine, experiment_id, watermark_ms)
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
    return combine(trace_rows, model_rows, interval, group_links, tag_pairs, status, with_models, links,
                    evaluation_rows, queries)
