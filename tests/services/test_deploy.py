"""Deploying a version with the real ``databricks.agents.deploy`` against the local harness.

The deploy itself runs in a child process (see ``services.serving.run_agents_call``); the harness
records every request it sends, so the tests check the exact REST calls, the names databricks-agents
gives the endpoint and the served entity, that nothing is sent when validation refuses, and whose
token each call carried.
"""

from __future__ import annotations

import pytest
from databricks.sdk.service import iam
from databricks.sdk.service import serving as sdk

from services import audit, serving
from services.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from services.identity import Identity, IdentitySource
from tests.harness.agents_api import AgentsApi, agent_mlmodel, api_calls, api_tokens, app_settings
from tests.harness.databricks import DatabricksHarness
from tests.services.test_serving_split import _local_client_factory

pytestmark = pytest.mark.slow  # each deploy starts a child process that imports databricks-agents (~5 s)

MODEL = "main.demo.support"
ENDPOINT = "agents_main-demo-support"
APP_TOKEN = "app-token"
MUTATING = ("POST", "PUT", "PATCH", "DELETE")


@pytest.fixture
def harness(monkeypatch, isolated_settings):
    running = DatabricksHarness().start()
    api = AgentsApi(running).install()
    for version in (1, 2, 3):
        api.add_model_version(MODEL, version)
    monkeypatch.setenv("DATABRICKS_TOKEN", APP_TOKEN)
    monkeypatch.delenv("AGENTOPS_USER_AUTHORIZATION", raising=False)
    monkeypatch.setattr("services.audit.trail.mlflow_client", _local_client_factory())
    running.api = api
    yield running
    api.stop()
    running.stop()


@pytest.fixture
def dbx(harness, isolated_settings):
    return app_settings(harness, isolated_settings.data_dir)


def _mutations(harness) -> list[tuple[str, str]]:
    return [c for c in api_calls(harness) if c[0] in MUTATING]


def _body(harness, method: str, path: str):
    (match,) = [r.body for r in harness.requests if (r.method, r.path.split("?")[0]) == (method, path)]
    return match


def _existing_endpoint() -> sdk.ServingEndpointDetailed:
    entity = lambda v: sdk.ServedEntityOutput(name=f"main-demo-support_{v}", entity_name=MODEL,  # noqa: E731
                                              entity_version=str(v), workload_size="Small", scale_to_zero_enabled=False)
    return sdk.ServingEndpointDetailed(
        name=ENDPOINT, id="ep-1", creator="ops@example.com",
        state=sdk.EndpointState(config_update=sdk.EndpointStateConfigUpdate.NOT_UPDATING, ready=sdk.EndpointStateReady.READY),
        config=sdk.EndpointCoreConfigOutput(
            served_entities=[entity(1), entity(2)],
            traffic_config=sdk.TrafficConfig(routes=[sdk.Route(served_model_name="main-demo-support_1", traffic_percentage=90),
                                                     sdk.Route(served_model_name="main-demo-support_2", traffic_percentage=10)]),
        ),
        tags=[sdk.EndpointTag(key="MONITOR_EXPERIMENT_ID", value="777")],
    )


def test_first_deploy_creates_the_agents_endpoint_with_the_documented_requests(harness, dbx):
    messages: list[str] = []
    done = serving.deploy_version(MODEL, "3", user="ana@example.com", reason="first release", experiment_id="42",
                                  settings=dbx, progress=messages.append)
    uc_path = "/api/2.0/mlflow/unity-catalog"
    assert api_calls(harness) == [
        # our validation: the version in Unity Catalog, the endpoint (404: it will be created)
        ("GET", f"/api/2.1/unity-catalog/models/{MODEL}/versions/3"),
        ("GET", f"/api/2.0/serving-endpoints/{ENDPOINT}"),
        # databricks.agents.deploy: the model's MLmodel (signature check), the endpoint, the
        # inference-table name, the endpoint itself, then the agents deployment record
        ("GET", f"{uc_path}/registered-models:is-databricks-sdk-models-artifact-repository-enabled"),
        ("POST", f"{uc_path}/model-versions/generate-temporary-credentials"),
        ("GET", "/api/2.0/fs/directories/Models/main/demo/support/3/MLmodel"),
        ("GET", "/api/2.0/fs/directories/Models/main/demo/support/3/"),
        ("POST", "/api/2.0/fs/create-download-url"),
        ("GET", f"/api/2.0/serving-endpoints/{ENDPOINT}"),
        ("GET", "/api/2.1/unity-catalog/tables/main.demo.support_payload/exists"),
        ("POST", "/api/2.0/serving-endpoints"),
        ("POST", "/api/2.0/agents/deployments"),
        # our wait for the rollout
        ("GET", f"/api/2.0/serving-endpoints/{ENDPOINT}"),
    ]
    created = _body(harness, "POST", "/api/2.0/serving-endpoints")
    assert created["name"] == ENDPOINT
    (entity,) = created["config"]["served_entities"]
    assert (entity["name"], entity["entity_name"], str(entity["entity_version"])) == ("main-demo-support_3", MODEL, "3")
    assert entity["environment_vars"]["MLFLOW_EXPERIMENT_ID"] == "42"
    assert created["config"]["traffic_config"] == {"routes": [{"served_model_name": "main-demo-support_3", "traffic_percentage": 100}]}
    assert {"key": "MONITOR_EXPERIMENT_ID", "value": "42"} in created["tags"]
    assert created["ai_gateway"]["inference_table_config"]["table_name_prefix"] == "support"
    record = _body(harness, "POST", "/api/2.0/agents/deployments")
    assert (record["model_name"], str(record["model_version"]), record["endpoint_name"], record["served_entity_name"]) == (
        MODEL, "3", ENDPOINT, "main-demo-support_3")
    # Every call, ours and the child's, went out as the app (no user token was given).
    assert api_tokens(harness) == {f"Bearer {APP_TOKEN}"}

    assert done.endpoint.state is serving.EndpointState.READY
    assert {r.entity_name: r.percentage for r in done.endpoint.routes} == {"main-demo-support_3": 100}
    assert done.review_app_url and "/ml/review-v2/" in done.review_app_url
    assert done.endpoint_url == f"{harness.url}/ml/endpoints/{ENDPOINT}/"
    assert any("databricks.agents.deploy" in m for m in messages) and any("roll it out" in m for m in messages)
    (change,) = audit.traffic_changes(ENDPOINT, settings=dbx)
    assert (change.user, change.action, change.reason, change.outcome) == ("ana@example.com", "deploy v3", "first release", "applied")
    assert (change.before, change.after) == ({}, {"main.demo.support v3": 100})


def test_deploy_to_an_existing_endpoint_keeps_the_other_versions_at_zero(harness, dbx):
    harness.endpoints[ENDPOINT] = _existing_endpoint()
    done = serving.deploy_version(MODEL, 3, user="ana@example.com", reason="v3 out", experiment_id="42", settings=dbx)
    (put,) = [r for r in harness.requests if r.method == "PUT"]
    assert put.path == f"/api/2.0/serving-endpoints/{ENDPOINT}/config"
    assert [e["name"] for e in put.body["served_entities"]] == ["main-demo-support_3", "main-demo-support_1", "main-demo-support_2"]
    # The endpoint's monitor experiment wins over the one passed in, so traces stay where they were.
    assert put.body["served_entities"][0]["environment_vars"]["MLFLOW_EXPERIMENT_ID"] == "777"
    assert put.body["traffic_config"]["routes"] == [
        {"served_model_name": "main-demo-support_3", "traffic_percentage": 100},
        {"served_model_name": "main-demo-support_1", "traffic_percentage": 0},
        {"served_model_name": "main-demo-support_2", "traffic_percentage": 0},
    ]
    assert ("POST", "/api/2.0/serving-endpoints") not in api_calls(harness)  # updated, not created
    assert done.endpoint.percentage_for("main-demo-support_3") == 100
    (change,) = audit.traffic_changes(ENDPOINT, settings=dbx)
    assert change.before == {"main.demo.support v1": 90, "main.demo.support v2": 10}
    assert change.after == {"main.demo.support v3": 100, "main.demo.support v1": 0, "main.demo.support v2": 0}


def test_with_user_authorization_the_users_token_stays_inside_its_scopes(harness, dbx, monkeypatch):
    # databricks-agents calls Unity Catalog, MLflow and the agents API, which no Databricks Apps user scope
    # covers (the harness refuses a user token there with "Invalid scope"): the deploy runs as the app,
    # after the role check made with Ana's token; the user's token reads and follows the endpoint.
    monkeypatch.setenv("AGENTOPS_USER_AUTHORIZATION", "on")
    monkeypatch.setenv("AGENTOPS_ROLE_GROUPS", "operator=release-managers")
    harness.users["ana-token"] = iam.User(user_name="ana@example.com", groups=[iam.ComplexValue(display="release-managers")])
    ana = Identity("ana@example.com", "Ana", IdentitySource.DATABRICKS_APPS, access_token="ana-token")
    serving.deploy_version(MODEL, 2, user=ana.user, reason="as ana", identity=ana, settings=dbx)
    assert harness.scope_refusals == []
    as_ana = {path for _, path, auth in harness.api.callers if auth == "Bearer ana-token"}
    assert as_ana and all(p.startswith("/api/2.0/serving-endpoints") or p.endswith("/scim/v2/Me") for p in as_ana)
    assert [auth for method, path, auth in harness.api.callers
            if (method, path) == ("POST", "/api/2.0/agents/deployments")] == [f"Bearer {APP_TOKEN}"]
    (change,) = audit.traffic_changes(ENDPOINT, settings=dbx)
    assert change.user == "ana@example.com"


def test_a_deploy_confirmed_after_the_endpoint_changed_is_refused_and_sends_nothing(harness, dbx):
    harness.endpoints[ENDPOINT] = _existing_endpoint()
    harness.endpoints[ENDPOINT].config.config_version = 4
    plan = serving.plan_deploy(MODEL, 3, settings=dbx)

    def colleague_resizes(endpoint):  # same split, another configuration
        endpoint.config.served_entities[0].workload_size = "Large"

    harness.change_endpoint(ENDPOINT, colleague_resizes)
    with pytest.raises(ConflictError, match="changed since this deployment was prepared"):
        serving.deploy_version(MODEL, 3, user="ana@example.com", reason="v3", plan=plan, settings=dbx)
    assert _mutations(harness) == []
    assert audit.traffic_changes(ENDPOINT, settings=dbx) == []


@pytest.mark.parametrize(("model", "version", "reason", "error", "message"), [
    ("support", 3, "r", ValidationError, "catalog.schema.model"),
    ("main.demo", 3, "r", ValidationError, "catalog.schema.model"),
    ("main.demo.sup port", 3, "r", ValidationError, "catalog.schema.model"),
    ("main..support", 3, "r", ValidationError, "catalog.schema.model"),
    ("main.demo.sup\nport", 3, "r", ValidationError, "catalog.schema.model"),
    (MODEL, "²", "r", ValidationError, "not a model version"),
    (MODEL, "three", "r", ValidationError, "not a model version"),
    (MODEL, 0, "r", ValidationError, "not a model version"),
    (MODEL, 3, "  ", ValidationError, "reason"),
])
def test_refused_input_sends_nothing(harness, dbx, model, version, reason, error, message):
    with pytest.raises(error, match=message):
        serving.deploy_version(model, version, user="ana", reason=reason, settings=dbx)
    assert api_calls(harness) == []
    assert audit.traffic_changes(ENDPOINT, settings=dbx) == []


def test_local_backend_refuses_with_the_way_to_do_it_locally(isolated_settings):
    with pytest.raises(ValidationError, match="split editor"):
        serving.deploy_version(MODEL, 3, user="ana", reason="r", settings=isolated_settings)


@pytest.mark.parametrize(("setup", "version", "error", "message"), [
    ("none", 9, NotFoundError, "Version 9 of main.demo.support does not exist"),
    ("existing", 2, ValidationError, "already serves main.demo.support v2"),
    ("updating", 3, ConflictError, "update in progress"),
])
def test_refused_against_the_workspace_sends_no_change(harness, dbx, setup, version, error, message):
    if setup != "none":
        harness.endpoints[ENDPOINT] = _existing_endpoint()
    if setup == "updating":
        harness.endpoints[ENDPOINT].state.config_update = sdk.EndpointStateConfigUpdate.IN_PROGRESS
    with pytest.raises(error, match=message):
        serving.deploy_version(MODEL, version, user="ana", reason="r", settings=dbx)
    assert _mutations(harness) == []
    assert all(method == "GET" for method, _ in api_calls(harness))
    assert audit.traffic_changes(ENDPOINT, settings=dbx) == []


def test_roles_and_missing_user_token_refuse_before_any_change(harness, dbx, monkeypatch):
    monkeypatch.setenv("AGENTOPS_ROLE_GROUPS", "operator=release-managers")
    harness.users["bo-token"] = iam.User(user_name="bo@example.com", groups=[iam.ComplexValue(display="readers")])
    bo = Identity("bo@example.com", "Bo", IdentitySource.DATABRICKS_APPS, access_token="bo-token")
    with pytest.raises(PermissionDeniedError, match="operator"):
        serving.deploy_version(MODEL, 3, user=bo.user, reason="r", identity=bo, settings=dbx)
    assert api_calls(harness) == [("GET", "/api/2.0/preview/scim/v2/Me")]

    monkeypatch.setenv("AGENTOPS_USER_AUTHORIZATION", "on")
    harness.requests.clear()
    no_token = Identity("bo@example.com", "Bo", IdentitySource.DATABRICKS_APPS)
    with pytest.raises(PermissionDeniedError, match="no user token"):
        serving.deploy_version(MODEL, 3, user=no_token.user, reason="r", identity=no_token, settings=dbx)
    with pytest.raises(PermissionDeniedError, match="no user token"):
        serving.deploy_version(MODEL, 3, user="bo", reason="r", settings=dbx)  # no identity, no token
    assert api_calls(harness) == []


def test_a_model_without_an_agent_signature_is_refused_by_databricks_agents_before_any_change(harness, dbx):
    harness.api.add_model_version(MODEL, 4, agent_mlmodel(signature="plain"))
    with pytest.raises(ValidationError, match="not compatible with Agent Framework"):
        serving.deploy_version(MODEL, 4, user="ana", reason="try", settings=dbx)
    assert _mutations(harness) == [("POST", "/api/2.0/mlflow/unity-catalog/model-versions/generate-temporary-credentials"),
                                   ("POST", "/api/2.0/fs/create-download-url")]  # reads that happen to be POSTs
    assert harness.endpoints == {}
    (change,) = audit.traffic_changes(ENDPOINT, settings=dbx)
    assert change.outcome.startswith("failed:")  # the attempt is on record, with who tried


def test_errors_from_the_agents_service_and_a_failed_rollout_are_named(harness, dbx):
    harness.api.deploy_error = (403, {"error_code": "PERMISSION_DENIED", "message": "User ana cannot deploy agents"})
    with pytest.raises(PermissionDeniedError, match="User ana cannot deploy agents.*CAN_MANAGE"):
        serving.deploy_version(MODEL, 3, user="ana", reason="r", settings=dbx)

    harness.api.deploy_error = None
    harness.endpoints[ENDPOINT] = _existing_endpoint()
    harness.api.fail_rollout.add(ENDPOINT)
    with pytest.raises(ConflictError, match="could not roll out main.demo.support v3.*keeps its previous configuration"):
        serving.deploy_version(MODEL, 3, user="ana", reason="r2", settings=dbx)
    outcomes = [c.outcome for c in audit.traffic_changes(ENDPOINT, settings=dbx)]
    assert sorted(o.split(":")[0] for o in outcomes) == ["failed", "rollout failed"]


@pytest.mark.parametrize("model", [MODEL, "cat.schema.model_", "c.s." + "m" * 80, "c-1.s_2.agent-x"])
def test_names_match_databricks_agents_own(model):
    from databricks.agents import deployments

    assert serving.agents_endpoint_name(model) == deployments._create_endpoint_name(model)
    for version in ("1", "12"):
        assert serving.entity_name_for(model, version) == deployments._create_served_model_name(model, version)


DEPLOYS = ("POST", "/api/2.0/agents/deployments")


def _interrupt_agents_call(monkeypatch, *, after_deploying: bool) -> None:
    """The next databricks-agents call stops answering: before it reaches the workspace, or after it deployed."""
    from services.errors import BackendUnavailableError
    from services.serving import deploy

    real = deploy.run_agents_call

    def once(*args, **kwargs):
        monkeypatch.setattr(deploy, "run_agents_call", real)
        if after_deploying:
            real(*args, **kwargs)
        raise BackendUnavailableError("databricks-agents stopped during deploy (exit -9)")

    monkeypatch.setattr(deploy, "run_agents_call", once)


@pytest.mark.parametrize("landed", [False, True], ids=["not-deployed", "deployed"])
def test_an_interrupted_deploy_is_recorded_first_and_its_retry_deploys_at_most_once(harness, dbx, monkeypatch,
                                                                                   landed):
    from services.errors import BackendUnavailableError

    _interrupt_agents_call(monkeypatch, after_deploying=landed)
    with pytest.raises(BackendUnavailableError, match="recorded as interrupted .request dep-1"):
        serving.deploy_version(MODEL, 3, user="ana@example.com", reason="v3", settings=dbx, request_id="dep-1")
    (intent,) = audit.traffic_changes(ENDPOINT, settings=dbx)
    assert (intent.kind, intent.completed, intent.outcome) == (audit.ChangeKind.DEPLOY, False, audit.INTERRUPTED)
    assert (intent.before, intent.requested, intent.model) == ({}, {"main.demo.support v3": 100}, MODEL)
    assert api_calls(harness).count(DEPLOYS) == (1 if landed else 0)

    done = serving.deploy_version(MODEL, 3, user="ana@example.com", reason="v3", settings=dbx, request_id="dep-1")
    assert done.endpoint.percentage_for("main-demo-support_3") == 100
    assert api_calls(harness).count(DEPLOYS) == 1  # deployed exactly once, whichever side of the call it failed
    (change,) = audit.traffic_changes(ENDPOINT, settings=dbx)
    assert (change.run_id, change.completed, change.outcome) == (intent.run_id, True, "applied")
    assert change.after == {"main.demo.support v3": 100}
    # A third press of the same confirmation changes nothing.
    serving.deploy_version(MODEL, 3, user="ana@example.com", reason="v3", settings=dbx, request_id="dep-1")
    assert api_calls(harness).count(DEPLOYS) == 1 and len(audit.traffic_changes(ENDPOINT, settings=dbx)) == 1


def test_an_interrupted_deploy_overtaken_by_another_change_is_closed_not_deployed(harness, dbx, monkeypatch):
    harness.endpoints[ENDPOINT] = _existing_endpoint()
    _interrupt_agents_call(monkeypatch, after_deploying=False)
    with pytest.raises(Exception, match="recorded as interrupted"):
        serving.deploy_version(MODEL, 3, user="ana@example.com", reason="v3", settings=dbx, request_id="dep-2")

    def colleague_shifts(endpoint):
        endpoint.config.traffic_config.routes[0].traffic_percentage = 50
        endpoint.config.traffic_config.routes[1].traffic_percentage = 50

    harness.change_endpoint(ENDPOINT, colleague_shifts)
    with pytest.raises(ConflictError, match="another change happened since"):
        serving.deploy_version(MODEL, 3, user="ana@example.com", reason="v3", settings=dbx, request_id="dep-2")
    assert api_calls(harness).count(DEPLOYS) == 0 and _mutations(harness) == []
    assert audit.traffic_changes(ENDPOINT, settings=dbx) == []  # closed: it never took effect


def test_an_interrupted_deploy_whose_confirmation_is_gone_is_settled_through_the_same_resume_path(harness, dbx,
                                                                                                 monkeypatch):
    harness.endpoints[ENDPOINT] = _existing_endpoint()
    _interrupt_agents_call(monkeypatch, after_deploying=False)
    with pytest.raises(Exception, match="recorded as interrupted"):
        serving.deploy_version(MODEL, 3, user="ana@example.com", reason="v3", settings=dbx, request_id="dep-3")
    (intent,) = audit.traffic_changes(ENDPOINT, settings=dbx)
    endpoint = serving.get_endpoint(ENDPOINT, dbx)
    message = serving.settle_interrupted(endpoint, intent, user="bo@example.com", settings=dbx)
    assert "was not applied" in message and "main.demo.support v1 90%" in message
    assert audit.traffic_changes(ENDPOINT, settings=dbx) == [] and _mutations(harness) == []
