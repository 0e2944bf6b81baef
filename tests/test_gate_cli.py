"""``python -m agentops gate`` as CI runs it: a subprocess, its exit code and its reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.services.test_readiness import AGENT, build_ready_agent
from tests.services.test_releases import server_settings  # noqa: F401 - a real mlflow server fixture

ROOT = Path(__file__).resolve().parent.parent


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTOPS_", "MLFLOW_TRACKING", "MLFLOW_REGISTRY"))}
    env.update(overrides)
    return env


def gate(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentops", "gate", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    from services._clients import configure_mlflow, get_settings
    from services.settings import load_settings

    data_dir = tmp_path_factory.mktemp("gate-cli") / "store"
    settings = configure_mlflow(load_settings({"AGENTOPS_DATA_DIR": str(data_dir)}))
    try:
        build_ready_agent(settings)
    finally:
        configure_mlflow(get_settings())
    return _env(AGENTOPS_BACKEND="local", AGENTOPS_DATA_DIR=str(data_dir))


def _junit(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    return {case.get("name"): case for case in root.iter("testcase")}


def test_ready_version_exits_zero_and_writes_both_reports(local_store, tmp_path):
    result = gate(local_store, "--model", AGENT, "--version", "1", "--against", "champion",
                  "--json", str(tmp_path / "gate.json"), "--junit", str(tmp_path / "gate.xml"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "RESULT: PROMOTABLE" in result.stdout
    assert "quality/mean ≥ 0.5" in result.stdout
    report = json.loads((tmp_path / "gate.json").read_text())
    assert report["promotable"] and report["failing_required_items"] == []
    assert report["backend"] == "local"
    verdicts = {i["item"]: i["verdict"] for i in report["readiness"]}
    assert verdicts["loads_and_predicts"] == "pass" and verdicts["signature"] == "pass"
    assert report["load_check"]["ok"]
    cases = _junit(tmp_path / "gate.xml")
    assert "loads_and_predicts" in cases and "quality/mean ≥ 0.5" in cases
    assert ET.parse(tmp_path / "gate.xml").getroot().get("failures") == "0"


def test_version_that_raises_on_load_exits_one_with_the_error(local_store, tmp_path):
    result = gate(local_store, "--model", AGENT, "--version", "3", "--json", str(tmp_path / "g.json"),
                  "--junit", str(tmp_path / "g.xml"))

    assert result.returncode == 1, result.stdout + result.stderr
    assert "RESULT: BLOCKED" in result.stdout and "cannot reach the vector index" in result.stdout
    report = json.loads((tmp_path / "g.json").read_text())
    assert not report["promotable"] and report["failing_required_items"] == ["loads_and_predicts"]
    failure = _junit(tmp_path / "g.xml")["loads_and_predicts"].find("failure")
    assert failure is not None and "vector index" in failure.get("message")


def test_gate_failure_and_extra_required_items_exit_one(local_store, tmp_path):
    result = gate(local_store, "--model", AGENT, "--version", "2", "--skip-load", "--require", "gate",
                  "--require", "requirements_pinned", "--json", str(tmp_path / "g.json"))

    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((tmp_path / "g.json").read_text())
    assert report["blocked_by_gate"]
    assert report["failing_required_items"] == ["requirements_pinned", "gate"]
    assert report["load_check"] is None


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (["--model", AGENT, "--version", "abc"], {}, 2, "not a version number"),
        (["--model", "no-such-agent", "--version", "1"], {}, 2, "no-such-agent"),
        (["--model", AGENT, "--version", "1", "--against", "latest"], {}, 2, "reserved"),
        (["--model", AGENT, "--version", "1", "--require", "vibes"], {}, 2, "not a readiness item"),
        (["--model", AGENT], {}, 2, "--version"),
        (["--model", AGENT, "--version", "1"], {"AGENTOPS_BACKEND": "nope"}, 2, "AGENTOPS_BACKEND"),
        (["--model", AGENT, "--version", "1"], {"AGENTOPS_BACKEND": "mlflow"}, 2, "AGENTOPS_MLFLOW_URI"),
        (["--model", AGENT, "--version", "1"],
         {"AGENTOPS_BACKEND": "mlflow", "AGENTOPS_MLFLOW_URI": "http://127.0.0.1:9"}, 3, "Cannot reach"),
    ],
)
def test_bad_arguments_and_configuration_exit_with_a_message(local_store, args, env, code, message):
    result = gate({**local_store, **env}, *args)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stderr


@pytest.mark.slow
def test_gate_against_a_real_mlflow_server(server_settings, tmp_path):  # noqa: F811
    from services._clients import configure_mlflow, get_settings

    settings = configure_mlflow(server_settings)
    try:
        build_ready_agent(settings)
    finally:
        configure_mlflow(get_settings())
    env = _env(AGENTOPS_BACKEND="mlflow", AGENTOPS_MLFLOW_URI=settings.mlflow_uri,
               AGENTOPS_DATA_DIR=str(settings.data_dir))

    ok = gate(env, "--model", AGENT, "--version", "1", "--json", str(tmp_path / "ok.json"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads((tmp_path / "ok.json").read_text())
    assert report["backend"] == "mlflow" and report["load_check"]["ok"]

    blocked = gate(env, "--model", AGENT, "--version", "3", "--junit", str(tmp_path / "bad.xml"))
    assert blocked.returncode == 1, blocked.stdout + blocked.stderr
    assert _junit(tmp_path / "bad.xml")["loads_and_predicts"].find("failure") is not None
