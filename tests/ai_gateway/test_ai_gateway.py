"""MLflow AI Gateway as a serving backend, against a real ``mlflow server`` and a fake provider."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from services import ab, audit, serving
from services.serving import ai_gateway
from services.errors import ValidationError
from services.identity import Identity, IdentitySource
from tests.ai_gateway.conftest import create_endpoint

ALICE = Identity("alice@example.com", "alice", IdentitySource.DATABRICKS_APPS)
REQUESTS = 60
QUESTION = {"messages": [{"role": "user", "content": "What is the refund policy?"}]}


def _send(settings, endpoint: str, n: int) -> Counter:
    """Send ``n`` chat requests through the gateway; count which model answered each."""
    answered: Counter = Counter()
    with httpx.Client(base_url=settings.mlflow_uri, timeout=30) as client:
        for _ in range(n):
            response = client.post(f"/gateway/{endpoint}/mlflow/invocations", json=QUESTION)
            response.raise_for_status()
            answered[response.json()["model"]] += 1
    return answered


def _samples_when_logged(settings, endpoint: str, start: datetime, n: int):
    """Per-arm samples once the gateway has written all ``n`` usage traces."""
    deadline = time.monotonic() + 60
    while True:
        samples, unattributed = ab.endpoint_samples(ai_gateway.get_endpoint(endpoint, settings), [], start,
                                                    datetime.now(tz=timezone.utc) + timedelta(minutes=1),
                                                    settings=settings)
        if sum(s.requests for s in samples) + unattributed >= n or time.monotonic() > deadline:
            return samples, unattributed
        time.sleep(0.5)


def _raw(settings, name: str) -> dict:
    return ai_gateway._rest(settings, "GET", "endpoints/get", params={"name": name})["endpoint"]


def test_lists_endpoints_with_models_weights_fallbacks_and_budgets(gateway_server, gateway_models):
    endpoint_id = create_endpoint(gateway_server, gateway_models, "gw-list", {"model-a": 0.5, "model-b": 0.5},
                                  fallback="model-c")
    ai_gateway._rest(gateway_server, "POST", "budgets/create", body={
        "budget_unit": "USD", "budget_amount": 25.0, "duration": {"unit": "DAYS", "value": 1},
        "target_scope": "ENDPOINT", "target_value": endpoint_id, "budget_action": "REJECT",
    })

    listed = {g.endpoint.name: g for g in ai_gateway.list_gateway_endpoints(gateway_server)}
    gateway = listed["gw-list"]

    assert gateway.endpoint.backend == ai_gateway.BACKEND
    assert [(s.entity_name, s.model_name, s.model_version) for s in gateway.endpoint.served] == [
        ("model-a", "openai/gpt-a", ""), ("model-b", "openai/gpt-b", "")]
    assert {r.entity_name: r.percentage for r in gateway.endpoint.routes} == {"model-a": 50, "model-b": 50}
    assert [(m.name, m.fallback_order) for m in gateway.fallbacks] == [("model-c", 1)]
    assert (gateway.fallback_strategy, gateway.fallback_max_attempts) == ("SEQUENTIAL", 1)
    assert [(b.amount, b.unit, b.window, b.action) for b in gateway.budgets] == [(25.0, "USD", "1 days", "REJECT")]
    assert gateway.usage_tracking and gateway.experiment_id
    assert gateway.attribution_problem is None
    assert ai_gateway.get_endpoint("gw-list", gateway_server) == gateway.endpoint


def test_a_70_30_split_routes_requests_and_usage_traces_give_per_arm_counts_and_a_verdict(
    gateway_server, gateway_models, fake_openai,
):
    create_endpoint(gateway_server, gateway_models, "gw-split", {"model-a": 0.5, "model-b": 0.5}, fallback="model-c")
    plan = serving.plan_weights("gw-split", {"model-a": 70, "model-b": 30}, settings=gateway_server)
    assert plan.percentages() == ({"model-a (openai/gpt-a)": 50, "model-b (openai/gpt-b)": 50},
                                  {"model-a (openai/gpt-a)": 70, "model-b (openai/gpt-b)": 30})
    stored = serving.apply_split(plan, user="alice", reason="try more of a", settings=gateway_server)

    assert {r.entity_name: r.percentage for r in stored.routes} == {"model-a": 70, "model-b": 30}
    gateway = ai_gateway.get_gateway_endpoint("gw-split", gateway_server)
    assert [m.name for m in gateway.fallbacks] == ["model-c"]  # the fallback survived the update
    assert gateway.fallback_strategy == "SEQUENTIAL"
    [change] = audit.traffic_changes("gw-split", settings=gateway_server)
    assert (change.user, change.reason, change.action) == ("alice", "try more of a", "edit split")
    assert change.after == {"model-a (openai/gpt-a)": 70, "model-b (openai/gpt-b)": 30}

    start = datetime.now(tz=timezone.utc) - timedelta(seconds=5)
    before_calls = Counter(fake_openai.calls)
    answered = _send(gateway_server, "gw-split", REQUESTS)
    assert answered == Counter(fake_openai.calls) - before_calls
    # Binomial(60, 0.7): mean 42, sd 3.5; a 4-sd band fails by chance about once in 30,000 runs.
    assert 28 <= answered["gpt-a"] <= 56 and answered["gpt-a"] + answered["gpt-b"] == REQUESTS

    samples, unattributed = _samples_when_logged(gateway_server, "gw-split", start, REQUESTS)
    assert unattributed == 0
    assert {s.entity_name: s.requests for s in samples} == {"model-a": answered["gpt-a"], "model-b": answered["gpt-b"]}
    assert all(s.errors == 0 and s.tokens and set(s.tokens) == {9} for s in samples)

    report = ab.judge_endpoint("gw-split", [], start, datetime.now(tz=timezone.utc) + timedelta(minutes=1),
                               settings=gateway_server, source=ai_gateway.BACKEND)
    assert report.baseline == "model-a"
    assert {a.entity_name: a.requests for a in report.arms} == {"model-a": answered["gpt-a"], "model-b": answered["gpt-b"]}
    [comparison] = report.comparisons
    assert comparison.candidate == "model-b"
    assert report.verdict.startswith("model-b vs model-a:")
    assert "not enough data" in report.verdict  # 60 requests cannot show a 2% change in error rate
    assert report.winner is None


@pytest.mark.parametrize(
    "weights",
    [
        {"model-a": 70, "model-b": 20},  # sums to 90
        {"model-a": 110, "model-b": -10},  # negative share
        {"model-a": 100},  # an arm left without a share
        {"model-a": 50, "model-x": 50},  # not an arm
        {"model-a": 50.5, "model-b": 49.5},  # not whole percents
    ],
)
def test_an_invalid_weight_set_is_refused_and_nothing_changes(gateway_server, gateway_models, weights):
    name = f"gw-invalid-{abs(hash(tuple(weights.items()))) % 10_000}"
    create_endpoint(gateway_server, gateway_models, name, {"model-a": 0.6, "model-b": 0.4})
    before = _raw(gateway_server, name)

    with pytest.raises(ValidationError):
        serving.plan_weights(name, weights, settings=gateway_server)
    # A plan built by hand is refused again before anything is sent.
    endpoint = ai_gateway.get_endpoint(name, gateway_server)
    bad = serving.SplitPlan(endpoint, serving.Endpoint(
        endpoint.name, endpoint.served, (serving.TrafficRoute("model-a", 70), serving.TrafficRoute("model-b", 20)),
        endpoint.state, backend=ai_gateway.BACKEND))
    with pytest.raises(ValidationError):
        serving.apply_split(bad, user="alice", reason="bad", settings=gateway_server)

    assert _raw(gateway_server, name) == before
    assert audit.traffic_changes(name, settings=gateway_server) == []


def test_promote_sends_all_traffic_to_the_winner_and_rollback_restores_it(gateway_server, gateway_models, fake_openai):
    create_endpoint(gateway_server, gateway_models, "gw-promote", {"model-a": 0.7, "model-b": 0.3})

    outcome = ab.promote_arm("gw-promote", "model-b", ALICE, reason="b wins", settings=gateway_server,
                             source=ai_gateway.BACKEND)

    assert outcome.traffic_moved and not outcome.alias_moved
    assert "No alias moved" in outcome.message
    assert {r.entity_name: r.percentage for r in outcome.endpoint.routes} == {"model-a": 0, "model-b": 100}
    assert _send(gateway_server, "gw-promote", 10) == Counter({"gpt-b": 10})
    with pytest.raises(ValidationError):
        ab.promote_arm("gw-promote", "model-z", ALICE, reason="typo", settings=gateway_server, source=ai_gateway.BACKEND)

    ab.promote_arm("gw-promote", "model-a", ALICE, reason="b regressed", action="rollback", settings=gateway_server,
                   source=ai_gateway.BACKEND)

    # Requests keep following the gateway's cached config for up to a minute (CONFIG_CACHE_NOTE),
    # so the rollback is checked on the stored weights and the audit trail.
    assert {r.entity_name: r.percentage for r in ai_gateway.get_endpoint("gw-promote", gateway_server).routes} == {
        "model-a": 100, "model-b": 0}
    changes = audit.traffic_changes("gw-promote", settings=gateway_server)
    assert [(c.action, c.user, c.after) for c in changes] == [
        ("rollback", ALICE.user, {"model-a (openai/gpt-a)": 100, "model-b (openai/gpt-b)": 0}),
        ("promote winner", ALICE.user, {"model-a (openai/gpt-a)": 0, "model-b (openai/gpt-b)": 100}),
    ]


def test_arms_serving_the_same_model_name_cannot_be_attributed(gateway_server, gateway_models):
    create_endpoint(gateway_server, gateway_models, "gw-twins", {"model-a": 0.5, "model-a2": 0.5})
    gateway = ai_gateway.get_gateway_endpoint("gw-twins", gateway_server)
    assert "cannot be attributed" in gateway.attribution_problem

    now = datetime.now(tz=timezone.utc)
    with pytest.raises(ai_gateway.CannotAttributeError, match="mlflow.llm.model"):
        ab.judge_endpoint("gw-twins", [], now - timedelta(hours=1), now, settings=gateway_server,
                          source=ai_gateway.BACKEND)


def test_a_stale_plan_is_refused(gateway_server, gateway_models):
    from services.errors import ConflictError

    create_endpoint(gateway_server, gateway_models, "gw-stale", {"model-a": 0.5, "model-b": 0.5})
    plan = serving.plan_weights("gw-stale", {"model-a": 80, "model-b": 20}, settings=gateway_server)
    serving.apply_split(serving.plan_weights("gw-stale", {"model-a": 0, "model-b": 100}, settings=gateway_server),
                        user="bob", reason="meanwhile", settings=gateway_server)

    with pytest.raises(ConflictError):
        serving.apply_split(plan, user="alice", reason="late", settings=gateway_server)
    assert {r.entity_name: r.percentage for r in ai_gateway.get_endpoint("gw-stale", gateway_server).routes} == {
        "model-a": 0, "model-b": 100}


def test_an_arm_whose_calls_fail_counts_errors_even_when_the_fallback_answers(gateway_server, gateway_models, fake_openai):
    create_endpoint(gateway_server, gateway_models, "gw-failing", {"model-a": 0.5, "model-f": 0.5}, fallback="model-c")
    start = datetime.now(tz=timezone.utc) - timedelta(seconds=5)
    answered = _send(gateway_server, "gw-failing", 20)
    assert set(answered) <= {"gpt-a", "gpt-c"}  # every failed call was answered by the fallback

    samples, unattributed = _samples_when_logged(gateway_server, "gw-failing", start, 20)

    by_arm = {s.entity_name: s for s in samples}
    assert unattributed == 0
    assert by_arm["model-f"].requests == answered["gpt-c"] and by_arm["model-f"].errors == answered["gpt-c"]
    assert by_arm["model-a"].requests == answered["gpt-a"] and by_arm["model-a"].errors == 0
