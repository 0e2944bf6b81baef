"""Changing a split: validation, the local store, the audit trail, and Databricks via the real SDK."""

from __future__ import annotations

import pytest
from databricks.sdk.service import serving as sdk

from services import serving, traffic_audit
from services.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from services.settings import load_settings
from tests.harness.databricks import DatabricksHarness

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
    settings = load_settings({
        "AGENTOPS_BACKEND": "databricks", "DATABRICKS_HOST": harness.url,
        "AGENTOPS_DATA_DIR": str(isolated_settings.data_dir),
    })
    return settings


def _puts(harness) -> list:
    return [r for r in harness.requests if r.method == "PUT"]


def test_databricks_split_change_sends_the_documented_request_and_waits(harness, dbx_settings, monkeypatch):
    harness.endpoints[ENDPOINT] = _detailed()
    harness.rollout_polls = 2
    monkeypatch.setattr("services.traffic_audit.mlflow_client", _local_client_factory())
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
    (change,) = traffic_audit.traffic_changes(ENDPOINT, settings=dbx_settings)
    assert (change.user, change.reason) == ("ana@example.com", "widen the test")
    assert change.before == {"main.demo.support v1": 90, "main.demo.support v2": 10}
    assert change.after == {"main.demo.support v1": 50, "main.demo.support v2": 50}


def test_update_in_progress_is_a_conflict_and_nothing_is_recorded(harness, dbx_settings, monkeypatch):
    harness.endpoints[ENDPOINT] = _detailed(sdk.EndpointStateConfigUpdate.IN_PROGRESS)
    monkeypatch.setattr("services.traffic_audit.mlflow_client", _local_client_factory())
    plan = serving.plan_split(ENDPOINT, {("main.demo.support", "2"): 100}, settings=dbx_settings)
    with pytest.raises(ConflictError, match="already has an update in progress"):
        serving.apply_split(plan, user="ana", reason="r", settings=dbx_settings)
    assert len(_puts(harness)) == 1  # sent, refused with 409
    assert traffic_audit.traffic_changes(ENDPOINT, settings=dbx_settings) == []


def test_missing_can_manage_is_named(harness, dbx_settings, monkeypatch):
    harness.endpoints[ENDPOINT] = _detailed()
    harness.forbidden.add(ENDPOINT)
    monkeypatch.setattr("services.traffic_audit.mlflow_client", _local_client_factory())
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
    import mlflow

    from services.serving import EndpointState, ServedVersion, TrafficRoute

    client = mlflow.MlflowClient(tracking_uri=isolated_settings.tracking_uri)
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source="file:///tmp/none")
    serving.save_local_endpoint(serving.Endpoint(
        "ep", (ServedVersion("m_1", "m", "1"),), (TrafficRoute("m_1", 100),), EndpointState.READY), isolated_settings)
    plan = serving.plan_split("ep", {("m", "1"): 70, ("m", "2"): 30}, settings=isolated_settings)
    stored = serving.apply_split(plan, user="ana", reason="canary v2", settings=isolated_settings)
    assert serving.get_endpoint("ep", isolated_settings) == stored
    assert stored.updated_by == "ana"
    (change,) = traffic_audit.traffic_changes("ep", settings=isolated_settings)
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
    assert len(traffic_audit.traffic_changes("ep", settings=isolated_settings)) == 1

    # One request id is one change: reusing it for another split is refused, not applied.
    serving.apply_split(serving.plan_split("ep", {("m", "2"): 100}, settings=isolated_settings), user="ana",
                        reason="all on v2", settings=isolated_settings, request_id="req-1")
    moved = serving.get_endpoint("ep", isolated_settings)
    with pytest.raises(ValidationError, match="start a new confirmation"):
        serving.apply_split(serving.plan_split("ep", {("m", "1"): 100}, settings=isolated_settings), user="ana",
                            reason="all on v1", settings=isolated_settings, request_id="req-1")
    assert serving.get_endpoint("ep", isolated_settings) == moved
    assert len(traffic_audit.traffic_changes("ep", settings=isolated_settings)) == 2


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
