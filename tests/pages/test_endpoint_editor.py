"""The Serving page's endpoint editor (AppTest): create from the registry, preview, confirm; bad input stores nothing."""

from __future__ import annotations

import json

import mlflow
import pytest
from streamlit.testing.v1 import AppTest

from services import audit, serving, team_state
from tests.harness.app_page import open_page

MODEL = "triage agent"
pytestmark = pytest.mark.slow


@pytest.fixture
def store(isolated_settings, use_store):
    client = mlflow.MlflowClient(tracking_uri=isolated_settings.tracking_uri,
                                 registry_uri=isolated_settings.tracking_uri)
    client.create_registered_model(MODEL)
    for _ in range(2):
        client.create_model_version(MODEL, source="file:///tmp/none")
    use_store(isolated_settings.data_dir)
    return isolated_settings


def _records(settings) -> dict:
    return {k: (r.version, r.value) for k, r in team_state.read_all(settings, serving.ENDPOINT_KEY).items()}


def _add(app: AppTest, version: str) -> None:
    app.selectbox(key="epadm::create::add_agent").set_value(MODEL).run()
    app.selectbox(key="epadm::create::add_version").set_value(version).run()
    app.button(key="epadm::create::add").click().run()


def test_create_an_endpoint_from_the_registry_with_a_preview_and_an_audit_record(store):
    app = open_page("pages/serving.py", timeout=90)
    assert any("No agent endpoints yet" in i.value for i in app.info)
    app.text_input(key="epadm::name").input("triage-ab").run()
    _add(app, "1")
    _add(app, "2")
    app.number_input(key=f"epadm::create::pct::{MODEL}::1").set_value(70).run()
    assert any("Total: 70%" in e.value for e in app.error)
    app.number_input(key=f"epadm::create::pct::{MODEL}::2").set_value(30).run()
    app.text_input(key="epadm::reason").input("try v2 on 30%").run()
    app.button(key="epadm::preview").click().run()
    assert not app.exception
    preview = app.dataframe[0].value
    assert list(preview["Served version"]) == [f"{MODEL} v1", f"{MODEL} v2"]
    assert list(preview["Current %"]) == ["—", "—"] and list(preview["Proposed %"]) == ["70", "30"]
    assert _records(store) == {}  # the preview wrote nothing
    app.button(key="epadm::confirm").click().run()
    assert not app.exception
    stored = serving.get_endpoint("triage-ab", store)
    assert {r.entity_name: r.percentage for r in stored.routes} == {"triage agent_1": 70, "triage agent_2": 30}
    (change,) = audit.traffic_changes("triage-ab", settings=store)
    assert (change.action, change.reason) == ("create endpoint", "try v2 on 30%")
    # The page now shows the new endpoint and its split editor.
    assert app.selectbox(key="serving_endpoint").value == "triage-ab"
    assert any("applied and recorded" in s.value for s in app.success)


def test_a_bad_name_or_a_missing_version_is_explained_and_stores_nothing(store):
    app = open_page("pages/serving.py", timeout=90)
    app.text_input(key="epadm::name").input("triage ab").run()
    _add(app, "1")
    app.text_input(key="epadm::reason").input("r").run()
    app.button(key="epadm::preview").click().run()
    assert not app.exception
    assert any("cannot be an endpoint name" in w.value for w in app.warning)
    assert not app.dataframe  # no preview
    # A version that is not in the registry (a stale choice: deleted meanwhile).
    mlflow.MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri).delete_model_version(MODEL, "1")
    app.text_input(key="epadm::name").input("triage-ab").run()
    app.button(key="epadm::preview").click().run()
    assert any("v1 is not in the registry" in w.value for w in app.warning)
    assert _records(store) == {} and audit.traffic_changes(settings=store) == []


def test_delete_after_a_preview_and_a_viewer_cannot_change(store, tmp_path, monkeypatch):
    from services import endpoint_admin
    from services.identity import Identity, IdentitySource

    ops = Identity("ops", "ops", IdentitySource.OS_USER)
    endpoint_admin.apply(endpoint_admin.plan_create("old-ep", {(MODEL, "1"): 100}, settings=store), identity=ops,
                         reason="setup", settings=store)
    app = open_page("pages/serving.py", timeout=90)
    app.segmented_control(key="epadm::mode").set_value("Delete").run()
    app.selectbox(key="epadm::delete_name").set_value("old-ep").run()
    app.button(key="epadm::preview").click().run()
    assert any("Deletes endpoint" in m.value for m in app.markdown)
    assert app.button(key="epadm::confirm").disabled  # no reason yet
    app.text_input(key="epadm::reason").input("retired").run()
    app.button(key="epadm::confirm").click().run()
    assert not app.exception
    assert serving.list_endpoints(store) == []
    assert audit.traffic_changes("old-ep", settings=store)[0].action == "delete endpoint"

    roles_file = tmp_path / "roles.json"
    roles_file.write_text(json.dumps({"users": {}, "default": "viewer"}))
    monkeypatch.setenv("AGENTOPS_ROLES_FILE", str(roles_file))
    viewer = open_page("pages/serving.py", timeout=90)
    assert viewer.button(key="epadm::preview").disabled
    assert any("operator role" in c.value for c in viewer.caption)
