"""A real ``mlflow server`` on one port and one SQLite store that fault tests kill and start again.

The command is the one ``tests/harness/mlflow_server.py`` uses; a restart is the same backend
coming back, so what was committed before the kill is there afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest


class RestartableServer:
    """One ``mlflow server`` on a fixed port and store; killed and started again by PID."""

    def __init__(self, root: Path, *, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.env = env or {}
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.starts: list[float] = []

    def start(self, timeout_s: float = 120) -> None:
        began = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
             "--artifacts-destination", f"{self.root}/artifacts", "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.kill()
                    pytest.fail(f"mlflow server did not start within {timeout_s:.0f} s")
                time.sleep(0.5)
        self.starts.append(time.monotonic() - began)

    def kill(self) -> None:
        """SIGKILL the server's process group (it is the only member of its own session)."""
        kill_group(self.process)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def kill_group(process: subprocess.Popen | None) -> None:
    """SIGKILL a process started with ``start_new_session=True`` together with its children."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


@contextlib.contextmanager
def restartable_backend(root: Path, *, env: dict[str, str] | None = None) -> Iterator[tuple[RestartableServer, Any]]:
    """A started server and the app's settings on it, MLflow configured for them; afterwards the
    server is killed and MLflow points back at the session's settings."""
    from services._clients import configure_mlflow, get_settings
    from services.settings import load_settings

    srv = RestartableServer(root, env=env)
    srv.start()
    settings = load_settings({"AGENTOPS_BACKEND": "mlflow", "AGENTOPS_MLFLOW_URI": srv.url,
                              "AGENTOPS_DATA_DIR": str(root / "data")})
    try:
        from tests.harness.mlflow_server import open_team_roles

        open_team_roles(settings)
        configure_mlflow(settings)
        yield srv, settings
    finally:
        srv.kill()
        configure_mlflow(get_settings())
