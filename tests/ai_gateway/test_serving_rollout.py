"""The serving page's MLflow AI Gateway section runs a guarded rollout (AppTest against the real server)."""

from __future__ import annotations

import pytest

from services import audit
from services import rollout_controller as rc
from services.serving import ai_gateway
from tests.ai_gateway.conftest import create_endpoint
from tests.hardening.page_session import app_page

pytestmark = pytest.mark.slow
NAME = "gw-rollout"
KEY = f"aigw_rollout::{NAME}"


def _weights(settings) -> dict[str, int]:
    return {r.entity_name: r.percentage for r in ai_gateway.get_endpoint(NAME, settings).routes}


def test_a_guarded_rollout_starts_and_aborts_on_an_ai_gateway_endpoint(gateway_server, gateway_models, monkeypatch):
    create_endpoint(gateway_server, gateway_models, NAME, {"model-a": 1.0, "model-b": 0.0}, fallback="model-c")
    with app_page(gateway_server, monkeypatch, "pages/serving.py") as app:
        app.segmented_control(key="serving_layer").set_value("MLflow AI Gateway").run()
        app.selectbox(key="aigw_endpoint").set_value(NAME).run()
        assert not app.exception
        assert any("always-valid" in c.value for c in app.caption)
        app.text_input(key=f"{KEY}::steps").set_value("10, 50, 100")
        app.button(key=f"{KEY}::review").click().run()
        assert not app.exception
        assert rc.get_rollout(NAME, gateway_server) is None and _weights(gateway_server)["model-b"] == 0  # reviewed only
        app.button(key=f"{KEY}::start").click().run()
        assert not app.exception
        started = rc.get_rollout(NAME, gateway_server)
        assert started.status is rc.Status.RUNNING and started.plan.challenger == "model-b"
        assert _weights(gateway_server) == {"model-a": 90, "model-b": 10}
        assert any("model-b" in m.value and "running" in m.value for m in app.markdown)

        app.checkbox(key=f"{KEY}::abort_sure").check()
        app.text_input(key=f"{KEY}::abort_reason").set_value("provider incident").run()  # the box unlocks Abort
        app.button(key=f"{KEY}::abort").click().run()
        assert not app.exception
    assert rc.get_rollout(NAME, gateway_server).status is rc.Status.ABORTED
    assert _weights(gateway_server) == {"model-a": 100, "model-b": 0}
    changes = audit.traffic_changes(NAME, settings=gateway_server)
    assert [sorted(c.after.values()) for c in changes] == [[0, 100], [10, 90]] and all(c.completed for c in changes)
    assert "provider incident" in changes[0].reason
