"""A store with two real versions of the demo support agent and one that cannot load."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import mlflow
import pytest

from gateway.runner import RunningGateway
from services import registry, serving
from services._clients import configure_mlflow, get_or_create_experiment, mlflow_client
from services.settings import load_settings

AGENT_FILE = Path(__file__).resolve().parents[2] / "demo" / "agents" / "support_agent.py"
MODEL = "gw-agent"


@pytest.fixture(scope="session")
def gateway_store(tmp_path_factory):
    settings = build_gateway_store(tmp_path_factory.mktemp("gateway-store"))
    yield settings
    configure_mlflow(load_settings({}))


def build_gateway_store(data_dir: Path):
    """Versions 1 and 2 of the demo support agent (keyword, hybrid) and a version 3 that cannot load."""
    settings = configure_mlflow(load_settings({"AGENTOPS_DATA_DIR": str(data_dir)}))
    client = mlflow_client(settings)
    experiment_id = get_or_create_experiment(client, "gw-agent", settings)
    for strategy in ("keyword", "hybrid", "keyword"):
        with mlflow.start_run(experiment_id=experiment_id):
            info = mlflow.pyfunc.log_model(
                name="agent", python_model=str(AGENT_FILE), model_config={"strategy": strategy, "llm_model": "gpt-4o-mini"},
                pip_requirements=["mlflow"], registered_model_name=MODEL,
            )
    client.set_registered_model_tag(MODEL, registry.EXPERIMENT_TAG, experiment_id)
    # Version 3 cannot load: its artifacts are gone.
    broken = client.get_model_version(MODEL, "3")
    logged = client.get_logged_model(broken.source.removeprefix("models:/"))
    shutil.rmtree(logged.artifact_location.removeprefix("file://"))
    mlflow.end_run()
    return settings


def put_endpoint(settings, name: str, weights: dict[str, int], *, sticky: bool = False) -> serving.Endpoint:
    served = tuple(serving.ServedVersion(f"{MODEL}_{v}", MODEL, v) for v in weights)
    routes = tuple(serving.TrafficRoute(f"{MODEL}_{v}", pct) for v, pct in weights.items())
    return serving.save_local_endpoint(
        serving.Endpoint(name, served, routes, serving.EndpointState.READY, datetime.now(tz=timezone.utc), "test", sticky),
        settings,
    )


@pytest.fixture
def running_gateway(gateway_store):
    configure_mlflow(gateway_store)
    running = RunningGateway(gateway_store)
    yield running
    running.stop()
