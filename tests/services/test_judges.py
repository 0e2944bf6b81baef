"""MLflow's LLM judges against a local OpenAI-compatible endpoint (no network, no key)."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow import MlflowClient

from services import evaluations, scorers
from tests.ai_gateway.fake_openai import FakeOpenAI

VERDICT = {"result": "yes", "rationale": "The answer states the 30-minute reset link."}


@pytest.fixture
def judge_env(monkeypatch):
    server = FakeOpenAI(content=json.dumps(VERDICT))  # every chat answer is the judge's verdict
    monkeypatch.setenv("AGENTOPS_JUDGE_MODEL", "openai:/local-judge")
    monkeypatch.setenv("OPENAI_BASE_URL", server.api_base)
    monkeypatch.setenv("OPENAI_API_KEY", "not-a-real-key")
    yield server
    server.stop()


def test_configured_judge_is_offered_and_scores_through_the_endpoint(judge_env):
    catalog = {s.name: s for s in scorers.scorer_catalog()}
    assert catalog["correctness"].available and catalog["safety"].available
    (correctness,) = scorers.build_scorers(["correctness"])
    feedback = correctness(
        inputs={"question": "How long is the reset link valid?"},
        outputs="The reset link stays valid for 30 minutes.",
        expectations={"expected_response": "30 minutes"},
    )
    assert feedback.value == "yes"
    assert "30-minute" in feedback.rationale
    assert judge_env.requests and judge_env.requests[0]["model"] == "local-judge"


def test_judge_runs_inside_an_evaluation(judge_env, isolated_settings):
    client = MlflowClient(tracking_uri=isolated_settings.tracking_uri)
    experiment_id = client.create_experiment("judged", artifact_location=(isolated_settings.artifact_root / "j").as_uri())
    rows = [{"inputs": {"question": f"q{i}"}, "expectations": {"expected_response": "30 minutes"}} for i in range(3)]
    run_id = evaluations.evaluate_rows(
        rows, lambda question: f"answer to {question}: 30 minutes", scorers.build_scorers(["correctness"]),
        experiment_id=experiment_id, run_name="judged", tags={"agentops.agent": "a"},
    )
    metrics = client.get_run(run_id).data.metrics
    assert metrics["correctness/mean"] == 1.0
    assert len(judge_env.requests) == 3
    traces = mlflow.search_traces(locations=[experiment_id], run_id=run_id, return_type="list")
    assert len(traces) == 3
