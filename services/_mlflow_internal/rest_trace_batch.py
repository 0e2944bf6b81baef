"""Write captured traces to a remote ``mlflow server`` in batches (non-public MLflow store methods).

MLflow's exporter sends every trace on its own: a ``StartTraceV3`` request per trace, and its spans
in OTLP requests of at most ``MLFLOW_ASYNC_TRACE_LOGGING_MAX_SPAN_BATCH_SIZE`` (5) spans, queued
to separate worker threads. The two race, and when the trace info lands before its spans the
exporter also uploads the whole trace as an artifact. Profiled behind a PostgreSQL ``mlflow
server`` (bench/README.md, "Gateway on the shared server"), that is ~2 store requests per trace
plus the gateway's polling of the store to confirm each trace, and every one of them costs the
server its HTTP and ORM overhead.

Here a batch of captured traces (``span_batch.CapturedTrace``) is written with:

* ``RestStore.start_trace(info)`` per trace (the server's ``StartTraceV3``: metadata such as
  ``mlflow.modelId``, tags, previews, token usage, final state), a few at a time in threads;
* then ``RestStore.log_spans(experiment_id, spans)`` once per experiment per ~``max_spans``
  spans: MLflow's OTLP endpoint ``/v1/traces`` with the ``x-mlflow-experiment-id`` header, which
  takes spans of many traces in one request and one database session on the server.

Both are idempotent (the server merges a repeated ``start_trace`` and upserts spans), so a
caller may retry what failed. Success of both requests means the trace is stored, so the
gateway needs no polling to confirm it.

Non-public surface: the client's store is a ``RestStore`` with ``start_trace`` and ``log_spans``
(the latter needs a server of MLflow >= 3.4). ``tests/gateway/test_gateway_server.py`` writes
through it to a real ``mlflow server`` and checks that the stored traces equal what MLflow's
exporter stores, so an upgrade that changes either fails loudly. Public fallback: when the store
is not one, ``supports`` is False and MLflow's exporter records traces as before.
"""

from __future__ import annotations

import concurrent.futures
import logging
from typing import Any, Sequence

from mlflow import MlflowClient

from services._mlflow_internal.trace_write import failure_text, tracking_store

_logger = logging.getLogger(__name__)


def supports(client: MlflowClient) -> bool:
    """True when the client's store is MLflow's REST store of an ``mlflow server`` (not Databricks,
    whose trace server takes spans only into Unity Catalog tables) with ``start_trace`` and ``log_spans``."""
    try:
        from mlflow.store.tracking.rest_store import RestStore
        from mlflow.utils.uri import is_databricks_uri
    except ImportError:  # pragma: no cover - only with an MLflow that moved it
        return False
    if is_databricks_uri(client.tracking_uri):
        return False
    store = tracking_store(client)
    return isinstance(store, RestStore) and callable(getattr(store, "start_trace", None)) \
        and callable(getattr(store, "log_spans", None))


def write_traces(client: MlflowClient, traces: Sequence[Any], *, workers: int = 4,
                 max_spans: int = 1_000) -> dict[str, str]:
    """Write captured traces through the server; the ones that failed, trace id -> error.

    ``start_trace`` runs for up to ``workers`` traces at once (the server answers them in
    parallel); the spans of the traces whose info was stored then go in OTLP requests of whole
    traces, up to ``max_spans`` spans each.
    """
    if not traces:
        return {}
    store = tracking_store(client)
    failures: dict[str, str] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(workers, len(traces))),
                                               thread_name_prefix="agentops-start-trace") as pool:
        outcomes = pool.map(lambda captured: _start(store, captured), traces)
        for captured, error in zip(traces, outcomes):
            if error is not None:
                failures[captured.trace_id] = error
    chunks: list[tuple[str, list[Any], list[str]]] = []  # (experiment, spans, trace ids)
    open_chunk: dict[str, tuple[list[Any], list[str]]] = {}
    for captured in traces:
        if captured.trace_id in failures:
            continue
        spans, ids = open_chunk.setdefault(captured.experiment_id, ([], []))
        spans.extend(captured.trace.data.spans)
        ids.append(captured.trace_id)
        if len(spans) >= max_spans:
            chunks.append((captured.experiment_id, spans, ids))
            del open_chunk[captured.experiment_id]
    chunks.extend((experiment_id, spans, ids) for experiment_id, (spans, ids) in open_chunk.items())
    for experiment_id, spans, ids in chunks:
        try:
            store.log_spans(experiment_id, spans)
        except Exception as exc:  # noqa: BLE001 - every trace of the request failed; the caller retries
            error = failure_text(exc)
            failures.update({trace_id: error for trace_id in ids})
    return failures


def _start(store: Any, captured: Any) -> str | None:
    try:
        store.start_trace(captured.trace.info)
    except Exception as exc:  # noqa: BLE001 - reported per trace
        return failure_text(exc)
    return None
