"""A real ``mlflow server`` on one port and one SQLite store that fault tests kill and start again.

The command and the health wait are those of ``tests/harness/mlflow_server.py``; a restart is the
same backend coming back, so what was committed before the kill is there afterwards.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

from services._clients import configure_mlflow, get_settings
from tests.harness.mlflow_server import free_port, server_settings, start_mlflow_server, stop_mlflow_server


class RestartableServer:
    """One ``mlflow server`` on a fixed port and store; killed and started again by PID."""

    def __init__(self, root: Path, *, env: dict[str, str] | None = None,
                 backend_store_uri: str | None = None) -> None:
        self.root = root
        self.env = env or {}
        self.backend_store_uri = backend_store_uri
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.starts: list[float] = []

    def start(self, timeout_s: float = 120) -> None:
        began = time.monotonic()
        self.process = start_mlflow_server(self.port, self.root, backend_store_uri=self.backend_store_uri,
                                           env=self.env, timeout_s=timeout_s)
        self.starts.append(time.monotonic() - began)

    def kill(self) -> None:
        """SIGKILL the server's process group (it is the only member of its own session)."""
        kill_group(self.process)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def kill_group(process: subprocess.Popen | None) -> None:
    """SIGKILL a process started with ``start_new_session=True`` together with its children."""
    stop_mlflow_server(process, signal.SIGKILL, timeout_s=30)


@contextlib.contextmanager
def restartable_backend(root: Path, *, env: dict[str, str] | None = None,
                        backend_store_uri: str | None = None) -> Iterator[tuple[RestartableServer, Any]]:
    """A started server and the app's settings on it, MLflow configured for them; afterwards the
    server is killed and MLflow points back at the session's settings."""
    srv = RestartableServer(root, env=env, backend_store_uri=backend_store_uri)
    srv.start()
    try:
        settings = server_settings(srv.url, root)
        configure_mlflow(settings)
        yield srv, settings
    finally:
        srv.kill()
        configure_mlflow(get_settings())
