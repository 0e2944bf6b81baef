"""Evaluation runs made with ``mlflow.genai.evaluate``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

from services._clients import mlflow_client, translate_errors
from services.settings import Settings

EVAL_RUN_FILTER = "tags.`mlflow.runType` = 'genai_evaluate'"
AGENT_TAG = "agentops.agent"
VERSION_TAG = "agentops.version"
DATASET_TAG = "agentops.dataset"


@dataclass(frozen=True)
class EvaluationSummary:
    """One evaluation run; ``metrics`` holds the ``<scorer>/mean`` values."""

    run_id: str
    run_name: str
    experiment_id: str
    agent: str | None
    version: str | None
    dataset: str | None
    started_at: datetime | None
    status: str
    metrics: dict[str, float]


def latest_evaluations(
    experiment_ids: Sequence[str], *, limit: int = 10, settings: Settings | None = None
) -> list[EvaluationSummary]:
    """The most recent evaluation runs across the given experiments, newest first."""
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
    return [
        EvaluationSummary(
            run_id=run.info.run_id,
            run_name=run.info.run_name or run.info.run_id,
            experiment_id=run.info.experiment_id,
            agent=run.data.tags.get(AGENT_TAG),
            version=run.data.tags.get(VERSION_TAG),
            dataset=run.data.tags.get(DATASET_TAG),
            started_at=datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc)
            if run.info.start_time
            else None,
            status=run.info.status,
            metrics={k: v for k, v in run.data.metrics.items() if k.endswith("/mean")},
        )
        for run in runs
    ]
