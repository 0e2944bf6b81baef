from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from databricks.sdk.service import serving as sdk

from services import serving, team_state
from services.errors import ConflictError, ValidationError
from services.settings import load_settings
from tests.harness.databricks import DatabricksHarness
from tests.harness.databricks_settings import databricks_settings

SERVED = (
    serving.ServedVersion("agent-1", "agent", "1"),
    serving.ServedVersion("agent-2", "agent", "2"),
)


def _endpoint(routes: tuple[serving.TrafficRoute, ...], served=SERVED) -> serving.Endpoint:
    return serving.Endpoint("ep", served, routes, serving.EndpointState.READY, datetime.now(tz=timezone.utc), "ana")


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ((serving.TrafficRoute("agent-1", 70), serving.TrafficRoute("agent-2", 20)), "sums to 90%"),
        ((serving.TrafficRoute("agent-1", 120), serving.TrafficRoute("agent-2", -20)), "0-100"),
        ((serving.TrafficRoute("agent-1", 50), serving.TrafficRoute("agent-1", 50)), "twice"),
        ((serving.TrafficRoute("agent-9", 100),), "does not name a served version"),
    ],
)
def test_bad_split_is_refused_and_nothing_is_stored(tmp_path, routes, message):
    settings = load_settings({"AGENTOPS_DATA_DIR": str(tmp_path)})
    good = serving.save_local_endpoint(_endpoint((serving.TrafficRoute("agent-1", 100),)), settings)
    before = team_state.read_all(settings)
    with pytest.raises(ValidationError, match=message):
        serving.save_local_endpoint(_endpoint(routes), settings)
    assert team_state.read_all(settings) == before  # the stored record keeps its version and value
    assert serving.list_endpoints(settings) == [good]


def test_local_endpoint_round_trips(tmp_path):
    settings = load_settings({"AGENTOPS_DATA_DIR": str(tmp_path)})
    endpoint = _endpoint((serving.TrafficRoute("agent-1", 70), serving.TrafficRoute("agent-2", 30)))
    serving.save_local_endpoint(endpoint, settings)
    (stored,) = serving.list_endpoints(settings)
    assert stored == endpoint
    assert stored.percentage_for("agent-2") == 30
    assert team_state.read(serving.ENDPOINT_KEY + "ep", settings).updated_by == "ana"
    assert stored.config_version == 1


def test_a_stale_split_write_is_a_conflict_and_the_embedded_file_is_migrated_once(tmp_path):
    settings = load_settings({"AGENTOPS_DATA_DIR": str(tmp_path)})
    legacy = _endpoint((serving.TrafficRoute("agent-1", 60), serving.TrafficRoute("agent-2", 40)))
    serving.local_config_path(settings).parent.mkdir(parents=True, exist_ok=True)
    serving.local_config_path(settings).write_text(json.dumps({"endpoints": [serving.endpoint_to_json(legacy)]}))
    (stored,) = serving.list_endpoints(settings)  # the first read migrates the file
    assert stored == legacy and stored.config_version == 1
    assert [c["user"] for c in team_state.history(settings)] == [team_state.MIGRATED_BY]
    serving.list_endpoints(settings)
    assert len(team_state.history(settings)) == 1  # once
    mine = _endpoint((serving.TrafficRoute("agent-1", 100),))
    serving.save_local_endpoint(mine, settings, expected_version=1)
    with pytest.raises(ConflictError, match="since you loaded it"):
        serving.save_local_endpoint(_endpoint((serving.TrafficRoute("agent-2", 100),)), settings, expected_version=1)
    assert serving.get_endpoint("ep", settings).percentage_for("agent-1") == 100


@pytest.fixture
def harness():
    running = DatabricksHarness().start()
    yield running
    running.stop()


def test_databricks_endpoints_are_read_through_the_sdk(harness, monkeypatch):
    harness.endpoints["agents_main-demo-support"] = sdk.ServingEndpointDetailed(
        name="agents_main-demo-support",
        creator="ops@example.com",
        last_updated_timestamp=1_700_000_000_000,
        state=sdk.EndpointState(config_update=sdk.EndpointStateConfigUpdate.IN_PROGRESS, ready=sdk.EndpointStateReady.READY),
        config=sdk.EndpointCoreConfigOutput(
            served_entities=[
                sdk.ServedEntityOutput(name="main-demo-support_1", entity_name="main.demo.support", entity_version="1"),
                sdk.ServedEntityOutput(name="main-demo-support_2", entity_name="main.demo.support", entity_version="2"),
            ],
            traffic_config=sdk.TrafficConfig(routes=[
                sdk.Route(served_entity_name="main-demo-support_1", traffic_percentage=90),
                sdk.Route(served_entity_name="main-demo-support_2", traffic_percentage=10),
            ]),
        ),
    )
    monkeypatch.setenv("DATABRICKS_TOKEN", "test-token")
    settings = databricks_settings(harness)
    (endpoint,) = serving.list_endpoints(settings)
    assert endpoint.name == "agents_main-demo-support"
    assert endpoint.state is serving.EndpointState.UPDATING
    assert endpoint.served[1] == serving.ServedVersion("main-demo-support_2", "main.demo.support", "2")
    assert {r.entity_name: r.percentage for r in endpoint.routes} == {"main-demo-support_1": 90, "main-demo-support_2": 10}
    # Who changed it comes from the audit trail (none here), never from the endpoint's creator (issue 18).
    assert endpoint.updated_by is None
    paths = [r.path for r in harness.requests if r.path.startswith("/api/2.0/serving-endpoints")]
    assert paths == ["/api/2.0/serving-endpoints", "/api/2.0/serving-endpoints/agents_main-demo-support"]
