"""The team deployment: a real ``mlflow server`` on a real PostgreSQL, the app on the ``mlflow`` backend.

One server on the session's PostgreSQL cluster (``postgres`` in tests/conftest.py), written to only
through MLflow's public API, as another team's code would. Checks that the store-side aggregates read
the server's database (``AGENTOPS_STORE_DB_URL``, read-only) with the same figures as the public
``query_trace_metrics`` path, and that a PostgreSQL that is down gives a clear message and writes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from services import _clients
from services import _mlflow_internal as internal
from services._mlflow_internal import store_db
from services.settings import load_settings
from tests.harness.mlflow_server import running_mlflow_server

ROOT = Path(__file__).resolve().parents[2]
HOUR_MS = 3_600_000
# (team, minutes after the window start, duration ms, error, (input, output) tokens or None)
TRACES = [("red", 5, 120, False, (100, 10)), ("red", 40, 480, True, (50, 5)), ("red", 70, 90, False, None),
          ("blue", 10, 300, False, (300, 30)), ("blue", 100, 60, False, (20, 2)), ("blue", 115, 900, True, (10, 1)),
          ("green", 65, 33, False, (7, 3))]


def _spec(experiment_id: str, origin_ms: int, team: str, minute: int, duration: int, error: bool, tokens):
    start = (origin_ms + minute * 60_000) * 1_000_000
    end = start + duration * 1_000_000
    children = ()
    if tokens:
        children = (internal.SpanSpec("llm", "CHAT_MODEL", start + 1000, end - 1000, attributes={
            "mlflow.chat.tokenUsage": {"input_tokens": tokens[0], "output_tokens": tokens[1],
                                       "total_tokens": sum(tokens)},
            "mlflow.llm.model": "gpt-4o-mini", "mlflow.llm.provider": "openai"}),)
    root = internal.SpanSpec("predict", "AGENT", start, end, inputs={"q": minute}, outputs="a",
                             error="boom" if error else None, children=children)
    return internal.TraceSpec(experiment_id, root, tags={"team": team})


@pytest.fixture(scope="module")
def team_server(postgres, tmp_path_factory):
    """The server on its PostgreSQL database, an experiment of traces written through it, and a
    read-only database role for the app."""
    root = tmp_path_factory.mktemp("team-server")
    url = postgres.new_database("team")
    with running_mlflow_server(root, backend_store_uri=url, env={"MLFLOW_MODEL_CATALOG_URI": ""}) as settings:
        client = MlflowClient(tracking_uri=settings.mlflow_uri)
        experiment_id = client.create_experiment("team-traces")
        origin_ms = (int(time.time() * 1000) // HOUR_MS - 3) * HOUR_MS
        assert not internal.supports_direct_load(client)  # a REST store: the public tracing API writes
        _clients.configure_mlflow(settings)  # the tracing API exports to the global tracking URI
        try:
            internal.log_traces(client, [_spec(experiment_id, origin_ms, *t) for t in TRACES])
        finally:
            _clients.configure_mlflow(_clients.get_settings())
        reader = postgres.create_reader(url.rsplit("/", 1)[1], role="team_reader")
        yield settings, url, reader, experiment_id, origin_ms


def _settings(settings, **env):
    return load_settings({"AGENTOPS_BACKEND": "mlflow", "AGENTOPS_MLFLOW_URI": settings.mlflow_uri,
                          "AGENTOPS_DATA_DIR": str(settings.data_dir), **env})


def test_aggregates_read_the_server_database_with_the_api_figures(team_server):
    settings, _, reader, experiment_id, origin_ms = team_server
    direct = _clients.mlflow_client(_settings(settings, AGENTOPS_STORE_DB_URL=reader))
    window = dict(start_ms=origin_ms, end_ms=origin_ms + 2 * HOUR_MS, interval_seconds=1800,
                  group_tag="team", groups=["red", "blue", "green"])
    fast = internal.aggregate_traces(direct, [experiment_id], **window)
    slow = internal.aggregate_traces(direct, [experiment_id], **window, force_fallback=True)
    assert (fast.path, fast.store_queries, slow.path) == ("sql", 2, "query_trace_metrics")
    assert len(fast.rows) == len(slow.rows) == 3 + 6  # three whole-window rows, six non-empty half hours
    for mine, theirs in zip(fast.rows, slow.rows):
        assert (mine.group, mine.bucket_ms, mine.requests, mine.errors, mine.input_tokens, mine.output_tokens,
                mine.traces_with_tokens) == (theirs.group, theirs.bucket_ms, theirs.requests, theirs.errors,
                                             theirs.input_tokens, theirs.output_tokens, theirs.traces_with_tokens)
        assert [mine.p50_ms, mine.p95_ms, mine.p99_ms] == pytest.approx([theirs.p50_ms, theirs.p95_ms, theirs.p99_ms])
        assert mine.recorded_cost == pytest.approx(theirs.recorded_cost)
    assert [(m.group, m.model, m.llm_calls) for m in fast.models] == [(m.group, m.model, m.llm_calls) for m in slow.models]
    red = next(r for r in fast.rows if r.group == "red" and r.bucket_ms is None)
    assert (red.requests, red.errors, red.input_tokens) == (3, 1, 150)
    assert internal.trace_tag_values(direct, [experiment_id], "team", start_ms=origin_ms,
                                     end_ms=origin_ms + 2 * HOUR_MS) == ["red", "blue", "green"]
    # Without the URL the same client takes the public path.
    plain = _clients.mlflow_client(_settings(settings))
    assert internal.aggregate_traces(plain, [experiment_id], **window).path == "query_trace_metrics"


def test_a_role_owning_schema_agentops_gets_roll_ups_with_the_direct_figures(team_server, postgres):
    settings, url, _, experiment_id, origin_ms = team_server
    owner = postgres.create_reader(url.rsplit("/", 1)[1], role="team_rollups", rollup_schema="agentops")
    client = _clients.mlflow_client(_settings(settings, AGENTOPS_STORE_DB_URL=owner))
    window = dict(start_ms=origin_ms - 7 * 60_000, end_ms=origin_ms + 2 * HOUR_MS, interval_seconds=1800)
    for status in (None, "ERROR"):
        rolled = internal.aggregate_traces(client, [experiment_id], **window, status=status)
        direct = internal.aggregate_traces(client, [experiment_id], **window, status=status, use_rollups=False)
        assert (rolled.path, direct.path) == ("rollup", "sql")
        assert [(r.bucket_ms, r.requests, r.errors, r.input_tokens, r.traces_with_tokens) for r in rolled.rows] == \
            [(r.bucket_ms, r.requests, r.errors, r.input_tokens, r.traces_with_tokens) for r in direct.rows]
        for mine, theirs in zip(rolled.rows, direct.rows):
            assert mine.p95_ms == pytest.approx(theirs.p95_ms, rel=0.01)
    with sa.create_engine(owner).connect() as connection:  # kept beside MLflow's tables, not among them
        stored = connection.execute(sa.text("SELECT sum(requests) FROM agentops.agentops_trace_rollup")).scalar()
        assert stored == len(TRACES)
        assert "agentops_trace_rollup" not in sa.inspect(connection).get_table_names(schema="public")


def test_the_store_database_is_opened_read_only(team_server):
    _, owner_url, _, _, _ = team_server
    engine = store_db.readonly_engine(owner_url)  # even with the owner's role, no write goes through
    with pytest.raises(sa.exc.DBAPIError, match="read-only"):
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE experiments SET name = 'x'"))


def test_a_database_of_another_store_is_refused(team_server, postgres):
    settings, _, _, experiment_id, origin_ms = team_server
    other = postgres.new_database("other")
    MlflowClient(tracking_uri=other).create_experiment("not-the-team-traces")  # same id, another experiment
    client = _clients.mlflow_client(_settings(settings, AGENTOPS_STORE_DB_URL=other))
    with pytest.raises(store_db.StoreDatabaseError, match="is not the database of the MLflow server"):
        internal.aggregate_traces(client, [experiment_id], start_ms=origin_ms, end_ms=origin_ms + HOUR_MS,
                                  interval_seconds=3600)


def _row_counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return {t: connection.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar_one()
                    for t in sa.inspect(connection).get_table_names()}
    finally:
        engine.dispose()


def _gate(env: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTOPS_", "MLFLOW_TRACKING"))}
    return subprocess.run([sys.executable, "-m", "agentops", "gate", "--model", "agent", "--version", "1",
                           "--json", str(tmp_path / "gate.json")],
                          cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=300)


def test_postgres_down_gives_a_clear_message_and_writes_nothing(team_server, postgres, tmp_path, monkeypatch):
    settings, owner_url, reader, _, _ = team_server
    before = _row_counts(owner_url)
    env = {"AGENTOPS_BACKEND": "mlflow", "AGENTOPS_MLFLOW_URI": settings.mlflow_uri,
           "AGENTOPS_DATA_DIR": str(tmp_path / "data")}
    postgres.stop()
    try:
        assert not postgres.running()
        through_server = _gate(env, tmp_path)
        assert through_server.returncode == 3, through_server.stdout + through_server.stderr
        assert f"tracking store at {settings.mlflow_uri}" in through_server.stderr
        assert "cannot read its store" in through_server.stderr
        direct = _gate({**env, "AGENTOPS_STORE_DB_URL": reader}, tmp_path)
        assert direct.returncode == 3, direct.stdout + direct.stderr
        assert "Cannot reach the MLflow store database" in direct.stderr and "PostgreSQL is running" in direct.stderr
        assert "Traceback" not in through_server.stderr + direct.stderr
        assert not (tmp_path / "gate.json").exists()

        for key, value in {**env, "AGENTOPS_STORE_DB_URL": reader}.items():
            monkeypatch.setenv(key, value)
        _clients._cached_settings.cache_clear()
        app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        app.run()  # the Overview page checks the connection first
        assert not app.exception
        shown = " ".join(e.value for e in app.error)
        assert "PostgreSQL is running" in shown, shown
    finally:
        monkeypatch.undo()
        _clients._cached_settings.cache_clear()
        _clients.configure_mlflow()
        postgres.start()
    assert _row_counts(owner_url) == before
