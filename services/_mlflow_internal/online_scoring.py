"""MLflow's own online trace scoring, run for one experiment (non-public MLflow).

``mlflow server`` runs registered scorers on new traces with a huey job per experiment
(``mlflow.genai.scorers.job.run_online_trace_scorer_job``) that builds an
``OnlineTraceScoringProcessor`` (``mlflow/genai/scorers/online/``): an ``OnlineScorerSampler``
(deterministic dense sampling by ``sha256(trace_id:scorer)``), an ``OnlineTraceCheckpointManager``
(the experiment tag ``mlflow.latestOnlineScoring.trace.checkpoint``: timestamp and trace id of the
last trace handled, a completion buffer, a one-hour look-back) and MLflow's evaluation harness to
score and log assessments. The server runs only scorers registered in its store, and it refuses to
start any but judges on an AI Gateway model, so the app's code scorers cannot run there; the
app's worker runs the same processor here instead (embedded store or ``mlflow server``). Three
things are added on top, by overriding private methods:

* **its own checkpoint**: MLflow keeps one checkpoint per experiment for every scorer it runs. If
  the worker moved that tag, a server job scoring the team's registered judges in the same
  experiment would skip traces, and the reverse; so the worker keeps its position in the tag
  ``agentops.liveScoring.trace.checkpoint`` (same JSON) and leaves MLflow's alone;

* **bounded batches**: ``_build_scoring_tasks`` is cut to ``batch_size`` traces (MLflow's
  constant ``MAX_TRACES_PER_JOB`` is 500), so one pass does bounded work and the checkpoint
  (the last trace of the batch) is persisted after every batch;
* **exactly once across a crash**: MLflow persists the checkpoint only after the whole batch.
  A worker killed mid-batch would score the batch's first traces again after a restart, so
  ``_execute_scoring`` drops every (trace, scorer) pair whose trace already holds an online
  assessment of that scorer (same name, no ``mlflow.assessment.sourceRunId``).

Non-public surface relied on (checked by ``tests/services/test_live_scoring_internal.py``):
``OnlineTraceScoringProcessor.__init__`` (trace loader, checkpoint manager, sampler, experiment id) /
``process_traces`` / ``_build_scoring_tasks`` / ``_execute_scoring``, ``OnlineScorer`` /
``OnlineScoringConfig``, ``OnlineTraceLoader``, ``OnlineScorerSampler``, the checkpoint manager's
``get_checkpoint`` / ``persist_checkpoint`` and ``TraceScoringTask.scorers``. Public fallback when any of it is missing: ``_score_public`` pages
the experiment's traces after the same (app's) checkpoint tag with ``MlflowClient.search_traces``, samples
with the same hash rule, runs ``Scorer.run`` and writes ``mlflow.log_feedback``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from mlflow import MlflowClient

_logger = logging.getLogger(__name__)

SOURCE_RUN_KEY = "mlflow.assessment.sourceRunId"
CHECKPOINT_TAG = "mlflow.latestOnlineScoring.trace.checkpoint"  # mlflow.utils.mlflow_tags: MLflow's own jobs
APP_CHECKPOINT_TAG = "agentops.liveScoring.trace.checkpoint"  # the worker's position, same JSON
EVAL_RUN_FILTER = "metadata.mlflow.sourceRun IS NULL"


@dataclass(frozen=True)
class LiveScorer:
    """One scorer to run online: its name (also its assessments' name), serialized JSON, sampling."""

    name: str
    serialized: str
    sample_rate: float
    filter_string: str | None = None


@dataclass
class PassReport:
    """What one scoring pass over one experiment did."""

    experiment_id: str
    traces_scored: int = 0
    assessments: int = 0
    already_scored: int = 0
    checkpoint_ms: int | None = None
    path: str = "mlflow-processor"
    scored_trace_ids: list[str] = field(default_factory=list)


def supports_processor() -> bool:
    """True when MLflow's online trace processor has every part this module relies on."""
    import inspect

    try:
        from mlflow.genai.scorers.online import OnlineScorer, OnlineScoringConfig, OnlineTraceScoringProcessor
        from mlflow.genai.scorers.online.sampler import OnlineScorerSampler  # noqa: F401
        from mlflow.genai.scorers.online.trace_checkpointer import OnlineTraceCheckpointManager
        from mlflow.genai.scorers.online.trace_loader import OnlineTraceLoader  # noqa: F401
        from mlflow.genai.scorers.online.trace_processor import TraceScoringTask
    except ImportError:
        return False
    needed = ("process_traces", "_build_scoring_tasks", "_execute_scoring")
    init = set(inspect.signature(OnlineTraceScoringProcessor.__init__).parameters)
    return (all(callable(getattr(OnlineTraceScoringProcessor, n, None)) for n in needed)
            and {"trace_loader", "checkpoint_manager", "sampler", "experiment_id"} <= init
            and all(callable(getattr(OnlineTraceCheckpointManager, n, None))
                    for n in ("get_checkpoint", "persist_checkpoint", "calculate_time_window"))
            and "scorers" in getattr(TraceScoringTask, "__dataclass_fields__", {})
            and {"name", "serialized_scorer", "online_config"} <= set(getattr(OnlineScorer, "__dataclass_fields__", {}))
            and {"scorer_id", "sample_rate", "experiment_id", "filter_string"}
            <= set(getattr(OnlineScoringConfig, "__dataclass_fields__", {})))


def already_scored(trace: Any) -> set[str]:
    """Names of online assessments a trace holds (assessments of evaluation runs do not count)."""
    names = set()
    for assessment in getattr(trace.info, "assessments", None) or []:
        if SOURCE_RUN_KEY not in (assessment.metadata or {}):
            names.add(assessment.name)
    return names


def checkpoint(client: MlflowClient, experiment_id: str) -> tuple[int, str | None] | None:
    """The (timestamp ms, trace id) the app's live scoring reached in an experiment, or None."""
    text = (client.get_experiment(experiment_id).tags or {}).get(APP_CHECKPOINT_TAG)
    if not text:
        return None
    try:
        data = json.loads(text)
        return int(data["timestamp_ms"]), data.get("trace_id")
    except (ValueError, KeyError, TypeError):
        return None


def score_new_traces(client: MlflowClient, experiment_id: str, scorers: Sequence[LiveScorer], *,
                     batch_size: int = 50) -> PassReport:
    """Score up to ``batch_size`` new traces of ``experiment_id`` with ``scorers`` and move the checkpoint."""
    if not scorers:
        return PassReport(experiment_id)
    if supports_processor():
        return _score_with_processor(client, experiment_id, scorers, batch_size)
    _logger.warning("MLflow's online trace processor changed; scoring live traces through the public API")
    return _score_public(client, experiment_id, scorers, batch_size)


def _score_with_processor(client: MlflowClient, experiment_id: str, scorers: Sequence[LiveScorer],
                          batch_size: int) -> PassReport:
    from mlflow.entities.experiment_tag import ExperimentTag
    from mlflow.genai.scorers.online import OnlineScorer, OnlineScoringConfig, OnlineTraceScoringProcessor
    from mlflow.genai.scorers.online.sampler import OnlineScorerSampler
    from mlflow.genai.scorers.online.trace_checkpointer import (
        OnlineTraceCheckpointManager,
        OnlineTraceScoringCheckpoint,
    )
    from mlflow.genai.scorers.online.trace_loader import OnlineTraceLoader

    from services._mlflow_internal import tracking_store

    report = PassReport(experiment_id)

    class _AppCheckpoint(OnlineTraceCheckpointManager):
        """MLflow's checkpoint logic, kept in the app's own experiment tag."""

        def get_checkpoint(self) -> Any:
            reached = checkpoint(client, experiment_id)
            return OnlineTraceScoringCheckpoint(timestamp_ms=reached[0], trace_id=reached[1]) if reached else None

        def persist_checkpoint(self, checkpoint_: Any) -> None:
            store.set_experiment_tag(experiment_id, ExperimentTag(APP_CHECKPOINT_TAG, checkpoint_.to_json()))

    class _Processor(OnlineTraceScoringProcessor):
        def _build_scoring_tasks(self, time_window: Any, checkpoint_: Any) -> dict:
            tasks = super()._build_scoring_tasks(time_window, checkpoint_)
            return dict(list(tasks.items())[:batch_size])

        def _execute_scoring(self, tasks: dict) -> None:
            todo = {}
            for trace_id, task in tasks.items():
                if task.trace is None:
                    continue
                done = already_scored(task.trace)
                report.already_scored += sum(1 for s in task.scorers if s.name in done)
                task.scorers = [s for s in task.scorers if s.name not in done]
                if task.scorers:
                    todo[trace_id] = task
            report.traces_scored += len(todo)
            report.assessments += sum(len(t.scorers) for t in todo.values())
            report.scored_trace_ids.extend(todo)
            super()._execute_scoring(todo)

    online = [
        OnlineScorer(
            name=s.name,
            serialized_scorer=s.serialized,
            online_config=OnlineScoringConfig(online_scoring_config_id=f"agentops-{s.name}", scorer_id=s.name,
                                              sample_rate=s.sample_rate, experiment_id=experiment_id,
                                              filter_string=s.filter_string or None),
        )
        for s in scorers
    ]
    store = tracking_store(client)
    processor = _Processor(trace_loader=OnlineTraceLoader(store), checkpoint_manager=_AppCheckpoint(store, experiment_id),
                           sampler=OnlineScorerSampler(online), experiment_id=experiment_id)
    processor.process_traces()
    reached = checkpoint(client, experiment_id)
    report.checkpoint_ms = reached[0] if reached else None
    return report


def _buffer_ms() -> int:
    from mlflow.environment_variables import MLFLOW_ONLINE_SCORING_DEFAULT_TRACE_COMPLETION_BUFFER_SECONDS as BUFFER

    return max(0, BUFFER.get()) * 1000


def sampled(trace_id: str, scorer_name: str, rate: float) -> bool:
    """The sampling rule of MLflow's ``OnlineScorerSampler`` for a single scorer."""
    value = int(hashlib.sha256(f"{trace_id}:{scorer_name}".encode()).hexdigest(), 16) / (2**256)
    return value <= rate


def _score_public(client: MlflowClient, experiment_id: str, scorers: Sequence[LiveScorer],
                  batch_size: int) -> PassReport:
    """Public-API fallback: same checkpoint tag, same sampling rule, ``Scorer.run`` + ``log_feedback``."""
    import mlflow
    from mlflow.entities import AssessmentSource, AssessmentSourceType, Feedback
    from mlflow.genai.scorers import Scorer

    report = PassReport(experiment_id, path="public-fallback")
    now_ms = int(time.time() * 1000)
    start = checkpoint(client, experiment_id)
    start_ms, start_id = start if start else (now_ms - 3_600_000, None)
    loaded = [(s, Scorer.model_validate_json(s.serialized)) for s in scorers]
    last: tuple[int, str] | None = None
    candidates: dict[str, Any] = {}
    for filter_string in {s.filter_string or "" for s in scorers}:
        clause = f"{EVAL_RUN_FILTER} AND trace.timestamp_ms >= {start_ms} AND trace.timestamp_ms <= {now_ms - _buffer_ms()}"
        clause += f" AND {filter_string}" if filter_string else ""
        for trace in client.search_traces(locations=[experiment_id], filter_string=clause,
                                          order_by=["timestamp_ms ASC", "request_id ASC"], max_results=batch_size * 4):
            key = (trace.info.timestamp_ms, trace.info.trace_id)
            if start_id is not None and key <= (start_ms, start_id):
                continue
            candidates[trace.info.trace_id] = trace
    for trace in sorted(candidates.values(), key=lambda t: (t.info.timestamp_ms, t.info.trace_id))[:batch_size]:
        done = already_scored(trace)
        todo = [(s, obj) for s, obj in loaded if sampled(trace.info.trace_id, s.name, s.sample_rate)
                and s.name not in done]
        for spec, obj in todo:
            value = obj.run(trace=trace)
            feedback = value if isinstance(value, Feedback) else Feedback(value=value)
            mlflow.log_feedback(trace_id=trace.info.trace_id, name=spec.name, value=feedback.value,
                                rationale=feedback.rationale,
                                source=AssessmentSource(AssessmentSourceType.CODE, source_id=spec.name))
        if todo:
            report.traces_scored += 1
            report.assessments += len(todo)
            report.scored_trace_ids.append(trace.info.trace_id)
        last = (trace.info.timestamp_ms, trace.info.trace_id)
    if last:
        client.set_experiment_tag(experiment_id, APP_CHECKPOINT_TAG, json.dumps({"timestamp_ms": last[0], "trace_id": last[1]}))
        report.checkpoint_ms = last[0]
    return report
