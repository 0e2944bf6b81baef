"""Faults in serving: the gateway process restarts while clients are sending requests.

A real ``python -m gateway`` process serves a 70/30 split of two real versions over loopback
from a real SQLite store. Several client threads send requests, each named by a request id
(``client_request_id`` in the body, or the ``X-Request-Id`` header), and retry a request that
failed on the transport (connection refused or reset) or with a 503, with the same id. Mid-
traffic the gateway is stopped and started again on the same port, data folder and config:

* graceful: SIGTERM to the gateway process. It must stop taking connections, finish the requests
  in flight, write every queued trace and exit 0; no answered request may lose its trace and no
  request may be cut off after the model ran (nothing for the journal to replay);
* hard kill: SIGKILL to the gateway's process group (the gateway and its trace-writer process die
  at once, mid-batch). What can be lost is named precisely: the responses of requests in flight
  (the client retries them) and the traces not yet in the store (held in the request journal and
  written by the next process). A request that was journaled before the kill is answered from the
  journal on retry; one that was not never got an answer, and its retry calls the model again
  (model calls are at-least-once, traces and answers exactly once).

Afterwards: every request ended with a 200; the store holds exactly one trace per request id,
linked to its arm's version; the restarted gateway's ``/stats`` agree with the store; the split
is within tolerance; the endpoint config and registry are as they were. A probe request sent
right before the fault and retried after it must come back from the journal with the same trace.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient
from scipy.stats import binomtest

from services import serving
from services.settings import load_settings
from tests.gateway.conftest import MODEL, build_gateway_store, put_endpoint
from tests.hardening.mlflow_restart import kill_group
from tests.hardening.reliability import write_record

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ENDPOINT = "restart-70-30"
WEIGHTS = {"1": 70, "2": 30}
CLIENTS, PER_CLIENT = 6, 150
FAULT_AFTER = 0.35  # share of all requests answered before the fault
RETRY_FOR_S = 150.0


class GatewayProcess:
    """``python -m gateway`` on one port and data folder, stopped and started again by PID."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir, self.log = data_dir, log
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> float:
        """Start and wait for ``/health``; seconds until it answered."""
        began = time.monotonic()
        env = {**os.environ, "AGENTOPS_BACKEND": "local", "AGENTOPS_DATA_DIR": str(self.data_dir),
               "AGENTOPS_GATEWAY_URL": self.url}
        with self.log.open("a") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - began
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() - began > timeout_s:
                self.kill()
                pytest.fail(f"the gateway did not start within {timeout_s:.0f} s; see {self.log}")
            time.sleep(0.1)

    def terminate(self, timeout_s: float = 120.0) -> tuple[float, int]:
        """SIGTERM the gateway process (not its group: as ``kill PID`` or a container stop does)."""
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout_s)
        return time.monotonic() - began, code

    def kill(self) -> None:
        """SIGKILL the gateway and its trace-writer process (its own session and group) at once."""
        kill_group(self.process)


@dataclass
class Outcome:
    request_id: str
    status: int | None = None
    arm: str = ""
    trace_id: str = ""
    replayed: bool = False
    attempts: int = 0
    errors: list[str] = field(default_factory=list)


def _send(http: httpx.Client, request_id: str, text: str, *, by_header: bool) -> Outcome:
    """One request, retried with the same id on transport errors and 503 until it is answered."""
    body = {"input": [{"role": "user", "content": text}]}
    headers = {}
    if by_header:
        headers["X-Request-Id"] = request_id
    else:
        body["client_request_id"] = request_id
    outcome = Outcome(request_id)
    deadline = time.monotonic() + RETRY_FOR_S
    while time.monotonic() < deadline:
        outcome.attempts += 1
        try:
            response = http.post(f"/serving-endpoints/{ENDPOINT}/invocations", json=body, headers=headers)
        except httpx.TransportError as exc:
            outcome.errors.append(type(exc).__name__)
            time.sleep(0.2)
            continue
        if response.status_code == 503:
            outcome.errors.append(f"503 {response.json().get('error_code')}")
            time.sleep(0.2)
            continue
        outcome.status = response.status_code
        outcome.arm = response.headers.get("X-AgentOps-Arm", "")
        outcome.trace_id = response.headers.get("X-AgentOps-Trace-Id", "")
        outcome.replayed = response.headers.get("X-AgentOps-Replayed") == "true"
        assert response.headers.get("X-Request-Id") == request_id
        return outcome
    outcome.errors.append("gave up")
    return outcome


def _journal_counts(data_dir: Path) -> Counter:
    """Rows of the request journal by state, read straight from its file (the gateway may be down)."""
    connection = sqlite3.connect(f"file:{data_dir / 'gateway-journal.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return Counter(dict(connection.execute("SELECT state, count(*) FROM requests GROUP BY state").fetchall()))
    finally:
        connection.close()


def _stored_traces(settings) -> dict[str, tuple[str, str, str, str]]:
    """trace id -> (client request id, arm tag, version, model id) of every trace of the endpoint.

    The version is the one whose LoggedModel the trace is linked to (``mlflow.modelId``): the gateway
    writes no version tag, MLflow's own link is the record.
    """
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)
    version_of = {v.source.removeprefix("models:/"): str(v.version)
                  for v in client.search_model_versions(f"name = '{MODEL}'")}
    # The traces' experiments are those of the versions' LoggedModels (what MLflow records), not an app tag.
    experiments = sorted({client.get_logged_model(model_id).experiment_id for model_id in version_of})
    stored, token = {}, None
    while True:
        page = client.search_traces(locations=experiments, filter_string=f"tag.`agentops.endpoint` = '{ENDPOINT}'",
                                    max_results=500, include_spans=False, page_token=token)
        for trace in page:
            info = trace.info
            model_id = info.trace_metadata.get("mlflow.modelId")
            stored[info.trace_id] = (info.client_request_id, info.tags.get("agentops.arm"),
                                     version_of.get(model_id), model_id)
        token = page.token
        if not token:
            return stored


def _state_of_config_and_registry(settings) -> tuple:
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)
    from services import team_state

    # Endpoint configurations are team state in the store: every record's version and value.
    config = sorted((key, record.version, repr(record.value))
                    for key, record in team_state.read_all(settings, serving.ENDPOINT_KEY).items())
    versions = sorted((v.version, v.current_stage, v.source) for v in client.search_model_versions(f"name = '{MODEL}'"))
    return config, versions, client.get_registered_model(MODEL).aliases


@pytest.fixture(scope="module")
def template_store(tmp_path_factory):
    """One built store (two loadable versions); each scenario runs on a copy of it."""
    from services._clients import configure_mlflow, get_settings

    settings = build_gateway_store(tmp_path_factory.mktemp("gw-restart-template"))
    put_endpoint(settings, ENDPOINT, WEIGHTS)
    yield settings
    configure_mlflow(get_settings())


@pytest.fixture
def store(template_store, tmp_path):
    from services._clients import configure_mlflow

    data_dir = tmp_path / "data"
    # The copy's artifact locations still point into the template, which stays for the module.
    shutil.copytree(template_store.data_dir, data_dir)
    return configure_mlflow(load_settings({"AGENTOPS_DATA_DIR": str(data_dir)}))


@pytest.fixture
def gateway(store, tmp_path):
    process = GatewayProcess(store.data_dir, tmp_path / "gateway.log")
    yield process
    process.kill()


@pytest.mark.parametrize("fault", ["graceful", "hard kill"])
def test_gateway_restart_during_traffic_serves_and_traces_each_request_exactly_once(store, gateway, fault):
    before = _state_of_config_and_registry(store)
    started_s = gateway.start()
    outcomes: list[list[Outcome]] = [[] for _ in range(CLIENTS)]

    def client_loop(index: int) -> None:
        with httpx.Client(base_url=gateway.url, timeout=60) as http:
            for i in range(PER_CLIENT):
                request_id = f"{fault[:4]}-{index}-{i}-{uuid.uuid4().hex[:8]}"
                outcomes[index].append(_send(http, request_id, f"How do I reset my password? ({index}-{i})",
                                             by_header=index % 2 == 1))

    threads = [threading.Thread(target=client_loop, args=(i,), name=f"client-{i}") for i in range(CLIENTS)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    total = CLIENTS * PER_CLIENT
    while sum(map(len, outcomes)) < FAULT_AFTER * total and any(t.is_alive() for t in threads):
        time.sleep(0.05)
    answered_before_fault = sum(map(len, outcomes))

    # The probe: answered right before the fault; its retry after the restart must be a replay.
    probe_id = f"probe-{fault[:4]}-{uuid.uuid4().hex}"
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        probe = _send(http, probe_id, "Where is my order?", by_header=False)
    assert probe.status == 200 and not probe.replayed

    old_pid = gateway.process.pid
    if fault == "graceful":
        stop_s, exit_code = gateway.terminate()
        # 0, or -SIGTERM: uvicorn re-raises the signal it handled once shutdown has completed.
        assert exit_code in (0, -signal.SIGTERM), f"the gateway exited with {exit_code} on SIGTERM"
        at_fault = _journal_counts(store.data_dir)
        # Drained and flushed before exiting: nothing left for the next process to write, and the
        # store already holds the trace of every request the old process answered.
        assert at_fault["pending"] == at_fault["failed"] == 0, at_fault
        assert len(_stored_traces(store)) == at_fault["written"] > 0
    else:
        gateway.kill()
        stop_s = 0.0
        at_fault = _journal_counts(store.data_dir)
        # Traces answered with a 200 but not in the store when the process died are held by the journal
        # (hundreds here on a busy machine; a fast one may have written them all). Either way, the
        # checks below require every one of them in the store after the restart, exactly once; the
        # replay itself is also tested deterministically in tests/gateway (a "crashed" gateway's journal).
    restart_s = gateway.start()
    assert gateway.process.pid != old_pid

    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        probe_retry = _send(http, probe_id, "Where is my order?", by_header=False)
    for thread in threads:
        thread.join(timeout=600)
    traffic_s = time.monotonic() - began
    assert not any(t.is_alive() for t in threads), "clients still running after 10 minutes"

    with httpx.Client(base_url=gateway.url, timeout=300) as http:
        stats = http.get("/stats", params={"drain_s": 120}).json()
        health = http.get("/health").json()

    # --- what the clients saw ------------------------------------------------------------------
    assert probe_retry.status == 200 and probe_retry.replayed, "the probe's retry must be answered from the journal"
    assert (probe_retry.trace_id, probe_retry.arm) == (probe.trace_id, probe.arm)
    flat = [o for per in outcomes for o in per]
    assert len(flat) == total
    unanswered = [o for o in flat if o.status != 200]
    assert not unanswered, f"{len(unanswered)} requests never got a 200, e.g. {unanswered[:3]}"
    retried = [o for o in flat if o.attempts > 1]
    replayed = [o for o in flat if o.replayed]
    assert len({o.request_id for o in flat}) == total
    by_request = {o.request_id: o for o in flat} | {probe_id: probe}
    if fault == "graceful":
        # Requests in flight at SIGTERM were finished and answered: none was served and then cut off.
        assert not replayed, f"{len(replayed)} requests were served but not answered during a graceful stop"
        assert stats["journal"]["answered_from_journal"] == 1  # the probe's retry

    # --- what the store holds ------------------------------------------------------------------
    stored = _stored_traces(store)
    per_request = Counter(request_id for request_id, *_ in stored.values())
    duplicates = sum(n - 1 for n in per_request.values() if n > 1)
    assert duplicates == 0, [r for r, n in per_request.items() if n > 1][:5]
    assert set(stored) == {o.trace_id for o in by_request.values()}, "every answered request has its trace, no other"
    client = MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.registry_uri)
    model_ids = {v: client.get_model_version(MODEL, v).source.removeprefix("models:/") for v in WEIGHTS}
    for trace_id, (request_id, arm, version, model_id) in stored.items():
        outcome = by_request[request_id]
        assert outcome.trace_id == trace_id and outcome.arm == arm == f"{MODEL}_{version}"
        assert model_id == model_ids[version]
    lost = len({o.trace_id for o in by_request.values()} - set(stored))

    # --- what the restarted gateway reports ----------------------------------------------------
    traces, journal = stats["traces"], stats["journal"]
    assert (traces["pending"], traces["lost"], traces["could_not_record"]) == (0, 0, 0), traces
    assert traces["produced"] == traces["recorded"]
    # The journal spans both processes: one row per request that reached the model.
    assert journal["requests"] == journal["written"] == len(stored) == total + 1, journal
    assert (journal["pending"], journal["could_not_record"], journal["errors"]) == (0, 0, 0), journal
    assert journal["replayed_at_start"] == at_fault["pending"]
    assert health["status"] == "ok" and health["problems"] == [], health
    served_here = sum(r["requests"] for r in stats["requests"])
    assert traces["produced"] == served_here + journal["replayed_at_start"]

    # --- the split, and nothing else changed ---------------------------------------------------
    arms = Counter(o.arm for o in flat)
    assert binomtest(arms[f"{MODEL}_1"], total, WEIGHTS["1"] / 100).pvalue > 0.001, arms
    assert _state_of_config_and_registry(store) == before

    write_record("faults", f"gateway restart during traffic ({fault})", {
        "clients": CLIENTS, "requests sent": total, "answered 200": total - len(unanswered),
        "answered before the fault": answered_before_fault, "retried": len(retried),
        "attempts": sum(o.attempts for o in flat), "answered from the journal": len(replayed) + 1,
        "traces stored": len(stored), "duplicates": duplicates, "lost": lost,
        "traces pending at the fault": at_fault["pending"], "written after restart": journal["replayed_at_start"],
        "stop seconds": round(stop_s, 2), "restart seconds": round(restart_s, 2),
        "first start seconds": round(started_s, 2), "traffic seconds": round(traffic_s, 1),
        "share on the 70% arm": round(arms[f"{MODEL}_1"] / total, 3),
    }, detail={"client errors": dict(Counter(e for o in flat for e in o.errors))}, notes=(
        "SIGTERM: in-flight requests finished, queued traces written before exit (journal pending 0 at exit), "
        "no answered request replayed." if fault == "graceful" else
        "SIGKILL of the gateway and its trace writer: responses in flight are lost (clients retry with the same "
        "id; journaled requests are answered from the journal, others are served again), traces not yet written "
        "are held by the request journal and written by the restarted gateway; none lost, none twice."
    ))
