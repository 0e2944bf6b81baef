"""Faults during a traffic change: the MLflow backend stops at each step of ``serving.apply_split``,
comes back, and the caller's error, the endpoint config, the audit trail and a retry are checked.

Three backends, one service call:

* local gateway endpoints (config in the data folder, audit trail on a real ``mlflow server``
  that is SIGKILLed and restarted on the same SQLite store);
* MLflow AI Gateway endpoints (config and trail both on that server);
* Databricks Model Serving through the real SDK against the workspace harness, whose MLflow
  service answers 503 while "down" (Model Serving keeps answering).

The fault is injected deterministically by wrapping one call: the backend goes away right before
(or right after) that call reaches it. The retry reuses the confirmation's request id.
"""

from __future__ import annotations

import time
import uuid

import pytest
from mlflow import MlflowClient

from services import audit, serving
from services.serving import ai_gateway
from services.errors import BackendUnavailableError, ConflictError
from services.serving import Endpoint, EndpointState, ServedVersion, TrafficRoute
from tests.hardening.mlflow_restart import (
    expect_backend_lost,
    kill_at_call,
    refuse_connections,
    restartable_backend,
)
from tests.hardening.page_session import app_page
from tests.hardening.reliability import write_record
from tests.harness.databricks_settings import use_app_env
from tests.services.test_releases import AGENT, build_agent

pytestmark = pytest.mark.slow

ENDPOINT = "fault-prod"
OPERATOR = "olivia.ops@example.com"

# (fault point, what is wrapped, kill before or after the call reaches the server)
LOCAL_POINTS = [
    ("before the audit intent", "create_run", "before"),
    ("before the audit record is completed", "log_batch", "before"),
    ("before the audit run is closed", "set_terminated", "before"),
]
GATEWAY_POINTS = [
    ("before the gateway update", "endpoints/update", "before"),
    ("after the gateway update", "endpoints/update", "after"),
    ("before the audit record is completed", "log_batch", "before"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"MLFLOW_GATEWAY_API_BASE_ALLOWED_SCHEMES": "http,https", "MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS": "true",
           "MLFLOW_MODEL_CATALOG_URI": ""}  # AI Gateway secrets pointing at loopback
    with restartable_backend(tmp_path_factory.mktemp("traffic-faults"), env=env) as (srv, settings):
        build_agent(settings)
        served = tuple(ServedVersion(serving.entity_name_for(AGENT, v), AGENT, v) for v in ("1", "2"))
        serving.save_local_endpoint(Endpoint(
            ENDPOINT, served, (TrafficRoute(served[0].entity_name, 80), TrafficRoute(served[1].entity_name, 20)),
            EndpointState.READY, backend="local"), settings)
        yield srv, settings


def _records(settings, endpoint: str, request_id: str) -> list[audit.Change]:
    return [c for c in audit.traffic_changes(endpoint, settings=settings) if c.request_id == request_id]


def _completed(settings, endpoint: str) -> list[audit.Change]:
    return [c for c in audit.traffic_changes(endpoint, settings=settings) if c.completed]


def _applying(plan, point: str, settings, request_id: str):
    """The operator's confirmation of ``plan`` (its retry reuses ``request_id``)."""
    return lambda: serving.apply_split(plan, user=OPERATOR, reason=f"fault {point}", settings=settings,
                                       request_id=request_id)


def _split(endpoint: Endpoint) -> dict[str, int]:
    return serving.percentages(endpoint)


@pytest.mark.parametrize(("point", "method", "when"), LOCAL_POINTS, ids=[p[0].replace(" ", "-") for p in LOCAL_POINTS])
def test_local_split_change_with_the_server_killed_then_retry_completes_exactly_once(server, monkeypatch, point,
                                                                                      method, when):
    srv, settings = server
    if not srv.alive():
        srv.start()
    before = serving.get_endpoint(ENDPOINT, settings)
    target = {(AGENT, "1"): 50, (AGENT, "2"): 50} if before.percentage_for(f"{AGENT}_1") != 50 else \
        {(AGENT, "1"): 80, (AGENT, "2"): 20}
    plan = serving.plan_split(ENDPOINT, target, settings=settings)
    before_pct, after_pct = plan.percentages()
    completed_before = _completed(settings, ENDPOINT)
    request_id = uuid.uuid4().hex
    calls = kill_at_call(monkeypatch, srv.kill, MlflowClient, method, when=when)
    error, message, error_s = expect_backend_lost(_applying(plan, point, settings, request_id), srv, calls, monkeypatch)
    if method == "create_run":
        assert "Nothing changed" in message, message
        assert f"keeps its split {serving.describe_split(before_pct)}" in message, message
    else:
        assert "interrupted" in message and request_id in message and "retry" in message, message

    srv.start()
    # After the restart: the endpoint config and the trail agree on what happened.
    held = _split(serving.get_endpoint(ENDPOINT, settings))
    records = _records(settings, ENDPOINT, request_id)
    if method == "create_run":
        assert held == before_pct and records == []
    elif method == "log_batch":
        assert held == after_pct  # the config file was written before the backend went
        assert [r.completed for r in records] == [False] and records[0].requested == after_pct
        assert records[0].before == before_pct and records[0].user == OPERATOR
    else:
        # The completion landed (one batch) just before the kill: the trail already says done.
        assert held == after_pct and [(r.completed, r.after) for r in records] == [(True, after_pct)]

    # The retry of the same confirmation completes it exactly once.
    writes = []
    save = serving.save_local_endpoint
    monkeypatch.setattr(serving.local, "save_local_endpoint", lambda *a, **k: writes.append(a) or save(*a, **k))
    began = time.monotonic()
    stored = serving.apply_split(plan, user=OPERATOR, reason=f"fault {point}", settings=settings, request_id=request_id)
    retry_s = time.monotonic() - began
    again = serving.apply_split(plan, user=OPERATOR, reason=f"fault {point}", settings=settings, request_id=request_id)
    monkeypatch.undo()

    assert _split(stored) == _split(again) == after_pct == _split(serving.get_endpoint(ENDPOINT, settings))
    records = _records(settings, ENDPOINT, request_id)
    assert len(records) == 1 and records[0].completed and records[0].after == after_pct
    assert records[0].before == before_pct
    assert _completed(settings, ENDPOINT)[1:] == completed_before
    assert len(writes) == (1 if method == "create_run" else 0)  # the split is written once in all
    write_record("faults", f"traffic change (local endpoint): server killed {point}", {
        "error": type(error).__name__, "error after (s)": round(error_s, 2),
        "restart (s)": round(srv.starts[-1], 1), "split after restart": _label(held),
        "records for the request": len(records), "config writes on retry": len(writes),
        "retry (s)": round(retry_s, 2), "trail agrees": "yes",
    }, detail={"message": message[:300]},
        notes="mlflow server SIGKILLed at this step of serving.apply_split on a local gateway endpoint, restarted "
              "on the same SQLite store; the retry reuses the confirmation's request id.")


def test_a_retry_after_someone_else_changed_the_split_changes_nothing(server, monkeypatch):
    srv, settings = server
    if not srv.alive():
        srv.start()
    plan = serving.plan_split(ENDPOINT, {(AGENT, "1"): 30, (AGENT, "2"): 70}, settings=settings)
    request_id = uuid.uuid4().hex
    kill_at_call(monkeypatch, srv.kill, MlflowClient, "log_batch")
    with pytest.raises(BackendUnavailableError):
        serving.apply_split(plan, user=OPERATOR, reason="fault then conflict", settings=settings, request_id=request_id)
    monkeypatch.undo()
    srv.start()
    other = serving.plan_split(ENDPOINT, {(AGENT, "1"): 90, (AGENT, "2"): 10}, settings=settings)
    serving.apply_split(other, user="someone.else@example.com", reason="meanwhile", settings=settings)
    with pytest.raises(ConflictError, match="another change happened"):
        serving.apply_split(plan, user=OPERATOR, reason="fault then conflict", settings=settings, request_id=request_id)
    assert _split(serving.get_endpoint(ENDPOINT, settings)) == {f"{AGENT} v1": 90, f"{AGENT} v2": 10}
    assert _records(settings, ENDPOINT, request_id) == []  # the interrupted attempt is closed, not completed


def _label(split: dict[str, int]) -> str:
    return " · ".join(f"{k} {v}%" for k, v in split.items())


# --- MLflow AI Gateway: the split itself lives on the server that is killed ------------------------


@pytest.fixture(scope="module")
def gateway_endpoint(server):
    srv, settings = server
    if not srv.alive():
        srv.start()
    rest = ai_gateway._rest
    secret = rest(settings, "POST", "secrets/create", body={
        "secret_name": "fault-openai", "secret_value": {"api_key": "sk-test"}, "provider": "openai",
        "auth_config": {"api_base": "http://127.0.0.1:9/v1"},
    })["secret"]["secret_id"]
    ids = {name: rest(settings, "POST", "model-definitions/create", body={
        "name": name, "secret_id": secret, "provider": "openai", "model_name": name})["model_definition"][
        "model_definition_id"] for name in ("fault-a", "fault-b")}
    rest(settings, "POST", "endpoints/create", body={
        "name": "fault-gw", "routing_strategy": "REQUEST_BASED_TRAFFIC_SPLIT", "usage_tracking": True,
        "model_configs": [{"model_definition_id": ids["fault-a"], "linkage_type": "PRIMARY", "weight": 0.8},
                          {"model_definition_id": ids["fault-b"], "linkage_type": "PRIMARY", "weight": 0.2}]})
    return "fault-gw"


@pytest.mark.parametrize(("point", "target", "when"), GATEWAY_POINTS, ids=[p[0].replace(" ", "-") for p in GATEWAY_POINTS])
def test_ai_gateway_weights_with_the_server_killed_then_retry_completes_exactly_once(server, gateway_endpoint,
                                                                                     monkeypatch, point, target, when):
    srv, settings = server
    if not srv.alive():
        srv.start()
    name = gateway_endpoint
    current = ai_gateway.get_gateway_endpoint(name, settings).endpoint
    weights = {"fault-a": 50, "fault-b": 50} if current.percentage_for("fault-a") != 50 else {"fault-a": 80, "fault-b": 20}
    plan = serving.plan_weights(name, weights, settings=settings)
    before_pct, after_pct = plan.percentages()
    request_id = uuid.uuid4().hex
    if target == "endpoints/update":
        calls = kill_at_call(monkeypatch, srv.kill, ai_gateway, "_rest", when=when,
                             matches=lambda _s, _m, path, **_k: path == target)
    else:
        calls = kill_at_call(monkeypatch, srv.kill, MlflowClient, target, when=when)
    error, message, error_s = expect_backend_lost(_applying(plan, point, settings, request_id), srv, calls, monkeypatch)
    assert "interrupted" in message and request_id in message, message

    srv.start()
    held = ai_gateway.percentages(ai_gateway.get_gateway_endpoint(name, settings).endpoint)
    records = _records(settings, name, request_id)
    assert [r.completed for r in records] == [False] and records[0].requested == after_pct
    assert held == (before_pct if (target, when) == ("endpoints/update", "before") else after_pct)

    updates = []
    rest = ai_gateway._rest
    monkeypatch.setattr(ai_gateway, "_rest", lambda s, m, path, **k: (updates.append(path) if path == target else None)
                        or rest(s, m, path, **k))
    began = time.monotonic()
    serving.apply_split(plan, user=OPERATOR, reason=f"fault {point}", settings=settings, request_id=request_id)
    retry_s = time.monotonic() - began
    serving.apply_split(plan, user=OPERATOR, reason=f"fault {point}", settings=settings, request_id=request_id)
    monkeypatch.undo()

    stored = ai_gateway.percentages(ai_gateway.get_gateway_endpoint(name, settings).endpoint)
    records = _records(settings, name, request_id)
    assert stored == after_pct
    assert len(records) == 1 and records[0].completed and records[0].after == after_pct
    expected_updates = 1 if (target, when) == ("endpoints/update", "before") else 0
    assert updates.count("endpoints/update") == expected_updates
    write_record("faults", f"traffic change (AI Gateway): server killed {point}", {
        "error": type(error).__name__, "error after (s)": round(error_s, 2),
        "restart (s)": round(srv.starts[-1], 1), "split after restart": _label(held),
        "records for the request": len(records), "gateway updates on retry": updates.count("endpoints/update"),
        "retry (s)": round(retry_s, 2), "trail agrees": "yes",
    }, detail={"message": message[:300]},
        notes="mlflow server (AI Gateway config and audit trail) SIGKILLed at this step of serving.apply_split, "
              "restarted on the same SQLite store; the retry reuses the confirmation's request id.")


# --- Databricks: Model Serving answers, the workspace's MLflow service goes away ------------------


class MlflowOutage:
    """First harness handler: while ``down``, every MLflow REST call gets 503 TEMPORARILY_UNAVAILABLE."""

    def __init__(self) -> None:
        self.down = False
        self.refused = 0

    def __call__(self, method, path, body, headers):
        if self.down and path.startswith(("/api/2.0/mlflow", "/api/3.0/mlflow", "/api/4.0/mlflow")):
            self.refused += 1
            return 503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "The MLflow service is unavailable."}
        return None


DATABRICKS_POINTS = [
    ("before the audit intent", "create_run"),
    ("before the audit record is completed", "log_batch"),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from tests.harness import databricks_workspace as dw

    outage = MlflowOutage()
    with dw.databricks_workspace(tmp_path_factory.mktemp("traffic-faults-dbx")) as ws:
        ws.harness.handlers.insert(0, outage)
        yield ws, outage


@pytest.mark.parametrize(("point", "method"), DATABRICKS_POINTS, ids=[p[0].replace(" ", "-") for p in DATABRICKS_POINTS])
def test_databricks_split_change_with_mlflow_down_then_retry_completes_exactly_once(workspace, tmp_path, monkeypatch,
                                                                                    point, method):
    from services import _clients
    from services.identity import Identity, IdentitySource
    from tests.harness import databricks_workspace as dw

    ws, outage = workspace
    settings = use_app_env(monkeypatch, {**ws.app_env(), "AGENTOPS_DATA_DIR": str(tmp_path)},
                           unset=("DATABRICKS_TOKEN",), configure=True)
    operator = Identity(dw.OPERATOR.email, dw.OPERATOR.display, IdentitySource.DATABRICKS_APPS,
                        access_token=dw.OPERATOR.token)
    try:
        _clients.act_as(operator)
        ws.harness.endpoints[dw.ENDPOINT] = dw.endpoint()  # 80 / 20
        plan = serving.plan_split(dw.ENDPOINT, {(dw.AGENT, "1"): 50, (dw.AGENT, "2"): 50}, settings=settings)
        before_pct, after_pct = plan.percentages()
        request_id = uuid.uuid4().hex
        with monkeypatch.context() as patch:
            calls = kill_at_call(patch, lambda: setattr(outage, "down", True), MlflowClient, method)
            puts = len([e for e in ws.log.entries if e.method == "PUT"])
            began = time.monotonic()
            with pytest.raises(BackendUnavailableError) as failed:
                serving.apply_split(plan, user=operator.user, reason=f"fault {point}", settings=settings,
                                    identity=operator, user_token=operator.access_token, request_id=request_id)
            error_s = time.monotonic() - began
        message = str(failed.value)
        assert calls["faulted"] == 1 and outage.refused > 0 and "Traceback" not in message
        served = _split(serving.get_endpoint(dw.ENDPOINT, settings))
        updates = len([e for e in ws.log.entries if e.method == "PUT"]) - puts
        if method == "create_run":
            assert "Nothing changed" in message, message
            assert served == before_pct and updates == 0  # Model Serving was never asked
        else:
            assert "interrupted" in message and request_id in message, message
            assert served == after_pct and updates == 1
        outage.down = False
        records = _records(settings, dw.ENDPOINT, request_id)
        assert [r.completed for r in records] == ([] if method == "create_run" else [False])

        puts = len([e for e in ws.log.entries if e.method == "PUT"])
        began = time.monotonic()
        for _ in range(2):  # the retry, then a retry of the retry
            serving.apply_split(plan, user=operator.user, reason=f"fault {point}", settings=settings,
                                identity=operator, user_token=operator.access_token, request_id=request_id)
        retry_s = time.monotonic() - began
        retry_updates = len([e for e in ws.log.entries if e.method == "PUT"]) - puts
        records = _records(settings, dw.ENDPOINT, request_id)
        assert _split(serving.get_endpoint(dw.ENDPOINT, settings)) == after_pct
        assert len(records) == 1 and records[0].completed and records[0].after == after_pct
        assert records[0].user == dw.OPERATOR.email and records[0].before == before_pct
        assert retry_updates == (1 if method == "create_run" else 0)
        write_record("faults", f"traffic change (Databricks): MLflow down {point}", {
            "error": type(failed.value).__name__, "error after (s)": round(error_s, 2),
            "split after the outage": _label(served), "records for the request": len(records),
            "Model Serving updates on retry": retry_updates, "retry (s)": round(retry_s, 2), "trail agrees": "yes",
        }, detail={"message": message[:300]},
            notes="the workspace harness answers 503 to every MLflow call from this step of serving.apply_split on "
                  "(Model Serving keeps answering), then recovers; real databricks-sdk and MLflow clients.")
    finally:
        outage.down = False
        ws.harness.endpoints[dw.ENDPOINT] = dw.endpoint()
        _clients.act_as(None)
        _clients._cached_settings.cache_clear()
        monkeypatch.undo()
        _clients.configure_mlflow(_clients.get_settings())


def test_the_serving_page_says_a_traffic_change_was_interrupted_and_its_retry_completes_once(isolated_settings,
                                                                                            monkeypatch):
    """Confirm fails part-way: the page says so, keeps the confirmation, and pressing Confirm again completes it."""



    settings = isolated_settings
    build_agent(settings)
    served = tuple(ServedVersion(serving.entity_name_for(AGENT, v), AGENT, v) for v in ("1", "2"))
    serving.save_local_endpoint(Endpoint(
        ENDPOINT, served, (TrafficRoute(served[0].entity_name, 80), TrafficRoute(served[1].entity_name, 20)),
        EndpointState.READY, backend="local"), settings)
    with app_page(settings, monkeypatch, "pages/serving.py") as app:
        app.number_input(key=f"pct::{ENDPOINT}::{AGENT}::1").set_value(50).run()
        app.number_input(key=f"pct::{ENDPOINT}::{AGENT}::2").set_value(50).run()
        app.text_input(key=f"reason::{ENDPOINT}").input("even split").run()
        app.button(key=f"review::{ENDPOINT}").click().run()
        with monkeypatch.context() as patch:
            refuse_connections(patch, (MlflowClient, "log_batch"))
            app.button(key=f"plan::{ENDPOINT}::confirm").click().run()
        assert not app.exception
        errors = " ".join(e.value for e in app.error)
        assert "interrupted" in errors and "exactly once" in errors, errors
        app.run()  # the next render reads the trail: the interrupted change is named above the tabs
        warnings = " ".join(w.value for w in app.warning)
        assert "last traffic change" in warnings and "was interrupted" in warnings, warnings
        assert "Confirm and apply" in warnings  # the confirmation is kept for the retry
        history = next(d.value for d in app.dataframe if "Outcome" in d.value.columns)
        assert history.iloc[0]["Outcome"] == audit.INTERRUPTED

        app.button(key=f"plan::{ENDPOINT}::confirm").click().run()
        assert not app.exception and not app.error
        changes = audit.traffic_changes(ENDPOINT, settings=settings)
        assert [(c.completed, c.after) for c in changes] == [(True, {f"{AGENT} v1": 50, f"{AGENT} v2": 50})]
        assert _split(serving.get_endpoint(ENDPOINT, settings)) == {f"{AGENT} v1": 50, f"{AGENT} v2": 50}
        assert not any("was interrupted" in w.value for w in app.warning)


def _local_endpoint(settings) -> None:
    build_agent(settings)
    served = tuple(ServedVersion(serving.entity_name_for(AGENT, v), AGENT, v) for v in ("1", "2"))
    serving.save_local_endpoint(Endpoint(
        ENDPOINT, served, (TrafficRoute(served[0].entity_name, 80), TrafficRoute(served[1].entity_name, 20)),
        EndpointState.READY, backend="local"), settings)


@pytest.mark.parametrize("written", [True, False], ids=["split-written", "split-not-written"])
def test_an_interrupted_change_whose_confirmation_is_gone_is_settled_from_the_endpoint(isolated_settings, monkeypatch,
                                                                                        written):
    """A reload lost the confirmation: an operator settles the record from what the endpoint serves."""



    settings = isolated_settings
    _local_endpoint(settings)
    plan = serving.plan_split(ENDPOINT, {(AGENT, "1"): 50, (AGENT, "2"): 50}, settings=settings)
    with monkeypatch.context() as patch:
        if written:
            patch.setattr(MlflowClient, "log_batch", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("refused")))
        else:
            patch.setattr(serving.local, "save_local_endpoint",
                          lambda *a, **k: (_ for _ in ()).throw(BackendUnavailableError("disk went away")))
        with pytest.raises(BackendUnavailableError):
            serving.apply_split(plan, user=OPERATOR, reason="lost confirmation", settings=settings,
                                request_id=uuid.uuid4().hex)
    held = _split(serving.get_endpoint(ENDPOINT, settings))
    assert held == ({f"{AGENT} v1": 50, f"{AGENT} v2": 50} if written else {f"{AGENT} v1": 80, f"{AGENT} v2": 20})
    assert [c.completed for c in audit.traffic_changes(ENDPOINT, settings=settings)] == [False]

    # A new session: no confirmation to retry.
    with app_page(settings, monkeypatch, "pages/serving.py") as app:
        assert any("was interrupted" in w.value for w in app.warning)
        app.button(key=f"settle::{ENDPOINT}").click().run()
        assert not app.exception and not app.error
        done = " ".join(s.value for s in app.success)
        assert ("recorded as applied" in done) if written else ("was not applied" in done), done
        assert not any("was interrupted" in w.value for w in app.warning)
    changes = audit.traffic_changes(ENDPOINT, settings=settings)
    if written:
        assert [(c.completed, c.after, c.user) for c in changes] == [(True, held, OPERATOR)]
    else:
        assert changes == []  # closed: it never took effect
    assert _split(serving.get_endpoint(ENDPOINT, settings)) == held  # settling never changes the split
