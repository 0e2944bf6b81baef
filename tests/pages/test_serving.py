"""The serving page over a seeded store (AppTest)."""

from __future__ import annotations

import pytest
from databricks.sdk.service import serving as sdk

from services import audit, serving
from tests.harness.app_page import open_page

pytestmark = pytest.mark.slow


def _endpoint_records(settings) -> dict:
    """The stored endpoint configurations (team state records: version and value of each)."""
    from services import team_state

    return {k: (r.version, r.value) for k, r in team_state.read_all(settings, serving.ENDPOINT_KEY).items()}


def test_split_editor_checks_the_sum_and_a_bad_split_changes_nothing(seeded_settings):
    before = _endpoint_records(seeded_settings)
    app = open_page("pages/serving.py", timeout=90)
    assert not app.exception
    assert app.selectbox(key="serving_endpoint").value == "orders-prod"
    assert any("Total: 100%" in s.value for s in app.success)
    app.number_input(key="pct::orders-prod::orders-agent::2").set_value(70).run()
    assert any("Total: 80%" in e.value for e in app.error)
    review = app.button(key="review::orders-prod")
    assert review.disabled
    assert _endpoint_records(seeded_settings) == before


def test_judge_tab_shows_arms_and_a_verdict(seeded_settings):
    app = open_page("pages/serving.py", timeout=90)
    assert not app.exception
    assert any("Verdict" in m.value for m in app.markdown)
    arms = app.dataframe[0].value
    assert len(arms) == 2 and (arms["Requests"] > 0).all()


def test_confirmed_change_is_applied_and_audited(tmp_path, monkeypatch, seeded_settings):
    # Work on a copy of the endpoint file so the shared demo store keeps its split.

    app = open_page("pages/serving.py", timeout=90)
    endpoint = "support-prod"
    app.selectbox(key="serving_endpoint").set_value(endpoint).run()
    app.number_input(key=f"pct::{endpoint}::support-agent::1").set_value(50).run()
    app.number_input(key=f"pct::{endpoint}::support-agent::2").set_value(50).run()
    app.text_input(key=f"reason::{endpoint}").input("even split for the test").run()
    app.button(key=f"review::{endpoint}").click().run()
    preview = app.dataframe[0].value
    assert list(preview["Proposed %"]) == [50, 50] and list(preview["Current %"]) == [80, 20]
    app.button(key=f"plan::{endpoint}::confirm").click().run()
    assert not app.exception
    stored = serving.get_endpoint(endpoint, seeded_settings)
    try:
        assert {r.percentage for r in stored.routes} == {50}
        change = audit.traffic_changes(endpoint, settings=seeded_settings)[0]
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
    before = _endpoint_records(seeded_settings)
    app = open_page("pages/serving.py", timeout=90)
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
    assert _endpoint_records(seeded_settings) == before


# --- Databricks backend: the "Deploy version" tab --------------------------------------------------

DBX_MODEL = "main.demo.support"
DBX_ENDPOINT = "agents_main-demo-support"


@pytest.fixture
def databricks_page(monkeypatch, isolated_settings):
    """The serving page on the Databricks backend: serving and deploys against the harness (real SDK and
    databricks-agents), the registry and audit trail in a local store, signed in as an operator."""
    from databricks.sdk.service import iam

    from services import _clients
    from tests.harness.agents_api import AgentsApi
    from tests.harness.databricks import DatabricksHarness
    from tests.harness.databricks_settings import databricks_env, use_app_env
    from tests.services.test_deploy import _existing_endpoint
    from tests.services.test_serving_split import _local_client_factory

    harness = DatabricksHarness().start()
    api = AgentsApi(harness).install()
    for version in (1, 2, 3):
        api.add_model_version(DBX_MODEL, version)
    harness.endpoints[DBX_ENDPOINT] = _existing_endpoint()
    harness.users["olivia-token"] = iam.User(user_name="olivia@example.com",
                                             groups=[iam.ComplexValue(display="release-managers")])
    harness.api = api
    import mlflow

    registry = mlflow.MlflowClient(tracking_uri=isolated_settings.tracking_uri, registry_uri=isolated_settings.tracking_uri)
    registry.create_registered_model(DBX_MODEL)
    for _ in range(3):
        registry.create_model_version(DBX_MODEL, source="file:///tmp/none")
    use_app_env(monkeypatch, databricks_env(harness, isolated_settings.data_dir, DATABRICKS_TOKEN="app-token",
                                            AGENTOPS_ROLE_GROUPS="operator=release-managers"))
    monkeypatch.setattr("components.context.request_headers", lambda: {
        "X-Forwarded-Email": "olivia@example.com", "X-Forwarded-Access-Token": "olivia-token"})
    local = _local_client_factory()
    monkeypatch.setattr("services.audit.trail.mlflow_client", local)
    monkeypatch.setattr("services.registry.mlflow_client", local)
    yield harness
    monkeypatch.undo()
    _clients._cached_settings.cache_clear()
    _clients.configure_mlflow()
    api.stop()
    harness.stop()


def test_databricks_deploy_tab_previews_confirms_deploys_and_records(databricks_page):
    harness = databricks_page
    app = open_page("pages/serving.py", timeout=90)
    assert not app.exception
    assert app.selectbox(key="serving_endpoint").value == DBX_ENDPOINT
    assert app.selectbox(key="deploy_model").value == DBX_MODEL
    app.selectbox(key="deploy_version").set_value("3").run()
    app.text_input(key="deploy_reason").input("ship v3").run()
    app.button(key="deploy_review").click().run()
    assert not app.exception
    preview = next(d.value for d in app.dataframe if "After deploy %" in d.value.columns)
    assert dict(zip(preview["Served version"], preview["After deploy %"])) == {
        "main.demo.support v3": 100, "main.demo.support v1": 0, "main.demo.support v2": 0}
    assert dict(zip(preview["Served version"], preview["Current %"])) == {
        "main.demo.support v3": 0, "main.demo.support v1": 90, "main.demo.support v2": 10}
    changes = lambda: [r for r in harness.requests if r.method in ("POST", "PUT", "PATCH")  # noqa: E731
                       and r.path.startswith(("/api/2.0/serving-endpoints", "/api/2.0/agents/"))]
    assert changes() == [], "a preview changes nothing"
    assert app.button(key="deploy_go").disabled  # not before the confirmation box is ticked
    app.checkbox(key="deploy_confirm").check().run()
    app.button(key="deploy_go").click().run()
    assert not app.exception
    assert any("Deployed main.demo.support v3 on agents_main-demo-support" in s.value for s in app.success), \
        [e.value for e in app.error]
    # The page re-read the endpoint: the split editor and the history show the deployment.
    assert app.number_input(key=f"pct::{DBX_ENDPOINT}::{DBX_MODEL}::3").value == 100
    assert any("ship v3" in list(d.value.get("Reason", [])) for d in app.dataframe)
    (put,) = [r for r in harness.requests if r.method == "PUT"]
    assert put.body["traffic_config"]["routes"][0] == {"served_model_name": "main-demo-support_3", "traffic_percentage": 100}
    # databricks-agents is outside every Databricks Apps user scope: the deploy is the app's, made after the
    # operator's role check (their token reads their groups), and audited in their name below.
    assert {a for m, p, a in harness.api.callers if m in ("POST", "PUT")} == {"Bearer app-token"}
    assert harness.scope_refusals == []
    (change,) = audit.traffic_changes(DBX_ENDPOINT)
    assert (change.user, change.action, change.reason) == ("olivia@example.com", "deploy v3", "ship v3")


def test_databricks_page_shows_a_rollout_an_unreadable_endpoint_and_external_models_by_name(databricks_page):
    from tests.services.test_serving_split import _external_endpoint

    harness = databricks_page
    harness.endpoints["chat-router"] = _external_endpoint()
    harness.unreadable.add("zz-forbidden")
    harness.endpoints["zz-forbidden"] = _external_endpoint()
    harness.endpoints["zz-forbidden"].name = "zz-forbidden"
    endpoint = harness.endpoints[DBX_ENDPOINT]
    harness.change_endpoint(DBX_ENDPOINT, lambda e: setattr(e, "pending_config", sdk.EndpointPendingConfig(
        served_entities=e.config.served_entities, traffic_config=sdk.TrafficConfig(routes=[
            sdk.Route(served_entity_name="main-demo-support_1", traffic_percentage=0),
            sdk.Route(served_entity_name="main-demo-support_2", traffic_percentage=100)]))))
    endpoint.state = sdk.EndpointState(config_update=sdk.EndpointStateConfigUpdate.IN_PROGRESS,
                                       ready=sdk.EndpointStateReady.READY)
    endpoint.last_updated_timestamp = 1_700_000_000_000
    app = open_page("pages/serving.py", timeout=90)
    assert not app.exception
    info = " ".join(i.value for i in app.info)
    assert "rolling out" in info and "main.demo.support v2 100%" in info, info
    assert any("last change by nobody through this app" in c.value for c in app.caption)
    app.selectbox(key="serving_endpoint").set_value("chat-router").run()
    assert not app.exception
    assert {n.label for n in app.number_input} >= {"gpt-4o", "gpt-4o-mini"}
    app.selectbox(key="serving_endpoint").set_value("zz-forbidden").run()
    assert not app.exception
    assert any("cannot be read" in e.value and "CAN_QUERY" in e.value for e in app.error)


def test_databricks_deploy_tab_is_disabled_for_a_viewer(databricks_page, monkeypatch):
    monkeypatch.setattr("components.context.request_headers", lambda: {"X-Forwarded-Email": "viv@example.com"})
    app = open_page("pages/serving.py", timeout=90)
    assert not app.exception
    assert app.button(key="deploy_review").disabled
