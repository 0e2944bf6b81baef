"""Reading single traces and store upkeep: stored trace ids, one trace's info, SQLite statistics."""

from __future__ import annotations

from typing import Sequence

from mlflow import MlflowClient
from mlflow.entities import (
    TraceInfo,
)

from services._mlflow_internal.trace_write import tracking_store

# --- confirming stored traces ------------------------------------------------------------------


def stored_trace_ids(client: MlflowClient, trace_ids: Sequence[str]) -> set[str]:
    """The subset of ``trace_ids`` whose trace and spans are in the store.

    Uses the SQL store's ``batch_get_trace_infos`` (one query) where present, else one public
    ``get_trace`` call per id. A trace counts once its spans landed (the
    ``mlflow.trace.spansLocation`` tag that ``log_spans`` writes).
    """
    store = tracking_store(client)
    batch = getattr(store, "batch_get_trace_infos", None)
    infos = []
    if batch is not None:
        infos = batch(list(trace_ids))
    else:
        for trace_id in trace_ids:
            try:
                infos.append(client.get_trace(trace_id).info)
            except Exception:  # noqa: BLE001 - not stored (yet)
                continue
    return {
        info.trace_id for info in infos if info.tags.get("mlflow.trace.spansLocation")
    }


def trace_info(client: MlflowClient, trace_id: str) -> TraceInfo:
    """One trace's info without loading its spans (``MlflowClient`` has no public accessor).

    Uses the client's private tracing client; falls back to the public ``get_trace``.
    """
    tracing = getattr(client, "_tracing_client", None)
    if tracing is not None and hasattr(tracing, "get_trace_info"):
        return tracing.get_trace_info(trace_id)
    return client.get_trace(trace_id).info


# --- SQLite maintenance ----------------------------------------------------------------------


def analyze_sqlite(db_path: str) -> bool:
    """Refresh SQLite planner statistics after a bulk load; return False if not a SQLite file.

    Without statistics, span name/type trace filters on a freshly loaded store take minutes;
    ``ANALYZE`` (a fraction of a second) brings them to seconds (shared/MLFLOW-NOTES.md).
    """
    import sqlite3
    from pathlib import Path

    if not Path(db_path).is_file():
        return False
    with sqlite3.connect(db_path) as connection:
        connection.execute("ANALYZE")
    return True

