"""The Live scoring section of the Monitoring page (AppTest): bad input refused with nothing stored,
a valid save recorded with its author, quality over time drawn once the worker has scored traces,
and the form locked for a viewer."""

from __future__ import annotations

import json

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from services import _clients, live_scoring, team_state
from tests.harness.app_page import open_page
from tests.services.live_scoring_world import AGENT, build_world


def _open() -> AppTest:
    app = open_page("pages/monitoring.py", timeout=90)
    app.selectbox(key="mon_agent").set_value(AGENT).run()
    return app


def _form_key(app: AppTest, suffix: str):
    return next(w.key for w in [*app.number_input, *app.multiselect]
                if (w.key or "").startswith("live_") and w.key.endswith(suffix))


def _save(app: AppTest):
    return next(b for b in app.button if b.label == "Save live scoring")


def _review(app: AppTest):
    return next(b for b in app.button if b.label == "Review live scoring")


@pytest.fixture
def ui_world(isolated_settings, monkeypatch):
    monkeypatch.setenv("MLFLOW_ONLINE_SCORING_DEFAULT_TRACE_COMPLETION_BUFFER_SECONDS", "0")
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS", "true")
    world = build_world(isolated_settings, traces=4)
    # The app reads its settings from the environment: point it at this store.
    monkeypatch.setenv("AGENTOPS_DATA_DIR", str(isolated_settings.data_dir))
    _clients._cached_settings.cache_clear()
    yield world
    monkeypatch.undo()
    _clients._cached_settings.cache_clear()
    _clients.configure_mlflow()


def test_operator_configures_live_scoring_and_sees_quality(ui_world, isolated_settings):
    app = _open()
    assert any(s.value == "Live scoring" for s in app.subheader)
    assert any("has not run on this store yet" in i.value for i in app.info)
    # The form says where each scorer runs (here, the app's worker runs them all).
    assert "Latency budget (code, run by the app's worker)" in app.multiselect(key=_form_key(app, "_scorers")).options

    app.number_input(key=_form_key(app, "_rate")).set_value(1.5)
    _review(app).click().run()
    assert any("outside 0–1" in w.value for w in app.warning)
    assert not any(b.label == "Save live scoring" for b in app.button)
    assert team_state.read_all(isolated_settings, live_scoring.KEY_PREFIX) == {}

    app.number_input(key=_form_key(app, "_rate")).set_value(1.0)
    app.multiselect(key=_form_key(app, "_scorers")).set_value(["latency_budget"])
    _review(app).click().run()
    assert any("not configured → latency_budget on 100% of traces" in m.value for m in app.markdown)
    assert team_state.read_all(isolated_settings, live_scoring.KEY_PREFIX) == {}
    _save(app).click().run()
    assert not app.exception, app.exception
    assert any("not configured → latency_budget on 100% of traces" in s.value for s in app.success)
    record = team_state.read(live_scoring.KEY_PREFIX + AGENT, isolated_settings)
    assert record.value["scorers"] == ["latency_budget"] and record.value["sample_rate"] == 1.0

    live_scoring.run_pass(isolated_settings)
    st.cache_data.clear()  # the page caches results for a minute; the worker just wrote new ones
    app = _open()
    assert not app.exception, app.exception
    assert next(m.value for m in app.metric if m.label == "Traces scored (total)") == "4"
    assert any("Wilson" in c.value for c in app.caption)
    assert len(app.get("plotly_chart")) >= 1


def test_a_viewer_cannot_save(ui_world, isolated_settings):
    (isolated_settings.data_dir / "roles.json").write_text(json.dumps({"users": {}, "default": "viewer"}))
    app = _open()
    assert _review(app).disabled
    assert any("Needs the operator role" in c.value for c in app.caption)
