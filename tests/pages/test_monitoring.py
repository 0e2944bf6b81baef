"""The Monitoring page over stores with known traces, driven by Streamlit's AppTest."""

from __future__ import annotations

from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from services import _mlflow_internal as internal
from tests.harness.app_page import open_page
from tests.services.test_monitoring import TRACES, _spec


def _store(settings, traces=TRACES) -> None:
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)
    experiment_id = client.create_experiment("mon", artifact_location=(settings.artifact_root / "m").as_uri())
    client.create_registered_model("agent-a", tags={"agentops.experiment_id": experiment_id})
    internal.log_traces(client, [_spec(experiment_id, *t) for t in traces])


def _problems(app: AppTest) -> list[str]:
    """Error messages other than threshold alerts."""
    return [e.value for e in app.error if e.icon != ":material/notifications_active:"]


def _explorer(app: AppTest):
    return next(d.value for d in app.dataframe if "trace_id" in d.value.columns)


def _metric(app: AppTest, label: str) -> str:
    return next(m.value for m in app.metric if m.label == label)


def test_page_shows_store_figures_and_applies_filters(isolated_settings, use_store):
    _store(isolated_settings)
    use_store(isolated_settings.data_dir)
    app = open_page("pages/monitoring.py")
    assert not app.exception and not _problems(app)
    assert _metric(app, "Requests") == str(len(TRACES))
    assert _metric(app, "Traces without token usage") == "1"
    assert len(app.get("plotly_chart")) >= 8  # six series charts, cost by model and by version
    assert any("2 SQL statements" in c.value for c in app.caption)  # pushed down to the store's tables

    app.selectbox(key="mon_agent").select("agent-a").run()
    app.selectbox(key="mon_version").select("2").run()
    app.selectbox(key="mon_status").select("ERROR").run()
    assert not app.exception
    assert _metric(app, "Requests") == "1"
    assert _metric(app, "Error rate") == "100.0%"
    explorer = _explorer(app)
    assert len(explorer) == 1 and explorer.iloc[0]["version"] == "2"

    app.selectbox(key="mon_status").select("Any").run()
    app.number_input(key="mon_min_lat").set_value(1500).run()
    assert sorted(_explorer(app)["latency_ms"]) == [2000, 3000]


def test_alerts_follow_saved_thresholds(isolated_settings, use_store):
    from services import alerts as mon

    _store(isolated_settings)
    mon.save_thresholds(isolated_settings, "agent-a", mon.AlertThresholds(p95_latency_ms=500, error_rate=None,
                                                                         daily_cost=None, min_feedback_score=None))
    use_store(isolated_settings.data_dir)
    app = open_page("pages/monitoring.py")
    assert not app.exception
    assert any("agent-a" in e.value and "p95 latency" in e.value for e in app.error)


def test_empty_window_shows_an_empty_state(isolated_settings, use_store):
    old = [(v, a, 60 * 24 * 10 + m, d, u, model, e) for v, a, m, d, u, model, e in TRACES]  # ten days ago
    _store(isolated_settings, old)
    use_store(isolated_settings.data_dir)
    app = open_page("pages/monitoring.py")
    assert not app.exception and not _problems(app)
    assert any("No traces match these filters" in i.value for i in app.info)


def test_empty_store_says_how_to_fill_it(tmp_path, use_store):
    use_store(tmp_path / "empty")
    app = open_page("pages/monitoring.py")
    assert not app.exception
    assert any("python -m demo.seed" in i.value for i in app.info)


def test_thresholds_and_prices_are_saved_only_once_confirmed(isolated_settings, use_store):
    from services import alerts

    _store(isolated_settings)
    use_store(isolated_settings.data_dir)
    app = open_page("pages/monitoring.py")
    before = alerts.load_thresholds(isolated_settings)
    next(n for n in app.number_input if n.label == "p95 latency (ms)").set_value(1234.0)
    next(b for b in app.button if b.label == "Review thresholds").click().run()
    assert not app.exception
    assert any("**p95_latency_ms**: 5000.0 → 1234.0" in m.value for m in app.markdown)
    assert alerts.load_thresholds(isolated_settings) == before  # reviewed, not saved
    next(b for b in app.button if b.label == "Save thresholds").click().run()
    assert not app.exception
    assert alerts.load_thresholds(isolated_settings)["*"].p95_latency_ms == 1234.0
    assert any("Saved thresholds for" in m.value for m in app.success)  # said after the rerun, not lost to it

    # The price table unchanged: the confirmation says so and there is nothing to save.
    assert any("Nothing changes" in m.value for m in app.markdown)
    assert app.button(key="mon_save_prices").disabled
    assert any("Nothing to save" in c.value for c in app.caption)
