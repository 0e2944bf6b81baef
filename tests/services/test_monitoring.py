"""Monitoring figures on a store with known traces equal hand-computed values."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from services import _mlflow_internal as internal
from services import monitoring as mon
from services import alerts
from services import trace_explorer
from services import pricing
from services.errors import ConflictError, PermissionDeniedError, ValidationError
from services.identity import Identity, IdentitySource

NOW_NS = (time.time_ns() // 3_600_000_000_000) * 3_600_000_000_000  # on the hour: buckets are predictable
PRICED = "acme-llm"  # not in MLflow's catalog: cost comes from the price table
CATALOG = "gpt-4o-mini"  # in MLflow's catalog: MLflow records the cost
PRICES = {PRICED: pricing.ModelPrice(input_per_mtok=2.0, output_per_mtok=10.0, cached_input_per_mtok=0.5)}

# (version, alias, minutes ago, duration ms, usage or None, model, error)
TRACES = [
    ("1", "champion", 10, 100, (1000, 100, 200), PRICED, False),
    ("1", "champion", 20, 200, (2000, 200, 0), PRICED, False),
    ("1", "champion", 70, 300, (3000, 300, 1000), PRICED, True),
    ("1", "champion", 80, 400, (4000, 400, 0), PRICED, False),
    ("2", "challenger", 15, 1000, (500, 50, 0), CATALOG, False),
    ("2", "challenger", 75, 2000, None, None, True),  # no LLM call: no token usage
    ("2", "challenger", 85, 3000, (700, 70, 0), CATALOG, False),
]


def _spec(experiment_id: str, version: str, alias: str, minutes: int, duration: int, usage, model, error):
    start = NOW_NS - minutes * 60_000_000_000
    end = start + duration * 1_000_000
    children = [internal.SpanSpec("search", "TOOL", start + 100_000, start + 500_000, inputs={"q": "x"}, outputs="hit")]
    if usage:
        inp, out, cached = usage
        tokens = {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}
        if cached:
            tokens["cache_read_input_tokens"] = cached
        children.append(internal.SpanSpec(
            "llm", "CHAT_MODEL", start + 600_000, end - 100_000, inputs={"messages": []}, outputs={"text": "a"},
            attributes={"mlflow.chat.tokenUsage": tokens, "mlflow.llm.model": model, "mlflow.llm.provider": "openai"},
        ))
    root = internal.SpanSpec("predict", "AGENT", start, end, inputs={"question": "q"}, outputs="answer",
                             error="TimeoutError: too slow" if error else None, children=tuple(children))
    tags = {"agentops.agent": "agent-a", "agentops.version": version, "agentops.alias": alias,
            "agentops.arm": f"agent-a-{version}", "agentops.endpoint": "prod"}
    return internal.TraceSpec(experiment_id, root, tags=tags)


@pytest.fixture
def known_store(isolated_settings):
    client = MlflowClient(tracking_uri=isolated_settings.tracking_uri)
    experiment_id = client.create_experiment("mon", artifact_location=(isolated_settings.artifact_root / "m").as_uri())
    ids = internal.log_traces(client, [_spec(experiment_id, *t) for t in TRACES])
    return isolated_settings, client, experiment_id, ids


def _query(experiment_id: str, **filters) -> mon.TraceQuery:
    end = datetime.fromtimestamp(NOW_NS / 1e9, tz=timezone.utc) + timedelta(minutes=1)
    return mon.TraceQuery((experiment_id,), end - timedelta(hours=3), end, **filters)


def _rows(version: str):
    return [t for t in TRACES if t[0] == version]


def test_totals_per_version_equal_hand_computed(known_store):
    settings, _, experiment_id, _ = known_store
    data = mon.monitoring_data(_query(experiment_id), "version", ["1", "2"], prices=PRICES, settings=settings)
    totals = data.totals.set_index("group")
    for version in ("1", "2"):
        rows = _rows(version)
        row = totals.loc[version]
        durations = [t[3] for t in rows]
        assert row["requests"] == len(rows)
        assert row["errors"] == sum(t[6] for t in rows)
        assert row["error_rate"] == pytest.approx(sum(t[6] for t in rows) / len(rows))
        for p in (50, 95, 99):
            assert row[f"p{p}_ms"] == pytest.approx(np.percentile(durations, p))
        with_usage = [t[4] for t in rows if t[4]]
        assert row["input_tokens"] == sum(u[0] for u in with_usage)
        assert row["output_tokens"] == sum(u[1] for u in with_usage)
        assert row["cached_input_tokens"] == sum(u[2] for u in with_usage)
        assert row["traces_with_tokens"] == len(with_usage)
        assert row["traces_without_tokens"] == len(rows) - len(with_usage)

    # v1 runs on a model MLflow cannot price: tokens x the price table, cached tokens cheaper.
    v1 = totals.loc["1"]
    expected = sum(((i - c) * 2.0 + c * 0.5 + o * 10.0) / 1e6 for i, o, c in (t[4] for t in _rows("1")))
    assert v1["recorded_cost"] == 0
    assert v1["estimated_cost"] == pytest.approx(expected)
    assert v1["cost"] == pytest.approx(expected)
    assert v1["cost_per_request"] == pytest.approx(expected / 4)


def test_recorded_cost_is_used_where_mlflow_has_it(known_store):
    settings, client, experiment_id, ids = known_store
    data = mon.monitoring_data(_query(experiment_id), "version", ["1", "2"], prices=PRICES, settings=settings)
    recorded = sum((client.get_trace(i).info.cost or {}).get("total_cost", 0.0) for i in ids)
    v2 = data.totals.set_index("group").loc["2"]
    assert recorded > 0
    assert v2["recorded_cost"] == pytest.approx(recorded)
    assert v2["estimated_cost"] == 0
    by_model = data.by_model.set_index("model")
    assert by_model.loc[CATALOG, "cost_source"] == "recorded"
    assert by_model.loc[CATALOG, "cost"] == pytest.approx(recorded)
    assert by_model.loc[PRICED, "cost_source"] == "estimated"
    assert by_model.loc[PRICED, "llm_calls"] == 4
    assert by_model.loc[PRICED, "cost"] == pytest.approx(data.totals.set_index("group").loc["1", "cost"])


def test_models_without_price_are_named(known_store):
    settings, _, experiment_id, _ = known_store
    data = mon.monitoring_data(_query(experiment_id), prices={}, settings=settings)
    assert data.totals.iloc[0]["unpriced_models"] == PRICED
    assert data.by_model.set_index("model").loc[PRICED, "cost_source"] == "no price"


def test_time_buckets_and_filters(known_store):
    settings, _, experiment_id, _ = known_store
    data = mon.monitoring_data(_query(experiment_id, alias="champion"), prices=PRICES,
                               interval_seconds=3600, settings=settings)
    series = data.series[data.series["requests"] > 0]
    # champion traces: two in the last hour, two between one and two hours ago.
    assert sorted(series["requests"].tolist()) == [2, 2]
    assert data.series["requests"].sum() == 4
    assert data.totals.iloc[0]["errors"] == 1
    errors_only = mon.monitoring_data(_query(experiment_id, status=mon.Status.ERROR), prices=PRICES, settings=settings)
    assert errors_only.totals.iloc[0]["requests"] == 2


def test_empty_window_is_empty_not_an_error(known_store):
    settings, _, experiment_id, _ = known_store
    end = datetime.fromtimestamp(NOW_NS / 1e9, tz=timezone.utc) - timedelta(days=2)
    data = mon.monitoring_data(mon.TraceQuery((experiment_id,), end - timedelta(hours=1), end), settings=settings)
    assert data.is_empty
    assert data.totals.iloc[0]["requests"] == 0
    assert data.by_model.empty


@pytest.mark.parametrize(
    "change, message",
    [
        ({"start": datetime(2026, 1, 2, tzinfo=timezone.utc), "end": datetime(2026, 1, 1, tzinfo=timezone.utc)}, "after it ends"),
        ({"start": datetime(2025, 1, 1, tzinfo=timezone.utc), "end": datetime(2026, 1, 1, tzinfo=timezone.utc)}, "longer than"),
        ({"start": datetime(2026, 1, 1), "end": datetime(2026, 1, 2)}, "timezone-aware"),
        ({"version": "1`; drop"}, "not a valid tag value"),
    ],
)
def test_bad_windows_and_filters_are_refused_before_io(change, message, monkeypatch):
    for module in (mon.series, mon.links):  # the package's modules that read the store
        monkeypatch.setattr(module, "mlflow_client", lambda *_: pytest.fail("no I/O expected"))
    query = mon.TraceQuery(("1",), datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2, tzinfo=timezone.utc))
    with pytest.raises(ValidationError, match=message):
        mon.monitoring_data(mon.TraceQuery(**{**query.__dict__, **change}))


def test_explorer_filters_and_pages_in_the_store(known_store):
    settings, _, experiment_id, _ = known_store
    query = _query(experiment_id)
    first = trace_explorer.search_page(trace_explorer.ExplorerQuery(query), page_size=4, settings=settings)
    assert len(first.rows) == 4 and first.next_token
    second = trace_explorer.search_page(trace_explorer.ExplorerQuery(query), page_size=4, page_token=first.next_token, settings=settings)
    assert len(second.rows) == 3 and second.next_token is None
    assert set(first.rows.trace_id).isdisjoint(second.rows.trace_id)
    both = list(first.rows.time) + list(second.rows.time)
    assert both == sorted(both, reverse=True)

    slow = trace_explorer.search_page(trace_explorer.ExplorerQuery(query, min_latency_ms=300, max_latency_ms=2000), settings=settings)
    assert sorted(slow.rows.latency_ms) == [300, 400, 1000, 2000]
    v2_errors = trace_explorer.search_page(trace_explorer.ExplorerQuery(_query(experiment_id, version="2", status=mon.Status.ERROR)),
                                settings=settings)
    assert len(v2_errors.rows) == 1
    row = v2_errors.rows.iloc[0]
    assert not row.has_token_usage and np.isnan(row.input_tokens)
    assert trace_explorer.count_matching(_query(experiment_id, arm="agent-a-1"), settings=settings) == 4


def test_explorer_negative_feedback(known_store):
    import mlflow
    from mlflow.entities import AssessmentSource

    settings, _, experiment_id, ids = known_store
    source = AssessmentSource(source_type="HUMAN", source_id="alice")
    mlflow.log_feedback(trace_id=ids[0], name="thumbs_up", value=False, source=source)
    mlflow.log_feedback(trace_id=ids[1], name="thumbs_up", value=True, source=source)
    negative = trace_explorer.search_page(trace_explorer.ExplorerQuery(_query(experiment_id), feedback=mon.FeedbackFilter.NEGATIVE),
                               settings=settings)
    assert list(negative.rows.trace_id) == [ids[0]]
    health = alerts.agent_health(_query(experiment_id, agent="agent-a"), settings=settings)
    assert health.feedback_score == pytest.approx(0.5) and health.feedback_count == 2


def test_explorer_refuses_an_empty_latency_range():
    query = mon.TraceQuery(("1",), datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2, tzinfo=timezone.utc))
    with pytest.raises(ValidationError, match="latency range"):
        trace_explorer.search_page(trace_explorer.ExplorerQuery(query, min_latency_ms=500, max_latency_ms=100))


def test_trace_detail_has_span_tree_tokens_cost_and_errors(known_store):
    settings, _, _, ids = known_store
    detail = trace_explorer.trace_detail(ids[2], settings)  # v1, failed, with cached tokens
    assert detail.status == "ERROR"
    assert detail.latency_ms == 300
    assert list(detail.spans.name) == ["predict", "search", "llm"]
    assert list(detail.spans.depth) == [0, 1, 1]
    llm = detail.spans.set_index("name").loc["llm"]
    assert (llm.input_tokens, llm.output_tokens, llm.model) == (3000, 300, PRICED)
    assert detail.spans.set_index("name").loc["predict", "error"] == "TimeoutError: too slow"
    assert detail.errors == ("predict: TimeoutError: too slow",)
    assert detail.token_usage["input_tokens"] == 3000
    assert '"q": "x"' in detail.spans.set_index("name").loc["search", "inputs"]


def test_alerts_fire_per_agent_thresholds(known_store):
    settings, _, experiment_id, _ = known_store
    health = alerts.agent_health(_query(experiment_id, agent="agent-a"), prices=PRICES, settings=settings)
    assert health.requests == 7 and health.error_rate == pytest.approx(2 / 7)
    assert health.p95_latency_ms == pytest.approx(np.percentile([t[3] for t in TRACES], 95))
    strict = alerts.AlertThresholds(p95_latency_ms=1000, error_rate=0.1, daily_cost=0.0001, min_feedback_score=None)
    assert {a.check for a in alerts.check_alerts(health, strict)} == {"p95 latency", "error rate", "daily cost"}
    relaxed = alerts.AlertThresholds(p95_latency_ms=10_000, error_rate=0.5, daily_cost=100)
    assert alerts.check_alerts(health, relaxed) == []

    alerts.save_thresholds(settings, "agent-a", strict)
    loaded = alerts.load_thresholds(settings)
    assert alerts.thresholds_for(loaded, "agent-a") == strict
    assert alerts.thresholds_for(loaded, "other") == alerts.AlertThresholds()
    with pytest.raises(ValidationError, match="error_rate"):
        alerts.save_thresholds(settings, "agent-a", alerts.AlertThresholds(error_rate=3))


def test_an_alert_writes_its_value_and_threshold_apart_when_they_are_close():
    close = alerts.AgentHealth("agent-a", requests=40, error_rate=0.10004, p95_latency_ms=1000.4, cost_last_24h=5.0041,
                                feedback_score=0.5996, feedback_count=40)
    limits = alerts.AlertThresholds(p95_latency_ms=1000, error_rate=0.1, daily_cost=5, min_feedback_score=0.6)
    found = {a.check: a.message for a in alerts.check_alerts(close, limits)}
    assert found["p95 latency"] == "p95 latency 1,000.4 ms is above 1,000.0 ms"
    assert found["error rate"] == "error rate 10.004% is above 10.000%"
    assert found["daily cost"] == "cost over the last 24 h $5.004 is above $5.000"
    assert found["feedback score"] == "mean thumbs_up 0.5996 is below 0.6000 (40 assessments)"
    # Values far apart keep the usual precision.
    far = alerts.AgentHealth("agent-a", 40, 0.5, 3000.0, 9.0, 0.2, 40)
    assert {a.message.split(" (")[0] for a in alerts.check_alerts(far, limits)} >= {
        "error rate 50.0% is above 10.0%", "mean thumbs_up 0.20 is below 0.60"}


def test_price_table_round_trip_and_validation(isolated_settings):
    assert pricing.load_prices(isolated_settings) == pricing.DEFAULT_PRICES
    saved = pricing.save_prices(isolated_settings, {"m": {"input_per_mtok": 1, "output_per_mtok": 2}})
    assert saved["m"].cached_input_per_mtok == 1  # no cache discount unless given
    assert pricing.load_prices(isolated_settings) == saved
    with pytest.raises(ValidationError, match="zero or more"):
        pricing.save_prices(isolated_settings, {"m": {"input_per_mtok": -1, "output_per_mtok": 2}})
    with pytest.raises(ValidationError, match="no model name"):
        pricing.save_prices(isolated_settings, {" ": {"input_per_mtok": 1, "output_per_mtok": 2}})
    assert pricing.load_prices(isolated_settings) == saved  # nothing written on refusal


def _statements(client):
    """Statements the store's engine runs while the block runs (PRAGMAs aside)."""
    import contextlib

    from sqlalchemy import event

    seen: list[str] = []

    def record(conn, cursor, statement, *_):
        if not statement.lstrip().upper().startswith("PRAGMA"):
            seen.append(statement)

    @contextlib.contextmanager
    def watching():
        engine = internal.tracking_store(client).engine
        event.listen(engine, "before_cursor_execute", record)
        try:
            yield seen
        finally:
            event.remove(engine, "before_cursor_execute", record)

    return watching()


def test_split_charts_take_two_statements_whatever_the_groups(known_store):
    settings, _, experiment_id, _ = known_store
    from services import _clients

    store_client = _clients.mlflow_client(settings)  # same URI, so the same cached store and engine
    for groups in (["1"], ["1", "2"], ["1", "2", "3", "4", "5"]):
        with _statements(store_client) as seen:
            data = mon.monitoring_data(_query(experiment_id), "version", groups, prices=PRICES, settings=settings)
        assert (data.aggregation_path, data.store_queries) == ("sql", 2)
        assert len(seen) == 2, seen
        assert list(data.totals["group"]) == groups


def test_fallback_store_gives_the_same_charts(known_store, monkeypatch):
    settings, _, experiment_id, _ = known_store
    query = _query(experiment_id, agent="agent-a")
    fast = mon.monitoring_data(query, "version", ["1", "2"], prices=PRICES, interval_seconds=900, settings=settings)
    monkeypatch.setattr(internal.aggregates, "supports_sql_aggregation", lambda client: False)
    slow = mon.monitoring_data(query, "version", ["1", "2"], prices=PRICES, interval_seconds=900, settings=settings)
    assert (fast.aggregation_path, slow.aggregation_path) == ("sql", "query_trace_metrics")
    assert slow.store_queries > fast.store_queries
    pd.testing.assert_frame_equal(fast.totals, slow.totals, check_exact=False, rtol=1e-9)
    pd.testing.assert_frame_equal(fast.series, slow.series, check_exact=False, rtol=1e-9)
    pd.testing.assert_frame_equal(fast.by_model, slow.by_model, check_exact=False, rtol=1e-9)


def test_bad_group_values_are_refused_before_io(monkeypatch):
    for module in (mon.series, mon.links):  # the package's modules that read the store
        monkeypatch.setattr(module, "mlflow_client", lambda *_: pytest.fail("no I/O expected"))
    query = mon.TraceQuery(("1",), datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2, tzinfo=timezone.utc))
    with pytest.raises(ValidationError, match="not a valid tag value"):
        mon.monitoring_data(query, "version", ["1", "2`"])


# --- thresholds: types, agent keys, roles, atomic writes ------------------------------------

ADMIN = Identity("admin@example.com", "admin", IdentitySource.OS_USER)
OPERATOR = Identity("ops@example.com", "ops", IdentitySource.OS_USER)


@pytest.mark.parametrize("values, field", [
    ({"p95_latency_ms": "5"}, "p95_latency_ms"), ({"error_rate": "0.1"}, "error_rate"),
    ({"daily_cost": True}, "daily_cost"), ({"min_feedback_score": float("nan")}, "min_feedback_score"),
    ({"feedback_name": None}, "feedback_name"), ({"feedback_name": 'a"b'}, "feedback_name"),
])
def test_thresholds_of_the_wrong_type_name_the_field(isolated_settings, values, field):
    with pytest.raises(ValidationError, match=field):
        alerts.save_thresholds(isolated_settings, "agent-a", alerts.AlertThresholds(**values))
    assert alerts.threshold_versions(isolated_settings) == {}  # nothing stored


@pytest.mark.parametrize("agent", ["", " agent-a", "agent\n", "a`b", None, 7, "x" * 300])
def test_threshold_keys_must_be_agent_names(isolated_settings, agent):
    with pytest.raises(ValidationError, match="not an agent name"):
        alerts.save_thresholds(isolated_settings, agent, alerts.AlertThresholds())
    assert alerts.threshold_versions(isolated_settings) == {}  # nothing stored


def test_saving_thresholds_needs_the_admin_role_and_is_stored_with_the_team(isolated_settings):
    import json

    from services import team_state

    (isolated_settings.data_dir / "roles.json").write_text(json.dumps(
        {"users": {"admin@example.com": "admin", "ops@example.com": "operator"}, "default": "viewer"}))
    strict = alerts.AlertThresholds(p95_latency_ms=1000, error_rate=0.1)
    alerts.save_thresholds(isolated_settings, "agent-a", strict, identity=ADMIN)
    stored = team_state.read_all(isolated_settings, alerts.THRESHOLDS_KEY)
    with pytest.raises(PermissionDeniedError, match="admin"):
        alerts.save_thresholds(isolated_settings, "agent-a", alerts.AlertThresholds(), identity=OPERATOR)
    assert team_state.read_all(isolated_settings, alerts.THRESHOLDS_KEY) == stored  # refused: unchanged
    assert alerts.load_thresholds(isolated_settings)["agent-a"] == strict
    assert team_state.history(isolated_settings, alerts.THRESHOLDS_KEY + "agent-a")[0]["user"] == ADMIN.user
    with pytest.raises(ConflictError, match="since you loaded it"):  # an edit based on the version before
        alerts.save_thresholds(isolated_settings, "agent-a", alerts.AlertThresholds(), identity=ADMIN, expected_version=0)
    assert alerts.load_thresholds(isolated_settings)["agent-a"] == strict


def test_an_embedded_thresholds_file_is_migrated_once(isolated_settings):
    import json

    from services import team_state

    (isolated_settings.data_dir / alerts.THRESHOLDS_FILE).write_text(json.dumps({"agent-a": {"p95_latency_ms": 900}}))
    assert alerts.load_thresholds(isolated_settings)["agent-a"].p95_latency_ms == 900
    (isolated_settings.data_dir / alerts.THRESHOLDS_FILE).write_text(json.dumps({"agent-a": {"p95_latency_ms": 5}}))
    assert alerts.load_thresholds(isolated_settings)["agent-a"].p95_latency_ms == 900  # once: the store counts now
    assert [c["user"] for c in team_state.history(isolated_settings)] == [team_state.MIGRATED_BY]


def test_a_corrupt_thresholds_file_is_a_clear_error(isolated_settings):
    (isolated_settings.data_dir / alerts.THRESHOLDS_FILE).write_text('["not", "a", "mapping"]')
    with pytest.raises(ValidationError, match="cannot be read"):
        alerts.load_thresholds(isolated_settings)
