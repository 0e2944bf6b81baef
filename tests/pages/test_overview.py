"""The Overview page over real stores, driven by Streamlit's AppTest."""

from __future__ import annotations

import time

import pytest
import streamlit as st
from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from services import _clients
from tests.harness.app_page import open_page


def _metric(app: AppTest, label: str) -> str:
    return next(m.value for m in app.metric if m.label == label)


def _traces_since(client: MlflowClient, experiment_ids: list[str], since_ms: int) -> int:
    found = client.search_traces(
        locations=experiment_ids, filter_string=f"trace.timestamp_ms >= {since_ms}",
        max_results=5000, include_spans=False,
    )
    return len(found)


@pytest.mark.slow
def test_overview_shows_what_the_store_holds(seeded_settings):
    client = MlflowClient(tracking_uri=seeded_settings.tracking_uri)
    models = client.search_registered_models()
    experiment_ids = [m.tags["agentops.experiment_id"] for m in models]
    day_ms = 24 * 3600 * 1000
    # Another test's page run may have cached the Overview's figures (30 s, process-wide): count afresh.
    st.cache_data.clear()
    before = _traces_since(client, experiment_ids, int(time.time() * 1000) - day_ms)
    app = open_page()
    after = _traces_since(client, experiment_ids, int(time.time() * 1000) - day_ms)

    assert not app.exception
    assert _metric(app, "Agents") == str(len(models))
    assert _metric(app, "Versions") == str(len(client.search_model_versions()))
    shown = int(_metric(app, "Traces (24h)").replace(",", ""))
    # The window slides while the page renders; the store's count brackets the shown one.
    assert after <= shown <= before

    agents = app.dataframe[0].value
    assert sorted(agents["Agent"]) == sorted(m.name for m in models)
    for model in models:
        row = agents[agents["Agent"] == model.name].iloc[0]
        full = client.get_registered_model(model.name)
        assert row["Champion"] == f"v{full.aliases['champion']}"
        assert row["Challenger"] == f"v{full.aliases['challenger']}"
    endpoints = app.dataframe[1].value
    assert set(endpoints["Endpoint"]) == {"support-prod", "orders-prod"}
    evaluations = app.dataframe[2].value
    # Other tests add evaluation runs to the session store; the Overview shows the latest 8.
    eval_runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`mlflow.runType` = 'genai_evaluate'", max_results=100,
    )
    assert len(evaluations) == min(len(eval_runs), 8)
    assert not app.error


def test_empty_store_shows_how_to_fill_it(tmp_path, use_store):
    use_store(tmp_path / "empty")
    app = open_page()
    assert not app.exception
    assert any("no registered agents" in i.value for i in app.info)
    assert any("python -m demo.seed" in i.value for i in app.info)


def test_corrupt_store_gives_a_message_not_a_traceback(tmp_path, use_store):
    data_dir = tmp_path / "corrupt"
    data_dir.mkdir()
    (data_dir / "mlflow.db").write_bytes(b"garbage" * 100)
    use_store(data_dir)
    app = open_page()
    assert not app.exception
    assert any("not an SQLite database" in e.value for e in app.error)


def test_unreachable_mlflow_server_gives_a_message(monkeypatch):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AGENTOPS_BACKEND", "mlflow")
    monkeypatch.setenv("AGENTOPS_MLFLOW_URI", f"http://127.0.0.1:{port}")
    _clients._cached_settings.cache_clear()
    try:
        app = open_page()
        assert not app.exception
        assert any(f"127.0.0.1:{port}" in e.value and "Cannot reach" in e.value for e in app.error)
        assert "MLflow server" in "".join(m.value for m in app.sidebar.markdown)
    finally:
        monkeypatch.undo()
        _clients._cached_settings.cache_clear()
        _clients.configure_mlflow()


def test_a_role_is_granted_only_once_confirmed(isolated_settings, use_store):
    from services import roles
    from services.identity import Identity, IdentitySource

    settings = isolated_settings
    MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri).create_registered_model("agent-a")
    use_store(settings.data_dir)
    bo = Identity("bo@example.com", "bo", IdentitySource.OS_USER)
    app = open_page()
    next(b for b in app.button if b.label == "Review grant").click().run()
    assert any("Give the user's email or name" in w.value for w in app.warning)
    assert not any(b.label == "Grant role" for b in app.button)
    next(t for t in app.text_input if t.label.startswith("User")).input("Bo@Example.com")
    next(s for s in app.selectbox if s.label == "Role").select("operator")
    next(b for b in app.button if b.label == "Review grant").click().run()
    assert any("bo@" in m.value and "→ **operator**" in m.value for m in app.markdown)
    assert roles.roles_table(settings)[1] is roles.RolesSource.ONE_PERSON  # nothing stored yet
    next(b for b in app.button if b.label == "Grant role").click().run()
    assert not app.exception
    assert any("bo@example.com is now operator" in s.value for s in app.success)
    assert roles.local_role(bo, settings) is roles.Role.OPERATOR
    assert not any(b.label == "Grant role" for b in app.button)
