"""How an evaluation run is tagged, and when a run that never finished counts as interrupted.

Every run carries a request id (``REQUEST_TAG``) and the process that runs it (``OWNER_TAG``). A
``RUNNING`` run whose owner is gone (see ``is_abandoned``) is marked ``FAILED`` with
``INTERRUPTED_TAG`` by whichever read or retry finds it first.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from services._clients import translate_errors
from services.errors import AgentOpsError

EVAL_RUN_FILTER = "tags.`mlflow.runType` = 'genai_evaluate'"
AGENT_TAG = "agentops.agent"
VERSION_TAG = "agentops.version"
DATASET_TAG = "agentops.dataset"
REQUEST_TAG = "agentops.request_id"
# Why a run stopped without finishing; set together with status FAILED.
INTERRUPTED_TAG = "agentops.interrupted"
# Which process runs the evaluation: {"host", "pid", "process", "attempt"} as JSON.
OWNER_TAG = "agentops.owner"
# A RUNNING run whose owner cannot be checked (another host, or no owner tag) counts as
# interrupted only after this long: a slow evaluation elsewhere must not be failed under it.
STALE_AFTER = timedelta(hours=12)
ROWS_TAG = "agentops.rows"
SCORERS_TAG = "agentops.scorers"
ABANDONED_REASON = "interrupted: the run stopped without finishing (the MLflow backend or the app went away mid-run)"
BACKEND_REASON = "interrupted: the MLflow backend stopped answering mid-run"
INCOMPLETE_REASON = "interrupted: results were lost while the MLflow backend was failing"

# This process, as written in OWNER_TAG; attempts are added before their run exists and removed
# once it ended, so a RUNNING run of this process that is not live here was interrupted.
_PROCESS = uuid.uuid4().hex
_live_attempts: set[str] = set()
_live_guard = threading.Lock()


def begin_attempt() -> tuple[str, str]:
    """A new attempt of this process, live until ``end_attempt``: its id and its ``OWNER_TAG`` value."""
    attempt = uuid.uuid4().hex
    owner = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "process": _PROCESS, "attempt": attempt})
    with _live_guard:
        _live_attempts.add(attempt)
    return attempt, owner


def end_attempt(attempt: str) -> None:
    """The attempt's run has ended (or never started): a RUNNING run of it is interrupted from now on."""
    with _live_guard:
        _live_attempts.discard(attempt)


def dataset_input_name(run: Any) -> str | None:
    """The name of the dataset ``evaluate`` logged as the run's input (``"dataset"`` for a plain list)."""
    inputs = getattr(getattr(run, "inputs", None), "dataset_inputs", None) or []
    for item in inputs:
        name = getattr(getattr(item, "dataset", None), "name", None)
        if name:
            return str(name)
    return None


def _owner(run: Any) -> dict[str, Any]:
    try:
        owner = json.loads(run.data.tags.get(OWNER_TAG) or "{}")
    except (TypeError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # someone else's process, or nothing we can check: assume alive
    return True


def is_abandoned(run: Any, *, now: datetime | None = None) -> bool:
    """Whether a ``RUNNING`` evaluation run can no longer finish, so it was interrupted.

    Sure when this process started it and it is not live here, or when it was started on this
    host by a process that has exited. A run started elsewhere (another host, or by a tool that
    writes no owner tag) is only taken as interrupted after ``STALE_AFTER``.
    """
    if run.info.status != "RUNNING":
        return False
    owner = _owner(run)
    if owner.get("process") == _PROCESS:
        with _live_guard:
            return owner.get("attempt") not in _live_attempts
    if owner.get("host") == socket.gethostname() and owner.get("pid") is not None:
        # Our own pid under another process token: the owner exited and this process (say, the
        # app restarted as pid 1 of its container) took its pid.
        if str(owner["pid"]) == str(os.getpid()) or not _pid_alive(owner["pid"]):
            return True
    now = now or datetime.now(tz=timezone.utc)
    started = run.info.start_time or 0
    return now - datetime.fromtimestamp(started / 1000, tz=timezone.utc) > STALE_AFTER


def mark_interrupted(client: Any, run_id: str, reason: str) -> bool:
    """Tag a run as interrupted and end it ``FAILED``; False when the backend refused or is down."""
    try:
        with translate_errors(f"evaluation run {run_id}"):
            client.set_tag(run_id, INTERRUPTED_TAG, reason)
            client.set_terminated(run_id, "FAILED")
    except AgentOpsError:
        return False
    return True

