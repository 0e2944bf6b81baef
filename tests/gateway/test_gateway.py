"""The local gateway over real HTTP on loopback, with real models and a real store."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest
from mlflow import MlflowClient
from scipy.stats import binomtest

from services import serving
from tests.gateway.conftest import MODEL, put_endpoint

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

    stats = running_gateway.gateway.ledger.drain(180)
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
        version = trace.info.tags["agentops.version"]
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

    def traffic() -> None:
        with httpx.Client(base_url=running_gateway.url, timeout=60) as client:
            for _ in range(120):
                started = time.monotonic()
                results.append((started, client.post("/serving-endpoints/hot/invocations", json=QUESTION)))

    worker = threading.Thread(target=traffic)
    worker.start()
    while len(results) < 30 and worker.is_alive():
        time.sleep(0.05)
    plan = serving.plan_split("hot", {(MODEL, "2"): 100}, settings=gateway_store)
    serving.apply_split(plan, user="ops", reason="move all traffic to v2", settings=gateway_store)
    applied = time.monotonic()
    worker.join(timeout=300)
    assert len(results) == 120
    assert all(r.status_code == 200 for _, r in results)
    before = [r.headers["X-AgentOps-Arm"] for t, r in results if t < applied]
    after = [r.headers["X-AgentOps-Arm"] for t, r in results if t > applied]
    assert f"{MODEL}_1" in before and after, "the change must land mid-traffic"
    assert set(after) == {f"{MODEL}_2"}
    assert running_gateway.gateway.ledger.drain(180).lost == 0


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
