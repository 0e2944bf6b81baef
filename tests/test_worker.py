"""The background worker: killed in the middle of a scoring batch and restarted, every sampled
trace ends up scored exactly once (assessment counts read back from the store); SIGTERM stops it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from services import live_scoring
from services._mlflow_internal.online_scoring import APP_CHECKPOINT_TAG, CHECKPOINT_TAG, sampled
from services.identity import Identity, IdentitySource
from services.live_scoring import LiveScoringConfig
from tests.harness.databricks_settings import databricks_env
from tests.services.live_scoring_world import AGENT, build_world

ROOT = Path(__file__).resolve().parent.parent
OPS = Identity("ops@example.com", "ops", IdentitySource.OS_USER)
RATE = 0.6
TRACES = 40


def _worker(settings, *args: str) -> subprocess.Popen:
    env = {**os.environ, "AGENTOPS_BACKEND": "local", "AGENTOPS_DATA_DIR": str(settings.data_dir),
           "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "agentops", "worker", "--completion-buffer", "0", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _counts(client: MlflowClient, trace_ids: list[str]) -> dict[str, int]:
    return {t: sum(1 for a in client.get_trace(t).info.assessments if a.name == "live_latency_budget")
            for t in trace_ids}


def _scored_exactly_once(worker, client, ids: list[str], expected: set[str]) -> None:
    """A ``--once`` worker finishes cleanly, after which the sampled traces (only they) have one result each."""
    output, _ = worker.communicate(timeout=300)
    assert worker.returncode == 0, output
    final = _counts(client, ids)
    assert {t for t, n in final.items() if n} == expected
    assert set(final.values()) <= {0, 1}, {t: n for t, n in final.items() if n > 1}


@pytest.fixture
def configured_world(isolated_settings):
    (isolated_settings.data_dir / "roles.json").write_text(json.dumps({"users": {"ops@example.com": "operator"}}))
    world = build_world(isolated_settings, traces=TRACES)
    live_scoring.save_config(AGENT, LiveScoringConfig(scorers=("latency_budget",), sample_rate=RATE),
                             identity=OPS, settings=isolated_settings)
    return world


def test_killed_mid_batch_and_restarted_every_sampled_trace_is_scored_exactly_once(configured_world, isolated_settings):
    client, ids, experiment_id = configured_world["client"], configured_world["trace_ids"], configured_world["experiment_id"]
    expected = {t for t in ids if sampled(t, "live_latency_budget", RATE)}
    assert 0 < len(expected) < TRACES
    # One batch holds every trace, and MLflow's rate limiter lets ~3 scorer calls through per second:
    # the kill lands while the batch is half done, before MLflow would persist its checkpoint.
    worker = _worker(isolated_settings, "--batch-size", "100", "--max-rate", "3", "--threads", "1", "--interval", "1")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = sum(_counts(client, ids).values())
            if done >= 3:
                break
            time.sleep(0.3)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(30)
    finally:
        if worker.poll() is None:
            worker.kill()
    partial = _counts(client, ids)
    assert 3 <= sum(partial.values()) < len(expected), "the kill did not land mid-batch"
    assert not {APP_CHECKPOINT_TAG, CHECKPOINT_TAG} & set(client.get_experiment(experiment_id).tags or {})

    _scored_exactly_once(_worker(isolated_settings, "--once", "--batch-size", "100", "--max-rate", "1000"), client,
                         ids, expected)
    status = live_scoring.read_status(isolated_settings)
    assert status.traces_scored_last == len(expected) - sum(partial.values())
    assert status.lag_seconds is not None and status.errors == []


def test_sigterm_stops_the_worker_cleanly(isolated_settings):
    worker = _worker(isolated_settings, "--interval", "1")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and live_scoring.read_status(isolated_settings) is None:
            time.sleep(0.3)
        assert live_scoring.read_status(isolated_settings) is not None
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0 and "stopped" in output


def test_worker_refuses_databricks(tmp_path):
    env = {**os.environ, **databricks_env("https://x.example.com", tmp_path, PYTHONPATH=str(ROOT))}
    done = subprocess.run([sys.executable, "-m", "agentops", "worker", "--once"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "production monitoring" in done.stderr


def test_adding_a_task_is_one_line(monkeypatch, isolated_settings):
    from agentops import worker

    ran = []
    for name in ("MLFLOW_GENAI_EVAL_SCORER_RATE_LIMIT", "MLFLOW_ONLINE_SCORING_MAX_WORKER_THREADS",
                 "MLFLOW_ONLINE_SCORING_DEFAULT_TRACE_COMPLETION_BUFFER_SECONDS", "MLFLOW_GENAI_EVAL_MAX_RETRIES",
                 "MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test, whatever main() sets
    monkeypatch.setattr(worker, "TASKS", [worker.Task("probe", 1.0, lambda s, o: ran.append(s) or "ok")])
    assert worker.main(["--once"]) == 0 and len(ran) == 1


def test_the_worker_evaluates_alert_rules(isolated_settings):
    from agentops import worker

    task = next(t for t in worker.TASKS if t.name == "alert rules")
    report = task.run(isolated_settings, worker.parse_args(["--once"]))
    assert report.startswith("0 rule(s) evaluated, 0 firing")


# --- the `mlflow` backend: the worker against a real `mlflow server` ------------------------------


@pytest.fixture(scope="module")
def server_world(tmp_path_factory):
    """A real ``mlflow server`` (job execution on, as by default) with another team's agent and traces."""
    from services import _clients
    from tests.harness.mlflow_server import running_mlflow_server

    root = tmp_path_factory.mktemp("worker-server")
    with running_mlflow_server(root, jobs=True) as server:
        try:
            _clients.configure_mlflow(server)
            world = build_world(server, traces=40)
            live_scoring.save_config(AGENT, LiveScoringConfig(scorers=("latency_budget",), sample_rate=RATE),
                                     identity=OPS, settings=server)
        finally:
            _clients.configure_mlflow(_clients.get_settings())
        yield server, world


def _server_worker(server, *args: str) -> subprocess.Popen:
    env = {**os.environ, "AGENTOPS_BACKEND": "mlflow", "AGENTOPS_MLFLOW_URI": server.tracking_uri,
           "AGENTOPS_DATA_DIR": str(server.data_dir), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "agentops", "worker", "--completion-buffer", "0", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_on_an_mlflow_server_every_sampled_trace_is_scored_once_across_restarts(server_world):
    from mlflow.genai.scorers import list_scorers

    server, world = server_world
    ids, experiment_id = world["trace_ids"], world["experiment_id"]
    client = MlflowClient(server.tracking_uri)
    expected = {t for t in ids if sampled(t, "live_latency_budget", RATE)}
    # Trace ids are random: of 40 at rate 0.6, more than one batch of 8 is sampled and not all (P(fail) < 1e-6).
    assert 8 < len(expected) < len(ids)

    # First worker: one bounded pass over the server (8 of the sampled traces at most), then exits.
    first = _server_worker(server, "--once", "--batch-size", "8")
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output
    after_first = _counts(client, ids)
    assert 0 < sum(after_first.values()) < len(expected)
    tags = client.get_experiment(experiment_id).tags or {}
    # The worker's own position; MLflow's tag (its server jobs' position) is left alone.
    assert APP_CHECKPOINT_TAG in tags and CHECKPOINT_TAG not in tags

    # Restarted worker, looping: carries on from the server-side checkpoint; stopped with SIGTERM.
    loop = _server_worker(server, "--batch-size", "8", "--interval", "1")
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and sum(_counts(client, ids).values()) < len(expected):
            time.sleep(1)
        loop.send_signal(signal.SIGTERM)
        output, _ = loop.communicate(timeout=60)
    finally:
        if loop.poll() is None:
            loop.kill()
    assert loop.returncode == 0, output

    # Restarted once more: nothing left, nothing scored twice.
    _scored_exactly_once(_server_worker(server, "--once", "--batch-size", "100"), client, ids, expected)
    status = live_scoring.read_status(server)
    assert status.traces_scored_last == 0 and status.errors == [] and status.path == "mlflow-processor"
    assert status.traces_scored_total == len(expected)
    # The server's own online-scoring scheduler runs registered scorers only; the app registered none
    # there (its code scorers cannot be), so the server cannot score these traces a second time.
    from services import _clients

    try:
        _clients.configure_mlflow(server)
        assert [s.name for s in list_scorers(experiment_id=experiment_id)] == []
    finally:
        _clients.configure_mlflow(_clients.get_settings())
