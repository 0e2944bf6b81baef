"""The local gateway over real HTTP on loopback, with real models and a real store."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities.trace_location import MlflowExperimentLocation
from scipy.stats import binomtest

from gateway.runner import RunningGateway
from services import registry, serving
from tests.gateway.conftest import AGENT_FILE, MODEL, put_endpoint

pytestmark = pytest.mark.slow
QUESTION = {"input": [{"role": "user", "content": "How do I reset my password?"}]}


def _send(url: str, endpoint: str, n: int, *, users: list[str] | None = None) -> list[httpx.Response]:
    responses = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(n):
            body = dict(QUESTION)
            if users:
                body["context"] = {"user_id": users[i % len(users)]}
            responses.append(client.post(f"/serving-endpoints/{endpoint}/invocations", json=body))
    return responses


def test_split_routes_within_tolerance_and_every_trace_is_stored(gateway_store, running_gateway):
    put_endpoint(gateway_store, "split-70-30", {"1": 70, "2": 30})
    n = 200
    responses = _send(running_gateway.url, "split-70-30", n)
    assert all(r.status_code == 200 for r in responses)
    arms = Counter(r.headers["X-AgentOps-Arm"] for r in responses)
    # Two-sided exact test of the observed share against 70%: a real 70/30 router passes.
    assert binomtest(arms[f"{MODEL}_1"], n, 0.7).pvalue > 0.001, arms

    stats = running_gateway.gateway.drain(180)
    assert (stats.recorded, stats.lost, stats.pending) == (n, 0, 0)
    client = MlflowClient(tracking_uri=gateway_store.tracking_uri)
    stored = Counter()
    trace_ids = {r.headers["X-AgentOps-Trace-Id"] for r in responses}
    experiment = client.get_registered_model(MODEL).tags["agentops.experiment_id"]
    found = client.search_traces(locations=[experiment], filter_string="tag.`agentops.endpoint` = 'split-70-30'",
                                 max_results=1000, include_spans=False)
    for trace in found:
        assert trace.info.trace_id in trace_ids
        stored[trace.info.tags["agentops.arm"]] += 1
        # The arm's version is linked by model id only (issue 17): no agentops.version tag.
        version = trace.info.tags["agentops.arm"].rsplit("_", 1)[1]
        assert "agentops.version" not in trace.info.tags
        source = client.get_model_version(MODEL, version).source
        assert trace.info.trace_metadata["mlflow.modelId"] == source.removeprefix("models:/")
    assert stored == arms


def test_sticky_ids_never_switch_arms(gateway_store, running_gateway):
    put_endpoint(gateway_store, "sticky", {"1": 50, "2": 50}, sticky=True)
    users = [f"user-{i}" for i in range(16)]
    responses = _send(running_gateway.url, "sticky", 64, users=users)
    by_user: dict[str, set[str]] = {}
    for i, response in enumerate(responses):
        assert response.status_code == 200
        by_user.setdefault(users[i % len(users)], set()).add(response.headers["X-AgentOps-Arm"])
    assert all(len(arms) == 1 for arms in by_user.values()), by_user
    assert len({next(iter(a)) for a in by_user.values()}) == 2, "16 users should land on both arms"


def test_split_changed_mid_traffic_loses_no_request(gateway_store, running_gateway):
    put_endpoint(gateway_store, "hot", {"1": 50, "2": 50})
    results: list[tuple[float, httpx.Response]] = []
    sent = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal sent
        with httpx.Client(base_url=running_gateway.url, timeout=60) as client:
            while not stop.is_set():
                started = time.monotonic()
                sent += 1
                results.append((started, client.post("/serving-endpoints/hot/invocations", json=QUESTION)))

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        while len(results) < 30 and worker.is_alive():
            time.sleep(0.05)
        plan = serving.plan_split("hot", {(MODEL, "2"): 100}, settings=gateway_store)
        serving.apply_split(plan, user="ops", reason="move all traffic to v2", settings=gateway_store)
        applied = time.monotonic()
        deadline = applied + 120
        while sum(t > applied for t, _ in results) < 30 and worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(timeout=120)
    assert len(results) == sent
    assert all(r.status_code == 200 for _, r in results)
    before = [r.headers["X-AgentOps-Arm"] for t, r in results if t < applied]
    after = [r.headers["X-AgentOps-Arm"] for t, r in results if t > applied]
    assert f"{MODEL}_1" in before and len(after) >= 30, "the change must land mid-traffic"
    assert set(after) == {f"{MODEL}_2"}
    stats = running_gateway.gateway.drain(180)
    assert (stats.produced, stats.recorded, stats.lost) == (sent, sent, 0)


@pytest.mark.parametrize(
    ("endpoint", "body", "status", "code"),
    [
        ("missing", QUESTION, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("errors", {"messages": []}, 400, "INVALID_PARAMETER_VALUE"),
        ("errors", {"input": "hello"}, 400, "INVALID_PARAMETER_VALUE"),
        ("errors", b"{not json", 400, "MALFORMED_REQUEST"),
        ("broken", QUESTION, 503, "SERVED_VERSION_UNAVAILABLE"),
    ],
)
def test_bad_requests_get_clear_errors(gateway_store, running_gateway, endpoint, body, status, code):
    put_endpoint(gateway_store, "errors", {"1": 100})
    put_endpoint(gateway_store, "broken", {"3": 100})
    with httpx.Client(base_url=running_gateway.url, timeout=60) as client:
        path = f"/serving-endpoints/{endpoint}/invocations"
        response = client.post(path, content=body) if isinstance(body, bytes) else client.post(path, json=body)
    assert response.status_code == status
    assert response.json()["error_code"] == code
    assert response.json()["message"]


def test_load_from_eight_clients_loses_no_request_and_stores_every_trace(gateway_store, running_gateway):
    """~2,000 requests from 8 concurrent clients over loopback against a 70/30 split."""
    put_endpoint(gateway_store, "load-70-30", {"1": 70, "2": 30})
    clients, per_client = 8, 250
    results: list[list[httpx.Response]] = [[] for _ in range(clients)]

    def client_loop(index: int) -> None:
        with httpx.Client(base_url=running_gateway.url, timeout=120) as client:
            for i in range(per_client):
                body = {"input": [{"role": "user", "content": f"How do I reset my password? ({index}-{i})"}]}
                results[index].append(client.post("/serving-endpoints/load-70-30/invocations", json=body))

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=900)
    responses = [r for per in results for r in per]
    n = clients * per_client
    assert len(responses) == n
    assert Counter(r.status_code for r in responses) == {200: n}
    trace_ids = [r.headers["X-AgentOps-Trace-Id"] for r in responses]
    assert len(set(trace_ids)) == n
    arms = Counter(r.headers["X-AgentOps-Arm"] for r in responses)
    assert binomtest(arms[f"{MODEL}_1"], n, 0.7).pvalue > 0.001, arms

    gateway = running_gateway.gateway
    ledger = gateway.drain(300)
    assert (ledger.produced, ledger.recorded, ledger.pending, ledger.lost) == (n, n, 0, 0)
    writer = gateway.stats()["trace_writer"]
    assert writer["mode"] == "batched" and writer["failed"] == 0 and writer["not_captured"] == 0
    assert writer["largest_batch"] > 1, "under load, traces should be written several per batch"

    client = MlflowClient(tracking_uri=gateway_store.tracking_uri)
    experiment = client.get_registered_model(MODEL).tags["agentops.experiment_id"]
    stored: dict[str, str] = {}
    token = None
    while True:
        page = client.search_traces(locations=[experiment], filter_string="tag.`agentops.endpoint` = 'load-70-30'",
                                    max_results=500, include_spans=False, page_token=token)
        stored.update({t.info.trace_id: t.info.tags["agentops.arm"] for t in page})
        token = page.token
        if not token:
            break
    assert set(stored) == set(trace_ids)
    assert Counter(stored.values()) == arms
    from tests.hardening.reliability import write_record

    write_record("gateway_load", "8 clients against a 70/30 split", {
        "clients": clients, "requests sent": n, "answered 200": Counter(r.status_code for r in responses)[200],
        "traces stored": len(stored), "traces lost": ledger.lost,
        "share on the 70% arm": round(arms[f"{MODEL}_1"] / n, 3), "largest write batch": writer["largest_batch"],
    })


def test_traces_that_cannot_be_recorded_are_counted_in_stats_and_health(gateway_store, running_gateway):
    client = MlflowClient(tracking_uri=gateway_store.tracking_uri)
    experiment_id = client.create_experiment("gw-doomed", artifact_location=(gateway_store.artifact_root / "gw-doomed").as_uri())
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.pyfunc.log_model(name="agent", python_model=str(AGENT_FILE), registered_model_name="gw-doomed",
                                model_config={"strategy": "keyword"}, pip_requirements=["mlflow"])
    client.set_registered_model_tag("gw-doomed", registry.EXPERIMENT_TAG, experiment_id)
    served = (serving.ServedVersion("gw-doomed_1", "gw-doomed", "1"),)
    serving.save_local_endpoint(serving.Endpoint("doomed", served, (serving.TrafficRoute("gw-doomed_1", 100),),
                                                 serving.EndpointState.READY), gateway_store)
    with httpx.Client(base_url=running_gateway.url, timeout=60) as http:
        assert http.post("/serving-endpoints/doomed/invocations", json=QUESTION).status_code == 200
        running_gateway.gateway.drain(60)
        assert http.get("/health").json()["status"] == "ok"
        client.delete_experiment(experiment_id)  # its traces can no longer be written
        response = http.post("/serving-endpoints/doomed/invocations", json=QUESTION)
        assert response.status_code == 200, "the request is served; its trace is what is lost"
        running_gateway.gateway.writer.flush(60)
        stats = http.get("/stats").json()
        health = http.get("/health")
    assert stats["traces"]["could_not_record"] == 1 and stats["traces"]["lost"] == 1
    assert stats["trace_writer"]["failed"] == 1 and stats["trace_writer"]["spooled"] == 1
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    spooled = (gateway_store.data_dir / "gateway-spool").glob("*.jsonl")
    assert any(response.headers["X-AgentOps-Trace-Id"] in path.read_text() for path in spooled)


def test_mlflow_exporter_path_still_records_every_trace(gateway_store):
    put_endpoint(gateway_store, "exporter", {"1": 50, "2": 50})
    with RunningGateway(gateway_store, batch_traces=False) as running:
        responses = _send(running.url, "exporter", 20)
        ledger = running.gateway.drain(120)
        mode = running.gateway.stats()["trace_writer"]["mode"]
    assert all(r.status_code == 200 for r in responses)
    assert mode == "mlflow-exporter"
    assert (ledger.produced, ledger.recorded, ledger.lost) == (20, 20, 0)


def test_loading_a_version_mid_traffic_costs_no_trace(gateway_store, running_gateway):
    """``mlflow.pyfunc.load_model`` disables tracing process-wide while it runs; the gateway
    must keep traced requests and loads apart."""
    put_endpoint(gateway_store, "warm-v1", {"1": 100})
    put_endpoint(gateway_store, "cold-v2", {"2": 100})
    stop = threading.Event()
    responses: list[httpx.Response] = []

    def traffic() -> None:
        with httpx.Client(base_url=running_gateway.url, timeout=60) as client:
            while not stop.is_set():
                responses.append(client.post("/serving-endpoints/warm-v1/invocations", json=QUESTION))

    workers = [threading.Thread(target=traffic) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        while len(responses) < 20:
            time.sleep(0.02)
        with httpx.Client(base_url=running_gateway.url, timeout=60) as client:
            cold = client.post("/serving-endpoints/cold-v2/invocations", json=QUESTION)  # loads v2 now
        seen = len(responses)
        while len(responses) < seen + 20:
            time.sleep(0.02)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    assert cold.status_code == 200 and all(r.status_code == 200 for r in responses)
    stats = running_gateway.gateway.drain(120)
    assert (stats.produced, stats.recorded, stats.lost) == (len(responses) + 1, len(responses) + 1, 0)


def _stored_for_request(settings, request_id: str) -> list:
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_registered_model(MODEL).tags["agentops.experiment_id"]
    return client.search_traces(locations=[experiment], filter_string=f"trace.client_request_id = '{request_id}'",
                                max_results=10, include_spans=False)


@pytest.mark.parametrize("how", ["body", "header"])
def test_a_retry_with_the_same_request_id_is_answered_once(gateway_store, running_gateway, how):
    put_endpoint(gateway_store, "idem", {"1": 50, "2": 50})
    request_id = f"retry-{how}-{time.time_ns()}"
    body = {**QUESTION, "client_request_id": request_id} if how == "body" else dict(QUESTION)
    headers = {"X-Request-Id": request_id} if how == "header" else {}
    with httpx.Client(base_url=running_gateway.url, timeout=60) as http:
        first = http.post("/serving-endpoints/idem/invocations", json=body, headers=headers)
        again = http.post("/serving-endpoints/idem/invocations", json=body, headers=headers)
        other = http.post("/serving-endpoints/idem/invocations", headers={"X-Request-Id": request_id},
                          json={"input": [{"role": "user", "content": "Something else entirely"}]})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    for name in ("X-AgentOps-Trace-Id", "X-AgentOps-Arm", "X-Request-Id"):
        assert again.headers[name] == first.headers[name]
    assert first.headers["X-Request-Id"] == request_id
    assert "X-AgentOps-Replayed" not in first.headers and again.headers["X-AgentOps-Replayed"] == "true"
    assert other.status_code == 409 and other.json()["error_code"] == "RESOURCE_CONFLICT"
    running_gateway.gateway.drain(60)
    stored = _stored_for_request(gateway_store, request_id)
    assert [t.info.trace_id for t in stored] == [first.headers["X-AgentOps-Trace-Id"]]
    stats = running_gateway.gateway.stats()["journal"]
    assert stats["answered_from_journal"] >= 1 and stats["pending"] == 0 and stats["errors"] == 0


def test_concurrent_duplicates_of_one_request_id_produce_one_trace(gateway_store, running_gateway):
    put_endpoint(gateway_store, "idem", {"1": 50, "2": 50})
    request_id = f"dup-{time.time_ns()}"
    body = {**QUESTION, "client_request_id": request_id}
    responses: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=running_gateway.url, timeout=60) as http:
            responses.append(http.post("/serving-endpoints/idem/invocations", json=body))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [r.status_code for r in responses] == [200] * 4
    assert len({r.headers["X-AgentOps-Trace-Id"] for r in responses}) == 1
    assert sum(r.headers.get("X-AgentOps-Replayed") == "true" for r in responses) == 3
    running_gateway.gateway.drain(60)
    assert len(_stored_for_request(gateway_store, request_id)) == 1


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({**QUESTION, "client_request_id": 7}, {}),
        ({**QUESTION, "client_request_id": ""}, {}),
        ({**QUESTION, "client_request_id": "a" * 201}, {}),
        ({**QUESTION, "client_request_id": "one"}, {"X-Request-Id": "two"}),
    ],
    ids=["not-a-string", "empty", "too-long", "field-and-header-differ"],
)
def test_bad_request_ids_are_refused_before_the_model_runs(gateway_store, running_gateway, body, headers):
    put_endpoint(gateway_store, "idem", {"1": 100})
    before = running_gateway.gateway.stats()["traces"]["produced"]
    with httpx.Client(base_url=running_gateway.url, timeout=60) as http:
        response = http.post("/serving-endpoints/idem/invocations", json=body, headers=headers)
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert running_gateway.gateway.stats()["traces"]["produced"] == before


def test_traces_journaled_by_a_crashed_gateway_are_written_at_the_next_start(gateway_store):
    """A trace served but not yet written when the process died is in the journal; the next
    gateway on the same data folder writes it, and a retry of its request is answered from it."""
    from gateway.journal import JournalEntry, RequestJournal, fingerprint
    from services._clients import configure_mlflow
    from services._mlflow_internal import span_batch

    configure_mlflow(gateway_store)
    put_endpoint(gateway_store, "crashed", {"1": 100})
    request_id = f"crashed-{time.time_ns()}"
    client = MlflowClient(tracking_uri=gateway_store.tracking_uri)
    experiment = client.get_registered_model(MODEL).tags["agentops.experiment_id"]
    assert span_batch.install()
    with span_batch.capture() as captured:  # what a gateway captured right before it was killed
        with mlflow.start_span(name="crashed", trace_destination=MlflowExperimentLocation(experiment)) as span:
            mlflow.update_current_trace(tags={"agentops.endpoint": "crashed"}, client_request_id=request_id)
            span.set_outputs({"output": []})
    assert captured.trace is not None
    trace_id = captured.trace.trace_id
    journal = RequestJournal(gateway_store.data_dir / "gateway-journal.sqlite")
    headers = {"X-AgentOps-Arm": f"{MODEL}_1", "X-AgentOps-Trace-Id": trace_id, "X-Request-Id": request_id}
    journal.record(JournalEntry(request_id, fingerprint("crashed", QUESTION), "crashed", f"{MODEL}_1", trace_id, 200,
                                {"output": []}, headers, ""), captured.trace)
    journal.close()
    assert not _stored_for_request(gateway_store, request_id)

    with RunningGateway(gateway_store) as running:
        ledger = running.gateway.drain(60)
        while running.gateway.stats()["journal"]["pending"] and ledger.pending == 0:
            time.sleep(0.1)  # the replay thread may not have submitted yet
            ledger = running.gateway.drain(60)
        with httpx.Client(base_url=running.url, timeout=60) as http:
            retry = http.post("/serving-endpoints/crashed/invocations", json={**QUESTION, "client_request_id": request_id})
        journal_stats = running.gateway.stats()["journal"]
    assert journal_stats["replayed_at_start"] >= 1 and journal_stats["pending"] == 0
    assert retry.status_code == 200 and retry.headers["X-AgentOps-Replayed"] == "true"
    assert retry.headers["X-AgentOps-Trace-Id"] == trace_id
    assert [t.info.trace_id for t in _stored_for_request(gateway_store, request_id)] == [trace_id]


class FlakyProxy:
    """HTTP in front of the gateway that, per request id, loses the first attempt of chosen requests.

    ``refuse``: the first attempt gets 503 before reaching the gateway (a gateway restarting).
    ``lose``: the first attempt reaches the gateway, then the connection is closed before the
    answer comes back (a response lost in a crash), so only the client's retry can tell.
    """

    def __init__(self, upstream: str, refuse: set[int], lose: set[int]) -> None:
        import http.server
        import json as _json

        proxy = self
        self.seen: Counter[str] = Counter()
        self.order: list[str] = []
        self.refuse, self.lose = refuse, lose

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def do_GET(self):  # health checks pass through
                answer = httpx.get(upstream + self.path, timeout=10)
                self._reply(answer.status_code, answer.content, answer.headers)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request_id = _json.loads(raw).get("client_request_id", "")
                if request_id not in proxy.seen:
                    proxy.order.append(request_id)
                proxy.seen[request_id] += 1
                index, attempt = proxy.order.index(request_id), proxy.seen[request_id]
                if attempt == 1 and index in proxy.refuse:
                    self._reply(503, b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "restarting"}', {})
                    return
                answer = httpx.post(upstream + self.path, content=raw, headers={"Content-Type": "application/json"},
                                    timeout=60)
                if attempt == 1 and index in proxy.lose:
                    self.close_connection = True
                    self.connection.shutdown(2)  # the gateway answered; the client never hears it
                    return
                self._reply(answer.status_code, answer.content, answer.headers)

            def _reply(self, status, content, headers):
                self.send_response(status)
                for name in ("Content-Type", "X-AgentOps-Arm", "X-AgentOps-Trace-Id", "X-Request-Id"):
                    if name in headers:
                        self.send_header(name, headers[name])
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_test_traffic_retries_lost_requests_with_their_id_and_makes_one_trace_each(gateway_store, running_gateway):
    """The page's test traffic: refused and lost requests are sent again with the same id, answered once each."""
    import dataclasses

    from services import traffic

    put_endpoint(gateway_store, "flaky", {"1": 50, "2": 50})
    proxy = FlakyProxy(running_gateway.url, refuse={1, 5}, lose={2, 7})
    try:
        settings = dataclasses.replace(gateway_store, gateway_url=proxy.url)
        result = traffic.send_test_traffic("flaky", ["How do I reset my password?", "Where is my order?"], 10,
                                           seed=3, settings=settings)
    finally:
        proxy.stop()
    assert (result.sent, result.ok, result.failed, result.errors) == (10, 10, 0, ())
    assert result.retried == 4 and sum(result.by_arm.values()) == 10
    assert len(proxy.order) == 10 and all(len(set(i)) > 1 for i in proxy.order)  # one id per request
    assert [proxy.seen[i] for i in proxy.order] == [1, 2, 2, 1, 1, 2, 1, 2, 1, 1]
    running_gateway.gateway.drain(60)
    for request_id in proxy.order:  # the lost ones were answered from the journal, not run again
        assert len(_stored_for_request(gateway_store, request_id)) == 1, request_id
    assert running_gateway.gateway.stats()["journal"]["answered_from_journal"] >= 2
