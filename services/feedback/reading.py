"""Reading feedback of any name and source type from live traces, attributed to agent and version."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from services._clients import mlflow_client, translate_errors
from services.errors import ValidationError
from services.links import ModelIndex
from services.settings import Settings
from services.traces import AGENT_TAG, ARM_TAG, VERSION_TAG

# ``source_type`` is HUMAN, LLM_JUDGE or CODE; ``model_id`` is the trace's ``mlflow.modelId``.
# ``agent`` / ``version`` come from the app's trace tags when present, else from the model id
# (LoggedModel → registered version), so feedback on traces written by other code is attributed too.
FEEDBACK_COLUMNS = ("trace_id", "time", "agent", "version", "arm", "reviewer", "name", "value", "source_type",
                    "model_id")
MODEL_ID_METADATA = "mlflow.modelId"
# Metadata evaluate() puts on the traces of an evaluation run: their scores are not live feedback.
SOURCE_RUN_METADATA = "mlflow.sourceRun"


def human_feedback(experiment_ids: Sequence[str], start_ms: int, end_ms: int, *, agent: str | None = None,
                   max_traces: int = 5000, settings: Settings | None = None,
                   human_only: bool = True) -> pd.DataFrame:
    """Valid feedback of any name on live traces of a window (``FEEDBACK_COLUMNS``), one row per assessment.

    Every feedback name present is read (not only ``thumbs_up`` / ``rating``); with
    ``human_only`` (the default) only HUMAN sources count. Traces of evaluation runs are left out.
    With ``agent``, traces attributed to another agent are left out.
    """
    if not experiment_ids:
        return pd.DataFrame(columns=list(FEEDBACK_COLUMNS))
    if agent is not None and any(c in agent for c in "'`\n"):
        raise ValidationError(f"{agent!r} is not an agent name.")
    client = mlflow_client(settings)
    clauses = [f"trace.timestamp_ms >= {int(start_ms)}", f"trace.timestamp_ms < {int(end_ms)}"]
    rows: list[dict[str, Any]] = []
    index = ModelIndex(client)
    token = None
    seen = 0
    with translate_errors("trace search"):
        while True:
            page = client.search_traces(
                locations=list(experiment_ids), filter_string=" AND ".join(clauses),
                max_results=500, page_token=token, include_spans=False,
            )
            for trace in page:
                seen += 1
                if (trace.info.trace_metadata or {}).get(SOURCE_RUN_METADATA):
                    continue
                found = _feedback_rows(trace.info, index, human_only=human_only)
                if agent:
                    found = [r for r in found if r["agent"] in (agent, None)]
                rows.extend(found)
            token = page.token
            if not token or seen >= max_traces:
                break
    return pd.DataFrame(rows, columns=list(FEEDBACK_COLUMNS))


def _feedback_rows(info: Any, index: Any = None, *, human_only: bool = True) -> list[dict[str, Any]]:
    tags = info.tags or {}
    model_id = (getattr(info, "trace_metadata", None) or {}).get(MODEL_ID_METADATA)
    agent, version = tags.get(AGENT_TAG), tags.get(VERSION_TAG)
    out = []
    for a in getattr(info, "assessments", None) or []:
        source = getattr(a, "source", None)
        if getattr(a, "feedback", None) is None or a.valid is False:
            continue
        if getattr(a.feedback, "error", None) is not None and a.feedback.value is None:
            continue  # a scorer that failed gave no judgement
        source_type = str(getattr(getattr(source, "source_type", None), "value", getattr(source, "source_type", "")))
        if human_only and not source_type.endswith("HUMAN"):
            continue
        if (agent is None or version is None) and model_id and index is not None:
            found = index.version_of(model_id)
            if found and agent in (None, found[0]):
                agent, version = found
        out.append({
            "trace_id": info.trace_id, "time": pd.Timestamp(info.request_time, unit="ms", tz="UTC"),
            "agent": agent, "version": version, "arm": tags.get(ARM_TAG),
            "reviewer": getattr(source, "source_id", None), "name": a.name, "value": a.feedback.value,
            "source_type": source_type.rsplit(".", 1)[-1], "model_id": model_id,
        })
    return out

