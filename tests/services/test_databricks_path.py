"""The Databricks path end to end below the UI: MLflow's own Databricks stores and the real SDK against
the local workspace (harness + MLflow REST forwarded to a real ``mlflow server``).

Asserts who made each call (the bearer token the harness saw), and the state the server ends in. With
user authorization on, a user's token carries only the scopes databricks.yml declares, and the
harness refuses it anywhere else (403 "Invalid scope"): MLflow and Unity Catalog calls are the app's
service principal's, after the app's role check (read with the user's token), with the user recorded.
"""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from services import _clients, audit, feedback, registry, releases, roles, serving, traffic_audit
from services.errors import PermissionDeniedError
from services.identity import Identity, IdentitySource
from services.settings import load_settings
from tests.harness import databricks_workspace as dw

pytestmark = pytest.mark.slow

UC_ALIAS = "/api/2.0/mlflow/unity-catalog/registered-models/alias"


def _identity(user: dw.WorkspaceUser, *, token: bool = True) -> Identity:
    return Identity(user.email, user.display, IdentitySource.DATABRICKS_APPS,
                    access_token=user.token if token else None)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    with dw.databricks_workspace(tmp_path_factory.mktemp("dbx-workspace")) as ws:
        yield ws


@pytest.fixture
def dbx(workspace, tmp_path, monkeypatch):
    """Settings of the app on the local workspace, with the app's env as Databricks Apps sets it."""
    for key, value in workspace.app_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DATABRICKS_TOKEN", raising=False)
    monkeypatch.setenv("AGENTOPS_DATA_DIR", str(tmp_path))
    _clients._cached_settings.cache_clear()
    settings = _clients.configure_mlflow(load_settings())
    with _clients.acting_as(None):
        yield settings
    _clients._cached_settings.cache_clear()
    monkeypatch.undo()
    _clients.configure_mlflow(_clients.get_settings())


def _server(workspace) -> MlflowClient:
    return MlflowClient(workspace.server.tracking_uri, workspace.server.tracking_uri)


def _mark(workspace) -> int:
    return len(workspace.forwarder.calls)


def test_the_app_principal_reads_the_uc_registry_with_its_oauth_token(workspace, dbx):
    start = _mark(workspace)
    agents = registry.list_agents(dbx)
    assert [a.name for a in agents] == [dw.AGENT]
    agent = agents[0]
    assert agent.aliases == {"challenger": "2", "champion": "1"}
    # UC search results carry no tags: the experiment link must come from the model itself.
    assert agent.experiment_id == workspace.seeded.experiment_id
    assert agent.version_count == 2
    calls = workspace.forwarder.calls[start:]
    assert calls and {c.principal for c in calls} == {workspace.app_principal.name}
    assert all(c.token_hint.startswith("sp-") for c in calls)
    # UC refused the unfiltered version search; the app fell back to one search per model.
    searches = [c for c in calls if c.path.endswith("unity-catalog/model-versions/search")]
    assert [c.status for c in searches] == [400, 200]


def _scim_calls(workspace, start: int) -> list:
    return [e for e in workspace.log.entries[start:] if e.path == "/api/2.0/preview/scim/v2/Me"]


def test_an_operator_promotes_as_the_app_after_their_role_check_and_the_audit_names_them(workspace, dbx):
    operator = _identity(dw.OPERATOR)
    start, logged = _mark(workspace), len(workspace.log.entries)
    result = releases.promote(dw.AGENT, "champion", "2", operator, reason="v2 wins the A/B", settings=dbx)
    assert (result.change.from_version, result.change.to_version) == ("1", "2")
    server = _server(workspace)
    assert server.get_registered_model(dw.AGENT).aliases["champion"] == "2"
    # The role came from the operator's groups, read with their own token (iam.current-user:read) …
    assert {e.principal for e in _scim_calls(workspace, logged)} == {dw.OPERATOR.email}
    # … and no Apps scope covers MLflow or Unity Catalog: those calls are the app's.
    calls = workspace.forwarder.calls[start:]
    assert {c.principal for c in calls} == {workspace.app_principal.name}
    assert [c.status for c in calls if c.path == UC_ALIAS and c.method == "POST"] == [200]
    assert workspace.harness.scope_refusals == []
    run = server.get_run(result.change.run_id)
    assert run.data.tags[audit.USER_TAG] == dw.OPERATOR.email
    assert run.data.tags[audit.TO_TAG] == "2"
    # The audit trail is the declared audit-experiment resource (by id), not a relative name.
    assert run.info.experiment_id == workspace.seeded.audit_experiment_id
    # Put it back for the other tests.
    releases.promote(dw.AGENT, "champion", "1", operator, reason="restore", settings=dbx)


def test_a_user_token_outside_the_declared_scopes_is_refused_by_the_workspace(workspace, dbx):
    from services._clients import workspace_client

    client = workspace_client(dbx, user_token=dw.OPERATOR.token)
    assert client.serving_endpoints.get(dw.ENDPOINT).name == dw.ENDPOINT  # serving.serving-endpoints
    with pytest.raises(Exception, match="Invalid scope"):
        client.experiments.get_experiment(workspace.seeded.experiment_id)
    refused = workspace.harness.scope_refusals.pop()
    assert refused[2] == dw.OPERATOR.email


def test_a_relative_experiment_name_is_refused_by_the_workspace(workspace, dbx):
    from mlflow.exceptions import MlflowException

    client = _clients.mlflow_client(dbx)
    with pytest.raises(MlflowException, match="invalid experiment name"):
        client.create_experiment("agentops-audit")
    # The app names experiments as a workspace requires.
    assert _clients.workspace_experiment_name("agentops-review", dbx) == "/Shared/agentops-review"


def test_a_refused_alias_names_the_missing_grant_and_changes_nothing(workspace, dbx):
    operator = _identity(dw.OPERATOR)
    denial = workspace.forwarder.deny(workspace.app_principal.name, "POST", UC_ALIAS, resource=dw.AGENT,
                                      message=f"User does not own registered model '{dw.AGENT}'.")
    try:
        trail = len(audit.alias_changes(dw.AGENT, settings=dbx))
        with pytest.raises(PermissionDeniedError) as refused:
            releases.promote(dw.AGENT, "challenger", "1", operator, reason="try", settings=dbx)
        message = str(refused.value)
        assert "own" in message and dw.AGENT in message and "service principal" in message, message
        assert "USE CATALOG" in message and "USE SCHEMA" in message, message
        assert _server(workspace).get_registered_model(dw.AGENT).aliases["challenger"] == "2"
        assert len(audit.alias_changes(dw.AGENT, settings=dbx)) == trail
    finally:
        workspace.forwarder.denials.remove(denial)


def test_without_the_user_token_a_privileged_write_is_refused_before_anything_is_sent(workspace, dbx):
    tokenless = _identity(dw.OPERATOR, token=False)
    start, requests = _mark(workspace), len(workspace.harness.requests)
    with pytest.raises(PermissionDeniedError, match="no user token"):
        releases.promote(dw.AGENT, "champion", "2", tokenless, reason="x", settings=dbx)
    plan = serving.SplitPlan(serving.get_endpoint(dw.ENDPOINT, dbx), serving.get_endpoint(dw.ENDPOINT, dbx))
    requests = len(workspace.harness.requests)
    with pytest.raises(PermissionDeniedError, match="no user token"):
        serving.apply_split(plan, user=tokenless.user, reason="x", settings=dbx, identity=tokenless)
    assert len(workspace.harness.requests) == requests, "a request went out for a refused write"
    # Reads only (reading an endpoint searches the audit trail for who changed it last: a POST search).
    assert not [c for c in workspace.forwarder.calls[start:] if c.method != "GET" and not c.path.endswith("/search")]


def test_a_reviewer_may_not_promote_and_nothing_reaches_the_registry(workspace, dbx):
    reviewer = _identity(dw.REVIEWER)
    start = _mark(workspace)
    with pytest.raises(PermissionDeniedError, match="reviewer and may not promote"):
        releases.promote(dw.AGENT, "champion", "2", reviewer, reason="x", settings=dbx)
    assert not workspace.forwarder.calls[start:]
    assert roles.role_for(reviewer, dbx) is roles.Role.REVIEWER


def test_an_operator_changes_traffic_with_their_token_and_the_trail_names_them(workspace, dbx):
    operator = _identity(dw.OPERATOR)
    _clients.act_as(operator)
    kept = {e.name: e.as_dict() for e in workspace.harness.endpoints[dw.ENDPOINT].config.served_entities}
    plan = serving.plan_split(dw.ENDPOINT, {(dw.AGENT, "1"): 50, (dw.AGENT, "2"): 50}, settings=dbx)
    start, logged = _mark(workspace), len(workspace.log.entries)
    stored = serving.apply_split(plan, user=operator.user, reason="even split", settings=dbx, identity=operator,
                                 user_token=operator.access_token)
    assert {r.entity_name: r.percentage for r in stored.routes} == {f"{dw.AGENT}_1": 50, f"{dw.AGENT}_2": 50}
    # Model Serving is inside the user's scopes: the split is changed with the operator's own token.
    puts = [e for e in workspace.log.entries[logged:] if e.method == "PUT"]
    assert [e.principal for e in puts] == [dw.OPERATOR.email]
    # The audit trail is MLflow: written by the app, naming the operator.
    assert {c.principal for c in workspace.forwarder.calls[start:]} == {workspace.app_principal.name}
    assert workspace.harness.scope_refusals == []
    changed = {e.name: e.as_dict() for e in workspace.harness.endpoints[dw.ENDPOINT].config.served_entities}
    assert changed == kept, "the split change altered the served entities' configuration"
    change = traffic_audit.traffic_changes(dw.ENDPOINT, settings=dbx)[0]
    assert change.user == dw.OPERATOR.email and change.after == {f"{dw.AGENT} v1": 50, f"{dw.AGENT} v2": 50}
    assert serving.get_endpoint(dw.ENDPOINT, dbx).updated_by == dw.OPERATOR.email
    workspace.harness.endpoints[dw.ENDPOINT] = dw.endpoint()


def test_a_reviewers_feedback_is_written_by_the_app_and_sourced_to_them(workspace, dbx):
    reviewer = _identity(dw.REVIEWER)
    _clients.act_as(reviewer)
    trace_id = workspace.seeded.trace_ids[-1]
    start = _mark(workspace)
    written = feedback.submit_review(trace_id, feedback.Review(thumbs_up=False, comment="misses the SLA"),
                                     reviewer.user, settings=dbx, identity=reviewer)
    assert written == 2
    stored = _server(workspace).get_trace(trace_id).info.assessments
    mine = [a for a in stored if a.source.source_id == dw.REVIEWER.email]
    assert {a.name for a in mine} == {"thumbs_up", "comment"}
    posts = [c for c in workspace.forwarder.calls[start:] if c.method == "POST" and c.path.endswith("/assessments")]
    assert len(posts) == 2
    assert {c.principal for c in posts} == {workspace.app_principal.name}
    assert workspace.harness.scope_refusals == []


def test_team_state_is_shared_through_the_workspace_with_conflicts_detected(workspace, dbx, tmp_path, monkeypatch):
    """On Databricks the workspace is the shared store: thresholds saved by one app process are read by
    another (its own data folder), the records live under an absolute path the workspace accepts, the
    writes are the app principal's, and a stale second edit gets a conflict with nothing overwritten."""
    from services import alerts, team_state
    from services.errors import ConflictError

    assert team_state.state_experiment(dbx).startswith("/Shared/")
    start = _mark(workspace)
    mine = alerts.AlertThresholds(p95_latency_ms=1234.0, error_rate=0.02, daily_cost=7.0,
                                      min_feedback_score=0.5, feedback_name="helpful")
    alerts.save_thresholds(dbx, dw.AGENT, mine, expected_version=0)
    calls = workspace.forwarder.calls[start:]
    assert calls and {c.principal for c in calls} == {workspace.app_principal.name}

    other = load_settings({**workspace.app_env(), "AGENTOPS_DATA_DIR": str(tmp_path / "teammate")})
    assert alerts.load_thresholds(other)[dw.AGENT] == mine
    record = team_state.read(next(k for k in team_state.read_all(other) if dw.AGENT in k), other)
    assert record is not None and record.version == 1

    stale = alerts.AlertThresholds(p95_latency_ms=9999.0)
    with pytest.raises(ConflictError):
        alerts.save_thresholds(other, dw.AGENT, stale, expected_version=0)
    assert alerts.load_thresholds(dbx)[dw.AGENT] == mine
    # The strict harness refuses relative experiment names, so the writes above prove the paths; the
    # record sits in the absolute-path experiment.
    stored = _server(workspace).get_experiment_by_name(team_state.state_experiment(dbx))
    assert stored is not None and any(tag.startswith(team_state.HEAD_PREFIX) for tag in stored.tags)
