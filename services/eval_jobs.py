"""Background evaluation runs: one thread per run with a progress record the page polls.

Jobs live in this process (a Streamlit server keeps its modules loaded between reruns), so a
page can start a run, return at once and poll ``get_job``. Runs execute one at a time (see
``services.evaluations``); a job waiting for another shows ``QUEUED``.
"""

from __future__ import annotations

import contextvars
import threading
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from services import evaluations
from services._clients import configure_mlflow
from services.errors import AgentOpsError
from services.settings import Settings


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class EvalJob:
    """Progress of one background evaluation; ``run_id`` is set once it succeeded."""

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

    With ``identity`` (the page passes it), running an evaluation needs the operator role.
    """
    evaluations._check_request(request)
    if identity is not None:
        from services import roles

        roles.enforce(identity, roles.Action.RUN_EVALUATION, settings)
    job_id = uuid.uuid4().hex[:12]
    rows = len(request.rows) if request.rows is not None else 0
    label = f"{request.agent} {request.version} on {request.dataset_name or request.dataset_label or 'upload'}"
    with _lock:
        _jobs[job_id] = EvalJob(job_id, label, JobStatus.QUEUED, 0, rows, "Waiting to start",
                                datetime.now(tz=timezone.utc))

    def progress(done: int, total: int, message: str) -> None:
        _update(job_id, status=JobStatus.RUNNING, done=done, total=total, message=message)

    def work() -> None:
        try:
            configure_mlflow(settings)
            run_id = evaluations.run_evaluation(request, settings, progress=progress)
        except AgentOpsError as exc:
            _update(job_id, status=JobStatus.FAILED, error=str(exc), message="Failed",
                    finished_at=datetime.now(tz=timezone.utc))
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
