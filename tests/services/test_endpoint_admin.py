"""Creating, editing and deleting local endpoints: validation before I/O, conflicts, roles and the audit trail."""

from __future__ import annotations

import json

import pytest

from services import audit, endpoint_admin, serving, team_state
from services.endpoint_admin import ChangeKind
from services.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from services.identity import Identity, IdentitySource
from tests.harness.databricks_settings import databricks_settings
from tests.services.registry_world import register_versions

MODEL = "billing agent"  # a registered name with a space, as another team may have
OPS = Identity("olivia@example.com", "Olivia", IdentitySource.OS_USER)


@pytest.fixture
def store(isolated_settings):
    register_versions(isolated_settings, MODEL, 3)
    return isolated_settings


def _records(settings) -> dict:
    return {k: (r.version, r.value) for k, r in team_state.read_all(settings, serving.ENDPOINT_KEY).items()}


def test_create_previews_then_stores_and_records_who_did_it(store):
    plan = endpoint_admin.plan_create("billing-ab", {(MODEL, "1"): 90, (MODEL, "02"): 10}, sticky=True, settings=store)
    assert plan.kind is ChangeKind.CREATE and plan.before is None
    assert plan.rows() == [
        {"Served version": f"{MODEL} v1", "Current %": None, "Proposed %": 90, "Change": "added"},
        {"Served version": f"{MODEL} v2", "Current %": None, "Proposed %": 10, "Change": "added"},
    ]
    assert "/serving-endpoints/billing-ab/invocations" in plan.summary()
    assert serving.list_endpoints(store) == []  # planning wrote nothing

    stored = endpoint_admin.apply(plan, identity=OPS, reason="A/B the new prompt", settings=store)
    assert stored is not None and stored.sticky and stored.updated_by == OPS.user
    assert [e.name for e in serving.list_endpoints(store)] == ["billing-ab"]
    assert {r.entity_name: r.percentage for r in serving.get_endpoint("billing-ab", store).routes} == {
        "billing agent_1": 90, "billing agent_2": 10}
    (change,) = audit.traffic_changes("billing-ab", settings=store)
    assert (change.action, change.user, change.reason, change.before) == (
        "create endpoint", OPS.user, "A/B the new prompt", {})
    assert change.after == {f"{MODEL} v1": 90, f"{MODEL} v2": 10} and change.completed


BAD_CREATES = [
    ("", {(MODEL, "1"): 100}, ValidationError, "Give the endpoint a name"),
    ("has space", {(MODEL, "1"): 100}, ValidationError, "letters, digits"),
    ("x/../y", {(MODEL, "1"): 100}, ValidationError, "letters, digits"),
    ("a" * 64, {(MODEL, "1"): 100}, ValidationError, "at most 63"),
    ("ok", {}, ValidationError, "at least one"),
    ("ok", {(MODEL, "1"): 60, (MODEL, "2"): 30}, ValidationError, "sums to 90%"),
    ("ok", {(MODEL, "1"): 110, (MODEL, "2"): -10}, ValidationError, "0-100"),
    ("ok", {(MODEL, "1"): 50.5, (MODEL, "2"): 49.5}, ValidationError, "whole number"),
    ("ok", {(MODEL, "1"): 50, (MODEL, "01"): 50}, ValidationError, "listed twice"),
    ("ok", {(MODEL, "one"): 100}, ValidationError, "not a version number"),
    ("ok", {(MODEL, "9"): 100}, NotFoundError, "v9 is not in the registry"),
    ("ok", {("no such agent", "1"): 100}, NotFoundError, "not in the registry"),
]


@pytest.mark.parametrize(("name", "weights", "error", "message"), BAD_CREATES)
def test_bad_input_is_refused_with_a_clear_message_and_stores_nothing(store, name, weights, error, message):
    with pytest.raises(error, match=message):
        endpoint_admin.plan_create(name, weights, settings=store)
    assert _records(store) == {}
    assert audit.traffic_changes(settings=store) == []


def test_a_name_in_use_is_refused_and_a_deleted_name_can_be_created_again(store):
    endpoint_admin.apply(endpoint_admin.plan_create("prod", {(MODEL, "1"): 100}, settings=store),
                         identity=OPS, reason="first", settings=store)
    with pytest.raises(ConflictError, match="already exists"):
        endpoint_admin.plan_create("prod", {(MODEL, "2"): 100}, settings=store)

    plan = endpoint_admin.plan_delete("prod", settings=store)
    assert plan.rows() == [{"Served version": f"{MODEL} v1", "Current %": 100, "Proposed %": None,
                            "Change": "removed"}]
    assert endpoint_admin.apply(plan, identity=OPS, reason="retire", settings=store) is None
    assert serving.list_endpoints(store) == []
    with pytest.raises(NotFoundError):
        serving.get_endpoint("prod", store)
    with pytest.raises(NotFoundError):
        endpoint_admin.plan_delete("prod", settings=store)

    again = endpoint_admin.apply(endpoint_admin.plan_create("prod", {(MODEL, "3"): 100}, settings=store),
                                 identity=OPS, reason="back", settings=store)
    assert [s.model_version for s in again.served] == ["3"]
    actions = [c.action for c in audit.traffic_changes("prod", settings=store)]
    assert actions == ["create endpoint", "delete endpoint", "create endpoint"]


def test_edit_changes_versions_and_split_through_the_split_path(store):
    endpoint_admin.apply(endpoint_admin.plan_create("edit-me", {(MODEL, "1"): 100}, settings=store),
                         identity=OPS, reason="start", settings=store)
    with pytest.raises(ValidationError, match="nothing to change"):
        endpoint_admin.plan_edit("edit-me", {(MODEL, "1"): 100}, settings=store)
    plan = endpoint_admin.plan_edit("edit-me", {(MODEL, "1"): 50, (MODEL, "3"): 50}, settings=store)
    assert [r["Change"] for r in plan.rows()] == ["-50", "added"]
    stored = endpoint_admin.apply(plan, identity=OPS, reason="try v3", settings=store)
    assert {s.model_version for s in stored.served} == {"1", "3"}
    latest = audit.traffic_changes("edit-me", settings=store)[0]
    assert (latest.action, latest.after) == ("edit endpoint", {f"{MODEL} v1": 50, f"{MODEL} v3": 50})


def test_a_plan_made_before_someone_elses_change_is_refused(store):
    endpoint_admin.apply(endpoint_admin.plan_create("busy", {(MODEL, "1"): 100}, settings=store),
                         identity=OPS, reason="start", settings=store)
    stale_delete = endpoint_admin.plan_delete("busy", settings=store)
    endpoint_admin.apply(endpoint_admin.plan_edit("busy", {(MODEL, "2"): 100}, settings=store),
                         identity=OPS, reason="move", settings=store)
    before = _records(store)
    with pytest.raises(ConflictError):
        endpoint_admin.apply(stale_delete, identity=OPS, reason="too late", settings=store)
    assert _records(store) == before
    assert [c.action for c in audit.traffic_changes("busy", settings=store)] == ["edit endpoint",
                                                                                          "create endpoint"]


def test_a_viewer_or_a_missing_reason_is_refused_and_nothing_is_written(store, tmp_path, monkeypatch):
    plan = endpoint_admin.plan_create("nope", {(MODEL, "1"): 100}, settings=store)
    with pytest.raises(ValidationError, match="reason"):
        endpoint_admin.apply(plan, identity=OPS, reason="  ", settings=store)
    roles = tmp_path / "roles.json"
    roles.write_text(json.dumps({"users": {"olivia@example.com": "operator"}, "default": "reviewer"}))
    monkeypatch.setenv("AGENTOPS_ROLES_FILE", str(roles))
    rev = Identity("rev@example.com", "Rev", IdentitySource.OS_USER)
    with pytest.raises(PermissionDeniedError, match="operator"):
        endpoint_admin.apply(plan, identity=rev, reason="try", settings=store)
    assert _records(store) == {} and audit.traffic_changes(settings=store) == []
    assert endpoint_admin.apply(plan, identity=OPS, reason="operator may", settings=store) is not None


def test_a_retried_confirmation_changes_and_records_once(store):
    plan = endpoint_admin.plan_create("once", {(MODEL, "1"): 100}, settings=store)
    endpoint_admin.apply(plan, identity=OPS, reason="r", settings=store, request_id="req-1")
    endpoint_admin.apply(plan, identity=OPS, reason="r", settings=store, request_id="req-1")
    assert len(audit.traffic_changes("once", settings=store)) == 1
    assert _records(store)[serving.ENDPOINT_KEY + "once"][0] == 1


def test_databricks_backend_is_refused_before_any_call():
    settings = databricks_settings("http://127.0.0.1:9")
    with pytest.raises(ValidationError, match="Deploy version"):
        endpoint_admin.plan_create("x", {(MODEL, "1"): 100}, settings=settings)
