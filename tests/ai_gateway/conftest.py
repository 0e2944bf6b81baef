"""A real ``mlflow server`` process with AI Gateway endpoints whose models point at a fake
OpenAI-compatible server on loopback (no network)."""

from __future__ import annotations


import pytest

from services.serving import ai_gateway
from tests.ai_gateway.fake_openai import FakeOpenAI
from tests.harness.mlflow_server import running_mlflow_server


@pytest.fixture(scope="session")
def fake_openai():
    server = FakeOpenAI()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateway_server(tmp_path_factory):
    """Settings of a real ``mlflow server`` (one worker, temp SQLite), stopped by its PID after."""
    root = tmp_path_factory.mktemp("ai-gateway-server")
    # The fake provider is plain HTTP on loopback: allow it (the defaults demand public HTTPS).
    env = {"MLFLOW_GATEWAY_API_BASE_ALLOWED_SCHEMES": "http,https", "MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS": "true",
           "MLFLOW_MODEL_CATALOG_URI": ""}
    with running_mlflow_server(root, env=env) as settings:
        yield settings


@pytest.fixture(scope="session")
def gateway_models(gateway_server, fake_openai):
    """Secret + model definitions ``name -> id`` on the server: model-a/-b/-c answer as gpt-a/-b/-c,
    model-a2 as gpt-a too, model-f always fails."""
    rest = ai_gateway._rest
    secret = rest(gateway_server, "POST", "secrets/create", body={
        "secret_name": "fake-openai", "secret_value": {"api_key": "sk-test"}, "provider": "openai",
        "auth_config": {"api_base": fake_openai.api_base},
    })["secret"]["secret_id"]
    ids = {}
    for name, model in (("model-a", "gpt-a"), ("model-b", "gpt-b"), ("model-c", "gpt-c"), ("model-a2", "gpt-a"),
                        ("model-f", "gpt-fail")):
        ids[name] = rest(gateway_server, "POST", "model-definitions/create", body={
            "name": name, "secret_id": secret, "provider": "openai", "model_name": model,
        })["model_definition"]["model_definition_id"]
    return ids


def create_endpoint(settings, models: dict[str, str], name: str, weights: dict[str, float],
                    fallback: str | None = None) -> str:
    """Create a traffic-split endpoint (weights as MLflow stores them, 0-1) with usage tracking."""
    configs = [{"model_definition_id": models[m], "linkage_type": "PRIMARY", "weight": w} for m, w in weights.items()]
    body = {"name": name, "routing_strategy": "REQUEST_BASED_TRAFFIC_SPLIT", "model_configs": configs,
            "usage_tracking": True}
    if fallback:
        configs.append({"model_definition_id": models[fallback], "linkage_type": "FALLBACK", "fallback_order": 1})
        body["fallback_config"] = {"strategy": "SEQUENTIAL", "max_attempts": 1}
    return ai_gateway._rest(settings, "POST", "endpoints/create", body=body)["endpoint"]["endpoint_id"]
