"""Changing a split: validation, the local store, the audit trail, and Databricks via the real SDK."""

from __future__ import annotations

import pytest
from databricks.sdk.service import serving as sdk

from services import audit, serving
from services._clients import workspace_client
from services.errors import (
    BackendUnavailableError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from tests.harness.databricks import DatabricksHarness
from tests.harness.databricks_settings import databricks_settings
from tests.services.registry_world import register_versions

ENDPOINT = "agents_main-demo-support"


def _detailed(config_update=sdk.EndpointStateConfigUpdate.NOT_UPDATING) -> sdk.ServingEndpointDetailed:
    return sdk.ServingEndpointDetailed(
        name=ENDPOINT,
        creator="ops@example.com",
        state=sdk.EndpointState(config_update=config_update, ready=sdk.EndpointStateReady.READY),
        config=sdk.EndpointCoreConfigOutput(
            served_entities=[
                sdk.ServedEntityOutput(name="main-demo-support_1", entity_name="main.demo.support", entity_version="1",
                                       workload_size="Small", scale_to_zero_enabled=True),
                sdk.ServedEntityOutput(name="main-demo-support_2", entity_name="main.demo.support", entity_version="2",
                                       workload_size="Small", scale_to_zero_enabled=True),
            ],
            traffic_config=sdk.TrafficConfig(routes=[
                sdk.Route(served_entity_name="main-demo-support_1", traffic_percentage=90),
                sdk.Route(served_entity_name="main-demo-support_2", traffic_percentage=10),
            ]),
        ),
    )


@pytest.fixture
def harness(monkeypatch, isolated_settings):
    running = DatabricksHarness().start()
    monkeypatch.setenv("DATABRICKS_TOKEN", "test-token")
    yield running
    running.stop()


@pytest.fixture
def dbx_settings(harness, isolated_settings):
    # Databricks for serving; the audit trail goes to the isolated local MLflow store.
    settings = databricks_settings(harness, isolated_settings.data_dir)
    return settings


def _puts(harness) -> list:
    return [r for r in harness.requests if r.method == "PUT"]


def test_databricks_split_change_sends_the_documented_request_and_waits(harness, dbx_settings, monkeypatch):
    harness.endpoints[ENDPOINT] = _detailed()
    harness.rollout_polls = 2
    monkeypatch.setattr("services.audit.trail.mlflow_client", _local_client_factory())
    plan = serving.plan_split(ENDPOINT, {("main.demo.support", "1"): 50, ("main.demo.support", "2"): 50}, settings=dbx_settings)
    messages: list[str] = []
    stored = serving.apply_split(plan, user="ana@example.com", reason="widen the test", settings=dbx_settings,
                                 progress=messages.append)
    (put,) = _puts(harness)
    assert put.path == f"/api/2.0/serving-endpoints/{ENDPOINT}/config"
    assert put.body["traffic_config"] == {"routes": [
        {"served_entity_name": "main-demo-support_1", "traffic_percentage": 50},
        {"served_entity_name": "main-demo-support_2", "traffic_percentage": 50},
    ]}
    assert [e["entity_version"] for e in put.body["served_entities"]] == ["1", "2"]
    assert all(e["workload_size"] == "Small" for e in put.body["served_entities"])
    assert stored.state is serving.EndpointState.READY
    assert {r.entity_name: r.percentage for r in stored.routes} == {"main-demo-support_1": 50, "main-demo-support_2": 50}
    assert any("IN_PROGRESS" in m for m in messages)
    (change,) = audit.traffic_changes(ENDPOINT, settings=dbx_settings)
    assert (change.user, change.reason) == ("ana@example.com", "widen the test")
    assert change.before == {"main.demo.support v1": 90, "main.demo.support v2": 10}
    assert change.after == {"main.demo.support v1": 50, "main.demo.support v2": 50}


def test_update_in_progress_is_a_conflict_and_nothing_is_recorded(harness, dbx_settings, monkeypatch):
    harness.endpoints[ENDPOINT] = _detailed(sdk.EndpointStateConfigUpdate.IN_PROGRESS)
    monkeypatch.setattr("services.audit.trail.mlflow_client", _local_client_factory())
    plan = serving.plan_split(ENDPOINT, {("main.demo.support", "2"): 100}, settings=dbx_settings)
    with pytest.raises(ConflictError, match="already has an update in progress"):
        serving.apply_split(plan, user="ana", reason="r", settings=dbx_settings)
    assert len(_puts(harness)) == 1  # sent, refused with 409
    assert audit.traffic_changes(ENDPOINT, settings=dbx_settings) == []


def test_missing_can_manage_is_named(harness, dbx_settings, monkeypatch):
    harness.endpoints[ENDPOINT] = _detailed()
    harness.forbidden.add(ENDPOINT)
    monkeypatch.setattr("services.audit.trail.mlflow_client", _local_client_factory())
    plan = serving.plan_split(ENDPOINT, {("main.demo.support", "2"): 100}, settings=dbx_settings)
    with pytest.raises(PermissionDeniedError, match="CAN_MANAGE"):
        serving.apply_split(plan, user="ana", reason="r", settings=dbx_settings)
    assert harness.endpoints[ENDPOINT].config.traffic_config.routes[0].traffic_percentage == 90


@pytest.mark.parametrize(
    ("weights", "error", "message"),
    [
        ({("main.demo.support", "1"): 60, ("main.demo.support", "2"): 30}, ValidationError, "sums to 90%"),
        ({("main.demo.support", "1"): 110, ("main.demo.support", "2"): -10}, ValidationError, "0-100"),
        ({}, ValidationError, "at least one"),
        ({("main.demo.support", "1"): 50.5, ("main.demo.support", "2"): 49.5}, ValidationError, "whole number"),
        # The same version typed two ways would be two arms serving one version.
        ({("main.demo.support", "1"): 50, ("main.demo.support", "01"): 50}, ValidationError, "v1 is listed twice"),
        ({("main.demo.support", "1"): 50, ("main.demo.support", " 1"): 50}, ValidationError, "v1 is listed twice"),
        ({("main.demo.support", "v2"): 100}, ValidationError, "not a version number"),
        ({("main.demo.support", "²"): 100}, ValidationError, "not a version number"),
    ],
)
def test_refused_split_sends_nothing(harness, dbx_settings, weights, error, message):
    harness.endpoints[ENDPOINT] = _detailed()
    with pytest.raises(error, match=message):
        serving.plan_split(ENDPOINT, weights, settings=dbx_settings)
    assert _puts(harness) == []


def test_unknown_databricks_endpoint_is_not_found(harness, dbx_settings):
    with pytest.raises(NotFoundError):
        serving.plan_split("nope", {("m", "1"): 100}, settings=dbx_settings)


def test_local_split_change_is_stored_and_audited(isolated_settings):
    from services.serving import EndpointState, ServedVersion, TrafficRoute

    register_versions(isolated_settings, "m", 2)
    serving.save_local_endpoint(serving.Endpoint(
        "ep", (ServedVersion("m_1", "m", "1"),), (TrafficRoute("m_1", 100),), EndpointState.READY), isolated_settings)
    plan = serving.plan_split("ep", {("m", "1"): 70, ("m", "2"): 30}, settings=isolated_settings)
    stored = serving.apply_split(plan, user="ana", reason="canary v2", settings=isolated_settings)
    assert serving.get_endpoint("ep", isolated_settings) == stored
    assert stored.updated_by == "ana"
    (change,) = audit.traffic_changes("ep", settings=isolated_settings)
    assert change.after == {"m v1": 70, "m v2": 30}

    # A plan made against the old split is refused once the split has moved on.
    with pytest.raises(ConflictError, match="changed since"):
        serving.apply_split(plan, user="bo", reason="stale", settings=isolated_settings)
    with pytest.raises(NotFoundError):
        serving.plan_split("ep", {("m", "9"): 100}, settings=isolated_settings)
    # A version typed with a leading zero is the registry's version, served by the existing arm.
    renamed = serving.plan_split("ep", {("m", "01"): 30, ("m", "002"): 70}, settings=isolated_settings)
    assert renamed.after.served == stored.served and renamed.percentages()[1] == {"m v1": 30, "m v2": 70}
    with pytest.raises(ValidationError, match="reason"):
        serving.apply_split(serving.plan_split("ep", {("m", "2"): 100}, settings=isolated_settings),
                            user="ana", reason=" ", settings=isolated_settings)
    for bad in ("", "has space", "a/b", "x" * 129, "quote'"):
        with pytest.raises(ValidationError, match="request id"):
            serving.apply_split(serving.plan_split("ep", {("m", "2"): 100}, settings=isolated_settings),
                                user="ana", reason="bad id", settings=isolated_settings, request_id=bad)
    assert serving.get_endpoint("ep", isolated_settings) == stored
    assert len(audit.traffic_changes("ep", settings=isolated_settings)) == 1

    # One request id is one change: reusing it for another split is refused, not applied.
    serving.apply_split(serving.plan_split("ep", {("m", "2"): 100}, settings=isolated_settings), user="ana",
                        reason="all on v2", settings=isolated_settings, request_id="req-1")
    moved = serving.get_endpoint("ep", isolated_settings)
    with pytest.raises(ValidationError, match="start a new confirmation"):
        serving.apply_split(serving.plan_split("ep", {("m", "1"): 100}, settings=isolated_settings), user="ana",
                            reason="all on v1", settings=isolated_settings, request_id="req-1")
    assert serving.get_endpoint("ep", isolated_settings) == moved
    assert len(audit.traffic_changes("ep", settings=isolated_settings)) == 2


def _local_client_factory():
    """The audit trail lives in MLflow; with no workspace here it is the isolated local store."""
    from services._clients import get_settings, mlflow_client

    local = get_settings().__class__  # noqa: F841 - keeps the import honest

    def factory(settings=None):
        from services.settings import Backend, load_settings

        if settings is not None and settings.backend is Backend.DATABRICKS:
            settings = load_settings({"AGENTOPS_DATA_DIR": str(settings.data_dir)})
        return mlflow_client(settings)

    return factory


# --- Databricks, as strictly as a workspace (tests/harness/databricks.py) --------------------------

AGENT_ENV = {"ENABLE_MLFLOW_TRACING": "true", "MLFLOW_EXPERIMENT_ID": "4242",
             "OPENAI_API_KEY": "{{secrets/agents/openai}}"}


def _rich_entity(version: int) -> sdk.ServedEntityOutput:
    """A served version as ``agents.deploy`` and an operator leave it: every configurable field set."""
    return sdk.ServedEntityOutput.from_dict({
        "name": f"main-demo-support_{version}", "entity_name": "main.demo.support", "entity_version": str(version),
        "workload_size": "Medium", "workload_type": "GPU_SMALL", "scale_to_zero_enabled": False,
        "environment_vars": AGENT_ENV, "instance_profile_arn": "arn:aws:iam::123:instance-profile/agents",
        "min_provisioned_throughput": 0, "max_provisioned_throughput": 970, "burst_scaling_enabled": True,
        "creator": "deployer@example.com", "creation_timestamp": 1_700_000_000_000,
        "state": {"deployment": "DEPLOYMENT_READY"},
    })


def _rich_endpoint() -> sdk.ServingEndpointDetailed:
    endpoint = _detailed()
    endpoint.config.served_entities = [_rich_entity(1), _rich_entity(2)]
    endpoint.config.config_version = 7
    return endpoint


def _external_endpoint() -> sdk.ServingEndpointDetailed:
    def entity(name: str, model: str) -> sdk.ServedEntityOutput:
        return sdk.ServedEntityOutput.from_dict({"name": name, "external_model": {
            "name": model, "provider": "openai", "task": "llm/v1/chat",
            "openai_config": {"openai_api_key": "{{secrets/llm/openai}}"}}})

    return sdk.ServingEndpointDetailed(
        name="chat-router", creator="ops@example.com", state=sdk.EndpointState(
            config_update=sdk.EndpointStateConfigUpdate.NOT_UPDATING, ready=sdk.EndpointStateReady.READY),
        config=sdk.EndpointCoreConfigOutput(
            served_entities=[entity("gpt-4o", "gpt-4o"), entity("gpt-4o-mini", "gpt-4o-mini")], config_version=3,
            traffic_config=sdk.TrafficConfig(routes=[sdk.Route(served_entity_name="gpt-4o", traffic_percentage=50),
                                                     sdk.Route(served_entity_name="gpt-4o-mini", traffic_percentage=50)])))


def _foundation_endpoint() -> sdk.ServingEndpointDetailed:
    return sdk.ServingEndpointDetailed.from_dict({
        "name": "databricks-meta-llama-3-3-70b-instruct", "creator": "system", "config": {"served_entities": [
            {"name": "databricks-meta-llama-3-3-70b-instruct",
             "foundation_model": {"name": "databricks-meta-llama-3-3-70b-instruct",
                                  "display_name": "Meta Llama 3.3 70B Instruct"}}]},
        "state": {"ready": "READY", "config_update": "NOT_UPDATING"}})


@pytest.fixture
def audited(monkeypatch):
    monkeypatch.setattr("services.audit.trail.mlflow_client", _local_client_factory())


def test_a_split_change_changes_the_traffic_and_nothing_else(harness, dbx_settings, audited):
    harness.endpoints[ENDPOINT] = _rich_endpoint()
    before = {e.name: e.as_dict() for e in harness.endpoints[ENDPOINT].config.served_entities}
    plan = serving.plan_split(ENDPOINT, {("main.demo.support", "1"): 30, ("main.demo.support", "2"): 70},
                              settings=dbx_settings)
    serving.apply_split(plan, user="ana@example.com", reason="shift", settings=dbx_settings)
    after = {e.name: e.as_dict() for e in harness.endpoints[ENDPOINT].config.served_entities}
    assert after == before, "a served entity's configuration changed with the split"
    routes = harness.endpoints[ENDPOINT].config.traffic_config.routes
    assert [(r.served_entity_name, r.traffic_percentage) for r in routes] == [
        ("main-demo-support_1", 30), ("main-demo-support_2", 70)]
    assert harness.endpoints[ENDPOINT].config.config_version == 8


def test_a_change_made_since_the_preview_is_refused_and_shown(harness, dbx_settings, audited):
    harness.endpoints[ENDPOINT] = _rich_endpoint()
    plan = serving.plan_split(ENDPOINT, {("main.demo.support", "1"): 50, ("main.demo.support", "2"): 50},
                              settings=dbx_settings)

    def colleague_deploys_v3(endpoint):  # what agents.deploy does: v3 gets everything, the rest stays at 0
        endpoint.config.served_entities.append(_rich_entity(3))
        endpoint.config.traffic_config = sdk.TrafficConfig(routes=[
            sdk.Route(served_entity_name=f"main-demo-support_{n}", traffic_percentage=100 if n == 3 else 0)
            for n in (1, 2, 3)])

    harness.change_endpoint(ENDPOINT, colleague_deploys_v3)
    with pytest.raises(ConflictError) as refused:
        serving.apply_split(plan, user="ana@example.com", reason="even", settings=dbx_settings)
    assert "main.demo.support v3 100%" in str(refused.value) and "7 → 8" in str(refused.value)
    assert _puts(harness) == []
    assert len(harness.endpoints[ENDPOINT].config.served_entities) == 3
    assert audit.traffic_changes(ENDPOINT, settings=dbx_settings) == []


def test_external_models_are_shown_by_name_and_their_split_can_change(harness, dbx_settings, audited):
    harness.endpoints["chat-router"] = _external_endpoint()
    before = {e.name: e.as_dict() for e in harness.endpoints["chat-router"].config.served_entities}
    endpoint = serving.get_endpoint("chat-router", dbx_settings)
    assert serving.percentages(endpoint) == {"gpt-4o": 50, "gpt-4o-mini": 50}
    assert [s.detail for s in endpoint.served] == ["external model openai/gpt-4o", "external model openai/gpt-4o-mini"]
    plan = serving.plan_split("chat-router", {("gpt-4o", ""): 20, ("gpt-4o-mini", ""): 80}, settings=dbx_settings)
    stored = serving.apply_split(plan, user="ana@example.com", reason="cheaper", settings=dbx_settings)
    assert serving.percentages(stored) == {"gpt-4o": 20, "gpt-4o-mini": 80}
    assert {e.name: e.as_dict() for e in harness.endpoints["chat-router"].config.served_entities} == before


def test_a_foundation_model_endpoint_shows_its_model_at_100_and_is_read_only(harness, dbx_settings):
    harness.endpoints["databricks-meta-llama-3-3-70b-instruct"] = _foundation_endpoint()
    endpoint = serving.get_endpoint("databricks-meta-llama-3-3-70b-instruct", dbx_settings)
    assert serving.percentages(endpoint) == {"databricks-meta-llama-3-3-70b-instruct": 100}
    assert "foundation model" in endpoint.read_only
    with pytest.raises(ValidationError, match="pay-per-token"):
        serving.plan_split(endpoint.name, {(endpoint.name, ""): 100}, settings=dbx_settings)
    assert _puts(harness) == []


def test_one_endpoint_failing_between_list_and_get_does_not_fail_the_list(harness, dbx_settings):
    harness.endpoints[ENDPOINT] = _detailed()
    harness.endpoints["chat-router"] = _external_endpoint()
    harness.endpoints["gone-soon"] = _external_endpoint()
    harness.endpoints["gone-soon"].name = "gone-soon"
    harness.vanish_after_list.add("gone-soon")
    harness.unreadable.add("chat-router")
    listed = {e.name: e for e in serving.list_endpoints(dbx_settings)}
    assert set(listed) == {ENDPOINT, "chat-router"}
    assert listed[ENDPOINT].error is None and serving.percentages(listed[ENDPOINT])
    assert "CAN_QUERY" in listed["chat-router"].error


def test_sustained_throttling_is_bounded_and_named(harness, isolated_settings):
    import time

    harness.endpoints[ENDPOINT] = _detailed()
    settings = databricks_settings(harness, isolated_settings.data_dir, AGENTOPS_DATABRICKS_RETRY_SECONDS="2")
    harness.throttle(60, retry_after=1)
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match=r"throttled: retry after 1 s"):
        serving.list_endpoints(settings)
    assert time.monotonic() - started < 15


def test_a_rollout_in_progress_shows_the_pending_split(harness, dbx_settings, audited):
    harness.endpoints[ENDPOINT] = _rich_endpoint()
    harness.rollout_polls = 100  # stays IN_PROGRESS for the test
    client = workspace_client(dbx_settings)
    from databricks.sdk.service.serving import Route, ServedEntityInput, TrafficConfig

    client.serving_endpoints.update_config(  # someone else's update, not waited for
        ENDPOINT, served_entities=[ServedEntityInput.from_dict(e.as_dict() | {"creator": None})
                                   for e in harness.endpoints[ENDPOINT].config.served_entities],
        traffic_config=TrafficConfig(routes=[Route(served_entity_name="main-demo-support_1", traffic_percentage=0),
                                             Route(served_entity_name="main-demo-support_2", traffic_percentage=100)]))
    endpoint = serving.get_endpoint(ENDPOINT, dbx_settings)
    assert endpoint.state is serving.EndpointState.UPDATING
    assert serving.percentages(endpoint) == {"main.demo.support v1": 90, "main.demo.support v2": 10}
    assert endpoint.pending_percentages == {"main.demo.support v1": 0, "main.demo.support v2": 100}


@pytest.mark.parametrize("outcome", [sdk.EndpointStateConfigUpdate.UPDATE_FAILED,
                                     sdk.EndpointStateConfigUpdate.UPDATE_CANCELED])
def test_a_rollout_that_fails_or_is_canceled_keeps_the_old_split_and_records_nothing(harness, dbx_settings, audited,
                                                                                      outcome):
    harness.endpoints[ENDPOINT] = _rich_endpoint()
    harness.rollout_outcome[ENDPOINT] = outcome
    plan = serving.plan_split(ENDPOINT, {("main.demo.support", "2"): 100, ("main.demo.support", "1"): 0},
                              settings=dbx_settings)
    with pytest.raises(ConflictError, match="keeps serving its previous configuration"):
        serving.apply_split(plan, user="ana@example.com", reason="all in", settings=dbx_settings)
    assert serving.get_endpoint(ENDPOINT, dbx_settings).routes[0].percentage == 90
    assert audit.traffic_changes(ENDPOINT, settings=dbx_settings) == []


def test_last_updated_by_comes_from_the_audit_trail_not_the_creator(harness, dbx_settings, audited):
    harness.endpoints[ENDPOINT] = _rich_endpoint()
    assert serving.get_endpoint(ENDPOINT, dbx_settings).updated_by is None
    plan = serving.plan_split(ENDPOINT, {("main.demo.support", "1"): 60, ("main.demo.support", "2"): 40},
                              settings=dbx_settings)
    serving.apply_split(plan, user="ana@example.com", reason="r", settings=dbx_settings)
    assert serving.get_endpoint(ENDPOINT, dbx_settings).updated_by == "ana@example.com"
    assert [e.updated_by for e in serving.list_endpoints(dbx_settings)] == ["ana@example.com"]


def test_the_harness_refuses_a_split_that_drops_fields_it_does_not_know(harness):
    harness.endpoints[ENDPOINT] = _detailed()
    status, payload = harness._update_config(ENDPOINT, {"served_entities": [{"name": "x", "entity_name": "m",
                                                                              "entity_version": "1", "bogus": 1}]})
    assert status == 400 and "bogus" in payload["message"]
