"""Run the real app (``streamlit run app.py``) on a free port over a given data folder, for e2e tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Mapping

import pytest

from tests.harness.mlflow_server import stop_mlflow_server

ROOT = Path(__file__).resolve().parents[2]


def stop_group(process: subprocess.Popen) -> None:
    """Stop a process started with ``start_new_session=True`` and its children: SIGTERM, then SIGKILL after 20 s."""
    stop_mlflow_server(process, timeout_s=20)  # the one process-group stop of the test servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Wait for Streamlit's health check at ``url``; fail with the log's tail if the process exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"scripts/run exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"the app did not become healthy in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def served_app(data_dir: Path, log: Path, env: Mapping[str, str] | None = None, timeout_s: float = 120) -> Iterator[str]:
    """Yield the app's URL; the process group is stopped by its id afterwards (no demo seed, no gateway)."""
    port = free_port()
    full_env = {**os.environ, "AGENTOPS_DATA_DIR": str(data_dir),
                "AGENTOPS_GATEWAY_URL": f"http://127.0.0.1:{free_port()}", **(env or {})}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
             "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"streamlit did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        stop_group(process)


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
