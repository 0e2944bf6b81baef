"""A real ``mlflow server`` process on a free loopback port, for tests where the HTTP path matters.

The one way the tests start an ``mlflow server``: ``running_mlflow_server`` here and the
restartable server of ``tests/hardening/mlflow_restart.py`` both build the command with
``server_command`` and wait with ``wait_healthy``. The store is a SQLite file in the test's folder
unless ``backend_store_uri`` names another (a PostgreSQL database from ``tests/harness/postgres.py``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Mapping

import pytest

from services.settings import Settings, load_settings


def open_team_roles(settings: Settings) -> None:
    """Store the roles record ``everyone is admin`` on a shared server (MLflow's URIs are restored after)."""
    from services import _clients, team_state

    team_state.write("roles", {"users": {}, "default": "admin"}, expected_version=0, user="test-harness",
                     settings=settings, note="tests act as many users")
    _clients.configure_mlflow(_clients.get_settings())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(port: int, root: Path, *, backend_store_uri: str | None = None, workers: int = 1) -> list[str]:
    """The ``mlflow server`` command line: loopback, one worker, artifacts under ``root``."""
    return [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", backend_store_uri or f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination", f"{root}/artifacts", "--workers", str(workers)]


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float, on_fail: Callable[[], None] = lambda: None) -> None:
    """Poll ``/health`` until it answers; fail the test if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                on_fail()
                pytest.fail(f"mlflow server did not start within {timeout_s:.0f} s")
            time.sleep(0.5)


@contextlib.contextmanager
def running_mlflow_server(root: Path, *, env: Mapping[str, str] | None = None, timeout_s: float = 120,
                          backend_store_uri: str | None = None, open_roles: bool = True) -> Iterator[Settings]:
    """Start a one-worker server (temp SQLite store unless ``backend_store_uri``); yield settings for it;
    stop it by PID.

    ``open_roles``: store a roles record making everyone admin, as a team that chose so would (the
    tests act as many users). Without it the server has no roles and everyone is a viewer.
    """
    port = free_port()
    process = subprocess.Popen(
        server_command(port, root, backend_store_uri=backend_store_uri),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, timeout_s)
        settings = load_settings({"AGENTOPS_BACKEND": "mlflow", "AGENTOPS_MLFLOW_URI": url,
                                  "AGENTOPS_DATA_DIR": str(root / "data")})
        if open_roles:
            open_team_roles(settings)
        yield settings
    finally:
        process.terminate()
        process.wait(timeout=30)
