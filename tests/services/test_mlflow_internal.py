"""The non-public MLflow APIs we rely on: present, and equal to their public fallbacks."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

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
    public_id = internal._log_trace_public(client, _spec(experiment_id, model_id, 0, "a"))
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
