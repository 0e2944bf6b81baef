"""Live scoring on the ``mlflow`` backend: judges whose model is one of the server's AI Gateway
endpoints are registered and started in the ``mlflow server`` through MLflow's own client, and the
server runs them; code scorers stay in the app's worker, which skips what the server runs.

The world is another team's, written with MLflow's public API only: a real ``mlflow server``
(job execution on, as by default), an AI Gateway endpoint created with MLflow's REST store whose
model is a fake OpenAI-compatible server on loopback, an agent and its traces. Asserted through
MLflow's client (``get_scorer`` / ``list_scorers``): what is registered, with which sample rate
and filter, and what the worker's pass writes to the store.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from services import _clients, live_scoring, team_state
from services.errors import ValidationError
from services.identity import Identity, IdentitySource
from services.live_scoring import LiveScoringConfig
from tests.ai_gateway.fake_openai import FakeOpenAI
from tests.harness.mlflow_server import running_mlflow_server
from tests.services.live_scoring_world import AGENT, build_world

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
OPS = Identity("ops@example.com", "ops", IdentitySource.OS_USER)
ENDPOINT = "judge-endpoint"
JUDGE_ENV = {"AGENTOPS_JUDGE_MODEL": f"gateway:/{ENDPOINT}"}
FILTER = "trace.status = 'OK'"
TRACES = 12


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A real ``mlflow server`` with an AI Gateway endpoint (fake OpenAI behind it) and an agent's traces."""
    from mlflow.entities.gateway_endpoint import (
        GatewayEndpointModelConfig,
        GatewayModelLinkageType,
    )
    from mlflow.tracking._tracking_service.utils import _get_store

    fake = FakeOpenAI()
    root = tmp_path_factory.mktemp("live-mlflow-server")
    env = {"MLFLOW_GATEWAY_API_BASE_ALLOWED_SCHEMES": "http,https", "MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS": "true",
           "MLFLOW_MODEL_CATALOG_URI": "",
           # The server's scheduler scores a trace only this long after it started (default 5 minutes).
           "MLFLOW_ONLINE_SCORING_DEFAULT_TRACE_COMPLETION_BUFFER_SECONDS": "0"}
    try:
        with running_mlflow_server(root, env=env, jobs=True) as server:
            try:
                _clients.configure_mlflow(server)
                store = _get_store(server.tracking_uri)
                secret = store.create_gateway_secret(secret_name="judge-key", secret_value={"api_key": "sk-test"},
                                                     provider="openai", auth_config={"api_base": fake.api_base})
                model = store.create_gateway_model_definition(name="judge-model", secret_id=secret.secret_id,
                                                              provider="openai", model_name="gpt-judge")
                store.create_gateway_endpoint(name=ENDPOINT, model_configs=[GatewayEndpointModelConfig(
                    model_definition_id=model.model_definition_id, linkage_type=GatewayModelLinkageType.PRIMARY,
                    weight=1.0)])
                built = build_world(server, traces=TRACES)
            finally:
                _clients.configure_mlflow(_clients.get_settings())
            yield {"server": server, "fake": fake, **built}
    finally:
        fake.stop()


@pytest.fixture
def server(world):
    _clients.configure_mlflow(world["server"])
    yield world["server"]
    _clients.configure_mlflow(_clients.get_settings())


def _registered(experiment_id: str) -> dict:
    from mlflow.genai.scorers import list_scorers

    return {s.name: s for s in list_scorers(experiment_id=experiment_id)}


def _worker(server, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **JUDGE_ENV, "AGENTOPS_BACKEND": "mlflow", "AGENTOPS_MLFLOW_URI": server.tracking_uri,
           "AGENTOPS_DATA_DIR": str(server.data_dir), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "agentops", "worker", "--completion-buffer", "0", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_gateway_judges_run_in_the_server_and_code_scorers_in_the_worker(world, server):
    from mlflow.genai.scorers import get_scorer

    experiment_id, ids = world["experiment_id"], world["trace_ids"]
    config = LiveScoringConfig(scorers=("latency_budget", "safety"), sample_rate=0.5, filter_string=FILTER)
    assert live_scoring.where_runs(config, server, JUDGE_ENV) == {"latency_budget": "worker", "safety": "mlflow server"}
    kinds = {c.name: c.kind for c in live_scoring.catalog(server, JUDGE_ENV)}  # shown on the Live scoring form
    assert (kinds["safety"], kinds["latency_budget"]) == ("LLM judge, run by the mlflow server",
                                                          "code, run by the app's worker")
    assert live_scoring.where_runs(config, server, {"AGENTOPS_JUDGE_MODEL": "openai:/gpt-4o-mini",
                                                    "OPENAI_BASE_URL": "http://127.0.0.1:9"})["safety"] == "worker"

    # 1. Save: the judge registered and started in the server with the rate and filter; the code scorer not.
    live_scoring.save_config(AGENT, config, identity=OPS, settings=server, environ=JUDGE_ENV)
    registered = _registered(experiment_id)
    assert set(registered) == {"live_safety"}
    judge = get_scorer(name="live_safety", experiment_id=experiment_id)
    assert (judge.sample_rate, judge.filter_string) == (0.5, FILTER)
    assert judge.model == f"gateway:/{ENDPOINT}"
    version = judge.scorer_version

    # 2. The worker's pass scores only the code scorer: the server runs the judge.
    plan = live_scoring.scorers_by_experiment(server)
    assert {s.name for s in plan[experiment_id]} == {"live_latency_budget"}
    done = _worker(server, "--once", "--batch-size", "100")
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(server.tracking_uri)
    names = [a.name for t in ids for a in (client.get_trace(t).info.assessments or [])]
    status = live_scoring.read_status(server)
    assert status.errors == [] and status.experiments == 1
    assert 0 < names.count("live_latency_budget") == status.assessments_total < TRACES
    assert status.traces_scored_last == names.count("live_latency_budget")

    # 3. Update the rate: the same registration, the new rate.
    faster = LiveScoringConfig(scorers=("latency_budget", "safety"), sample_rate=0.8, filter_string=FILTER)
    live_scoring.save_config(AGENT, faster, identity=OPS, settings=server, environ=JUDGE_ENV, expected_version=1)
    judge = get_scorer(name="live_safety", experiment_id=experiment_id)
    assert (judge.sample_rate, judge.filter_string) == (0.8, FILTER)
    assert judge.scorer_version == version == 1

    # 4. Pause: stopped in the server (rate 0), still registered; the worker runs nothing.
    paused = LiveScoringConfig(scorers=("latency_budget", "safety"), sample_rate=0.8, filter_string=FILTER,
                               enabled=False)
    live_scoring.save_config(AGENT, paused, identity=OPS, settings=server, environ=JUDGE_ENV, expected_version=2)
    assert get_scorer(name="live_safety", experiment_id=experiment_id).sample_rate in (0, 0.0, None)
    assert live_scoring.scorers_by_experiment(server) == {}

    # 5. Bad input stores nothing on either side.
    before = {n: (s.sample_rate, s.filter_string) for n, s in _registered(experiment_id).items()}
    for bad, message in ((LiveScoringConfig(scorers=("safety",), sample_rate=1.5), "outside 0–1"),
                         (LiveScoringConfig(scorers=("safety",), sample_rate=0.5, filter_string="tag.x === 'y' oops"),
                          "cannot parse")):
        with pytest.raises(ValidationError, match=message):
            live_scoring.save_config(AGENT, bad, identity=OPS, settings=server, environ=JUDGE_ENV, expected_version=3)
    assert {n: (s.sample_rate, s.filter_string) for n, s in _registered(experiment_id).items()} == before
    assert live_scoring.load_config(AGENT, server)[1] == 3

    # 6. Delete: gone from the server; the audit trail names who did each change.
    live_scoring.delete_config(AGENT, identity=OPS, settings=server)
    assert _registered(experiment_id) == {}
    history = team_state.history(server, f"{live_scoring.KEY_PREFIX}{AGENT}")
    assert sorted((c["version"], c["user"]) for c in history) == [(v, OPS.user) for v in (1, 2, 3, 4)]


def test_the_servers_scheduler_scores_the_registered_judge(world, server):
    """MLflow's own scheduler in the server (a job every minute) runs the registered judge, through the
    server's AI Gateway, to the provider behind it; the judge's assessments land on the traces."""
    ids, fake = world["trace_ids"], world["fake"]
    _, version = live_scoring.load_config(AGENT, server)
    live_scoring.save_config(AGENT, LiveScoringConfig(scorers=("safety",), sample_rate=1.0), identity=OPS,
                             settings=server, environ=JUDGE_ENV, expected_version=version)
    client = MlflowClient(server.tracking_uri)
    try:
        deadline = time.monotonic() + 130
        judged: list = []
        while time.monotonic() < deadline and not judged:
            time.sleep(3)
            judged = [a for t in ids for a in (client.get_trace(t).info.assessments or []) if a.name == "live_safety"]
    finally:
        live_scoring.delete_config(AGENT, identity=OPS, settings=server)
    assert judged, "the server's online scoring did not run the registered judge"
    assert fake.calls["gpt-judge"] > 0  # through the server's AI Gateway, to the provider behind it
