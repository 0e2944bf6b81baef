"""The serving page's MLflow AI Gateway section against the real server (AppTest)."""

from __future__ import annotations

import pytest

from services import audit
from services.serving import ai_gateway
from tests.ai_gateway.conftest import create_endpoint
from tests.hardening.page_session import app_page

pytestmark = pytest.mark.slow


@pytest.fixture
def gateway_page(gateway_server, gateway_models, monkeypatch):
    create_endpoint(gateway_server, gateway_models, "gw-page", {"model-a": 0.5, "model-b": 0.5}, fallback="model-c")
    with app_page(gateway_server, monkeypatch, "pages/serving.py") as app:
        app.segmented_control(key="serving_layer").set_value("MLflow AI Gateway").run()
        app.selectbox(key="aigw_endpoint").set_value("gw-page").run()
        yield app


def test_gateway_section_edits_the_split_with_preview_confirmation_and_audit(gateway_page, gateway_server):
    app = gateway_page
    assert not app.exception
    assert any("Total: 100%" in s.value for s in app.success)
    models = app.dataframe[0].value
    assert list(models["Role"]) == ["arm", "arm", "fallback #1"]

    app.number_input(key="aigw_pct::gw-page::model-a").set_value(70).run()
    assert any("Total: 120%" in e.value for e in app.error)
    assert app.button(key="aigw_review::gw-page").disabled

    app.number_input(key="aigw_pct::gw-page::model-b").set_value(30).run()
    app.text_input(key="aigw_reason::gw-page").set_value("more of a").run()
    app.button(key="aigw_review::gw-page").click().run()
    assert not app.exception
    assert ai_gateway.get_endpoint("gw-page", gateway_server).percentage_for("model-a") == 50  # preview only
    app.button(key="aigw_plan::gw-page::confirm").click().run()

    assert not app.exception
    assert {r.entity_name: r.percentage for r in ai_gateway.get_endpoint("gw-page", gateway_server).routes} == {
        "model-a": 70, "model-b": 30}
    [change] = audit.traffic_changes("gw-page", settings=gateway_server)
    assert change.reason == "more of a"

    # The History tab (the same component as the agent-endpoint section) shows the change.
    assert any("more of a" in list(d.value.get("Reason", [])) for d in app.dataframe)

    # With usage traces, the Judge tab offers the shared promote form; promoting moves the weights.
    from datetime import datetime, timezone

    from tests.ai_gateway.test_ai_gateway import _samples_when_logged, _send

    start = datetime.now(tz=timezone.utc)
    _send(gateway_server, "gw-page", 12)
    _samples_when_logged(gateway_server, "gw-page", start, 12)
    app.run()
    assert not app.exception
    app.selectbox(key="aigw_winner::gw-page").set_value("model-b").run()
    app.text_input(key="aigw_why::gw-page").input("b for everyone").run()
    app.button(key="aigw_promote::gw-page").click().run()
    assert not app.exception
    assert {r.entity_name: r.percentage for r in ai_gateway.get_endpoint("gw-page", gateway_server).routes} == {
        "model-a": 0, "model-b": 100}
    assert [c.reason for c in audit.traffic_changes("gw-page", settings=gateway_server)] == [
        "b for everyone", "more of a"]


def test_overview_lists_gateway_endpoints_named_by_provider_and_model(gateway_server, gateway_models, monkeypatch):
    from components.charts import split_chart
    from components.serving import arm_label

    create_endpoint(gateway_server, gateway_models, "gw-overview", {"model-a": 0.8, "model-b": 0.2})
    # app_page clears the data caches: an earlier test's app read the overview before this endpoint existed.
    with app_page(gateway_server, monkeypatch, None) as app:
        assert not app.exception
        frames = [d.value for d in app.dataframe if "Traffic split" in d.value.columns]
        rows = {r["Endpoint"]: r["Traffic split"] for f in frames for r in f.to_dict("records")}
        assert "gw-overview" in rows, (rows, [w.value for w in app.warning], [i.value for i in app.info], [e.value for e in app.error])
        assert rows["gw-overview"] == "openai/gpt-a 80% · openai/gpt-b 20%"  # no empty "v"
    endpoint = ai_gateway.get_endpoint("gw-overview", gateway_server)
    texts = [bar.text for bar in split_chart((endpoint,)).data]
    assert texts == ["openai/gpt-a · 80%", "openai/gpt-b · 20%"]
    assert arm_label(endpoint, endpoint.served[0].entity_name) == "openai/gpt-a"
