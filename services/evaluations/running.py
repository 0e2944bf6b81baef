"""Running evaluations with ``mlflow.genai.evaluate``, exactly once per request.

A run the backend interrupted is never reported as a result: it is marked ``FAILED`` with the tag
``agentops.interrupted`` (by the failing call when it can, else by the next read or retry), and a
retry with the same request id returns the request's finished run or evaluates again, so one
request ends with exactly one ``FINISHED`` run.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from typing import Any, Callable

from services import datasets, scorers
from services._clients import classify_error, configure_mlflow, mlflow_client, translate_errors
from services.errors import BackendUnavailableError, ConflictError, NotFoundError, ValidationError
from services.evaluations.request import EvaluationRequest, check_request, new_request_id, resolve_version
from services.evaluations.runs import (ABANDONED_REASON, AGENT_TAG, BACKEND_REASON, DATASET_TAG, EVAL_RUN_FILTER,
                                       INCOMPLETE_REASON, INTERRUPTED_TAG, OWNER_TAG, REQUEST_TAG, ROWS_TAG,
                                       SCORERS_TAG, VERSION_TAG, begin_attempt, end_attempt, is_abandoned,
                                       mark_interrupted)
from services.settings import Backend, Settings

Progress = Callable[[int, int, str], None]
# evaluate() changes process-wide state (active model, stdout); one evaluation at a time.
_EVALUATE_LOCK = threading.Lock()


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
        attempt, owner = begin_attempt()
        # evaluate() tags the run genai_evaluate itself, but late: an interrupted run must be listed too.
        all_tags = {**tags, "mlflow.runType": "genai_evaluate", ROWS_TAG: str(total), REQUEST_TAG: request_id,
                    OWNER_TAG: owner}
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
            end_attempt(attempt)
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

