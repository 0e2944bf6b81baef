"""Evaluation runs made with ``mlflow.genai.evaluate``.

Every run carries a request id (tag ``agentops.request_id``, one per click on Run). A run the
backend interrupted is never reported as a result: it is marked ``FAILED`` with the tag
``agentops.interrupted`` (by the failing call when it can, else by the next read or retry), and a
retry with the same request id returns the request's finished run or evaluates again, so one
request ends with exactly one ``FINISHED`` run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, Sequence

from services._clients import mlflow_client, translate_errors
from services.settings import Settings

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


@dataclass(frozen=True)
class EvaluationSummary:
    """One evaluation run; ``metrics`` holds the ``<scorer>/mean`` values.

    ``interrupted`` is the reason when the run stopped without finishing (backend or app went
    away mid-run); such a run has status ``FAILED`` and its partial figures are not a result.
    """

    run_id: str
    run_name: str
    experiment_id: str
    agent: str | None
    version: str | None
    dataset: str | None
    started_at: datetime | None
    status: str
    metrics: dict[str, float]
    request_id: str | None = None
    interrupted: str | None = None
    model_id: str | None = None
    # How the run was tied to its version: LinkKind value, or None for a bare predict_fn run.
    linked_by: str | None = None

    @property
    def attached(self) -> bool:
        """Whether the run belongs to a registered version (a bare ``predict_fn`` run does not)."""
        return bool(self.agent and self.version)

    @property
    def state(self) -> str:
        """"interrupted", "finished", "failed", "running" or "killed", for display."""
        return "interrupted" if self.interrupted else self.status.lower()


def _summary(run: Any, *, status: str | None = None, interrupted: str | None = None,
             link: "RunLink | None" = None) -> EvaluationSummary:
    tags = run.data.tags
    link = link or RunLink(tags.get(AGENT_TAG), tags.get(VERSION_TAG), None, None)
    return EvaluationSummary(
        run_id=run.info.run_id,
        run_name=run.info.run_name or run.info.run_id,
        experiment_id=run.info.experiment_id,
        agent=link.agent,
        version=link.version,
        dataset=tags.get(DATASET_TAG) or _dataset_input_name(run),
        started_at=datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc)
        if run.info.start_time
        else None,
        status=status or run.info.status,
        metrics={k: v for k, v in run.data.metrics.items() if k.endswith("/mean")},
        request_id=tags.get(REQUEST_TAG),
        # A run whose FINISHED reached the store before the failure is complete (see evaluate_rows).
        interrupted=interrupted or (tags.get(INTERRUPTED_TAG) if (status or run.info.status) != "FINISHED" else None),
        model_id=link.model_id,
        linked_by=link.how,
    )


def _dataset_input_name(run: Any) -> str | None:
    """The name of the dataset ``evaluate`` logged as the run's input (``"dataset"`` for a plain list)."""
    inputs = getattr(getattr(run, "inputs", None), "dataset_inputs", None) or []
    for item in inputs:
        name = getattr(getattr(item, "dataset", None), "name", None)
        if name:
            return str(name)
    return None


# --- Which version a run evaluated ---------------------------------------------------------------

from services.links import MODEL_ID_METADATA, MODEL_VERSIONS_TAG, ModelIndex  # noqa: E402,F401 - re-exported


class LinkKind(StrEnum):
    """Where the version of an evaluation run was read from."""

    APP_TAGS = "app tags"  # runs started from this app (agentops.agent / agentops.version)
    MODEL_INPUT = "evaluated model"  # evaluate(model_id=...) logs the LoggedModel as the run's input
    TRACE_MODEL = "model id on its traces"  # predict_fn called a loaded model / set_active_model


@dataclass(frozen=True)
class RunLink:
    """The registered version an evaluation run evaluated; all None for a bare ``predict_fn`` run."""

    agent: str | None
    version: str | None
    model_id: str | None
    how: str | None


def run_link(client: Any, run: Any, index: ModelIndex | None = None) -> RunLink:
    """The version an evaluation run evaluated, from the links MLflow records.

    In order: this app's run tags; the LoggedModel ``evaluate(model_id=...)`` logged as the run's
    input; the ``mlflow.modelId`` on the run's traces. A run with none of them (a bare
    ``predict_fn``) is linked to no version. Reading a link never fails the listing.
    """
    tags = run.data.tags
    if tags.get(AGENT_TAG) and tags.get(VERSION_TAG):
        return RunLink(tags[AGENT_TAG], tags[VERSION_TAG], _model_input(run), LinkKind.APP_TAGS.value)
    index = index or ModelIndex(client)
    model_id, how = _model_input(run), LinkKind.MODEL_INPUT
    if model_id is None:
        try:
            model_id = _model_input(client.get_run(run.info.run_id))  # search results leave model inputs out
        except Exception:  # noqa: BLE001
            model_id = None
    if model_id is None:
        model_id, how = _trace_model_id(run), LinkKind.TRACE_MODEL
    if model_id is None:
        return RunLink(None, None, None, None)
    found = index.version_of(model_id)
    if found is None:
        return RunLink(None, None, model_id, how.value)
    return RunLink(found[0], found[1], model_id, how.value)


def _model_input(run: Any) -> str | None:
    inputs = getattr(getattr(run, "inputs", None), "model_inputs", None) or []
    for item in inputs:
        if getattr(item, "model_id", None):
            return str(item.model_id)
    return None


def _trace_model_id(run: Any) -> str | None:
    import mlflow

    try:
        traces = mlflow.search_traces(locations=[run.info.experiment_id], run_id=run.info.run_id,
                                      max_results=1, include_spans=False, return_type="list")
    except Exception:  # noqa: BLE001
        return None
    for trace in traces:
        model_id = (trace.info.trace_metadata or {}).get(MODEL_ID_METADATA)
        if model_id:
            return str(model_id)
    return None


def latest_evaluations(
    experiment_ids: Sequence[str], *, limit: int = 10, settings: Settings | None = None
) -> list[EvaluationSummary]:
    """The most recent evaluation runs across the given experiments, newest first.

    A run left ``RUNNING`` by an interruption (see ``is_abandoned``) is marked ``FAILED`` and
    interrupted on the way; when that write is refused it is still reported as interrupted.
    """
    if not experiment_ids:
        return []
    client = mlflow_client(settings)
    with translate_errors("evaluation runs"):
        runs = client.search_runs(
            experiment_ids=list(experiment_ids),
            filter_string=EVAL_RUN_FILTER,
            max_results=limit,
            order_by=["attributes.start_time DESC"],
        )
    return summarise_runs(client, runs)


def summarise_runs(client: Any, runs: Sequence[Any]) -> list[EvaluationSummary]:
    """Summaries of evaluation runs; a run left ``RUNNING`` by an interruption is marked and shown as such."""
    summaries = []
    index = ModelIndex(client)
    for run in runs:
        link = run_link(client, run, index)
        if is_abandoned(run):
            reason = run.data.tags.get(INTERRUPTED_TAG) or ABANDONED_REASON
            mark_interrupted(client, run.info.run_id, reason)  # best effort: a read must not fail on it
            summaries.append(_summary(run, status="FAILED", interrupted=reason, link=link))
        else:
            summaries.append(_summary(run, link=link))
    return summaries


# --- Running evaluations ----------------------------------------------------------------------

import contextlib
import hashlib
import io
import json
import os
import re
import socket
import threading
import uuid
from enum import StrEnum
from typing import Callable

import pandas as pd

from services import statistics
from services._clients import classify_error, configure_mlflow, get_or_create_experiment
from services.errors import AgentOpsError, BackendUnavailableError, ConflictError, NotFoundError, ValidationError

# Registered-model tag naming the experiment of an agent (kept in sync with services.registry).
_EXPERIMENT_TAG = "agentops.experiment_id"
ROWS_TAG = "agentops.rows"
SCORERS_TAG = "agentops.scorers"
ABANDONED_REASON = "interrupted: the run stopped without finishing (the MLflow backend or the app went away mid-run)"
BACKEND_REASON = "interrupted: the MLflow backend stopped answering mid-run"
INCOMPLETE_REASON = "interrupted: results were lost while the MLflow backend was failing"

Progress = Callable[[int, int, str], None]
# evaluate() changes process-wide state (active model, stdout); one evaluation at a time.
_EVALUATE_LOCK = threading.Lock()
_REQUEST_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# This process, as written in OWNER_TAG; attempts are added before their run exists and removed
# once it ended, so a RUNNING run of this process that is not live here was interrupted.
_PROCESS = uuid.uuid4().hex
_live_attempts: set[str] = set()
_live_guard = threading.Lock()


def new_request_id() -> str:
    """A fresh request id: one per click on Run, kept until that request succeeded."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class EvaluationRequest:
    """What to evaluate: a version number or alias of ``agent`` on a named dataset or given rows.

    ``request_id`` makes the request idempotent: a retry with the same id after a failure
    evaluates at most once more, and returns the finished run once there is one.
    """

    agent: str
    version: str
    scorers: tuple[str, ...]
    dataset_name: str | None = None
    rows: tuple[dict[str, Any], ...] | None = None
    dataset_label: str | None = None
    options: Any = None  # services.scorers.ScorerOptions
    request_id: str | None = None


def request_fingerprint(request: EvaluationRequest) -> str:
    """A digest of what a request evaluates (not its id): equal for the same choices on the page."""
    payload = {
        "agent": request.agent, "version": request.version, "scorers": list(request.scorers),
        "dataset": request.dataset_name, "label": request.dataset_label, "rows": request.rows,
        "options": repr(request.options),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ResolvedVersion:
    agent: str
    version: str
    model_id: str | None
    experiment_id: str


def check_request(request: EvaluationRequest) -> None:
    """Refuse a request that cannot run, with a message naming what to fix (before anything is written)."""
    if not request.agent.strip():
        raise ValidationError("Pick an agent to evaluate.")
    if not request.version.strip():
        raise ValidationError("Pick a version or alias to evaluate.")
    if (request.dataset_name is None) == (request.rows is None):
        raise ValidationError("Pick exactly one dataset: an MLflow evaluation dataset or an uploaded file.")
    if not request.scorers:
        raise ValidationError("Pick at least one scorer.")
    if request.request_id is not None and not _REQUEST_RE.match(request.request_id):
        raise ValidationError("A request id is 1-128 letters, digits, '_' or '-' (one per click on Run, e.g. a uuid).")


def resolve_version(agent: str, ref: str, settings: Settings | None = None) -> ResolvedVersion:
    """A version number or alias of an agent → its number, LoggedModel id and experiment."""
    settings = configure_mlflow(settings)
    client = mlflow_client(settings)
    ref = ref.strip()
    with translate_errors(f"registered model {agent!r}"):
        model = client.get_registered_model(agent)
        if ref.removeprefix("v").isdigit():
            version = client.get_model_version(agent, ref.removeprefix("v"))
        else:
            alias = ref.removeprefix("@")
            try:
                version = client.get_model_version_by_alias(agent, alias)
            except Exception as exc:  # noqa: BLE001 - a missing alias is reported as INVALID_PARAMETER_VALUE
                if "alias" in str(exc).lower() and "not found" in str(exc).lower():
                    raise NotFoundError(f"{agent} has no alias @{alias}.") from exc
                raise
    source = version.source or ""
    model_id = getattr(version, "model_id", None) or (
        source.removeprefix("models:/").split("/")[0] if source.startswith("models:/m-") else None
    )
    experiment_id = (getattr(model, "tags", None) or {}).get(_EXPERIMENT_TAG) or _own_experiment(
        client, model_id, getattr(version, "run_id", None))
    if not experiment_id and settings.experiment_ids:
        experiment_id = settings.experiment_ids[0]
    if not experiment_id:
        # Nothing MLflow recorded says where the agent lives: only then does the app make an experiment.
        with translate_errors("the experiment of the agent"):
            experiment_id = get_or_create_experiment(client, f"agentops-{agent}", settings)
    return ResolvedVersion(agent, str(version.version), model_id, str(experiment_id))


def _own_experiment(client: Any, model_id: str | None, run_id: str | None) -> str | None:
    """The experiment of the version's LoggedModel, else of its source run: where the agent's traces live."""
    if model_id:
        try:
            with translate_errors(f"LoggedModel {model_id}"):
                found = getattr(client.get_logged_model(model_id), "experiment_id", None)
            if found:
                return str(found)
        except NotFoundError:
            pass
    if run_id:
        try:
            with translate_errors(f"run {run_id}"):
                return str(client.get_run(run_id).info.experiment_id)
        except NotFoundError:
            pass
    return None


@contextlib.contextmanager
def skip_first_row_check() -> Any:
    """Skip evaluate's trial prediction on the first row.

    When that single row raises, evaluate aborts the whole run; our predict function is
    already traced, so the check adds nothing and a failing row must be recorded, not fatal.
    """
    key = "MLFLOW_GENAI_EVAL_SKIP_TRACE_VALIDATION"
    previous = os.environ.get(key)
    os.environ[key] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


# --- Interrupted runs ---------------------------------------------------------------------------

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


def _settle_request(client: Any, experiment_id: str, request_id: str, tags: dict[str, str]) -> str | None:
    """The finished run of ``request_id``, if any; its interrupted runs are marked on the way.

    Raises ``ConflictError`` while an attempt of the request is still live, and
    ``ValidationError`` when the id was used for another agent, version or dataset.
    """
    escaped = request_id.replace("'", "\\'")
    with translate_errors(f"evaluation runs of request {request_id}"):
        runs = client.search_runs(
            [experiment_id], filter_string=f"{EVAL_RUN_FILTER} AND tags.`{REQUEST_TAG}` = '{escaped}'",
            max_results=100, order_by=["attributes.start_time ASC"],
        )
    for run in runs:
        earlier = {k: run.data.tags.get(k) for k in (AGENT_TAG, VERSION_TAG, DATASET_TAG)}
        wanted = {k: tags.get(k) for k in (AGENT_TAG, VERSION_TAG, DATASET_TAG)}
        if earlier != wanted:
            raise ValidationError(
                f"Request {request_id} evaluated {earlier[AGENT_TAG]} v{earlier[VERSION_TAG]} on "
                f"{earlier[DATASET_TAG]}, not {wanted[AGENT_TAG]} v{wanted[VERSION_TAG]} on {wanted[DATASET_TAG]}; "
                "start a new request for this one."
            )
    finished = [run for run in runs if run.info.status == "FINISHED"]
    if finished:
        return finished[0].info.run_id
    for run in runs:
        if run.info.status != "RUNNING":
            continue
        if not is_abandoned(run):
            raise ConflictError(
                f"Request {request_id} is still being evaluated (run {run.info.run_id}); wait for it to finish."
            )
        if not mark_interrupted(client, run.info.run_id, run.data.tags.get(INTERRUPTED_TAG) or ABANDONED_REASON):
            raise BackendUnavailableError(
                f"Could not mark the interrupted run {run.info.run_id} of request {request_id} as failed. "
                "Nothing was evaluated again; retry once the MLflow backend answers."
            )
    return None


def _short(exc: BaseException) -> str:
    """The first line of an error, shortened: a hint for the user, never a traceback."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."


def _missing_results(experiment_id: str, run_id: str, total: int, scorer_names: set[str]) -> str | None:
    """What the store lacks for a complete run (a trace per row, an assessment per scorer), if anything.

    evaluate() logs a failed assessment or trace export as a warning and carries on, so a run
    the backend failed under can look finished with rows or scores missing.
    """
    import mlflow

    traces = mlflow.search_traces(locations=[experiment_id], run_id=run_id, include_spans=False, return_type="list")
    if len(traces) < total:
        return f"{len(traces)} of {total} rows stored"

    def scored(trace: Any) -> bool:
        names = {a.name for a in trace.info.assessments or []}
        # A scorer's feedback carries its name, or "<name>/<part>" when it returns several.
        return all(any(n == want or n.startswith(want + "/") for n in names) for want in scorer_names)

    unscored = sum(1 for t in traces if not scored(t))
    return f"{unscored} of {total} rows without all their scores" if unscored else None


def evaluate_rows(
    rows: list[dict[str, Any]],
    predict_fn: Callable[..., Any],
    scorers: list[Any],
    *,
    experiment_id: str,
    run_name: str,
    tags: dict[str, str],
    model_id: str | None = None,
    progress: Progress | None = None,
    request_id: str | None = None,
    settings: Settings | None = None,
) -> str:
    """Run ``mlflow.genai.evaluate`` on rows in a new run; returns the run id.

    A row whose prediction raises is stored as a failed trace (state ERROR), not dropped.
    With ``request_id``, the request's finished run is returned when there is one (nothing runs
    again) and its interrupted runs are marked failed first. When the backend fails mid-run,
    ``BackendUnavailableError`` says so and the run is left (or marked) interrupted, never finished.
    Without ``settings`` the run goes where MLflow's tracking URI points now.
    """
    import mlflow

    total = len(rows)
    done = 0
    counter = threading.Lock()

    @mlflow.trace(name="predict_fn")
    def counted(**inputs: Any) -> Any:
        nonlocal done
        try:
            return predict_fn(**inputs)
        finally:
            with counter:
                done += 1
                current = done
            if progress:
                progress(min(current, total), total, f"Predicted {min(current, total)} of {total} rows")

    request_id = request_id or new_request_id()
    retry_hint = (f"Retrying is safe: run the same evaluation again (request {request_id}) once the backend "
                  "is back; it completes exactly once.")
    with _EVALUATE_LOCK:
        if progress:
            progress(0, total, "Starting the evaluation run")
        try:
            client = _run_client(settings)
            earlier = _settle_request(client, experiment_id, request_id, tags)
        except BackendUnavailableError as exc:
            raise BackendUnavailableError(
                f"The MLflow backend is not answering, so evaluation request {request_id} did not start and "
                f"nothing was stored. {retry_hint} ({_short(exc)})"
            ) from exc
        if earlier is not None:
            if progress:
                progress(total, total, "Already evaluated by this request; not run again")
            return earlier
        attempt = uuid.uuid4().hex
        owner = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "process": _PROCESS, "attempt": attempt})
        # evaluate() tags the run genai_evaluate itself, but late: an interrupted run must be listed too.
        all_tags = {**tags, "mlflow.runType": "genai_evaluate", ROWS_TAG: str(total), REQUEST_TAG: request_id,
                    OWNER_TAG: owner}
        with _live_guard:
            _live_attempts.add(attempt)
        try:
            try:
                run = mlflow.start_run(run_name=run_name, experiment_id=experiment_id, tags=all_tags)
            except Exception as exc:  # noqa: BLE001 - classified below
                error = classify_error(exc, "the evaluation run")
                if isinstance(error, BackendUnavailableError):
                    raise BackendUnavailableError(
                        f"The MLflow backend stopped answering before the evaluation run {run_name!r} was created "
                        f"(request {request_id}). Nothing was stored. {retry_hint} ({_short(exc)})"
                    ) from exc
                raise error from exc
            run_id = run.info.run_id
            interrupted: str | None = None
            cause: BaseException | None = None
            try:
                # evaluate prints banners and a tqdm bar; progress is reported through the callback.
                with (
                    contextlib.redirect_stdout(io.StringIO()),
                    contextlib.redirect_stderr(io.StringIO()),
                    skip_first_row_check(),
                ):
                    mlflow.genai.evaluate(data=rows, scorers=scorers, predict_fn=counted, model_id=model_id)
                missing = _missing_results(experiment_id, run_id, total, {s.name for s in scorers})
                if missing:
                    interrupted = f"{INCOMPLETE_REASON} ({missing})"
            except Exception as exc:  # noqa: BLE001 - an interruption is reported below; anything else re-raised
                if not isinstance(classify_error(exc, "the evaluation run"), BackendUnavailableError):
                    _leave_run(mlflow, run_id)
                    raise
                interrupted, cause = BACKEND_REASON, exc
            if interrupted is None:
                try:
                    mlflow.end_run("FINISHED")
                except Exception as exc:  # noqa: BLE001 - unknown whether FINISHED was stored; a retry finds out
                    interrupted, cause = BACKEND_REASON, exc
            if interrupted is not None:
                # Best effort: when the backend is still down, the next read or retry marks it.
                mark_interrupted(client, run_id, interrupted)
                _leave_run(mlflow, run_id)
                detail = _short(cause) if cause is not None else interrupted.removeprefix("interrupted: ")
                raise BackendUnavailableError(
                    f"The evaluation run {run_name!r} was interrupted: the MLflow backend failed mid-run "
                    f"(request {request_id}, run {run_id}). Its partial results are marked interrupted and are not "
                    f"used as a result. {retry_hint} ({detail})"
                ) from cause
        finally:
            with _live_guard:
                _live_attempts.discard(attempt)
            # evaluate leaves the evaluated model active, which would link later traces to it.
            mlflow.clear_active_model()
    if progress:
        progress(total, total, "Scored and stored")
    return run_id


def _run_client(settings: Settings | None) -> Any:
    """The client for the store ``mlflow.start_run`` and ``evaluate`` write to."""
    if settings is not None:
        return mlflow_client(settings)
    from mlflow import MlflowClient

    return MlflowClient()  # the current tracking URI, as the fluent calls use; no reconfiguration


def _leave_run(mlflow: Any, run_id: str) -> None:
    """End the active run as FAILED if it is still this one (unless ended already); never raises."""
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        with contextlib.suppress(Exception):  # the backend may be down: the stack is cleared first
            mlflow.end_run("FAILED")


def run_evaluation(request: EvaluationRequest, settings: Settings | None = None, progress: Progress | None = None) -> str:
    """Evaluate a registered version (number or alias) on a dataset with the chosen scorers.

    With ``request.request_id`` a retry after a failure completes the request exactly once: the
    request's finished run is returned without evaluating again.
    """
    from services import datasets, scorers
    from services.settings import Backend

    check_request(request)
    settings = configure_mlflow(settings)
    rows = datasets.validate_rows(list(request.rows)) if request.rows is not None else None
    built = scorers.build_scorers(
        list(request.scorers), request.options, databricks=settings.backend is Backend.DATABRICKS
    )
    request_id = request.request_id or new_request_id()
    try:
        resolved = resolve_version(request.agent, request.version, settings)
        if rows is None:
            rows = datasets.validate_rows(datasets.load_dataset_rows(request.dataset_name or "", settings))
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(
            f"The MLflow backend is not answering, so evaluation request {request_id} did not start and nothing "
            f"was stored. Retrying is safe: run the same evaluation again once the backend is back. ({_short(exc)})"
        ) from exc
    dataset_label = request.dataset_name or request.dataset_label or "upload"
    import mlflow

    if progress:
        progress(0, len(rows), f"Loading {request.agent} v{resolved.version}")
    try:
        with translate_errors(f"models:/{request.agent}/{resolved.version}"):
            loaded = mlflow.pyfunc.load_model(f"models:/{request.agent}/{resolved.version}")
    except (ValidationError, NotFoundError) as exc:
        # An external LoggedModel (create_external_model) or one without a pyfunc flavor cannot run here.
        raise ValidationError(
            f"{request.agent} v{resolved.version} cannot be loaded here, so nothing was evaluated or stored: "
            f"{_short(exc)} Evaluate it where it runs with mlflow.genai.evaluate(..., model_id="
            f"'{resolved.model_id or 'm-…'}'); such runs are listed here and tied to v{resolved.version}."
        ) from exc
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(
            f"The MLflow backend stopped answering while loading {request.agent} v{resolved.version}, so evaluation "
            f"request {request_id} did not start and nothing was stored. Retrying is safe: run the same evaluation "
            f"again once the backend is back. ({_short(exc)})"
        ) from exc

    def predict_fn(question: str, **_: Any) -> str:
        return scorers.answer_text(loaded.predict({"input": [{"role": "user", "content": question}]}))

    with translate_errors("the evaluation run"):
        return evaluate_rows(
            rows,
            predict_fn,
            built,
            experiment_id=resolved.experiment_id,
            run_name=f"eval {request.agent} v{resolved.version} on {dataset_label}",
            tags={
                AGENT_TAG: request.agent,
                VERSION_TAG: resolved.version,
                DATASET_TAG: dataset_label,
                SCORERS_TAG: ",".join(request.scorers),
            },
            model_id=resolved.model_id,
            progress=progress,
            request_id=request_id,
            settings=settings,
        )


# --- Per-row results and comparison -------------------------------------------------------------

class RowChange(StrEnum):
    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    UNCHANGED = "unchanged"
    ONLY_BASELINE = "only in baseline"
    ONLY_CANDIDATE = "not in baseline"


@dataclass(frozen=True)
class RunRef:
    """One compared run; ``label`` ("A: support-agent v2") names it in tables and verdicts."""

    run_id: str
    label: str
    experiment_id: str
    agent: str | None
    version: str | None
    dataset: str | None
    rows: int


@dataclass(frozen=True)
class CandidateComparison:
    """One run against the baseline: row overlap, one paired test per metric and the verdict."""

    candidate: RunRef
    shared_rows: int
    only_in_baseline: int
    only_in_candidate: int
    tests: tuple[statistics.PairedTest, ...]
    verdict: str

    @property
    def disjoint(self) -> bool:
        return self.shared_rows == 0


@dataclass(frozen=True)
class Comparison:
    """Two or more evaluation runs compared row by row against a baseline.

    ``summary`` columns: run, metric, kind, n, baseline, value, delta, ci_low, ci_high,
    p_value, test, direction (one row per candidate run and metric).
    ``rows`` columns: row_key, question, change (``RowChange``), present_in, then per run
    ``<label> · output``, ``<label> · <metric>`` (1/0 or number, NaN = failed or missing) and
    ``<label> · <metric> rationale``.
    ``deltas`` columns: run, metric, row_key, delta (per shared row, candidate − baseline).
    This is what the promotion gate reads as evidence.
    """

    baseline: RunRef
    candidates: tuple[CandidateComparison, ...]
    metrics: tuple[str, ...]
    summary: pd.DataFrame
    rows: pd.DataFrame
    deltas: pd.DataFrame

    @property
    def runs(self) -> tuple[RunRef, ...]:
        return (self.baseline, *(c.candidate for c in self.candidates))


RUN_ROW_COLUMNS = ("row_key", "question", "inputs", "output", "state", "trace_id")


def _score(value: Any) -> tuple[float | None, bool]:
    """(numeric value, is pass/fail) of an assessment value."""
    if isinstance(value, bool):
        return float(value), True
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("yes", "pass", "true"):
            return 1.0, True
        if lowered in ("no", "fail", "false"):
            return 0.0, True
        try:
            return float(lowered), False
        except ValueError:
            return None, False
    if isinstance(value, (int, float)):
        return float(value), False
    return None, False


def _output_text(response: Any) -> str:
    from services.scorers import answer_text

    if response is None:
        return ""
    if isinstance(response, str):
        try:
            response = json.loads(response)
        except (json.JSONDecodeError, ValueError):
            return response
    # ResponsesAgent output first; ChatAgent messages, chat completions and plain dicts otherwise.
    text = answer_text(response)
    if text or not isinstance(response, dict) or "output" in response:
        return text
    said = [m.get("content") for m in response.get("messages") or [] if isinstance(m, dict) and m.get("role") == "assistant"]
    said = [t for t in said if isinstance(t, str) and t]
    if said:
        return said[-1]
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        content = (choices[0].get("message") or {}).get("content")
        if isinstance(content, str):
            return content
    for key in ("content", "answer", "text"):
        if isinstance(response.get(key), str):
            return response[key]
    return json.dumps(response, ensure_ascii=False, default=str)


def run_rows(run_id: str, settings: Settings | None = None) -> tuple[pd.DataFrame, dict[str, bool]]:
    """Per-row results of an evaluation run and each metric's pass/fail flag.

    Columns: ``RUN_ROW_COLUMNS`` plus ``<metric>`` (1/0 or number; NaN when the scorer failed)
    and ``<metric> rationale``. ``state`` is ``OK`` or ``ERROR`` (the prediction failed).
    Assessments added later by another run (re-scoring) are ignored.
    """
    import mlflow

    settings = configure_mlflow(settings)
    client = mlflow_client(settings)
    with translate_errors(f"evaluation run {run_id}"):
        run = client.get_run(run_id)
        traces = mlflow.search_traces(
            locations=[run.info.experiment_id], run_id=run_id, include_spans=True, return_type="list"
        )
    records: list[dict[str, Any]] = []
    pass_fail: dict[str, bool] = {}
    seen: dict[str, int] = {}
    for trace in sorted(traces, key=lambda t: t.info.request_time or 0):
        try:
            inputs = json.loads(trace.data.request) if trace.data.request else {}
        except (json.JSONDecodeError, TypeError):
            inputs = {"question": str(trace.data.request)}
        if isinstance(inputs, dict) and len(inputs) == 1:
            (only_key, only_value), = inputs.items()
            # A traced ``f(**inputs)`` records its keyword arguments under the parameter's name.
            if only_key in ("inputs", "kwargs") and isinstance(only_value, dict):
                inputs = only_value
        inputs = _as_question(inputs)
        canonical = json.dumps(inputs, sort_keys=True, default=str)
        seen[canonical] = seen.get(canonical, 0) + 1
        # Duplicate inputs in one dataset are paired by occurrence.
        key = canonical if seen[canonical] == 1 else f"{canonical}#{seen[canonical]}"
        state = str(getattr(trace.info.state, "value", trace.info.state))
        record: dict[str, Any] = {
            "row_key": key,
            "question": str(inputs.get("question", canonical)) if isinstance(inputs, dict) else canonical,
            "inputs": canonical,
            "output": _output_text(trace.data.response),
            "state": state,
            "trace_id": trace.info.trace_id,
        }
        for assessment in sorted(trace.info.assessments or [], key=lambda a: a.create_time_ms or 0):
            feedback = getattr(assessment, "feedback", None)
            if feedback is None:
                continue
            source_run = (assessment.metadata or {}).get("mlflow.assessment.sourceRunId")
            if source_run and source_run != run_id:
                continue
            name = assessment.name
            value, is_pf = _score(feedback.value)
            error = getattr(feedback, "error", None)
            record[name] = value
            rationale = assessment.rationale or ""
            if error is not None:
                rationale = f"Scorer error: {getattr(error, 'error_message', None) or getattr(error, 'error_code', error)}"
            record[f"{name} rationale"] = rationale
            if value is not None:
                pass_fail[name] = pass_fail.get(name, True) and is_pf
            else:
                pass_fail.setdefault(name, True)
        if state == "ERROR" and not record["output"]:
            record["output"] = "(prediction failed)"
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=None) if records else pd.DataFrame(columns=list(RUN_ROW_COLUMNS))
    return frame, pass_fail


def _as_question(inputs: Any) -> Any:
    """``{"question": text}`` for a ResponsesAgent request, so runs traced at either level pair up.

    When ``predict_fn`` calls a traced model, evaluate keeps the model's own root span, whose
    request is the ResponsesAgent payload rather than the dataset row's inputs.
    """
    if not isinstance(inputs, dict):
        return inputs
    payload = inputs.get("request") if isinstance(inputs.get("request"), dict) else inputs
    messages = payload.get("input") if isinstance(payload, dict) else None
    if "question" not in inputs and isinstance(messages, list):
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            content = users[-1].get("content")
            if isinstance(content, list):
                content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
            return {"question": str(content)}
    return inputs


def _run_ref(run: Any, letter: str, rows: int, link: RunLink | None = None) -> RunRef:
    tags = run.data.tags
    agent, version = (link.agent, link.version) if link else (tags.get(AGENT_TAG), tags.get(VERSION_TAG))
    name = f"{agent} v{version}" if agent and version else (run.info.run_name or run.info.run_id[:8])
    return RunRef(run.info.run_id, f"{letter}: {name}", run.info.experiment_id, agent, version,
                  tags.get(DATASET_TAG) or _dataset_input_name(run), rows)


def compare_runs(
    run_ids: Sequence[str], baseline_run_id: str | None = None, settings: Settings | None = None,
    *, alpha: float = statistics.ALPHA,
) -> Comparison:
    """Compare evaluation runs row by row against a baseline (default: the first) with paired tests."""
    run_ids = list(dict.fromkeys(run_ids))
    if len(run_ids) < 2:
        raise ValidationError("Pick at least two evaluation runs to compare.")
    baseline_run_id = baseline_run_id or run_ids[0]
    if baseline_run_id not in run_ids:
        raise ValidationError("The baseline must be one of the compared runs.")
    ordered = [baseline_run_id] + [r for r in run_ids if r != baseline_run_id]
    settings = configure_mlflow(settings)
    client = mlflow_client(settings)
    frames: dict[str, pd.DataFrame] = {}
    kinds: dict[str, bool] = {}
    refs: list[RunRef] = []
    index_of_models = ModelIndex(client)
    for index, run_id in enumerate(ordered):
        with translate_errors(f"evaluation run {run_id}"):
            run = client.get_run(run_id)
        if run.data.tags.get("mlflow.runType") != "genai_evaluate":
            raise NotFoundError(f"Run {run_id} is not an evaluation run.")
        frame, pass_fail = run_rows(run_id, settings)
        frames[run_id] = frame.set_index("row_key", drop=False)
        for name, flag in pass_fail.items():
            kinds[name] = kinds.get(name, True) and flag
        refs.append(_run_ref(run, chr(ord("A") + index) if index < 26 else str(index + 1), len(frame),
                             run_link(client, run, index_of_models)))
    metrics = tuple(sorted(kinds))
    base_ref, base = refs[0], frames[baseline_run_id]

    summary_records: list[dict[str, Any]] = []
    delta_records: list[dict[str, Any]] = []
    candidates: list[CandidateComparison] = []
    for ref in refs[1:]:
        other = frames[ref.run_id]
        shared = [k for k in base.index if k in other.index]
        tests = []
        for metric in metrics:
            b = [base.at[k, metric] if metric in base.columns else None for k in shared]
            c = [other.at[k, metric] if metric in other.columns else None for k in shared]
            kind = statistics.MetricKind.PASS_FAIL if kinds[metric] else statistics.MetricKind.NUMERIC
            test = statistics.paired_test(metric, kind, _nan_to_none(b), _nan_to_none(c), alpha=alpha)
            tests.append(test)
            summary_records.append({
                "run": ref.label, "metric": metric, "kind": str(kind), "n": test.n,
                "baseline": test.baseline_mean, "value": test.candidate_mean, "delta": test.delta,
                "ci_low": test.ci_low, "ci_high": test.ci_high, "p_value": test.p_value,
                "test": test.test, "direction": str(test.direction),
            })
            for key, x, y in zip(shared, _nan_to_none(b), _nan_to_none(c)):
                if x is not None and y is not None:
                    delta_records.append({"run": ref.label, "metric": metric, "row_key": key, "delta": y - x})
        candidates.append(CandidateComparison(
            candidate=ref,
            shared_rows=len(shared),
            only_in_baseline=sum(1 for k in base.index if k not in other.index),
            only_in_candidate=sum(1 for k in other.index if k not in base.index),
            tests=tuple(tests),
            verdict=statistics.verdict(ref.label, tests, len(shared)),
        ))

    rows_frame = _rows_frame(refs, frames, metrics)
    summary = pd.DataFrame.from_records(summary_records, columns=[
        "run", "metric", "kind", "n", "baseline", "value", "delta", "ci_low", "ci_high", "p_value", "test", "direction"])
    deltas = pd.DataFrame.from_records(delta_records, columns=["run", "metric", "row_key", "delta"])
    return Comparison(base_ref, tuple(candidates), metrics, summary, rows_frame, deltas)


def _nan_to_none(values: list[Any]) -> list[float | None]:
    out = []
    for v in values:
        out.append(None if v is None or (isinstance(v, float) and v != v) else float(v))
    return out


def _rows_frame(refs: list[RunRef], frames: dict[str, pd.DataFrame], metrics: tuple[str, ...]) -> pd.DataFrame:
    base_ref = refs[0]
    base = frames[base_ref.run_id]
    keys: list[str] = list(base.index)
    for ref in refs[1:]:
        keys.extend(k for k in frames[ref.run_id].index if k not in keys)
    records = []
    for key in keys:
        present = [ref for ref in refs if key in frames[ref.run_id].index]
        question = frames[present[0].run_id].at[key, "question"]
        record: dict[str, Any] = {"row_key": key, "question": question,
                                  "present_in": ", ".join(ref.label.split(":")[0] for ref in present)}
        better = worse = False
        for ref in refs:
            frame = frames[ref.run_id]
            here = key in frame.index
            record[f"{ref.label} · output"] = frame.at[key, "output"] if here else "(not in this run)"
            for metric in metrics:
                value = frame.at[key, metric] if here and metric in frame.columns else None
                record[f"{ref.label} · {metric}"] = value
                rationale = frame.at[key, f"{metric} rationale"] if here and f"{metric} rationale" in frame.columns else ""
                record[f"{ref.label} · {metric} rationale"] = rationale if isinstance(rationale, str) else ""
                if ref is not base_ref and here and key in base.index and metric in base.columns and metric in frame.columns:
                    x, y = base.at[key, metric], frame.at[key, metric]
                    if x == x and y == y and x is not None and y is not None:
                        better |= y > x
                        worse |= y < x
        if key not in base.index:
            change = RowChange.ONLY_CANDIDATE
        elif len(present) < len(refs) and len(present) == 1:
            change = RowChange.ONLY_BASELINE
        elif worse:
            change = RowChange.REGRESSION
        elif better:
            change = RowChange.IMPROVEMENT
        else:
            change = RowChange.UNCHANGED
        record["change"] = str(change)
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return pd.DataFrame(columns=["row_key", "question", "change", "present_in"])
    first = ["row_key", "question", "change", "present_in"]
    return frame[first + [c for c in frame.columns if c not in first]]


def evaluation_evidence(
    candidate_run_id: str, baseline_run_id: str, settings: Settings | None = None
) -> CandidateComparison:
    """The candidate run against the baseline run: the evidence a promotion gate reads."""
    return compare_runs([baseline_run_id, candidate_run_id], baseline_run_id, settings).candidates[0]


def version_choices(agent: str, settings: Settings | None = None) -> dict[str, str]:
    """Versions an evaluation can target: ``{"@alias": "@alias (v2)", "2": "v2", ...}``, aliases first."""
    client = mlflow_client(settings)
    escaped = agent.replace("'", "\\'")
    with translate_errors(f"registered model {agent!r}"):
        model = client.get_registered_model(agent)
        versions = client.search_model_versions(filter_string=f"name='{escaped}'", max_results=1000)
    raw = getattr(model, "aliases", None) or {}
    aliases = raw if isinstance(raw, dict) else {a.alias: a.version for a in raw}
    choices = {f"@{alias}": f"@{alias} (v{number})" for alias, number in sorted(aliases.items())}
    for number in sorted({int(v.version) for v in versions}, reverse=True):
        choices[str(number)] = f"v{number}"
    return choices


def evaluation_runs(experiment_ids: Sequence[str], settings: Settings | None = None, *, limit: int = 200) -> list[EvaluationSummary]:
    """Evaluation runs that can be compared, newest first."""
    return latest_evaluations(experiment_ids, limit=limit, settings=settings)


def experiment_runs(experiment_id: str, settings: Settings | None = None, *, limit: int = 200) -> list[EvaluationSummary]:
    """Evaluation runs of one experiment, also one no agent is tied to; ``NotFoundError`` for an unknown id.

    Nothing is written: an unknown or deleted experiment is reported, never created.
    """
    text = (experiment_id or "").strip() if isinstance(experiment_id, str) else ""
    if not text or any(c.isspace() or c in "'`\"" for c in text) or len(text) > 200:
        raise ValidationError(f"{experiment_id!r} is not an experiment id; copy it from the experiment's page in MLflow.")
    client = mlflow_client(settings)
    missing = NotFoundError(f"Experiment {text!r} does not exist (or was deleted); check the id. Nothing was changed.")
    try:
        with translate_errors(f"experiment {text!r}"):
            experiment = client.get_experiment(text)
    except (NotFoundError, ValidationError):
        raise missing from None
    if experiment is None or str(getattr(experiment, "lifecycle_stage", "active")) == "deleted":
        raise missing
    return latest_evaluations([text], limit=limit, settings=settings)
