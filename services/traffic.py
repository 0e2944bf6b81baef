"""Sending test traffic through the local gateway, so a user can see a split work."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from services._clients import get_settings, mlflow_client, translate_errors
from services.errors import BackendUnavailableError, ValidationError
from services.registry import EXPERIMENT_TAG
from services.settings import Settings

MAX_TEST_REQUESTS = 2_000


@dataclass(frozen=True)
class TrafficResult:
    sent: int
    ok: int
    failed: int
    by_arm: dict[str, int] = field(default_factory=dict)
    errors: tuple[str, ...] = ()


def gateway_status(settings: Settings | None = None) -> str | None:
    """None when the local gateway answers its health check, else why not."""
    import httpx

    settings = settings or get_settings()
    try:
        response = httpx.get(f"{settings.gateway_url}/health", timeout=2)
        return None if response.status_code == 200 else f"answered HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        return f"not reachable ({type(exc).__name__})"


def sample_questions(model_names: Sequence[str], settings: Settings | None = None, limit: int = 200) -> list[str]:
    """Questions from the evaluation datasets in the agents' experiments (for test traffic)."""
    from mlflow.genai.datasets import search_datasets

    client = mlflow_client(settings)
    experiment_ids = []
    with translate_errors("the model registry"):
        for name in model_names:
            experiment_id = (client.get_registered_model(name).tags or {}).get(EXPERIMENT_TAG)
            if experiment_id and experiment_id not in experiment_ids:
                experiment_ids.append(experiment_id)
    questions: list[str] = []
    if not experiment_ids:
        return questions
    with translate_errors("evaluation datasets"):
        for dataset in search_datasets(experiment_ids=experiment_ids, max_results=20):
            frame = dataset.to_df()
            for inputs in frame.get("inputs", []):
                if isinstance(inputs, dict) and isinstance(inputs.get("question"), str):
                    questions.append(inputs["question"])
                if len(questions) >= limit:
                    return questions
    return questions


def send_test_traffic(
    endpoint: str, questions: Sequence[str], n: int, *, users: int = 25, seed: int | None = None,
    settings: Settings | None = None, progress: Callable[[int, int], None] | None = None,
) -> TrafficResult:
    """Send ``n`` requests with the given questions to the gateway; count answers per arm."""
    import httpx

    settings = settings or get_settings()
    if not questions:
        raise ValidationError("There are no questions to send: add an evaluation dataset for this agent first.")
    if not 1 <= n <= MAX_TEST_REQUESTS:
        raise ValidationError(f"Send between 1 and {MAX_TEST_REQUESTS} requests.")
    problem = gateway_status(settings)
    if problem:
        raise BackendUnavailableError(
            f"The local gateway at {settings.gateway_url} is {problem}. Start the app with ./scripts/run, "
            "which starts the gateway too."
        )
    rng = random.Random(seed)
    by_arm: Counter[str] = Counter()
    errors: list[str] = []
    ok = 0
    with httpx.Client(base_url=settings.gateway_url, timeout=60) as client:
        for i in range(n):
            body = {
                "input": [{"role": "user", "content": rng.choice(list(questions))}],
                "context": {"user_id": f"test-user-{rng.randrange(users)}"},
            }
            try:
                response = client.post(f"/serving-endpoints/{endpoint}/invocations", json=body)
            except httpx.HTTPError as exc:
                errors.append(f"request {i + 1}: {type(exc).__name__}")
            else:
                if arm := response.headers.get("X-AgentOps-Arm"):
                    by_arm[arm] += 1
                if response.status_code == 200:
                    ok += 1
                else:
                    errors.append(f"request {i + 1}: HTTP {response.status_code} {response.json().get('message', '')}")
            if progress:
                progress(i + 1, n)
    return TrafficResult(n, ok, n - ok, dict(by_arm), tuple(errors[:20]))
