"""The non-public MLflow APIs we rely on: present, and equal to their public fallbacks."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from services import _mlflow_internal as internal
from services import traces

NOW_NS = time.time_ns()
USAGE = [(120, 30), (80, 10), (200, 50), (40, 5), (300, 90), (60, 20)]
DURATIONS_MS = [100, 200, 300, 400, 500, 600]


def _spec(experiment_id: str, model_id: str, index: int, arm: str, error: bool = False) -> internal.TraceSpec:
    start = NOW_NS - (index + 1) * 60_000_000_000
    end = start + DURATIONS_MS[index] * 1_000_000
    input_tokens, output_tokens = USAGE[index]
    llm = internal.SpanSpec(
        "llm", "CHAT_MODEL", start + 1_000_000, end - 1_000_000,
        attributes={
            "mlflow.chat.tokenUsage": {"input_tokens": input_tokens, "output_tokens": output_tokens, "total_tokens": input_tokens + output_tokens},
            "mlflow.llm.model": "gpt-4o-mini",
            "mlflow.llm.provider": "openai",
        },
    )
    tool = internal.SpanSpec("search", "TOOL", start + 500_000, start + 900_000, inputs={"q": "x"}, outputs="hit")
    root = internal.SpanSpec("predict", "AGENT", start, end, inputs={"question": f"q{index}"}, outputs="answer",
                             error="boom" if error else None, children=(tool, llm))
    return internal.TraceSpec(experiment_id, root, tags={"agentops.arm": arm}, metadata={"mlflow.modelId": model_id})


@pytest.fixture
def store_with_model(isolated_settings):
    client = MlflowClient(tracking_uri=isolated_settings.tracking_uri)
    experiment_id = client.create_experiment("internal", artifact_location=(isolated_settings.artifact_root / "x").as_uri())
    model_id = client.create_logged_model(experiment_id, name="agent").model_id
    return client, experiment_id, model_id


def test_fast_path_exists_on_the_sql_store(store_with_model):
    client, _, _ = store_with_model
    store = internal.tracking_store(client)
    assert isinstance(store, SqlAlchemyStore), "MLflow moved the tracking store off _tracking_client.store"
    for method in ("start_trace", "log_spans", "query_trace_metrics"):
        assert callable(getattr(store, method)), f"SqlAlchemyStore.{method} is gone"
    assert internal.supports_bulk_span_logging(client)


def test_bulk_and_public_paths_store_the_same_trace(store_with_model):
    client, experiment_id, model_id = store_with_model
    (bulk_id,) = internal.log_traces(client, [_spec(experiment_id, model_id, 0, "a")])
    public_id = internal.trace_write._log_trace_public(client, _spec(experiment_id, model_id, 0, "a"))
    bulk, public = client.get_trace(bulk_id), client.get_trace(public_id)
    for trace in (bulk, public):
        assert trace.info.trace_metadata["mlflow.modelId"] == model_id
        assert trace.info.tags["agentops.arm"] == "a"
        assert trace.info.token_usage == {"input_tokens": 120, "output_tokens": 30, "total_tokens": 150}
        assert trace.info.execution_duration == DURATIONS_MS[0]
        assert sorted(s.name for s in trace.data.spans) == ["llm", "predict", "search"]
    assert bulk.info.cost == pytest.approx(public.info.cost)
    assert bulk.info.cost["total_cost"] > 0
    assert bulk.info.request_time == public.info.request_time


def test_error_traces_keep_their_status_and_message(store_with_model):
    client, experiment_id, model_id = store_with_model
    (trace_id,) = internal.log_traces(client, [_spec(experiment_id, model_id, 1, "b", error=True)])
    trace = client.get_trace(trace_id)
    assert str(trace.info.state).endswith("ERROR")
    root = next(s for s in trace.data.spans if s.parent_id is None)
    assert root.status.description == "boom"


def test_store_metrics_equal_hand_computed_and_search_fallback(store_with_model):
    client, experiment_id, model_id = store_with_model
    specs = [_spec(experiment_id, model_id, i, "a" if i % 2 else "b", error=(i == 3)) for i in range(6)]
    internal.log_traces(client, specs)
    start = datetime.fromtimestamp(NOW_NS / 1e9, tz=timezone.utc) - timedelta(hours=1)
    end = datetime.fromtimestamp(NOW_NS / 1e9, tz=timezone.utc)
    window = {"start_time_ms": int(start.timestamp() * 1000), "end_time_ms": int(end.timestamp() * 1000)}

    count = internal.query_trace_metrics(client, [experiment_id], "trace_count", ["COUNT"], **window)
    assert count[0].values["COUNT"] == 6
    arm_a = internal.query_trace_metrics(client, [experiment_id], "trace_count", ["COUNT"],
                                         filters=[traces.tag_filter("agentops.arm", "a")], **window)
    assert arm_a[0].values["COUNT"] == 3
    tokens = internal.query_trace_metrics(client, [experiment_id], "input_tokens", ["SUM"], **window)
    assert tokens[0].values["SUM"] == sum(i for i, _ in USAGE)

    in_store = traces._summary_in_store(client, [experiment_id], start, end, [], window)
    by_search = traces._summary_by_search(client, [experiment_id], start, end, [])
    assert (in_store.traces, in_store.errors) == (by_search.traces, by_search.errors) == (6, 1)
    assert in_store.total_cost == pytest.approx(by_search.total_cost)
    assert in_store.p50_ms == pytest.approx(by_search.p50_ms)
    assert in_store.p95_ms == pytest.approx(by_search.p95_ms)

    model_only = traces._summary_in_store(client, [experiment_id], start, end, [traces.model_filter(model_id)], window)
    assert model_only.traces == 6
    arm_b = traces._summary_by_search(client, [experiment_id], start, end, [traces.tag_filter("agentops.arm", "b")])
    assert arm_b.traces == 3


def test_analyze_refreshes_planner_statistics(store_with_model, isolated_settings):
    import sqlite3

    client, experiment_id, model_id = store_with_model
    internal.log_traces(client, [_spec(experiment_id, model_id, i, "a") for i in range(3)])
    assert internal.analyze_sqlite(str(isolated_settings.db_path))
    with sqlite3.connect(isolated_settings.db_path) as connection:
        tables = {row[0] for row in connection.execute("SELECT tbl FROM sqlite_stat1")}
    assert "spans" in tables
    assert not internal.analyze_sqlite(str(isolated_settings.data_dir / "missing.db"))


def test_trace_info_without_spans_matches_the_public_path(store_with_model):
    client, experiment_id, model_id = store_with_model
    (trace_id,) = internal.log_traces(client, [_spec(experiment_id, model_id, 2, "a")])
    assert hasattr(client, "_tracing_client") and hasattr(client._tracing_client, "get_trace_info"), (
        "MLflow moved the private trace-info accessor"
    )
    info = internal.trace_info(client, trace_id)
    public = client.get_trace(trace_id).info
    assert (info.trace_id, info.tags["agentops.arm"], info.token_usage) == (public.trace_id, "a", public.token_usage)


# --- direct bulk load ----------------------------------------------------------------------------

# Every table the store path touches, and the columns the aggregate reads: a rename fails here.
AGGREGATE_COLUMNS = {
    "trace_info": {"request_id", "experiment_id", "timestamp_ms", "execution_time_ms", "status", "trace_name",
                   "input_tokens", "output_tokens", "cache_read_input_tokens", "total_cost",
                   "db_payload_generation"},  # the roll-ups' change fingerprint (log_spans bumps it)
    "trace_tags": {"request_id", "key", "value"},
    "spans": {"trace_id", "model_name", "total_cost"},
}


def _store_uri(dialect: str, folder, name: str, request) -> str:
    """A new empty store's URI: a SQLite file in ``folder`` or a database in the session's PostgreSQL."""
    if dialect == "sqlite":
        return f"sqlite:///{folder / name}.db"
    return request.getfixturevalue("postgres").new_database(name)


def _two_stores(tmp_path, dialect="sqlite", request=None):
    """Two empty stores whose first experiment has the same id and artifact location."""
    stores = []
    for name in ("via_store", "direct"):
        uri = _store_uri(dialect, tmp_path, name, request)
        client = MlflowClient(tracking_uri=uri)
        experiment_id = client.create_experiment("load", artifact_location=(tmp_path / "artifacts").as_uri())
        stores.append((client, experiment_id, uri))
    assert stores[0][1] == stores[1][1]
    return stores


def _varied_specs(experiment_id: str) -> list[internal.TraceSpec]:
    specs = [_spec(experiment_id, "m-1", i, "a" if i % 2 else "b", error=(i == 3)) for i in range(6)]
    start = NOW_NS - 3_600_000_000_000
    cached = internal.SpanSpec("llm", "CHAT_MODEL", start + 1_000, start + 9_000_000, attributes={
        "mlflow.chat.tokenUsage": {"input_tokens": 900, "output_tokens": 90, "total_tokens": 990,
                                   "cache_read_input_tokens": 300},
        "mlflow.llm.model": "unknown-model", "mlflow.llm.provider": "acme"})
    no_llm = internal.SpanSpec("predict", "AGENT", start, start + 5_000_000, inputs="ünïcode", outputs=None)
    specs.append(internal.TraceSpec(experiment_id, internal.SpanSpec("predict", "AGENT", start, start + 10_000_000,
                                                                     inputs={"q": 1}, outputs="x", children=(cached,)),
                                    tags={"agentops.arm": "c"}, metadata={"mlflow.sourceRun": "run-1"}))
    specs.append(internal.TraceSpec(experiment_id, no_llm))
    return specs


def _table_rows(uri: str) -> dict[str, list[tuple]]:
    import sqlalchemy as sa

    engine = sa.create_engine(uri)
    try:
        with engine.connect() as connection:
            names = sa.inspect(connection).get_table_names()
            return {name: sorted(map(repr, connection.execute(sa.text(f'SELECT * FROM "{name}"')).all()))
                    for name in names if name != "experiments"}  # experiments hold creation times
    finally:
        engine.dispose()


@pytest.mark.parametrize("dialect, workers", [("sqlite", 1), ("postgresql", 1), ("postgresql", 2)])
def test_direct_load_writes_exactly_the_rows_of_the_store_path(tmp_path, dialect, workers, request):
    import random

    (via_store, experiment_id, store_db), (direct, _, direct_db) = _two_stores(tmp_path, dialect, request)
    assert internal.supports_direct_load(direct, _varied_specs(experiment_id))
    # The same seed gives both paths the same trace and span ids (with workers: one seed per piece).
    specs = _varied_specs(experiment_id)
    if workers == 1:
        internal.trace_write._log_traces_bulk(via_store, specs, random.Random(7))
    else:
        seeds = random.Random(7)
        for piece in [specs[i : i + 3] for i in range(0, len(specs), 3)]:
            internal.trace_write._log_traces_bulk(via_store, piece, random.Random(seeds.getrandbits(64)))
    ids = internal.bulk_load_traces(direct, _varied_specs(experiment_id), chunk_size=3, rng=random.Random(7),
                                    workers=workers)
    expected, actual = _table_rows(store_db), _table_rows(direct_db)
    assert set(expected) == set(actual)
    for table in expected:
        assert actual[table] == expected[table], f"direct load differs from start_trace + log_spans in {table}"
    assert len(actual["trace_info"]) == len(ids) == 8 and len(actual["spans"]) == 6 * 3 + 2 + 1

    trace = direct.get_trace(ids[6])
    assert trace.info.token_usage["cache_read_input_tokens"] == 300
    assert trace.info.trace_metadata["mlflow.sourceRun"] == "run-1"
    assert direct.get_trace(ids[0]).info.cost["total_cost"] > 0
    found = direct.search_traces(locations=[experiment_id], filter_string="tag.`agentops.arm` = 'a'",
                                 include_spans=False)
    assert len(found) == 3


def test_direct_load_hands_session_spans_to_the_store(store_with_model):
    client, experiment_id, _ = store_with_model
    start = NOW_NS - 60_000_000_000
    root = internal.SpanSpec("chat", "AGENT", start, start + 1_000_000, attributes={"session.id": "s-1"})
    spec = internal.TraceSpec(experiment_id, root)
    assert not internal.supports_direct_load(client, [spec])
    (trace_id,) = internal.bulk_load_traces(client, [spec])
    assert client.get_trace(trace_id).info.trace_metadata["mlflow.trace.session"] == "s-1"


# --- grouped aggregation ----------------------------------------------------------------------------


def test_aggregate_reads_columns_that_exist():
    from mlflow.store.tracking.dbmodels.models import SqlSpan, SqlTraceInfo, SqlTraceTag

    tables = {m.__tablename__: set(m.__table__.columns.keys()) for m in (SqlTraceInfo, SqlTraceTag, SqlSpan)}
    for table, columns in AGGREGATE_COLUMNS.items():
        assert columns <= tables[table], f"MLflow changed {table}: missing {columns - tables[table]}"


def _durations(rng, n: int) -> list[int]:
    return [rng.choice([5, 50, 50, 120, 400, 401, 999, 2500]) if i % 3 else rng.randint(1, 5000) for i in range(n)]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def spread_store(tmp_path_factory, request):
    """Traces over six hours in three arms, each with a known duration, tokens and status (read-only),
    in a SQLite store and in a PostgreSQL one: the aggregates' statements run on both dialects."""
    import random

    rng = random.Random(3)
    folder = tmp_path_factory.mktemp("spread")
    client = MlflowClient(tracking_uri=_store_uri(request.param, folder, "spread", request))
    experiment_id = client.create_experiment("spread", artifact_location=(folder / "artifacts").as_uri())
    hour_ns = 3_600_000_000_000
    origin = (NOW_NS // hour_ns - 6) * hour_ns
    facts, specs = [], []
    for i, duration in enumerate(_durations(rng, 150)):
        start = origin + rng.randrange(6 * hour_ns - 10**10)
        arm, error = rng.choice("xyz"), rng.random() < 0.2
        tokens = None if rng.random() < 0.1 else (rng.randint(10, 999), rng.randint(1, 99))
        children = ()
        if tokens:
            children = (internal.SpanSpec("llm", "CHAT_MODEL", start + 1000, start + 2000, attributes={
                "mlflow.chat.tokenUsage": {"input_tokens": tokens[0], "output_tokens": tokens[1],
                                           "total_tokens": sum(tokens)},
                "mlflow.llm.model": "gpt-4o-mini" if arm != "z" else "house-model", "mlflow.llm.provider": "openai"}),)
        root = internal.SpanSpec("predict", "AGENT", start, start + duration * 1_000_000,
                                 error="boom" if error else None, children=children)
        specs.append(internal.TraceSpec(experiment_id, root, tags={"agentops.arm": arm, "agentops.agent": "a"}))
        facts.append({"arm": arm, "start_ms": start // 1_000_000, "duration": duration, "error": error, "tokens": tokens})
    internal.bulk_load_traces(client, specs)
    return client, experiment_id, origin // 1_000_000, facts


def test_aggregate_equals_hand_computed_percentiles_and_sums(spread_store):
    client, experiment_id, origin_ms, facts = spread_store
    hour = 3_600_000
    result = internal.aggregate_traces(client, [experiment_id], start_ms=origin_ms, end_ms=origin_ms + 6 * hour,
                                       interval_seconds=3600, group_tag="agentops.arm", groups=["x", "y", "z"])
    assert (result.path, result.store_queries) == ("sql", 2)
    rows = {(r.group, r.bucket_ms): r for r in result.rows}
    checked = 0
    for arm in "xyz":
        for bucket in [None, *range(origin_ms, origin_ms + 6 * hour, hour)]:
            mine = [f for f in facts if f["arm"] == arm and (bucket is None or bucket <= f["start_ms"] < bucket + hour)]
            if not mine:
                assert (arm, bucket) not in rows
                continue
            row = rows[(arm, bucket)]
            durations = [f["duration"] for f in mine]
            assert row.requests == len(mine) and row.errors == sum(f["error"] for f in mine)
            assert [row.p50_ms, row.p95_ms, row.p99_ms] == pytest.approx(np.percentile(durations, [50, 95, 99]))
            assert row.input_tokens == sum(f["tokens"][0] for f in mine if f["tokens"])
            assert row.output_tokens == sum(f["tokens"][1] for f in mine if f["tokens"])
            assert row.traces_with_tokens == sum(1 for f in mine if f["tokens"])
            checked += 1
    assert checked >= 15
    calls = {(m.group, m.model): m.llm_calls for m in result.models}
    assert calls[("z", "house-model")] == sum(1 for f in facts if f["arm"] == "z" and f["tokens"])
    assert calls[(None, "gpt-4o-mini")] == sum(1 for f in facts if f["arm"] != "z" and f["tokens"])


@pytest.mark.parametrize("split, filters", [
    ({}, {}),
    ({"group_tag": "agentops.arm", "groups": ["x", "y", "z", "absent"]}, {}),
    ({"group_tag": "agentops.arm", "groups": ["z", "x"]}, {"tag_equals": {"agentops.agent": "a"}, "status": "ERROR"}),
    ({}, {"tag_equals": {"agentops.arm": "y"}, "status": "OK"}),
])
def test_sql_aggregate_equals_the_query_trace_metrics_fallback(spread_store, split, filters):
    client, experiment_id, origin_ms, _ = spread_store
    window = {"start_ms": origin_ms + 1_800_000, "end_ms": origin_ms + 5 * 3_600_000, "interval_seconds": 1800}
    fast = internal.aggregate_traces(client, [experiment_id], **window, **split, **filters)
    slow = internal.aggregate_traces(client, [experiment_id], **window, **split, **filters, force_fallback=True)
    assert (fast.path, slow.path) == ("sql", "query_trace_metrics")
    assert fast.store_queries == 2 < slow.store_queries
    assert len(fast.rows) == len(slow.rows) > 0
    for mine, theirs in zip(fast.rows, slow.rows):
        assert (mine.group, mine.bucket_ms, mine.requests, mine.errors) == (theirs.group, theirs.bucket_ms,
                                                                           theirs.requests, theirs.errors)
        assert (mine.input_tokens, mine.output_tokens, mine.traces_with_tokens) == (
            theirs.input_tokens, theirs.output_tokens, theirs.traces_with_tokens)
        assert [mine.p50_ms, mine.p95_ms, mine.p99_ms] == pytest.approx([theirs.p50_ms, theirs.p95_ms, theirs.p99_ms])
        assert mine.recorded_cost == pytest.approx(theirs.recorded_cost)
    assert [(m.group, m.model, m.llm_calls) for m in fast.models] == [(m.group, m.model, m.llm_calls) for m in slow.models]
    assert [m.recorded_cost for m in fast.models] == pytest.approx([m.recorded_cost for m in slow.models])


def test_aggregate_refuses_a_split_without_groups(spread_store):
    client, experiment_id, origin_ms, _ = spread_store
    with pytest.raises(ValueError, match="group values"):
        internal.aggregate_traces(client, [experiment_id], start_ms=origin_ms, end_ms=origin_ms + 1,
                                  interval_seconds=60, group_tag="agentops.arm")


def test_totals_without_the_model_mix_take_one_statement(spread_store):
    client, experiment_id, origin_ms, _ = spread_store
    window = {"start_ms": origin_ms, "end_ms": origin_ms + 6 * 3_600_000, "interval_seconds": 3600}
    full = internal.aggregate_traces(client, [experiment_id], **window)
    light = internal.aggregate_traces(client, [experiment_id], **window, with_models=False)
    fallback = internal.aggregate_traces(client, [experiment_id], **window, with_models=False, force_fallback=True)
    assert (light.store_queries, light.models, fallback.models) == (1, (), ())
    assert light.rows == full.rows
    assert [r.requests for r in fallback.rows] == [r.requests for r in light.rows]


@pytest.mark.parametrize("hours", [(0, 6), (2, 3), (7, 8)], ids=["all", "one-hour", "empty"])
def test_tag_values_in_sql_equal_the_search_fallback_and_the_facts(spread_store, hours):
    client, experiment_id, origin_ms, facts = spread_store
    start, end = origin_ms + hours[0] * 3_600_000, origin_ms + hours[1] * 3_600_000
    expected = sorted({f["arm"] for f in facts if start <= f["start_ms"] < end})
    fast = internal.trace_tag_values(client, [experiment_id], "agentops.arm", start_ms=start, end_ms=end)
    slow = internal.trace_tag_values(client, [experiment_id], "agentops.arm", start_ms=start, end_ms=end,
                                     force_fallback=True)
    assert fast == slow == expected
    assert internal.trace_tag_values(client, [experiment_id], "no.such.tag", start_ms=start, end_ms=end) == []
    assert internal.trace_tag_values(client, [], "agentops.arm", start_ms=start, end_ms=end) == []


def test_tag_values_take_one_statement_and_no_trace_search(spread_store, monkeypatch):
    client, experiment_id, origin_ms, _ = spread_store
    monkeypatch.setattr(MlflowClient, "search_traces", lambda *a, **k: pytest.fail("searched traces"))
    assert internal.trace_tag_values(client, [experiment_id], "agentops.arm", start_ms=origin_ms,
                                     end_ms=origin_ms + 6 * 3_600_000) == ["x", "y", "z"]
