"""A guarded rollout on the real services: a local endpoint, versions linked to LoggedModels, traces
written with MLflow's public API (as the gateway writes them: linked by ``mlflow.modelId``, with the
endpoint's name as its documented tag), the audit trail and a loopback alert channel.

The challenger's error rate rises mid-rollout; the controller rolls it back: traffic returns to the
champion, one audit record and one notification name the rule.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mlflow
import pytest

from services import alerting, audit, rollout_controller, serving
from services._clients import mlflow_client
from services.identity import Identity, IdentitySource
from services.rollout_ports import ServicePorts
from services.rollouts import Final, Guardrail, Measure, RolloutPlan
from services.traces import ENDPOINT_TAG

OPERATOR = Identity("ops@example.com", "Ops", IdentitySource.OS_USER)
ENDPOINT = "shop-ep"


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.lock, server.received = threading.Lock(), []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def world(isolated_settings, tmp_path, monkeypatch, receiver):
    """Two versions of one agent, each a LoggedModel, served by a local endpoint at 100 / 0."""
    monkeypatch.setenv("AGENTOPS_ALERT_CHANNELS_FILE", str(tmp_path / "private" / "alert-channels.json"))
    client = mlflow_client(isolated_settings)
    experiment_id = client.create_experiment("shop-traffic", artifact_location=(tmp_path / "art").as_uri())
    models = []
    for _ in range(2):
        model = mlflow.initialize_logged_model(name="shop", experiment_id=experiment_id)
        mlflow.register_model(f"models:/{model.model_id}", "shop")
        models.append(model.model_id)
    client.set_registered_model_alias("shop", "champion", "1")
    served = (serving.ServedVersion("shop_1", "shop", "1"), serving.ServedVersion("shop_2", "shop", "2"))
    serving.save_local_endpoint(serving.Endpoint(
        ENDPOINT, served, (serving.TrafficRoute("shop_1", 100), serving.TrafficRoute("shop_2", 0)),
        serving.EndpointState.READY), isolated_settings)
    alerting.save_channel(isolated_settings, "oncall", f"json://127.0.0.1:{receiver.server_port}/hooks/rollouts",
                          OPERATOR)
    return experiment_id, models


def _traffic(experiment_id: str, model_id: str, ok: int, failed: int) -> None:
    mlflow.set_experiment(experiment_id=experiment_id)
    mlflow.set_active_model(model_id=model_id)

    @mlflow.trace(name="answer")
    def answer(fail: bool) -> str:
        mlflow.update_current_trace(tags={ENDPOINT_TAG: ENDPOINT})
        if fail:
            raise RuntimeError("upstream timed out")
        return "fine"

    try:
        for i in range(ok + failed):
            try:
                answer(i < failed)
            except RuntimeError:
                pass
    finally:
        mlflow.clear_active_model()
    mlflow.flush_trace_async_logging()


def test_a_challenger_failing_mid_rollout_is_rolled_back_once(isolated_settings, world, receiver):
    experiment_id, (champion_model, challenger_model) = world
    ports = ServicePorts(isolated_settings)
    plan = RolloutPlan(ENDPOINT, "shop_1", "shop_2", (10, 50, 100), min_sample=50, dwell_seconds=0,
                       guardrails=(Guardrail(Measure.ERROR_RATE, 0.02),), final=Final.APPROVAL)
    rollout_controller.start(plan, OPERATOR, isolated_settings, ports)
    assert serving.get_endpoint(ENDPOINT, isolated_settings).percentage_for("shop_2") == 10

    # Healthy at first: not enough requests yet, the controller holds.
    _traffic(experiment_id, champion_model, ok=60, failed=0)
    _traffic(experiment_id, challenger_model, ok=20, failed=0)
    [(_, held)] = rollout_controller.tick(isolated_settings, ports)
    assert held.action.value == "hold"

    # Then the challenger starts failing.
    _traffic(experiment_id, champion_model, ok=240, failed=0)
    _traffic(experiment_id, challenger_model, ok=80, failed=200)
    [(_, decision)] = rollout_controller.tick(isolated_settings, ports)
    assert decision.action.value == "roll back" and decision.rule == "error_rate"

    endpoint = serving.get_endpoint(ENDPOINT, isolated_settings)
    assert {r.entity_name: r.percentage for r in endpoint.routes} == {"shop_1": 100, "shop_2": 0}
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
