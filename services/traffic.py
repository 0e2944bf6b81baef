"""Sending test traffic through the local gateway, so a user can see a split work."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from services._clients import get_settings, mlflow_client, translate_errors
from services.errors import BackendUnavailableError, ValidationError
from services.registry import EXPERIMENT_TAG
from services.settings import Settings

MAX_TEST_REQUESTS = 2_000
# A request the gateway could not take (connection refused or reset, 503 while it restarts) is sent
# again with the same client_request_id after these pauses; the gateway answers a known id from its
# journal, so a retry never makes a second trace.
_RETRY_PAUSES_S = (0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class TrafficResult:
    sent: int
    ok: int
    failed: int
    by_arm: dict[str, int] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    retried: int = 0  # requests that needed more than one attempt


def gateway_status(settings: Settings | None = None) -> str | None:
    """None when the local gateway answers its health check, else why not."""
    import httpx

    settings = settings or get_settings()
    try:
        response = httpx.get(f"{settings.gateway_url}/health", timeout=2)
        return None if response.status_code == 200 else f"answered HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        return f"not reachable ({type(exc).__name__})"


def gateway_problems(settings: Settings | None = None) -> list[str]:
    """What the gateway's health check reports as wrong (traces it could not record, say); [] when fine or down."""
    import httpx

    settings = settings or get_settings()
    try:
        answer = httpx.get(f"{settings.gateway_url}/health", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return []
    problems = answer.get("problems") if isinstance(answer, dict) else None
    return [str(p) for p in problems] if isinstance(problems, list) else []


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
    retried = 0
    with httpx.Client(base_url=settings.gateway_url, timeout=60) as client:
        for i in range(n):
            body = {
                "input": [{"role": "user", "content": rng.choice(list(questions))}],
                "context": {"user_id": f"test-user-{rng.randrange(users)}"},
                "client_request_id": uuid.uuid4().hex,
            }
            response, problem, attempts = _send(client, f"/serving-endpoints/{endpoint}/invocations", body)
            retried += attempts > 1
            if response is None:
                errors.append(f"request {i + 1}: {problem}")
            else:
                if arm := response.headers.get("X-AgentOps-Arm"):
                    by_arm[arm] += 1
                if response.status_code == 200:
                    ok += 1
                else:
                    errors.append(f"request {i + 1}: HTTP {response.status_code} {_message(response)}")
            if progress:
                progress(i + 1, n)
    return TrafficResult(n, ok, n - ok, dict(by_arm), tuple(errors[:20]), retried)


def _send(client, path: str, body: dict) -> tuple[object | None, str, int]:
    """POST with retries of the same request id while the gateway is unreachable or restarting."""
    import httpx

    problem = ""
    for attempt, pause in enumerate((0.0, *_RETRY_PAUSES_S), start=1):
        time.sleep(pause)
        try:
            response = client.post(path, json=body)
        except httpx.TransportError as exc:
            problem = f"{type(exc).__name__} after {attempt} attempts"
            continue
        if response.status_code == 503 and attempt <= len(_RETRY_PAUSES_S):
            continue
        return response, "", attempt
    return None, problem, len(_RETRY_PAUSES_S) + 1


def _message(response) -> str:
    try:
        answer = response.json()
    except ValueError:
        return response.text[:200]
    return str(answer.get("message", "")) if isinstance(answer, dict) else ""
