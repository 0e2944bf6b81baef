"""A real ``mlflow server`` process on a free loopback port, for tests where the HTTP path matters.

The one way the tests and benchmarks start an ``mlflow server``: ``start_mlflow_server`` (the
command of ``server_command``, in a session of its own, waited for with ``wait_healthy``) and
``stop_mlflow_server`` (signals the whole process group). ``running_mlflow_server`` here, the
restartable server of ``tests/hardening/mlflow_restart.py`` and the benchmarks' servers all use
them. The store is a SQLite file in the test's folder unless ``backend_store_uri`` names another
(a PostgreSQL database from ``tests/harness/postgres.py``).
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
from typing import IO, Callable, Iterator, Mapping

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


def start_mlflow_server(port: int, root: Path, *, backend_store_uri: str | None = None, workers: int = 1,
                        env: Mapping[str, str] | None = None, log: IO[bytes] | None = None,
                        timeout_s: float = 120, jobs: bool = False) -> subprocess.Popen:
    """Start ``mlflow server`` on ``port`` in a session of its own and wait until it answers.

    ``log`` receives its output (discarded otherwise). If it does not come up, its process group is
    killed and the test fails. ``jobs``: MLflow's job execution (its online-scoring scheduler and
    other periodic tasks), off unless a test needs it: with it on, every server also starts a job
    runner and eight huey consumers, each importing mlflow, which the suite's CPU budget cannot afford.
    """
    process = subprocess.Popen(
        server_command(port, root, backend_store_uri=backend_store_uri, workers=workers),
        stdout=log or subprocess.DEVNULL, stderr=log or subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if jobs else "false", **(env or {})},
    )
    wait_healthy(f"http://127.0.0.1:{port}", process, timeout_s,
                 on_fail=lambda: stop_mlflow_server(process, signal.SIGKILL))
    return process


def stop_mlflow_server(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout_s: float = 60) -> None:
    """Signal the server's process group (the server and its workers) and wait for it to exit;
    SIGKILL the group if it is still there after ``timeout_s``."""
    if process is None or process.poll() is not None:
        return
    for signal_number in (sig, signal.SIGKILL):
        try:
            os.killpg(process.pid, signal_number)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=timeout_s)
            return
        except subprocess.TimeoutExpired:
            if signal_number == signal.SIGKILL:
                raise


@contextlib.contextmanager
def running_mlflow_server(root: Path, *, env: Mapping[str, str] | None = None, timeout_s: float = 120,
                          backend_store_uri: str | None = None, open_roles: bool = True,
                          jobs: bool = False) -> Iterator[Settings]:
    """Start a one-worker server (temp SQLite store unless ``backend_store_uri``); yield settings for it;
    stop it by PID.

    ``open_roles``: store a roles record making everyone admin, as a team that chose so would (the
    tests act as many users). Without it the server has no roles and everyone is a viewer. ``jobs``:
    MLflow's job execution, as in ``start_mlflow_server``.
    """
    port = free_port()
    process = start_mlflow_server(port, root, backend_store_uri=backend_store_uri, env=env, timeout_s=timeout_s,
                                  jobs=jobs)
    try:
        yield server_settings(f"http://127.0.0.1:{port}", root, open_roles=open_roles)
    finally:
        stop_mlflow_server(process, timeout_s=30)


def server_settings(url: str, root: Path, *, open_roles: bool = True) -> Settings:
    """The app's settings on the ``mlflow`` backend at ``url``, data under ``root/data``; with
    ``open_roles``, a roles record making everyone admin is stored first."""
    settings = load_settings({"AGENTOPS_BACKEND": "mlflow", "AGENTOPS_MLFLOW_URI": url,
                              "AGENTOPS_DATA_DIR": str(root / "data")})
    if open_roles:
        open_team_roles(settings)
    return settings
