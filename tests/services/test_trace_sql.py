"""Monitoring aggregates on a Databricks SQL warehouse: the real SDK against the local harness."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from services import monitoring as mon
from services import trace_sql
from services.errors import BackendUnavailableError, ValidationError
from tests.harness.databricks import DatabricksHarness
from tests.harness.databricks_settings import databricks_env, databricks_settings
from tests.harness.sql_statements import SqlWarehouse

SOURCE = trace_sql.WarehouseSource.for_schema("wh-1", "main", "agent_ops")
TABLE = "`main`.`agent_ops`.`mlflow_experiment_trace_otel_spans`"
HOUR_MS = 3_600_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00Z
TYPES = ["STRING", "STRING", "LONG", "STRING", "LONG", "LONG", "DOUBLE", "DOUBLE", "DOUBLE", "LONG", "LONG", "LONG",
         "LONG", "DOUBLE"]
COLUMNS = list(zip(trace_sql.RESULT_COLUMNS, TYPES))
# What the warehouse answers (JSON_ARRAY: every value a string). Version 3 is not asked for.
ROWS = [
    ["bucket", "1", str(START_MS), None, "4", "1", "150.0", "385.0", "397.0", "10000", "1000", "1200", "4", "0.01"],
    ["bucket", "2", str(START_MS), None, "2", "1", "1500.0", "1950.0", "1990.0", "1200", "120", "0", "2", "0.0003"],
    ["bucket", "2", str(START_MS + HOUR_MS), None, "1", "0", "1000.0", "1000.0", "1000.0", None, None, None, "0",
     None],
    ["bucket", "3", str(START_MS), None, "9", "0", "1.0", "1.0", "1.0", "9", "9", "9", "9", "9.0"],
    ["window", "1", None, None, "4", "1", "150.0", "385.0", "397.0", "10000", "1000", "1200", "4", "0.01"],
    ["window", "2", None, None, "3", "1", "1000.0", "1900.0", "1980.0", "1200", "120", "0", "2", "0.0003"],
    ["window", "3", None, None, "9", "0", "1.0", "1.0", "1.0", "9", "9", "9", "9", "9.0"],
    ["model", "1", None, "acme-llm", "4", None, None, None, None, None, None, None, None, "0.01"],
    ["model", "2", None, "gpt-4o-mini", "2", None, None, None, None, None, None, None, None, "0.0003"],
    ["model", "3", None, "gpt-4o-mini", "9", None, None, None, None, None, None, None, None, "9.0"],
]
WINDOW = dict(start_ms=START_MS, end_ms=START_MS + 2 * HOUR_MS, interval_seconds=3600)


@pytest.fixture
def workspace():
    warehouse = SqlWarehouse(columns=COLUMNS, rows=[list(r) for r in ROWS])
    harness = DatabricksHarness(handlers=[warehouse.handler]).start()
    settings = databricks_settings(harness)
    from services._clients import workspace_client

    yield warehouse, harness, settings, workspace_client(settings, user_token="ana-token")
    harness.stop()


def _sql_requests(harness) -> list:
    return [r for r in harness.requests if r.path.startswith("/api/2.0/sql/")]


def test_one_statement_with_typed_parameters_and_parsed_rows(workspace):
    warehouse, harness, _, client = workspace
    warehouse.running_polls = 2
    result = trace_sql.warehouse_aggregates(
        client, SOURCE, **WINDOW, group_tag="agentops.version", groups=["1", "2"],
        tag_equals={"agentops.agent": "o'brien"}, status="ERROR", poll_s=0.01)

    (sent,) = warehouse.received
    assert sent["warehouse_id"] == "wh-1"
    assert (sent["disposition"], sent["format"], sent["on_wait_timeout"]) == ("INLINE", "JSON_ARRAY", "CONTINUE")
    params = {p["name"]: (p["type"], p["value"]) for p in sent["parameters"]}
    assert params["start_ns"] == ("BIGINT", str(START_MS * 1_000_000))
    assert params["end_ns"] == ("BIGINT", str((START_MS + 2 * HOUR_MS) * 1_000_000))
    assert params["step_ms"] == ("BIGINT", "3600000")
    assert params["tag_0"] == ("STRING", "o'brien")
    assert {params["status_0"][1], params["status_1"][1]} == {"STATUS_CODE_ERROR", "ERROR"}
    sql = sent["statement"]
    assert f"FROM {TABLE}" in sql
    assert "attributes:['mlflow.traceTag.agentops.version']::string AS grp" in sql
    assert "attributes:['mlflow.traceTag.agentops.agent']::string = :tag_0" in sql
    assert "percentile(latency_ms, 0.95)" in sql and "o'brien" not in sql  # values only as parameters
    polls = [r for r in _sql_requests(harness) if r.method == "GET"]
    assert len(polls) == 2

    assert (result.path, result.store_queries) == ("warehouse", 1)
    rows = {(r.group, r.bucket_ms): r for r in result.rows}
    assert set(rows) == {("1", START_MS), ("2", START_MS), ("2", START_MS + HOUR_MS), ("1", None), ("2", None)}
    v2 = rows[("2", None)]
    assert (v2.requests, v2.errors, v2.p95_ms, v2.input_tokens, v2.traces_with_tokens) == (3, 1, 1900.0, 1200, 2)
    quiet = rows[("2", START_MS + HOUR_MS)]
    assert (quiet.input_tokens, quiet.traces_with_tokens, quiet.recorded_cost) == (0, 0, 0.0)
    models = {(m.group, m.model): (m.llm_calls, m.recorded_cost) for m in result.models}
    assert models[("1", "acme-llm")] == (4, 0.01)
    assert ("3", "gpt-4o-mini") not in models
    assert models[(None, "gpt-4o-mini")] == (11, pytest.approx(9.0003))  # every matching trace


def test_results_in_several_chunks_are_all_read(workspace):
    warehouse, harness, _, client = workspace
    warehouse.chunk_rows = 3
    result = trace_sql.warehouse_aggregates(client, SOURCE, **WINDOW, group_tag="agentops.version",
                                            groups=["1", "2", "3"], poll_s=0.01)
    assert len(result.rows) == 7 and len(result.models) == 3 + 2
    chunks = [r.path for r in _sql_requests(harness) if "/result/chunks/" in r.path]
    assert [p.rsplit("/", 1)[-1] for p in chunks] == ["1", "2", "3"]


def test_a_failed_statement_is_a_typed_error(workspace):
    warehouse, _, _, client = workspace
    warehouse.fail_with = "[UNRESOLVED_COLUMN] attributes cannot be resolved"
    with pytest.raises(BackendUnavailableError, match="UNRESOLVED_COLUMN"):
        trace_sql.warehouse_aggregates(client, SOURCE, **WINDOW, poll_s=0.01)


def test_a_slow_statement_is_canceled(workspace):
    warehouse, _, _, client = workspace
    warehouse.running_polls = 10_000
    with pytest.raises(BackendUnavailableError, match="did not finish"):
        trace_sql.warehouse_aggregates(client, SOURCE, **WINDOW, timeout_s=0.05, poll_s=0.01)
    assert warehouse.canceled == [warehouse.received[0]["statement_id"]]


def test_an_unknown_warehouse_is_not_found(workspace):
    from services.errors import NotFoundError

    _, _, _, client = workspace
    with pytest.raises(NotFoundError):
        trace_sql.warehouse_aggregates(client, trace_sql.WarehouseSource("wh-9", SOURCE.spans_table), **WINDOW)


@pytest.mark.parametrize("source, extra, message", [
    (trace_sql.WarehouseSource("wh-1", "main.agent_ops"), {}, "catalog.schema.table"),
    (trace_sql.WarehouseSource("wh-1", "main.agent_ops.spans`; DROP TABLE x"), {}, "catalog.schema.table"),
    (trace_sql.WarehouseSource("wh 1", SOURCE.spans_table), {}, "warehouse id"),
    (SOURCE, {"tag_equals": {"agent']::string OR 1=1 --": "x"}}, "span attribute"),
    (SOURCE, {"group_tag": "agentops.version"}, "group values"),
    (SOURCE, {"status": "BROKEN"}, "Status"),
])
def test_bad_input_is_refused_before_any_request(workspace, source, extra, message):
    _, harness, _, client = workspace
    with pytest.raises(ValidationError, match=message):
        trace_sql.warehouse_aggregates(client, source, **{**WINDOW, **extra})
    assert _sql_requests(harness) == []


def test_monitoring_charts_from_the_warehouse(workspace, monkeypatch):
    warehouse, harness, settings, _ = workspace
    monkeypatch.setattr("services._clients._user_token", lambda _settings: "ana-token")
    start = datetime.fromtimestamp(START_MS / 1000, tz=timezone.utc)
    end = datetime.fromtimestamp((START_MS + 2 * HOUR_MS) / 1000, tz=timezone.utc)
    query = mon.TraceQuery((), start, end)
    data = mon.monitoring_data(query, "version", ["1", "2"], interval_seconds=3600, settings=settings,
                               warehouse=SOURCE, prices={"acme-llm": mon.ModelPrice(1.0, 4.0, 0.25)})
    assert data.aggregation_path == "warehouse" and len(warehouse.received) == 1
    totals = data.totals.set_index("group")
    assert list(totals["requests"]) == [4, 3]
    assert totals.loc["2", "p95_ms"] == 1900.0
    assert totals.loc["1", "recorded_cost"] == pytest.approx(0.01)
    assert list(data.series["requests"]) == [4, 0, 2, 1]  # every bucket, zeros where empty
    assert set(data.by_model["model"]) == {"acme-llm", "gpt-4o-mini"}

    with pytest.raises(ValidationError):
        mon.monitoring_data(query, "version", ["1"], settings=settings,
                            warehouse=trace_sql.WarehouseSource("wh-1", "bad"))
    assert len(warehouse.received) == 1


def test_the_charts_use_the_warehouse_only_when_databricks_has_one_configured(tmp_path):
    from services import monitoring
    from services.settings import load_settings

    base = {"AGENTOPS_DATA_DIR": str(tmp_path)}
    dbx = databricks_env("https://example.cloud.databricks.com", tmp_path)
    assert monitoring.warehouse_for(load_settings(dbx)) is None
    assert monitoring.warehouse_for(load_settings({**dbx, "AGENTOPS_WAREHOUSE_ID": "abc123"})) is None
    assert monitoring.warehouse_for(load_settings({**base, "AGENTOPS_WAREHOUSE_ID": "abc123",
                                                   "AGENTOPS_TRACE_SPANS_TABLE": "main.agents.spans"})) is None
    source = monitoring.warehouse_for(load_settings({**dbx, "AGENTOPS_WAREHOUSE_ID": " abc123 ",
                                                     "AGENTOPS_TRACE_SPANS_TABLE": "main.agents.spans"}))
    assert source is not None and (source.warehouse_id, source.spans_table) == ("abc123", "main.agents.spans")
