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
from typing import Any, Callable, Iterator

import pytest

from services._clients import configure_mlflow, get_settings
from services.errors import BackendUnavailableError
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


def kill_at_call(patch: Any, kill: Callable[[], Any], owner: Any, name: str, *, call: int = 1, when: str = "before",
                 matches: Callable[..., bool] = lambda *a, **k: True) -> dict[str, int]:
    """Make the ``call``-th matching call of ``owner.name`` run ``kill`` before it goes out or after it returned.

    ``patch`` is the test's monkeypatch (or one of its contexts). Returns the live counter: ``n``
    matching calls seen, ``faulted`` 1 once ``kill`` ran.
    """
    original = getattr(owner, name)
    calls = {"n": 0, "faulted": 0}

    def wrapped(*args, **kwargs):
        if not matches(*args, **kwargs):
            return original(*args, **kwargs)
        calls["n"] += 1
        fire = calls["n"] == call
        if fire and when == "before":
            calls["faulted"] += 1
            kill()
        result = original(*args, **kwargs)
        if fire and when == "after":
            calls["faulted"] += 1
            kill()
        return result

    patch.setattr(owner, name, wrapped)
    return calls


def expect_backend_lost(act: Callable[[], Any], srv: RestartableServer, calls: dict[str, int],
                        monkeypatch: Any) -> tuple[BaseException, str, float]:
    """Run ``act`` with a fault armed: it raises ``BackendUnavailableError`` (no traceback in its message)
    after the fault fired once and the server went down. The patches are undone; returns the error, its
    message and how long the caller waited for it (s)."""
    began = time.monotonic()
    with pytest.raises(BackendUnavailableError) as failed:
        act()
    error_s = time.monotonic() - began
    monkeypatch.undo()
    message = str(failed.value)
    assert calls["faulted"] == 1 and not srv.alive()
    assert "Traceback" not in message
    return failed.value, message, error_s


def refuse_connections(patch: Any, *targets: tuple[Any, str]) -> None:
    """Make each ``(owner, name)`` fail as a backend that is down does (connection refused), via ``patch``."""

    def down(*args, **kwargs):
        raise ConnectionError("Connection refused")

    for owner, name in targets:
        patch.setattr(owner, name, down)


def count_calls(patch: Any, owner: Any, name: str) -> list:
    """Record the arguments of every call of ``owner.name`` (after ``self``), via ``patch``; the list fills live."""
    original = getattr(owner, name)
    calls: list = []

    def counting(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    patch.setattr(owner, name, counting)
    return calls
