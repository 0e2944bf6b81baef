"""The serving page over a seeded store (AppTest)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from services import serving, traffic_audit

APP = str(Path(__file__).resolve().parents[2] / "app.py")
pytestmark = pytest.mark.slow


def _serving_page() -> AppTest:
    app = AppTest.from_file(APP, default_timeout=90)
    app.run()
    app.switch_page("pages/serving.py")
    app.run()
    return app


def test_split_editor_checks_the_sum_and_a_bad_split_changes_nothing(seeded_settings):
    before = serving.local_config_path(seeded_settings).read_text()
    app = _serving_page()
    assert not app.exception
    assert app.selectbox(key="serving_endpoint").value == "orders-prod"
    assert any("Total: 100%" in s.value for s in app.success)
    app.number_input(key="pct::orders-prod::orders-agent::2").set_value(70).run()
    assert any("Total: 80%" in e.value for e in app.error)
    review = app.button(key="review::orders-prod")
    assert review.disabled
    assert serving.local_config_path(seeded_settings).read_text() == before


def test_judge_tab_shows_arms_and_a_verdict(seeded_settings):
    app = _serving_page()
    assert not app.exception
    assert any("Verdict" in m.value for m in app.markdown)
    arms = app.dataframe[0].value
    assert len(arms) == 2 and (arms["Requests"] > 0).all()


def test_confirmed_change_is_applied_and_audited(tmp_path, monkeypatch, seeded_settings):
    # Work on a copy of the endpoint file so the shared demo store keeps its split.
    from services import _clients

    app = _serving_page()
    endpoint = "support-prod"
    app.selectbox(key="serving_endpoint").set_value(endpoint).run()
    app.number_input(key=f"pct::{endpoint}::support-agent::1").set_value(50).run()
    app.number_input(key=f"pct::{endpoint}::support-agent::2").set_value(50).run()
    app.text_input(key=f"reason::{endpoint}").input("even split for the test").run()
    app.button(key=f"review::{endpoint}").click().run()
    preview = app.dataframe[0].value
    assert list(preview["Proposed %"]) == [50, 50] and list(preview["Current %"]) == [80, 20]
    app.button(key=f"confirm::{endpoint}").click().run()
    assert not app.exception
    stored = serving.get_endpoint(endpoint, seeded_settings)
    try:
        assert {r.percentage for r in stored.routes} == {50}
        change = traffic_audit.traffic_changes(endpoint, settings=seeded_settings)[0]
        assert change.reason == "even split for the test"
        assert change.after == {"support-agent v1": 50, "support-agent v2": 50}
    finally:
        # Restore the demo split for the other tests.
        plan = serving.plan_split(endpoint, {("support-agent", "1"): 80, ("support-agent", "2"): 20}, settings=seeded_settings)
        serving.apply_split(plan, user="test", reason="restore demo split", settings=seeded_settings)


def test_a_reviewer_sees_the_split_but_cannot_change_it(seeded_settings, monkeypatch, tmp_path):
    import json as _json

    roles_file = tmp_path / "roles.json"
    roles_file.write_text(_json.dumps({"users": {}, "default": "reviewer"}))
    monkeypatch.setenv("AGENTOPS_ROLES_FILE", str(roles_file))
    before = serving.local_config_path(seeded_settings).read_text()
    app = _serving_page()
    assert not app.exception
    assert app.button(key="review::orders-prod").disabled
    assert any("operator role" in c.value for c in app.caption)
    # The service refuses too, whatever the page shows.
    from services.errors import PermissionDeniedError
    from services.identity import Identity, IdentitySource

    plan = serving.plan_split("orders-prod", {("orders-agent", "2"): 100}, settings=seeded_settings)
    with pytest.raises(PermissionDeniedError, match="operator"):
        serving.apply_split(plan, user="rev", reason="try", settings=seeded_settings,
                            identity=Identity("rev", "rev", IdentitySource.OS_USER))
    assert serving.local_config_path(seeded_settings).read_text() == before
