import json

import pytest
from databricks.sdk.service.iam import ComplexValue, User

from services import roles
from services.errors import ConfigurationError, ConflictError, PermissionDeniedError, ValidationError
from services.identity import Identity, IdentitySource
from services.settings import load_settings
from services.promotion import PromotionRequest
from tests.harness.databricks_settings import databricks_settings

ANA = Identity("ana@example.com", "ana", IdentitySource.DATABRICKS_APPS, access_token="tok")
BO = Identity("bo@example.com", "bo", IdentitySource.DATABRICKS_APPS)
DBX = databricks_settings("https://x")


@pytest.mark.parametrize(
    ("role", "action", "allowed"),
    [
        (roles.Role.VIEWER, roles.Action.VIEW, True),
        (roles.Role.VIEWER, roles.Action.REVIEW, False),
        (roles.Role.REVIEWER, roles.Action.REVIEW, True),
        (roles.Role.REVIEWER, roles.Action.PROMOTE, False),
        (roles.Role.REVIEWER, roles.Action.CHANGE_TRAFFIC, False),
        (roles.Role.OPERATOR, roles.Action.PROMOTE, True),
        (roles.Role.OPERATOR, roles.Action.CHANGE_TRAFFIC, True),
        (roles.Role.OPERATOR, roles.Action.EDIT_RULES, False),
        (roles.Role.ADMIN, roles.Action.EDIT_RULES, True),
    ],
)
def test_role_table(role, action, allowed):
    if allowed:
        roles.require(role, action, ANA)
    else:
        with pytest.raises(PermissionDeniedError, match=roles.NEEDED[action].label):
            roles.require(role, action, ANA)


def test_local_roles_file_is_migrated_once_into_the_store(tmp_path):
    from services import team_state

    settings = load_settings({"AGENTOPS_DATA_DIR": str(tmp_path)})
    assert roles.local_role(ANA, settings) is roles.Role.ADMIN  # no roles at all: one-person workspace
    (tmp_path / "roles.json").write_text(json.dumps({"users": {"ANA@example.com": "reviewer"}, "default": "viewer"}))
    assert roles.local_role(ANA, settings) is roles.Role.REVIEWER
    assert roles.local_role(BO, settings) is roles.Role.VIEWER
    [change] = team_state.history(settings, roles.ROLES_KEY)
    assert change["user"] == team_state.MIGRATED_BY and "roles.json" in change["note"]
    # Migrated once: the stored record is what counts from now on (the issue moves roles into the store).
    (tmp_path / "roles.json").write_text(json.dumps({"users": {"ana@example.com": "boss"}}))
    assert roles.local_role(ANA, settings) is roles.Role.REVIEWER
    assert len(team_state.history(settings, roles.ROLES_KEY)) == 1
    # A file named by AGENTOPS_ROLES_FILE is managed outside the app and overrides the record; it is checked.
    bad = {"AGENTOPS_ROLES_FILE": str(tmp_path / "roles.json")}
    with pytest.raises(ConfigurationError, match="not a role"):
        roles.local_role(ANA, settings, bad)


def test_grant_needs_an_admin_and_is_recorded(tmp_path):
    from services import team_state

    settings = load_settings({"AGENTOPS_DATA_DIR": str(tmp_path)})
    roles.init_roles("ana@example.com", settings, by="setup")
    with pytest.raises(ConflictError):
        roles.init_roles("bo@example.com", settings, by="setup")  # only the first admin is set this way
    with pytest.raises(PermissionDeniedError, match="viewer"):
        roles.grant("bo@example.com", "admin", identity=BO, settings=settings)
    roles.grant("BO@example.com", "operator", identity=ANA, settings=settings)
    assert roles.local_role(BO, settings) is roles.Role.OPERATOR
    with pytest.raises(ValidationError):
        roles.grant("  ", "operator", identity=ANA, settings=settings)
    assert [c["user"] for c in team_state.history(settings, roles.ROLES_KEY)] == ["ana@example.com", "setup"]


def test_groups_map_to_the_highest_role():
    mapping = roles.parse_group_mapping("operator=release, reviewer=experts, admin=ops-admins")
    assert roles.role_from_groups(["experts", "release"], mapping) is roles.Role.OPERATOR
    assert roles.role_from_groups(["other"], mapping) is roles.Role.VIEWER
    with pytest.raises(ConfigurationError, match="role=group"):
        roles.parse_group_mapping("operator")


def test_databricks_role_reads_the_users_groups_with_their_token(monkeypatch):
    from services._clients import workspace_client
    from tests.harness.databricks import DatabricksHarness

    harness = DatabricksHarness().start()
    try:
        harness.users["ana-token"] = User(user_name="ana@example.com",
                                          groups=[ComplexValue(display="experts"), ComplexValue(display="x")])
        settings = databricks_settings(harness)
        client = workspace_client(settings, user_token="ana-token")
        env = {"AGENTOPS_ROLE_GROUPS": "reviewer=experts,operator=release"}
        assert roles.resolve_role(ANA, settings, workspace_client=client, environ=env) is roles.Role.REVIEWER
        assert roles.resolve_role(ANA, settings, workspace_client=client, environ={}) is roles.Role.VIEWER
        me = [r for r in harness.requests if r.path.startswith("/api/2.0/preview/scim/v2/Me")]
        assert len(me) == 1
    finally:
        harness.stop()


def test_no_silent_fallback_to_the_service_principal():
    env = {"AGENTOPS_USER_AUTHORIZATION": "on"}
    with pytest.raises(PermissionDeniedError, match="no user token"):
        roles.require_user_token(BO, DBX, env)
    roles.require_user_token(ANA, DBX, env)
    roles.require_user_token(BO, DBX, {})


def test_promotion_is_refused_for_a_reviewer_and_nothing_changes(isolated_settings):
    from services import audit, releases
    from tests.services.registry_world import register_versions

    client = register_versions(isolated_settings, "m", 2, champion="1")
    (isolated_settings.data_dir / "roles.json").write_text(json.dumps({"users": {"ops@example.com": "operator"},
                                                                        "default": "reviewer"}))
    reviewer = Identity("rev@example.com", "rev", IdentitySource.OS_USER)
    with pytest.raises(PermissionDeniedError, match="reviewer and may not promote"):
        releases.promote(PromotionRequest("m", "champion", "2", reason="try"), reviewer, settings=isolated_settings)
    assert str(client.get_registered_model("m").aliases["champion"]) == "1"
    assert audit.alias_changes("m", settings=isolated_settings) == []
    operator = Identity("ops@example.com", "ops", IdentitySource.OS_USER)
    releases.promote(PromotionRequest("m", "champion", "2", reason="ok"), operator, settings=isolated_settings)
    assert str(client.get_registered_model("m").aliases["champion"]) == "2"
    assert audit.alias_changes("m", settings=isolated_settings)[0].user == "ops@example.com"


def test_review_and_evaluation_are_refused_by_the_services_for_a_viewer(isolated_settings):
    from services import eval_jobs, feedback
    from services.evaluations import EvaluationRequest

    (isolated_settings.data_dir / "roles.json").write_text(json.dumps({"users": {}, "default": "viewer"}))
    viewer = Identity("v@example.com", "v", IdentitySource.OS_USER)
    with pytest.raises(PermissionDeniedError, match="reviewer role"):
        feedback.submit_review("tr-0", feedback.Review(thumbs_up=True), viewer.user, settings=isolated_settings,
                               identity=viewer)
    rows = [{"inputs": {"question": "q"}, "expectations": {"expected_facts": ["x"]}}]
    jobs_before = len(eval_jobs.list_jobs())
    with pytest.raises(PermissionDeniedError, match="operator role"):
        eval_jobs.start_job(EvaluationRequest("m", "1", ("expected_facts",), rows=rows), isolated_settings, viewer)
    assert len(eval_jobs.list_jobs()) == jobs_before


def test_enforce_makes_the_rest_of_a_databricks_request_act_for_the_user(monkeypatch, tmp_path):
    from services import _clients
    from tests.harness.databricks import DatabricksHarness

    harness = DatabricksHarness().start()
    try:
        harness.users["tok"] = User(user_name="ana@example.com", groups=[ComplexValue(display="experts")])
        monkeypatch.setenv("AGENTOPS_ROLE_GROUPS", "reviewer=experts")
        monkeypatch.setenv("AGENTOPS_USER_AUTHORIZATION", "on")
        settings = databricks_settings(harness)
        with _clients.acting_as(None):
            assert roles.enforce(ANA, roles.Action.REVIEW, settings) is roles.Role.REVIEWER
            # The write that follows goes out with Ana's token, whatever the request held before.
            assert _clients.acting_identity() is ANA
            with pytest.raises(PermissionDeniedError, match="no user token"):
                roles.enforce(BO, roles.Action.REVIEW, settings)
            assert _clients.acting_identity() is ANA  # a refused identity is not bound
        with _clients.acting_as(None):
            roles.enforce(ANA, roles.Action.VIEW, load_settings({"AGENTOPS_DATA_DIR": str(tmp_path)}))
            assert _clients.acting_identity() is None  # only Databricks requests act for a user
    finally:
        harness.stop()
