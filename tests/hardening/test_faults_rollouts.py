"""Guarded rollouts on every backend, and the controller's action interrupted mid-step.

The rollouts run through the real ports (``services.rollout_ports.ServicePorts``: splits through the
audited change mechanism, promotion through the gated path, notices through the alert channels to a
loopback receiver); only the arms' evidence is given by the test (constructed samples that clear or
breach the error-rate guardrail), since what is checked here is the action, not the statistics.

* Backends: a rollout step and a rollback on a Databricks serving endpoint (the real databricks-sdk
  against the strict workspace harness) and on an MLflow AI Gateway endpoint (a real ``mlflow
  server``): the traffic config the backend holds afterwards, and nothing else of the endpoint lost.
* Faults: the backend goes away after the controller decided a rollback and recorded it as pending,
  before the traffic write; after the traffic write, before its audit record is completed; and after
  that, before the notification. The backend is a real ``mlflow server`` (local gateway endpoints:
  config, audit trail and rollout record all live there) SIGKILLed and restarted on its store, or the
  Databricks workspace harness answering 503 to everything (``tests/harness/workspace_outage.py``).
  After the restart the next tick completes the action: the endpoint, the registry, the rollout record
  and the audit trail agree, and there is one traffic change, one audit record and one notification.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow import MlflowClient

from services import alerting, audit, releases, serving, team_state
from services import rollout_controller as rc
from services.identity import Identity, IdentitySource
from services.rollout_ports import ServicePorts
from services.rollouts import Final, RolloutPlan
from services.serving import Endpoint, EndpointState, ServedVersion, TrafficRoute
from tests.hardening.mlflow_restart import kill_at_call, kill_group, restartable_backend
from tests.hardening.reliability import write_record
from tests.hardening.rollout_child import BREACH, CLEAR, GivenEvidencePorts
from tests.harness.webhook_receiver import running_webhook_receiver
from tests.harness.databricks_secrets import SecretsApi
from tests.harness.databricks_settings import use_app_env
from tests.harness.workspace_outage import WorkspaceOutage
from tests.services.rollout_world import error_rate_plan
from tests.services.test_releases import AGENT, build_agent

pytestmark = pytest.mark.slow

OPERATOR = Identity("olivia.ops@example.com", "Olivia Ops", IdentitySource.OS_USER)
LOCAL_ENDPOINT = "rollout-faults"
@pytest.fixture(scope="module")
def receiver():
    """The alert channel's webhook on loopback: every notice the controller sends."""
    with running_webhook_receiver() as server:
        yield server


def _notices(receiver, endpoint: str, words: str = "roll back") -> list[dict]:
    with receiver.lock:
        return [m for m in receiver.received if endpoint in m.get("title", "") and words in m.get("title", "")]


def _plan(endpoint: str, champion: str, challenger: str, *, final: Final = Final.APPROVAL) -> RolloutPlan:
    return error_rate_plan(endpoint, champion, challenger, final=final)


def _start_local(server, receiver, evidence: tuple[int, int, int]):
    """A rollout of v2 on the local endpoint at its first step (10 %): the server, settings, both arms, the
    ports giving ``evidence``, how many notices were sent before it, and the rollout."""
    srv, settings = server
    _alive(srv)
    champion, challenger = (serving.entity_name_for(AGENT, v) for v in ("1", "2"))
    ports = GivenEvidencePorts(settings, evidence)
    notices_before = len(_notices(receiver, LOCAL_ENDPOINT))
    rollout = rc.start(_plan(LOCAL_ENDPOINT, champion, challenger), OPERATOR, settings, ports)
    assert ports.served_arms(LOCAL_ENDPOINT) == {champion: 90, challenger: 10}
    return srv, settings, champion, challenger, ports, notices_before, rollout


def _rollout_records(settings, rollout: rc.Rollout) -> list:
    """The audit trail's traffic changes made by this rollout (its request ids), oldest first."""
    prefix = f"rollout-{rollout.rollout_id}-"
    found = [c for c in audit.traffic_changes(rollout.plan.endpoint, settings=settings)
             if (c.request_id or "").startswith(prefix)]
    return sorted(found, key=lambda c: c.request_id)


def _agree(settings, ports, rollout: rc.Rollout, receiver, *, rollback_writes: int, notices_before: int) -> dict:
    """After the action: endpoint, registry, rollout record and audit trail agree; it happened once."""
    plan = rollout.plan
    done = rc.get_rollout(plan.endpoint, settings)
    assert done.status is rc.Status.ROLLED_BACK and not done.pending
    assert sum(e.kind == "decision" and e.action == "roll back" for e in done.timeline) == 1
    held = ports.served_arms(plan.endpoint)
    assert held[plan.champion] == 100 and held[plan.challenger] == 0
    records = _rollout_records(settings, rollout)
    rollbacks = [r for r in records if r.request_id.endswith("rollback-traffic")]
    assert len(rollbacks) == 1 and rollbacks[0].completed, records
    assert rollbacks[0].after == serving.percentages(ports._endpoint(plan.endpoint))
    assert "breached" in rollbacks[0].reason and "error_rate" in rollbacks[0].reason
    assert all(r.completed for r in records) and len(records) == 2  # the first step and the rollback
    assert rollback_writes == 1  # the backend was asked once to move the traffic back
    notices = _notices(receiver, plan.endpoint)[notices_before:]
    assert len(notices) == 1 and "error_rate" in notices[0]["title"]
    return {"records": len(records), "rollback writes": rollback_writes, "notices": len(notices)}


# --- a real mlflow server: local gateway endpoints and MLflow AI Gateway endpoints -------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, receiver):
    root = tmp_path_factory.mktemp("rollout-faults")
    env = {"MLFLOW_GATEWAY_API_BASE_ALLOWED_SCHEMES": "http,https", "MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS": "true",
           "MLFLOW_MODEL_CATALOG_URI": ""}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AGENTOPS_ALERT_CHANNELS_FILE", str(root / "private" / "alert-channels.json"))
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a dead server fails at once, not after backoffs
        with restartable_backend(root, env=env) as (srv, settings):
            build_agent(settings)
            served = tuple(ServedVersion(serving.entity_name_for(AGENT, v), AGENT, v) for v in ("1", "2"))
            serving.save_local_endpoint(Endpoint(
                LOCAL_ENDPOINT, served, (TrafficRoute(served[0].entity_name, 100), TrafficRoute(served[1].entity_name, 0)),
                EndpointState.READY, backend="local"), settings)
            alerting.save_channel(settings, "oncall", f"json://127.0.0.1:{receiver.server_port}/hooks/rollouts",
                                  OPERATOR)
            yield srv, settings


def _alive(srv) -> None:
    if not srv.alive():
        srv.start()


LOCAL_POINTS = ["after the decision, before the traffic write", "after the traffic write, before its audit completion",
                "after the audit completion, before the notification"]


@pytest.mark.parametrize("point", LOCAL_POINTS, ids=["decided", "written", "recorded"])
def test_a_rollback_interrupted_by_the_mlflow_server_dying_completes_once_after_restart(server, receiver, monkeypatch,
                                                                                       point):
    srv, settings, champion, challenger, ports, notices_before, rollout = _start_local(server, receiver, BREACH)

    # Every write of the endpoint's split that sends the challenger nothing is the rollback's.
    writes = []
    save = serving.local.save_local_endpoint

    def counted(endpoint, *args, **kwargs):
        if endpoint.percentage_for(challenger) == 0:
            writes.append(endpoint)
        return save(endpoint, *args, **kwargs)

    monkeypatch.setattr(serving.local, "save_local_endpoint", counted)
    with monkeypatch.context() as fault:
        if point == LOCAL_POINTS[0]:  # the pending action is recorded; the server dies as the split is planned
            calls = kill_at_call(fault, srv.kill, ports, "set_shares")
        elif point == LOCAL_POINTS[1]:
            calls = kill_at_call(fault, srv.kill, serving.local, "save_local_endpoint", when="after",
                                 matches=lambda endpoint, *a, **k: endpoint.percentage_for(challenger) == 0)
        else:  # the traffic change is complete; the server dies before the notice
            calls = kill_at_call(fault, srv.kill, alerting, "notify_channels")
        looked = rc.tick(settings, ports)
    assert looked == [(LOCAL_ENDPOINT, None)] and calls["faulted"] == 1 and not srv.alive()

    srv.start()
    pending = rc.get_rollout(LOCAL_ENDPOINT, settings)
    assert pending.pending and pending.pending["action"] == "roll back" and pending.status is rc.Status.RUNNING
    ports.given = CLEAR  # whatever the evidence says now, the decision taken stands
    [(_, finished)] = rc.tick(settings, GivenEvidencePorts(settings, CLEAR))
    assert finished.action.value == "roll back" and finished.rule == "error_rate"
    figures = _agree(settings, ports, rollout, receiver, rollback_writes=len(writes), notices_before=notices_before)
    aliases = MlflowClient(tracking_uri=settings.tracking_uri).get_registered_model(AGENT).aliases
    assert str(aliases["champion"]) == "1"  # a rollback leaves the registry as it was
    assert rc.tick(settings, ports) == []  # nothing left to do, nothing sent again
    assert len(_notices(receiver, LOCAL_ENDPOINT)) == notices_before + 1
    write_record("faults", f"guarded rollout (local endpoint): server killed {point}", {
        **figures, "restart (s)": round(srv.starts[-1], 1), "trail agrees": "yes"},
        notes="mlflow server SIGKILLed at this point of the controller's rollback, restarted on the same SQLite "
              "store; the next tick completes the pending action with the same request id.")


# --- the controller process itself killed between deciding and acting --------------------------------


class _HoldingProxy(ThreadingHTTPServer):
    """A loopback proxy in front of the ``mlflow server``: it passes every request on, except the first
    one ``hold`` names, which it keeps (never forwarded) until ``release``; then it drops the connection."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream_port = upstream_port
        self.matches = None
        self.held, self.released = threading.Event(), threading.Event()
        self.forwarded: list[tuple[str, str, bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _Forward(BaseHTTPRequestHandler):
    def _forward(self):
        proxy = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        if proxy.matches is not None and not proxy.held.is_set() and proxy.matches(self.command, self.path, body):
            proxy.held.set()
            proxy.released.wait(120)
            self.close_connection = True
            return  # never forwarded: the caller sees its connection drop (if it is still alive)
        proxy.forwarded.append((self.command, self.path, body))
        upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection", "content-length")}
        upstream.request(self.command, self.path, body=body or None, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward

    def log_message(self, *args):
        pass


def _endpoint_write(name: str):
    """Whether a request is the write of local endpoint ``name``'s configuration (its record's tags)."""
    slug = team_state._slug(serving.local.ENDPOINT_KEY + name)
    heads = (f"{team_state.HEAD_PREFIX}{slug}", f"{team_state.CHUNK_PREFIX}{slug}.")

    def matches(method: str, path: str, body: bytes) -> bool:
        if method != "POST" or not path.split("?")[0].endswith("/experiments/set-experiment-tag"):
            return False
        key = json.loads(body or b"{}").get("key", "")
        return key == heads[0] or key.startswith(heads[1])

    return matches


def test_the_controller_process_killed_between_deciding_and_moving_traffic_acts_once_after_restart(
        server, receiver, monkeypatch):
    """A controller in its own process records its rollback as pending and is SIGKILLed while its traffic
    write is on the wire (held by a proxy, never delivered); a new controller finishes the action once."""
    srv, settings, champion, challenger, ports, notices_before, rollout = _start_local(server, receiver, CLEAR)
    aliases_before = MlflowClient(settings.tracking_uri, settings.tracking_uri).get_registered_model(AGENT).aliases

    proxy = _HoldingProxy(srv.port)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    proxy.matches = _endpoint_write(LOCAL_ENDPOINT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTOPS_", "MLFLOW_TRACKING", "DATABRICKS_"))}
    env.update({"AGENTOPS_BACKEND": "mlflow", "AGENTOPS_MLFLOW_URI": proxy.url, "AGENTOPS_DATA_DIR": str(settings.data_dir),
                "AGENTOPS_ALERT_CHANNELS_FILE": os.environ["AGENTOPS_ALERT_CHANNELS_FILE"],
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_MODEL_CATALOG_URI": ""})
    began = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "tests.hardening.rollout_child", *map(str, BREACH)],
                             cwd=Path(__file__).resolve().parents[2], env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while not proxy.held.wait(0.2):
            assert child.poll() is None, child.communicate()[1].decode()[-3000:]
            assert time.monotonic() - began < 180, "the controller never reached its traffic write"
        # The controller has decided and recorded its action; the traffic has not moved.
        decided = rc.get_rollout(LOCAL_ENDPOINT, settings)
        assert decided.pending and decided.pending["action"] == "roll back" and decided.pending["rule"] == "error_rate"
        assert ports.served_arms(LOCAL_ENDPOINT) == {champion: 90, challenger: 10}
        kill_group(child)
        killed_after = round(time.monotonic() - began, 1)
    finally:
        if child.poll() is None:
            kill_group(child)
        proxy.released.set()
        proxy.shutdown()
        proxy.server_close()
    assert child.returncode == -9
    assert not _notices(receiver, LOCAL_ENDPOINT)[notices_before:]  # nothing was announced by the dead controller

    writes = []
    save = serving.local.save_local_endpoint

    def counted(endpoint, *args, **kwargs):  # writes that landed
        saved = save(endpoint, *args, **kwargs)
        if endpoint.percentage_for(challenger) == 0:
            writes.append(endpoint)
        return saved

    monkeypatch.setattr(serving.local, "save_local_endpoint", counted)
    # The dead controller had claimed the endpoint record's next version: while that claim is fresh it
    # may be a live writer's, so the next look leaves the rollout alone ...
    assert rc.tick(settings, GivenEvidencePorts(settings, CLEAR)) == []
    assert rc.get_rollout(LOCAL_ENDPOINT, settings).pending and not writes
    assert ports.served_arms(LOCAL_ENDPOINT) == {champion: 90, challenger: 10}
    # ... and once it is stale (team_state.STALE_CLAIM_SECONDS; here at once) the next look finishes the action.
    monkeypatch.setattr(team_state, "STALE_CLAIM_SECONDS", 0.0)
    [(_, finished)] = rc.tick(settings, GivenEvidencePorts(settings, CLEAR))  # the evidence now would say advance
    assert finished.action.value == "roll back" and finished.rule == "error_rate"
    figures = _agree(settings, ports, rollout, receiver, rollback_writes=len(writes), notices_before=notices_before)
    assert MlflowClient(settings.tracking_uri, settings.tracking_uri).get_registered_model(AGENT).aliases == aliases_before
    assert rc.tick(settings, ports) == []
    write_record("faults", "guarded rollout (local endpoint): controller process killed before the traffic write", {
        **figures, "controller killed after (s)": killed_after, "trail agrees": "yes"},
        notes="the controller ran in its own process (python -m tests.hardening.rollout_child, one tick with the "
              "real ServicePorts) through a proxy holding its traffic write; SIGKILLed there, a controller in "
              "another process completed the pending rollback with the same request id.")


def test_a_final_promotion_interrupted_by_the_mlflow_server_dying_completes_once_after_restart(server, receiver,
                                                                                              monkeypatch):
    """The last step promotes (alias and 100 % traffic through the gated path); the server dies right after
    the alias moved, before its audit record is completed and before anyone is told. The next tick
    completes the record without moving the alias again, and announces the promotion once."""
    srv, settings = server
    _alive(srv)
    champion, challenger = (serving.entity_name_for(AGENT, v) for v in ("1", "2"))
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    client.set_registered_model_alias(AGENT, "champion", "1")  # as a person would have it before the rollout
    ports = GivenEvidencePorts(settings, CLEAR)
    plan = error_rate_plan(LOCAL_ENDPOINT, champion, challenger, (50, 100))
    notices_before = len(_notices(receiver, LOCAL_ENDPOINT, "promote"))
    rollout = rc.start(plan, OPERATOR, settings, ports)
    [(_, advanced)] = rc.tick(settings, ports)
    assert advanced.action.value == "advance" and ports.served_arms(LOCAL_ENDPOINT) == {champion: 0, challenger: 100}

    moves = []
    original = MlflowClient.set_registered_model_alias

    def moved(self, name, alias, version):
        result = original(self, name, alias, version)
        moves.append((name, alias, str(version)))
        if len(moves) == 1 and not fault_over:
            srv.kill()  # the alias is set; its audit record is not completed yet
        return result

    fault_over = False
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", moved)
    assert rc.tick(settings, ports) == [(LOCAL_ENDPOINT, None)] and not srv.alive()
    srv.start()
    fault_over = True
    assert str(client.get_registered_model(AGENT).aliases["champion"]) == "2"  # the registry moved ...
    interrupted = rc.get_rollout(LOCAL_ENDPOINT, settings)
    assert interrupted.pending and interrupted.pending["action"] == "promote"  # ... the rollout did not finish
    assert not _notices(receiver, LOCAL_ENDPOINT, "promote")[notices_before:]

    [(_, finished)] = rc.tick(settings, GivenEvidencePorts(settings, BREACH))  # the decision taken stands
    assert finished.action.value == "promote"
    assert moves == [(AGENT, "champion", "2")]  # the alias was moved once, before the kill
    done = rc.get_rollout(LOCAL_ENDPOINT, settings)
    assert done.status is rc.Status.PROMOTED and not done.pending
    assert sum(e.kind == "decision" and e.action == "promote" for e in done.timeline) == 1
    # Endpoint, registry and audit trail agree: all traffic and the alias on the challenger, both recorded once.
    assert ports.served_arms(LOCAL_ENDPOINT) == {champion: 0, challenger: 100}
    prefix = f"rollout-{rollout.rollout_id}-"
    alias_records = [c for c in releases.alias_history(AGENT, "champion", settings)
                     if (c.request_id or "").startswith(prefix)]
    assert len(alias_records) == 1 and alias_records[0].completed
    assert alias_records[0].to_version == "2" and alias_records[0].user == OPERATOR.user
    assert releases.alias_state(AGENT, "champion", settings).drift is releases.Drift.RECORDED
    traffic = _rollout_records(settings, rollout)
    assert [sorted(r.after.values()) for r in traffic] == [[50, 50], [0, 100]] and all(r.completed for r in traffic)
    notices = _notices(receiver, LOCAL_ENDPOINT, "promote")[notices_before:]
    assert len(notices) == 1
    assert rc.tick(settings, ports) == []
    write_record("faults", "guarded rollout (local endpoint): server killed after the promotion's alias move", {
        "alias moves": len(moves), "alias records": len(alias_records), "traffic records": len(traffic),
        "notices": len(notices), "restart (s)": round(srv.starts[-1], 1), "trail agrees": "yes"},
        notes="mlflow server SIGKILLed right after the final step's alias move, before its audit record was "
              "completed; after the restart the next tick completed the record (no second alias move) and the "
              "rollout, and announced the promotion once.")


def _gateway_raw(settings, name: str) -> dict:
    """The AI Gateway endpoint as MLflow's REST API returns it, read as another client would."""
    url = f"{settings.tracking_uri}/api/3.0/mlflow/gateway/endpoints/get?name={name}"
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())["endpoint"]


def _without_weights(raw: dict) -> dict:
    kept = {k: v for k, v in raw.items() if k not in ("last_updated_at", "last_updated_by", "updated_at")}
    kept["model_mappings"] = sorted(
        ({k: v for k, v in m.items() if k not in ("weight", "created_at", "mapping_id", "created_by")}
         for m in raw.get("model_mappings", [])), key=json.dumps)
    return kept


def _weights(raw: dict) -> dict[str, float]:
    return {m["model_definition"]["name"]: round(float(m.get("weight") or 0), 2)
            for m in raw.get("model_mappings", []) if m.get("linkage_type", "PRIMARY") == "PRIMARY"}


def test_a_rollout_step_and_rollback_on_an_mlflow_ai_gateway_endpoint_keep_its_config(server, receiver):
    srv, settings = server
    _alive(srv)
    rest = serving.ai_gateway._rest
    secret = rest(settings, "POST", "secrets/create", body={
        "secret_name": "rollout-openai", "secret_value": {"api_key": "sk-test"}, "provider": "openai",
        "auth_config": {"api_base": "http://127.0.0.1:9/v1"}})["secret"]["secret_id"]
    ids = {name: rest(settings, "POST", "model-definitions/create", body={
        "name": name, "secret_id": secret, "provider": "openai", "model_name": f"gpt-{name}"})["model_definition"][
        "model_definition_id"] for name in ("rgw-a", "rgw-b", "rgw-f")}
    name = "rollout-gw"
    rest(settings, "POST", "endpoints/create", body={
        "name": name, "routing_strategy": "REQUEST_BASED_TRAFFIC_SPLIT", "usage_tracking": True,
        "fallback_config": {"strategy": "SEQUENTIAL", "max_attempts": 1},
        "model_configs": [{"model_definition_id": ids["rgw-a"], "linkage_type": "PRIMARY", "weight": 0.8},
                          {"model_definition_id": ids["rgw-b"], "linkage_type": "PRIMARY", "weight": 0.2},
                          {"model_definition_id": ids["rgw-f"], "linkage_type": "FALLBACK", "fallback_order": 1}]})
    before = _gateway_raw(settings, name)
    ports = GivenEvidencePorts(settings, CLEAR)
    rollout = rc.start(_plan(name, "rgw-a", "rgw-b"), OPERATOR, settings, ports)
    assert _weights(_gateway_raw(settings, name)) == {"rgw-a": 0.9, "rgw-b": 0.1}
    [(_, advanced)] = rc.tick(settings, ports)
    assert advanced.action.value == "advance"
    stepped = _gateway_raw(settings, name)
    assert _weights(stepped) == {"rgw-a": 0.5, "rgw-b": 0.5}
    ports.given = BREACH
    [(_, rolled)] = rc.tick(settings, ports)
    assert rolled.action.value == "roll back"
    after = _gateway_raw(settings, name)
    assert _weights(after) == {"rgw-a": 1.0, "rgw-b": 0.0}
    # Routing, fallback, usage tracking and every model mapping (the fallback too) are as they were.
    assert _without_weights(after) == _without_weights(before) == _without_weights(stepped)
    records = _rollout_records(settings, rollout)
    assert [sorted(r.after.values()) for r in records] == [[10, 90], [50, 50], [0, 100]]
    assert all(r.completed for r in records) and len(_notices(receiver, name)) == 1


# --- the Databricks workspace harness: Model Serving and the workspace's MLflow ----------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from tests.harness import databricks_workspace as dw

    outage = WorkspaceOutage()
    with dw.databricks_workspace(tmp_path_factory.mktemp("rollout-faults-dbx")) as ws:
        ws.harness.handlers.insert(0, outage)
        # Alert channel URLs live in the app's secret scope on Databricks (an admin creates it).
        ws.harness.handlers.insert(1, SecretsApi(scopes={"agentops-alerts": {}}))
        yield ws, outage


@pytest.fixture
def databricks(workspace, receiver, tmp_path, monkeypatch):
    """The app's settings on the workspace, acting as its service principal (as the background worker does)."""
    from services import _clients
    from tests.harness import databricks_workspace as dw

    ws, outage = workspace
    monkeypatch.setenv("MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT", "2")
    settings = use_app_env(monkeypatch, {**ws.app_env(), "AGENTOPS_DATA_DIR": str(tmp_path),
                                         "AGENTOPS_DATABRICKS_RETRY_SECONDS": "2",
                                         "AGENTOPS_ALERT_CHANNELS_FILE": str(tmp_path / "private" / "channels.json")},
                           unset=("DATABRICKS_TOKEN",), configure=True)
    ws.harness.endpoints[dw.ENDPOINT] = dw.endpoint()  # 80 / 20
    try:
        operator = Identity(dw.OPERATOR.email, dw.OPERATOR.display, IdentitySource.DATABRICKS_APPS,
                            access_token=dw.OPERATOR.token)
        alerting.save_channel(settings, "oncall", f"json://127.0.0.1:{receiver.server_port}/hooks/rollouts", operator,
                              replace_existing=True)
        yield ws, outage, settings, operator
    finally:
        outage.restore()
        ws.harness.endpoints[dw.ENDPOINT] = dw.endpoint()
        _clients._cached_settings.cache_clear()
        monkeypatch.undo()
        _clients.configure_mlflow(_clients.get_settings())


def _config_puts(ws) -> list:
    return [r for r in ws.harness.requests if r.method == "PUT" and r.path.split("?")[0].endswith("/config")]


def _routes(ws, name: str) -> dict[str, int]:
    config = ws.harness.endpoints[name].config
    return {r.served_entity_name: r.traffic_percentage for r in config.traffic_config.routes}


def _clear_rollout(settings, name: str) -> None:
    current = rc.get_rollout(name, settings)
    if current is not None and current.status.active:
        rc.abort(name, OPERATOR, settings, GivenEvidencePorts(settings), reason="test cleanup")


def test_a_rollout_step_and_rollback_on_a_databricks_serving_endpoint_keep_its_config(databricks, receiver):
    from tests.harness import databricks_workspace as dw

    ws, _, settings, operator = databricks
    _clear_rollout(settings, dw.ENDPOINT)
    champion, challenger = f"{dw.AGENT}_1", f"{dw.AGENT}_2"
    notices_before = len(_notices(receiver, dw.ENDPOINT))
    entities = [e.as_dict() for e in ws.harness.endpoints[dw.ENDPOINT].config.served_entities]
    puts = len(_config_puts(ws))
    ports = GivenEvidencePorts(settings, CLEAR)
    rollout = rc.start(_plan(dw.ENDPOINT, champion, challenger), operator, settings, ports)
    assert _routes(ws, dw.ENDPOINT) == {champion: 90, challenger: 10}
    [(_, advanced)] = rc.tick(settings, ports)
    assert advanced.action.value == "advance" and _routes(ws, dw.ENDPOINT) == {champion: 50, challenger: 50}
    ports.given = BREACH
    [(_, rolled)] = rc.tick(settings, ports)
    assert rolled.action.value == "roll back" and _routes(ws, dw.ENDPOINT) == {champion: 100, challenger: 0}
    sent = _config_puts(ws)[puts:]
    assert len(sent) == 3
    # Each update re-sent every served entity as read (workload, scale-to-zero, tracing env, secret
    # reference): the endpoint serves the same entities as before, only the routes moved.
    assert [e.as_dict() for e in ws.harness.endpoints[dw.ENDPOINT].config.served_entities] == entities
    for put in sent:
        assert [e["environment_vars"] for e in put.body["served_entities"]] == [e["environment_vars"] for e in entities]
    records = _rollout_records(settings, rollout)
    assert [sorted(r.after.values()) for r in records] == [[10, 90], [50, 50], [0, 100]]
    assert all(r.completed for r in records)
    assert len(_notices(receiver, dw.ENDPOINT)) - notices_before == 1


DATABRICKS_POINTS = ["after the decision, before the traffic write", "after the traffic write, before its audit completion"]


@pytest.mark.parametrize("point", DATABRICKS_POINTS, ids=["decided", "written"])
def test_a_rollback_interrupted_by_a_databricks_outage_completes_once_after_it_ends(databricks, receiver, monkeypatch,
                                                                                   point):
    from tests.harness import databricks_workspace as dw

    ws, outage, settings, operator = databricks
    _clear_rollout(settings, dw.ENDPOINT)
    champion, challenger = f"{dw.AGENT}_1", f"{dw.AGENT}_2"
    ports = GivenEvidencePorts(settings, BREACH)
    rollout = rc.start(_plan(dw.ENDPOINT, champion, challenger), operator, settings, ports)
    assert _routes(ws, dw.ENDPOINT) == {champion: 90, challenger: 10}
    notices_before = len(_notices(receiver, dw.ENDPOINT))
    puts = len(_config_puts(ws))
    with monkeypatch.context() as fault:
        if point == DATABRICKS_POINTS[0]:
            original = ServicePorts.set_shares
            fault.setattr(ports, "set_shares", lambda *a, **k: (outage.take_down(), original(ports, *a, **k)))
        else:
            outage.down_after(lambda method, path: method == "PUT" and path.endswith(f"/{dw.ENDPOINT}/config"))
        looked = rc.tick(settings, ports)
    refused = len(outage.refused)
    assert looked == [(dw.ENDPOINT, None)] and outage.down and refused > 0
    assert len(_config_puts(ws)) - puts == (0 if point == DATABRICKS_POINTS[0] else 1)
    outage.restore()

    pending = rc.get_rollout(dw.ENDPOINT, settings)
    assert pending.pending and pending.pending["action"] == "roll back"
    [(_, finished)] = rc.tick(settings, GivenEvidencePorts(settings, CLEAR))
    assert finished.action.value == "roll back"
    rollback_puts = len(_config_puts(ws)) - puts
    assert _routes(ws, dw.ENDPOINT) == {champion: 100, challenger: 0}
    done = rc.get_rollout(dw.ENDPOINT, settings)
    assert done.status is rc.Status.ROLLED_BACK and not done.pending
    assert sum(e.kind == "decision" and e.action == "roll back" for e in done.timeline) == 1
    records = _rollout_records(settings, rollout)
    assert len(records) == 2 and all(r.completed for r in records)
    assert sorted(records[-1].after.values()) == [0, 100] and records[-1].request_id.endswith("rollback-traffic")
    assert rollback_puts == 1  # Model Serving was asked once to move the traffic back
    assert len(_notices(receiver, dw.ENDPOINT)) - notices_before == 1
    aliases = MlflowClient(tracking_uri=ws.server.tracking_uri).get_registered_model(dw.AGENT).aliases
    assert str(aliases["champion"]) == "1"
    assert rc.tick(settings, ports) == []
    write_record("faults", f"guarded rollout (Databricks): workspace down {point}", {
        "calls refused during the outage": refused, "records": len(records), "rollback updates": rollback_puts,
        "notices": 1, "trail agrees": "yes"},
        notes="the workspace harness answers 503 to every call (Model Serving and MLflow) from this point of the "
              "controller's rollback; after it ends the next tick completes the pending action once.")
