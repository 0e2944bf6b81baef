"""Curation: reviewed traces with corrected answers become rows of an evaluation dataset."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from services import datasets
from services._clients import configure_mlflow, mlflow_client, translate_errors
from services.errors import NotFoundError, ValidationError
from services.feedback.labels import EXPECTED_RESPONSE
from services.feedback.reviews import get_trace_or_raise
from services.settings import Settings


def _question_of(inputs: Any) -> str | None:
    if isinstance(inputs, str):
        try:
            inputs = json.loads(inputs)
        except json.JSONDecodeError:
            return inputs.strip() or None
    if isinstance(inputs, dict):
        if isinstance(inputs.get("question"), str):
            return inputs["question"]
        messages = inputs.get("input") or inputs.get("messages")
        if isinstance(messages, list):
            users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            users = [u for u in users if isinstance(u, str) and u.strip()]
            if users:
                return users[-1]
    return None


@dataclass(frozen=True)
class CurationResult:
    """What curation stored: the dataset, the rows added and the traces skipped with the reason."""

    dataset_name: str
    dataset_id: str
    added: int
    skipped: tuple[tuple[str, str], ...]


def curation_rows(trace_ids: Sequence[str], settings: Settings | None = None) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Evaluation rows from reviewed traces: the question plus corrected answers as expectations."""
    client = mlflow_client(settings)
    rows, skipped = [], []
    for trace_id in trace_ids:
        try:
            trace = get_trace_or_raise(client, trace_id)
        except NotFoundError:
            skipped.append((trace_id, "deleted"))
            continue
        root = next((s for s in trace.data.spans if s.parent_id is None), None)
        question = _question_of(root.inputs if root is not None else None)
        if not question:
            skipped.append((trace_id, "no user question found"))
            continue
        valid = [a for a in (trace.info.assessments or []) if a.valid is not False
                 and getattr(a, "expectation", None) is not None]
        valid.sort(key=lambda a: a.create_time_ms or 0)
        expectations: dict[str, Any] = {}
        for a in valid:
            if a.name == EXPECTED_RESPONSE and isinstance(a.expectation.value, str):
                expectations["expected_response"] = a.expectation.value
            elif a.name == "expected_facts" and isinstance(a.expectation.value, list):
                expectations["expected_facts"] = [str(v) for v in a.expectation.value]
        if not expectations:
            skipped.append((trace_id, "no corrected answer"))
            continue
        rows.append({"inputs": {"question": question}, "expectations": expectations})
    return rows, skipped


def _require_experiment(client: Any, experiment_id: str) -> None:
    """``NotFoundError`` unless the experiment exists and is not deleted (checked before anything is stored)."""
    missing = NotFoundError(f"Experiment {experiment_id!r} does not exist (or was deleted); nothing was added. "
                            "Pick the experiment of the queue's agent.")
    try:
        with translate_errors(f"experiment {experiment_id!r}"):
            experiment = client.get_experiment(experiment_id.strip())
    except (NotFoundError, ValidationError):
        raise missing from None
    if experiment is None or str(getattr(experiment, "lifecycle_stage", "active")) == "deleted":
        raise missing


def curate_to_dataset(trace_ids: Sequence[str], dataset_name: str, experiment_id: str,
                      settings: Settings | None = None) -> CurationResult:
    """Add reviewed traces (with corrected answers) to an evaluation dataset, creating it if needed."""
    dataset_name = (dataset_name or "").strip()
    if not dataset_name:
        raise ValidationError("Give the evaluation dataset a name.")
    if not trace_ids:
        raise ValidationError("There are no reviewed traces to add.")
    if not experiment_id or not isinstance(experiment_id, str):
        raise ValidationError("Pick the experiment the dataset belongs to.")
    settings = configure_mlflow(settings)
    _require_experiment(mlflow_client(settings), experiment_id)
    rows, skipped = curation_rows(list(dict.fromkeys(trace_ids)), settings)
    if not rows:
        raise ValidationError("None of the traces has a corrected answer yet, so nothing was added. "
                              "Reviewers add one in the 'Corrected answer' field.")
    datasets.validate_rows(rows)
    # Created when missing, reused when present (also when an interrupted attempt created it); rows are
    # keyed by their inputs, so adding the same traces again adds no duplicate rows.
    dataset_id = datasets.add_rows(dataset_name, rows, experiment_id, settings)
    return CurationResult(dataset_name, dataset_id, len(rows), tuple(skipped))
