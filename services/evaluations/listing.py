"""Listing evaluation runs, and which registered version each one evaluated."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Sequence

from services._clients import mlflow_client, translate_errors
from services.errors import NotFoundError, ValidationError
from services.evaluations.runs import (ABANDONED_REASON, AGENT_TAG, DATASET_TAG, EVAL_RUN_FILTER, INTERRUPTED_TAG,
                                       REQUEST_TAG, VERSION_TAG, dataset_input_name, is_abandoned, mark_interrupted)
from services.links import MODEL_ID_METADATA, ModelIndex
from services.settings import Settings


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
             link: RunLink | None = None) -> EvaluationSummary:
    tags = run.data.tags
    link = link or RunLink(tags.get(AGENT_TAG), tags.get(VERSION_TAG), None, None)
    return EvaluationSummary(
        run_id=run.info.run_id,
        run_name=run.info.run_name or run.info.run_id,
        experiment_id=run.info.experiment_id,
        agent=link.agent,
        version=link.version,
        dataset=tags.get(DATASET_TAG) or dataset_input_name(run),
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
