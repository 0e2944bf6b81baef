"""A guarded rollout on the real services, with its traffic served by a running local gateway.

Two versions of one agent (models from code, logged and registered with MLflow's public API) are
served by a local endpoint; requests go through a running gateway over HTTP, so the traces the
controller reads are the ones the gateway recorded. The challenger's error rate is raised
mid-rollout; the controller rolls it back: traffic returns to the champion (the gateway routes every
later request there), one audit record and one notification name the rule.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import mlflow
import pytest

from gateway.runner import RunningGateway
from services import alerting, audit, rollout_controller, serving
from services._clients import mlflow_client
from services.identity import Identity, IdentitySource
from services.rollout_ports import ServicePorts
from services.rollouts import Final, Guardrail, Measure, RolloutPlan
from tests.harness.webhook_receiver import running_webhook_receiver

AGENT_FILE = Path(__file__).resolve().parent / "rollout_flaky_agent.py"
QUESTION = {"input": [{"role": "user", "content": "Where is my order?"}]}
OPERATOR = Identity("ops@example.com", "Ops", IdentitySource.OS_USER)
ENDPOINT = "shop-ep"


@pytest.fixture
def receiver():
    with running_webhook_receiver() as server:
        yield server


@pytest.fixture
def world(isolated_settings, tmp_path, monkeypatch, receiver):
    """Two versions of one agent served by a local endpoint at 100 / 0, and a running gateway."""
    monkeypatch.setenv("AGENTOPS_ALERT_CHANNELS_FILE", str(tmp_path / "private" / "alert-channels.json"))
    client = mlflow_client(isolated_settings)
    experiment_id = client.create_experiment("shop-traffic", artifact_location=(tmp_path / "art").as_uri())
    fault_files = [tmp_path / f"faults-v{n}" for n in (1, 2)]
    for fault_file in fault_files:
        with mlflow.start_run(experiment_id=experiment_id):
            mlflow.pyfunc.log_model(name="agent", python_model=str(AGENT_FILE), pip_requirements=["mlflow"],
                                    model_config={"fault_file": str(fault_file)}, registered_model_name="shop")
    client.set_registered_model_alias("shop", "champion", "1")
    served = (serving.ServedVersion("shop_1", "shop", "1"), serving.ServedVersion("shop_2", "shop", "2"))
    serving.save_local_endpoint(serving.Endpoint(
        ENDPOINT, served, (serving.TrafficRoute("shop_1", 100), serving.TrafficRoute("shop_2", 0)),
        serving.EndpointState.READY), isolated_settings)
    alerting.save_channel(isolated_settings, "oncall", f"json://127.0.0.1:{receiver.server_port}/hooks/rollouts",
                          OPERATOR)
    with RunningGateway(isolated_settings) as gateway:
        yield gateway, fault_files[1]


def _send(gateway: RunningGateway, n: int) -> Counter:
    """``n`` requests to the endpoint through the gateway; (arm, status) counts, once their traces are stored."""
    seen: Counter = Counter()
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        for _ in range(n):
            response = client.post(f"/serving-endpoints/{ENDPOINT}/invocations", json=QUESTION)
            seen[(response.headers["X-AgentOps-Arm"], response.status_code)] += 1
    stats = gateway.gateway.drain(120)
    assert (stats.lost, stats.pending) == (0, 0)
    return seen


def test_a_challenger_failing_mid_rollout_is_rolled_back_once(isolated_settings, world, receiver):
    gateway, challenger_faults = world
    ports = ServicePorts(isolated_settings)
    plan = RolloutPlan(ENDPOINT, "shop_1", "shop_2", (50, 100), min_sample=30, dwell_seconds=0,
                       guardrails=(Guardrail(Measure.ERROR_RATE, 0.02),), final=Final.APPROVAL)
    rollout_controller.start(plan, OPERATOR, isolated_settings, ports)
    assert serving.get_endpoint(ENDPOINT, isolated_settings).percentage_for("shop_2") == 50

    # Healthy at first: the gateway splits the requests, too few yet for a decision; the controller holds.
    healthy = _send(gateway, 30)
    assert healthy[("shop_2", 200)] > 0 and healthy[("shop_1", 200)] > 0 and sum(healthy.values()) == 30
    [(_, held)] = rollout_controller.tick(isolated_settings, ports)
    assert held.action.value == "hold"

    # Then the challenger starts failing (eight requests in ten).
    challenger_faults.write_text("0.8")
    failing = _send(gateway, 150)
    assert failing[("shop_2", 500)] > 30 and failing[("shop_1", 500)] == 0
    [(_, decision)] = rollout_controller.tick(isolated_settings, ports)
    assert decision.action.value == "roll back" and decision.rule == "error_rate"

    endpoint = serving.get_endpoint(ENDPOINT, isolated_settings)
    assert {r.entity_name: r.percentage for r in endpoint.routes} == {"shop_1": 100, "shop_2": 0}
    assert _send(gateway, 20) == Counter({("shop_1", 200): 20})  # the gateway routes everything to the champion
    assert str(mlflow_client(isolated_settings).get_registered_model("shop").aliases["champion"]) == "1"
    records = [c for c in audit.traffic_changes(ENDPOINT, settings=isolated_settings) if "breached" in c.reason]
    assert len(records) == 1 and "error_rate" in records[0].reason and records[0].completed
    with receiver.lock:
        rollbacks = [m for m in receiver.received if "roll back" in m.get("title", "")]
    assert len(rollbacks) == 1 and "error_rate" in rollbacks[0]["title"]

    # A later look changes nothing and sends nothing.
    changes = len(audit.traffic_changes(ENDPOINT, settings=isolated_settings))
    assert rollout_controller.tick(isolated_settings, ports) == []
    assert len(audit.traffic_changes(ENDPOINT, settings=isolated_settings)) == changes
    with receiver.lock:
        assert len([m for m in receiver.received if "roll back" in m.get("title", "")]) == 1
