"""The gateway on a shared ``mlflow server`` (PostgreSQL store): batched traces over REST, none lost.

The store is a real ``mlflow server`` on a throwaway PostgreSQL, written only through MLflow's
public API; the gateway runs on the app's ``mlflow`` backend and writes its traces in batches
through the server (``services._mlflow_internal.rest_trace_batch``).
"""

from __future__ import annotations

import threading

import httpx
import mlflow
import pytest
from mlflow import MlflowClient

from gateway.journal import RequestJournal
from gateway.runner import RunningGateway
from services import registry
from services._clients import configure_mlflow, mlflow_client
from services.settings import load_settings
from tests.gateway.conftest import AGENT_FILE
from tests.harness.mlflow_server import running_mlflow_server

pytestmark = pytest.mark.slow
QUESTION = {"input": [{"role": "user", "content": "How do I reset my password?"}]}
MODEL = "gw-server-agent"


@pytest.fixture(scope="module")
def server_store(postgres, tmp_path_factory):
    """An ``mlflow server`` on PostgreSQL with one version of the demo support agent, logged and registered
    through MLflow's public API; the app's experiment tag then says where the gateway writes its traces."""
    root = tmp_path_factory.mktemp("gateway-server")
    with running_mlflow_server(root, backend_store_uri=postgres.new_database("gateway"),
                               env={"MLFLOW_MODEL_CATALOG_URI": ""}) as settings:
        configure_mlflow(settings)
        client = _client(settings)
        experiment_id = client.create_experiment("gw-server-agent")
        with mlflow.start_run(experiment_id=experiment_id):
            mlflow.pyfunc.log_model(name="agent", python_model=str(AGENT_FILE), registered_model_name=MODEL,
                                    model_config={"strategy": "keyword", "llm_model": "gpt-4o-mini"},
                                    pip_requirements=["mlflow"])
        client.set_registered_model_tag(MODEL, registry.EXPERIMENT_TAG, experiment_id)
        try:
            yield settings, experiment_id
        finally:
            configure_mlflow(load_settings({}))


def _endpoint(settings, name: str) -> None:
    """An endpoint serving all traffic from version 1."""
    from datetime import datetime, timezone

    from services import serving

    serving.save_local_endpoint(serving.Endpoint(
        name, (serving.ServedVersion(f"{MODEL}_1", MODEL, "1"),), (serving.TrafficRoute(f"{MODEL}_1", 100),),
        serving.EndpointState.READY, datetime.now(tz=timezone.utc), "test", False), settings)


def _client(settings) -> MlflowClient:
    """MLflow's public client on the server, registry included (not the process-wide default)."""
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)


def _send_concurrently(url: str, endpoint: str, n: int, clients: int) -> list[httpx.Response]:
    responses: list[httpx.Response] = []
    lock = threading.Lock()

    def worker(count: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            for _ in range(count):
                response = http.post(f"/serving-endpoints/{endpoint}/invocations", json=QUESTION)
                with lock:
                    responses.append(response)

    threads = [threading.Thread(target=worker, args=(n // clients + (i < n % clients),)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


def _stored(settings, trace_ids: list[str]) -> dict[str, object]:
    """The traces the server has, by id, with their spans (MLflow's public client)."""
    client = _client(settings)
    found = {}
    for trace_id in trace_ids:
        try:
            found[trace_id] = client.get_trace(trace_id)
        except Exception:  # noqa: BLE001 - not stored
            continue
    return found


def test_every_trace_reaches_the_server_in_batches(server_store):
    settings, experiment_id = server_store
    _endpoint(settings, "team")
    with RunningGateway(settings) as running:
        responses = _send_concurrently(running.url, "team", 24, clients=4)
        ledger = running.gateway.drain(120)
        stats = running.gateway.stats()
    assert [r.status_code for r in responses] == [200] * 24
    assert stats["trace_writer"]["mode"] == "batched"
    assert stats["trace_writer"]["batches"] < 24, "traces are written several per batch"
    assert (ledger.produced, ledger.recorded, ledger.pending, ledger.lost) == (24, 24, 0, 0)
    trace_ids = [r.headers["X-AgentOps-Trace-Id"] for r in responses]
    stored = _stored(settings, trace_ids)
    assert sorted(stored) == sorted(trace_ids)
    model_id = registry.model_id_of(mlflow_client(settings).get_model_version(MODEL, "1"))
    for trace in stored.values():
        # What start_trace carries (the version link, tags, client request id) and the spans.
        assert trace.info.trace_metadata.get("mlflow.modelId") == model_id
        assert trace.info.tags.get("agentops.endpoint") == "team"
        assert trace.info.experiment_id == experiment_id
        assert trace.info.client_request_id and trace.info.state.value == "OK"
        assert len(trace.data.spans) >= 2 and trace.data.spans[0].name == "team"


def test_shutdown_writes_the_traces_still_queued(server_store):
    """Traces held in the writer's queue when the gateway stops (uvicorn's SIGTERM path: stop
    accepting, finish in-flight requests, then the shutdown hook) are all written before it exits."""
    settings, _ = server_store
    _endpoint(settings, "team-stop")
    # A writer that would linger a minute for a batch: every trace is still queued at the stop.
    running = RunningGateway(settings, trace_linger_s=60, max_trace_batch=1_000)
    try:
        responses = _send_concurrently(running.url, "team-stop", 10, clients=2)
        queued = running.gateway.writer.stats()
        trace_ids = [r.headers["X-AgentOps-Trace-Id"] for r in responses]
        assert [r.status_code for r in responses] == [200] * 10
        assert queued.queued + queued.in_flight == 10 and queued.written == 0
        assert not _stored(settings, trace_ids[:3]), "nothing is written before the stop"
    finally:
        running.stop()
    ledger = running.gateway.ledger.stats()
    assert (ledger.produced, ledger.recorded, ledger.pending, ledger.lost) == (10, 10, 0, 0)
    assert sorted(_stored(settings, trace_ids)) == sorted(trace_ids)
    journal = RequestJournal(settings.data_dir / "gateway-journal.sqlite")
    try:
        assert journal.stats().pending == 0, "the journal holds no trace for a next start"
    finally:
        journal.close()


def test_a_trace_the_server_refuses_is_counted_lost_and_spooled(server_store):
    settings, experiment_id = server_store
    client = _client(settings)
    doomed = client.create_experiment("gw-server-doomed")
    client.set_registered_model_tag(MODEL, registry.EXPERIMENT_TAG, doomed)
    try:
        _endpoint(settings, "team-doomed")
        with RunningGateway(settings) as running, httpx.Client(base_url=running.url, timeout=60) as http:
            assert http.post("/serving-endpoints/team-doomed/invocations", json=QUESTION).status_code == 200
            assert running.gateway.drain(60).lost == 0
            client.delete_experiment(doomed)  # the server now refuses its traces
            response = http.post("/serving-endpoints/team-doomed/invocations", json=QUESTION)
            assert response.status_code == 200, "the request is served; its trace is what is lost"
            running.gateway.writer.flush(60)
            stats = http.get("/stats").json()
            health = http.get("/health").json()
    finally:
        client.set_registered_model_tag(MODEL, registry.EXPERIMENT_TAG, experiment_id)
    assert stats["traces"]["lost"] == 1 and stats["traces"]["could_not_record"] == 1
    assert stats["trace_writer"]["failed"] == 1 and stats["trace_writer"]["spooled"] == 1
    assert health["status"] == "degraded"
    spooled = (settings.data_dir / "gateway-spool").glob("*.jsonl")
    assert any(response.headers["X-AgentOps-Trace-Id"] in path.read_text() for path in spooled)


def _shape(trace) -> dict[str, object]:
    """What a stored trace holds, without what differs from one request to the next."""
    return {
        "tags": sorted(trace.info.tags), "metadata": sorted(trace.info.trace_metadata),
        "state": trace.info.state.value, "model_id": trace.info.trace_metadata.get("mlflow.modelId"),
        "endpoint": trace.info.tags.get("agentops.endpoint"), "previews": (bool(trace.info.request_preview),
                                                                           bool(trace.info.response_preview)),
        "token_usage": trace.info.token_usage, "spans": [(s.name, s.span_type, s.parent_id is None)
                                                         for s in trace.data.spans],
    }


def test_batched_rest_writes_store_what_mlflows_exporter_stores(server_store):
    """``rest_trace_batch`` (non-public RestStore methods) against its public fallback, MLflow's
    exporter: the same tags, metadata, previews, token usage and spans. Fails loudly when an MLflow
    upgrade changes the REST store or the server's handling of either request."""
    from services._mlflow_internal import rest_trace_batch

    settings, _ = server_store
    assert rest_trace_batch.supports(mlflow_client(settings))
    assert not rest_trace_batch.supports(MlflowClient(tracking_uri="databricks"))
    _endpoint(settings, "team-shape")
    shapes = {}
    for mode, options in (("batched", {}), ("mlflow-exporter", {"batch_traces": False})):
        with RunningGateway(settings, **options) as running, httpx.Client(base_url=running.url, timeout=60) as http:
            response = http.post("/serving-endpoints/team-shape/invocations", json=QUESTION)
            ledger = running.gateway.drain(120)
            assert running.gateway.stats()["trace_writer"]["mode"] == mode
        assert response.status_code == 200 and (ledger.recorded, ledger.lost) == (1, 0)
        trace_id = response.headers["X-AgentOps-Trace-Id"]
        shapes[mode] = _shape(_stored(settings, [trace_id])[trace_id])
    assert shapes["batched"] == shapes["mlflow-exporter"]


_GATEWAY_PROCESS = """
import sys

import uvicorn

from gateway.app import create_app
from services._clients import configure_mlflow

# What ``python -m gateway`` runs, with a writer that lingers a minute for a batch, so every
# trace is still queued when SIGTERM arrives.
app = create_app(configure_mlflow(), trace_linger_s=60, max_trace_batch=1_000)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def test_sigterm_writes_the_queued_traces_before_the_process_exits(server_store, tmp_path):
    """A real gateway process stopped with SIGTERM (uvicorn's handler, then the app's shutdown
    hook): the traces queued at that moment are all on the server when the process has exited."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.harness.mlflow_server import free_port

    settings, _ = server_store
    _endpoint(settings, "team-sigterm")
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "AGENTOPS_BACKEND": "mlflow", "AGENTOPS_MLFLOW_URI": settings.mlflow_uri,
           "AGENTOPS_DATA_DIR": str(tmp_path / "gateway-data"), "PYTHONPATH": str(root)}
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen([sys.executable, "-c", _GATEWAY_PROCESS, str(port)], cwd=root, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                httpx.get(f"{url}/stats", timeout=2)
                break
            except httpx.HTTPError:
                assert process.poll() is None, (tmp_path / "gateway.log").read_text()
                assert time.monotonic() < deadline, "the gateway process did not start"
                time.sleep(0.5)
        responses = _send_concurrently(url, "team-sigterm", 8, clients=2)
        writer = httpx.get(f"{url}/stats", timeout=30).json()["trace_writer"]
        assert [r.status_code for r in responses] == [200] * 8
        assert writer["mode"] == "batched" and writer["queued"] == 8 and writer["written"] == 0
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal: the exit status is SIGTERM's.
        assert process.wait(timeout=180) in (0, -signal.SIGTERM), (tmp_path / "gateway.log").read_text()
        assert time.monotonic() - signalled < 50, "written at shutdown, not after the writer's 60 s linger"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    trace_ids = [r.headers["X-AgentOps-Trace-Id"] for r in responses]
    assert sorted(_stored(settings, trace_ids)) == sorted(trace_ids)
    journal = RequestJournal(tmp_path / "gateway-data" / "gateway-journal.sqlite")
    try:
        stats = journal.stats()
        assert (stats.requests, stats.pending, stats.written) == (8, 0, 8)
    finally:
        journal.close()
