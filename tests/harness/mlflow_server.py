"""A real ``mlflow server`` process on a free loopback port, for tests where the HTTP path matters."""

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

from services.settings import Settings, load_settings


def open_team_roles(settings: Settings) -> None:
    """Store the roles record ``everyone is admin`` on a shared server (MLflow's URIs are restored after)."""
    from services import _clients, team_state

    team_state.write("roles", {"users": {}, "default": "admin"}, expected_version=0, user="test-harness",
                     settings=settings, note="tests act as many users")
    _clients.configure_mlflow(_clients.get_settings())


@contextlib.contextmanager
def running_mlflow_server(root: Path, *, env: Mapping[str, str] | None = None,
                          timeout_s: float = 120, open_roles: bool = True) -> Iterator[Settings]:
    """Start a one-worker server on a temp SQLite store; yield settings for it; stop it by PID.

    ``open_roles``: store a roles record making everyone admin, as a team that chose so would (the
    tests act as many users). Without it the server has no roles and everyone is a viewer.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", f"{root}/artifacts",
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    pytest.fail(f"mlflow server did not start within {timeout_s:.0f} s")
                time.sleep(0.5)
        settings = load_settings({"AGENTOPS_BACKEND": "mlflow", "AGENTOPS_MLFLOW_URI": url,
                                  "AGENTOPS_DATA_DIR": str(root / "data")})
        if open_roles:
            open_team_roles(settings)
        yield settings
    finally:
        process.terminate()
        process.wait(timeout=30)
