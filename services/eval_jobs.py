"""Background evaluation runs: one thread per run with a progress record the page polls.

Jobs live in this process (a Streamlit server keeps its modules loaded between reruns), so a
page can start a run, return at once and poll ``get_job``. Runs execute one at a time (see
``services.evaluations``); a job waiting for another shows ``QUEUED``.

Each job carries its request's id. Starting a request whose job is still going returns that job,
and a run left behind by a failed job is marked interrupted by the retry with the same id
(``services.evaluations.run_evaluation``), so pressing Run again after a failure is safe.
"""

from __future__ import annotations

import contextvars
import threading
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from services import evaluations, roles
from services._clients import configure_mlflow
from services.errors import AgentOpsError, BackendUnavailableError
from services.settings import Settings


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class EvalJob:
    """Progress of one background evaluation; ``run_id`` is set once it succeeded.

    ``interrupted`` is True when it failed because the MLflow backend stopped answering: a retry
    with the same ``request_id`` completes the request exactly once.
    """

    job_id: str
    label: str
    status: JobStatus
    done: int
    total: int
    message: str
    started_at: datetime
    finished_at: datetime | None = None
    run_id: str | None = None
    error: str | None = None
    request_id: str | None = None
    interrupted: bool = False

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def finished(self) -> bool:
        return self.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)


_jobs: dict[str, EvalJob] = {}
_lock = threading.Lock()


def _update(job_id: str, **changes: object) -> None:
    with _lock:
        _jobs[job_id] = replace(_jobs[job_id], **changes)


def start_job(request: evaluations.EvaluationRequest, settings: Settings, identity: Any = None) -> str:
    """Validate the request, then evaluate it in a background thread; returns the job id.

    With ``identity`` (the page passes it), running an evaluation needs the operator role. A
    request without an id gets one; a request whose earlier job is still going returns that job.
    """
    evaluations.check_request(request)
    if identity is not None:
        roles.enforce(identity, roles.Action.RUN_EVALUATION, settings)
    if request.request_id is None:
        request = replace(request, request_id=evaluations.new_request_id())
    rows = len(request.rows) if request.rows is not None else 0
    label = f"{request.agent} {request.version} on {request.dataset_name or request.dataset_label or 'upload'}"
    with _lock:
        going = next((j for j in _jobs.values() if j.request_id == request.request_id and not j.finished), None)
        if going is not None:
            return going.job_id
        job_id = uuid.uuid4().hex[:12]
        _jobs[job_id] = EvalJob(job_id, label, JobStatus.QUEUED, 0, rows, "Waiting to start",
                                datetime.now(tz=timezone.utc), request_id=request.request_id)

    def progress(done: int, total: int, message: str) -> None:
        _update(job_id, status=JobStatus.RUNNING, done=done, total=total, message=message)

    def work() -> None:
        try:
            configure_mlflow(settings)
            run_id = evaluations.run_evaluation(request, settings, progress=progress)
        except AgentOpsError as exc:
            interrupted = isinstance(exc, BackendUnavailableError)
            _update(job_id, status=JobStatus.FAILED, error=str(exc), interrupted=interrupted,
                    message="Interrupted" if interrupted else "Failed", finished_at=datetime.now(tz=timezone.utc))
        except Exception as exc:  # noqa: BLE001 - a background failure must be reported, not lost
            _update(job_id, status=JobStatus.FAILED, error=f"Unexpected {type(exc).__name__}: {exc}",
                    message="Failed", finished_at=datetime.now(tz=timezone.utc))
        else:
            _update(job_id, status=JobStatus.SUCCEEDED, run_id=run_id, message="Done",
                    finished_at=datetime.now(tz=timezone.utc))

    # The job runs in a copy of the caller's context, so it acts as the same signed-in user
    # (services._clients.acting_as) rather than as the app's service principal.
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(work,), name=f"eval-{job_id}", daemon=True).start()
    return job_id


def get_job(job_id: str) -> EvalJob | None:
    """The job's current progress record, or None when unknown."""
    with _lock:
        return _jobs.get(job_id)


def list_jobs() -> list[EvalJob]:
    """All jobs of this process, newest first."""
    with _lock:
        return sorted(_jobs.values(), key=lambda j: j.started_at, reverse=True)


def wait(job_id: str, timeout: float = 600.0) -> EvalJob | None:
    """Block until the job finishes (for scripts and tests)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get_job(job_id)
        if job is None or job.finished:
            return job
        time.sleep(0.2)
    return get_job(job_id)
