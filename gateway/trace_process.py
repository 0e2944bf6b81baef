"""Write captured traces from a child process, so the store's Python work has its own interpreter lock.

Writing a trace costs the store ~8 ms of Python per trace (ORM rows, span translation, JSON);
in the gateway's process that competes with request handling for the GIL. ``ProcessTraceSink``
is a ``write(traces) -> failures`` callable for ``TraceWriter`` that pickles the batch (~0.1 ms
per trace) to a spawned child holding its own MLflow client, and waits for its answer with
the GIL released.

If the child dies mid-batch, the call raises (``TraceWriter`` retries: the write is idempotent)
and the next call starts a new child. If no child can be started, batches are written in this
process instead, so traces are still recorded, just with more GIL contention.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import threading
import types
from typing import Any, Iterator, Mapping, Sequence

from services._mlflow_internal.span_batch import CapturedTrace
from services.settings import Settings

_logger = logging.getLogger(__name__)


class TraceSinkError(RuntimeError):
    """The writer process could not answer for a batch (it ended, hung or failed to start)."""


class ProcessTraceSink:
    """Callable ``(traces) -> {trace_id: error}`` backed by one spawned writer process."""

    def __init__(self, settings: Settings, *, answer_timeout_s: float = 300.0, start_timeout_s: float = 180.0) -> None:
        self._settings = settings
        self._answer_timeout_s = answer_timeout_s
        self._start_timeout_s = start_timeout_s
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Any = None
        self._ready = False
        self._in_process = False  # fell back to writing in this process
        self.restarts = 0
        # Started now but not waited for: the child imports MLflow while the gateway warms up.
        self._start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def __call__(self, traces: Sequence[CapturedTrace]) -> Mapping[str, str]:
        with self._lock:
            if self._in_process:
                return _write_here(self._settings, traces)
            if self._process is None or not self._process.is_alive():
                self._restart("the writer process is not running")
            try:
                self._wait_ready()
                self._conn.send(list(traces))
                if not self._conn.poll(self._answer_timeout_s):
                    self._restart(f"no answer within {self._answer_timeout_s:.0f} s")
                    raise TraceSinkError(f"the trace writer process did not answer within {self._answer_timeout_s:.0f} s")
                kind, payload = self._conn.recv()
            except TraceSinkError as exc:
                if not self._ready and self.restarts >= 2:
                    _logger.error("no trace writer process could be started (%s); writing traces in the gateway process", exc)
                    self._in_process = True
                    self._stop()
                    return _write_here(self._settings, traces)
                raise
            except (EOFError, OSError) as exc:
                self._restart(f"{type(exc).__name__}: {exc}")
                raise TraceSinkError("the trace writer process ended while writing a batch") from exc
            if kind != "ok":
                raise TraceSinkError(str(payload))
            return payload

    def close(self, timeout_s: float = 30.0) -> None:
        with self._lock:
            self._stop(timeout_s)

    # --- the child's lifecycle ----------------------------------------------------------------

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(
            target=_serve, args=(child, self._settings), name="agentops-trace-writer", daemon=True
        )
        with _plain_main_module():
            self._process.start()
        child.close()
        self._conn = parent
        self._ready = False

    def _wait_ready(self) -> None:
        if self._ready:
            return
        if not self._conn.poll(self._start_timeout_s):
            raise TraceSinkError(f"the trace writer process did not start within {self._start_timeout_s:.0f} s")
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise TraceSinkError(f"the trace writer process ended while starting ({type(exc).__name__})") from exc
        if kind != "ready":
            raise TraceSinkError(f"the trace writer process failed to start: {payload}")
        self._ready = True

    def _restart(self, why: str) -> None:
        _logger.warning("restarting the trace writer process: %s", why)
        self._stop(timeout_s=5)
        self.restarts += 1
        self._start()

    def _stop(self, timeout_s: float = 30.0) -> None:
        if self._process is None:
            return
        if not self._ready:
            # Still importing, and no batch was ever sent to it (calls hold the lock until
            # answered): nothing to lose by not waiting for it.
            self._process.terminate()
        else:
            try:
                self._conn.send(None)
            except (OSError, EOFError):
                pass
        self._process.join(timeout_s)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        self._conn.close()
        self._process = None


def _write_here(settings: Settings, traces: Sequence[CapturedTrace]) -> Mapping[str, str]:
    from services._mlflow_internal import span_batch
    from services._clients import mlflow_client

    return span_batch.write_traces(mlflow_client(settings), traces)


def _serve(conn: Any, settings: Settings) -> None:
    """The child: write each batch received, answer ("ok", failures) or ("error", text).

    It ends when the gateway says so (``None``) or is gone (end of the pipe). Ctrl-C reaches the
    whole foreground process group, so the child ignores SIGINT: the gateway is then shutting down
    gracefully and still needs it to write the traces it flushes. SIGTERM keeps its default (the
    gateway's own ``terminate`` and multiprocessing's exit handler rely on it); a batch cut short
    by it is retried by the gateway or stays in its journal. A gateway killed outright closes the
    pipe; the child finishes the batch it holds (one transaction, committed whole or not at all)
    and exits.
    """
    import signal

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (OSError, ValueError):  # pragma: no cover - not the main thread / not supported
        pass
    try:
        from services._mlflow_internal import span_batch
        from services._clients import configure_mlflow, mlflow_client

        configure_mlflow(settings)
        client = mlflow_client(settings)
        conn.send(("ready", os.getpid()))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which falls back
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return  # the gateway is gone
        if batch is None:
            return
        try:
            answer = ("ok", dict(span_batch.write_traces(client, batch)))
        except Exception as exc:  # noqa: BLE001 - the parent retries the batch
            answer = ("error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        try:
            conn.send(answer)
        except (OSError, EOFError):
            return  # the gateway is gone; what was committed is in the store, the rest in its journal


@contextlib.contextmanager
def _plain_main_module() -> Iterator[None]:
    """Start the child without re-running whatever ``__main__`` currently is.

    A spawned child re-imports the parent's ``__main__`` from its file. Inside a Streamlit script
    run (or anything else that swaps ``sys.modules["__main__"]``) that is a page script, which the
    child cannot run; the writer only needs this module, so the child gets a bare ``__main__``.
    """
    original = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if original is not None:
            sys.modules["__main__"] = original
