"""MLflow's LLM judges against a local OpenAI-compatible endpoint (no network, no key)."""

from __future__ import annotations

import json
import socket
import threading
import time

import mlflow
import pytest
import uvicorn
from fastapi import FastAPI, Request
from mlflow import MlflowClient

from services import evaluations, scorers

VERDICT = {"result": "yes", "rationale": "The answer states the 30-minute reset link."}


class FakeJudgeServer:
    """Answers /v1/chat/completions with a fixed judge verdict and records what it was asked."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> dict:
            body = await request.json()
            self.requests.append(body)
            return {
                "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": json.dumps(VERDICT)}}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
            }

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def judge_env(monkeypatch):
    server = FakeJudgeServer()
    monkeypatch.setenv("AGENTOPS_JUDGE_MODEL", "openai:/local-judge")
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
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
