"""Served traffic of agent versions: traces linked to a version's LoggedModel that are not evaluation rows.

``mlflow.genai.evaluate`` writes one trace per row, linked to the evaluated LoggedModel
(``mlflow.modelId``) and to its run (``mlflow.sourceRun``). Those rows are not requests anyone
sent the agent, so the Versions table's trace counts, the readiness item "traces exist" and the
promotion evidence (trace counts, p95 latency and cost per request that gate rules check) leave
them out. A trace logged inside any other run (a notebook, a build run) still counts: only runs
that are evaluations (``mlflow.runType = genai_evaluate``) make their traces evaluation rows.

The store-side aggregate (``_mlflow_internal.aggregate_traces``) stays the fast path; only versions
that have evaluation rows in the window are read again trace by trace to take those rows out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

import numpy as np

from services import _mlflow_internal as internal
from services._clients import mlflow_client, translate_errors
from services.errors import AgentOpsError
from services.settings import Settings
from services.filter_strings import escape

TRAFFIC_WINDOW = timedelta(days=7)
MODEL_ID = "mlflow.modelId"
SOURCE_RUN = "mlflow.sourceRun"
EVALUATION_RUN_TYPE = "genai_evaluate"
_PAGE = 500


@dataclass(frozen=True)
class VersionTraffic:
    """Traces linked to one version's LoggedModel over a window."""

    traces: int
    errors: int
    p95_ms: float | None
    cost_per_request: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.traces if self.traces else None


class EvaluationRuns:
    """Which run ids are evaluations, looked up once per run."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._known: dict[str, bool] = {}

    def __contains__(self, run_id: object) -> bool:
        if not run_id or not isinstance(run_id, str):
            return False
        if run_id not in self._known:
            try:
                with translate_errors(f"run {run_id}"):
                    tags = self._client.get_run(run_id).data.tags
                self._known[run_id] = tags.get("mlflow.runType") == EVALUATION_RUN_TYPE
            except AgentOpsError:
                self._known[run_id] = False  # a run that cannot be read is not known to be an evaluation
        return self._known[run_id]


def is_evaluation_row(info: Any, evaluations: EvaluationRuns) -> bool:
    """True when a trace is a row of an evaluation run."""
    return (info.trace_metadata or {}).get(SOURCE_RUN) in evaluations


def trace_infos(client: Any, experiment_ids: Sequence[str], clauses: list[str]) -> Iterable[Any]:
    token = None
    while True:
        with translate_errors("traces"):
            page = client.search_traces(locations=list(experiment_ids), filter_string=" AND ".join(clauses),
                                        max_results=_PAGE, page_token=token, include_spans=False)
        yield from (t.info for t in page)
        token = page.token
        if not token:
            return


def _figures(infos: list[Any]) -> VersionTraffic:
    durations = [i.execution_duration for i in infos if i.execution_duration is not None]
    costs = [c for c in ((i.cost or {}).get("total_cost") for i in infos) if c is not None]
    errors = sum(1 for i in infos if str(getattr(i.state, "value", i.state)) == "ERROR")
    return VersionTraffic(
        traces=len(infos), errors=errors,
        p95_ms=float(np.percentile(durations, 95)) if durations else None,
        cost_per_request=float(sum(costs)) / len(infos) if costs and infos else None,
    )


def _window(now: datetime | None, window: timedelta) -> tuple[datetime, int]:
    """The window's end (now when not given) and its start in epoch milliseconds."""
    now = now or datetime.now(tz=timezone.utc)
    return now, int((now - window).timestamp() * 1000)


def traffic_by_model(
    experiment_ids: Sequence[str], model_ids: Sequence[str], settings: Settings | None = None, *,
    now: datetime | None = None, window: timedelta = TRAFFIC_WINDOW, force_fallback: bool = False,
) -> dict[str, VersionTraffic]:
    """Served traffic by LoggedModel id, aggregated in the store (the Versions table).

    On SQL stores and the roll-ups the store itself leaves out the traces carrying ``mlflow.sourceRun``
    (evaluation rows) and no trace is read. The ``query_trace_metrics`` fallback (other stores, or
    ``force_fallback``) cannot tell them apart: there the versions with evaluation rows in the window
    are read again trace by trace, as in :func:`live_traffic_by_model`.
    """
    wanted = [m for m in dict.fromkeys(model_ids) if m]
    if not experiment_ids or not wanted:
        return {}
    now, since_ms = _window(now, window)
    client = mlflow_client(settings)
    traffic, path = _stored_traffic(client, experiment_ids, wanted, now, since_ms, evaluation_rows=False,
                                    force_fallback=force_fallback)
    if path == _FALLBACK_PATH:
        return _without_evaluation_rows(client, experiment_ids, wanted, since_ms, traffic)
    return traffic


def live_traffic_by_model(
    experiment_ids: Sequence[str], model_ids: Sequence[str], settings: Settings | None = None, *,
    now: datetime | None = None, window: timedelta = TRAFFIC_WINDOW,
) -> dict[str, VersionTraffic]:
    """Trace count, errors, p95 latency and cost per request of served traffic, by LoggedModel id.

    Exact on every store: only traces of evaluation runs (``mlflow.runType = genai_evaluate``) are
    left out, the versions that have some read again trace by trace (readiness and gates use this).
    """
    wanted = [m for m in dict.fromkeys(model_ids) if m]
    if not experiment_ids or not wanted:
        return {}
    now, since_ms = _window(now, window)
    client = mlflow_client(settings)
    traffic, _ = _stored_traffic(client, experiment_ids, wanted, now, since_ms, evaluation_rows=True)
    return _without_evaluation_rows(client, experiment_ids, wanted, since_ms, traffic)


# The aggregate's path when it ran through query_trace_metrics (``_mlflow_internal.aggregate_fallback``).
_FALLBACK_PATH = "query_trace_metrics"


def _stored_traffic(client: Any, experiment_ids: Sequence[str], model_ids: list[str], now: datetime,
                    since_ms: int, *, evaluation_rows: bool, force_fallback: bool = False
                    ) -> tuple[dict[str, VersionTraffic], str]:
    """Traces linked to each LoggedModel in the window (evaluation rows too when asked), aggregated in the
    store, and the aggregate's path."""
    with translate_errors("traces"):
        result = internal.aggregate_traces(
            client, list(experiment_ids), start_ms=since_ms, end_ms=int(now.timestamp() * 1000) + 1,
            interval_seconds=86400, group_links={m: internal.TraceLink((m,)) for m in model_ids},
            with_models=False, evaluation_rows=evaluation_rows, force_fallback=force_fallback,
        )
    return {
        row.group: VersionTraffic(row.requests, row.errors, row.p95_ms,
                                  row.recorded_cost / row.requests if row.recorded_cost and row.requests else None)
        for row in result.rows if row.bucket_ms is None and row.group
    }, result.path


def _without_evaluation_rows(client: Any, experiment_ids: Sequence[str], wanted: list[str], since_ms: int,
                             traffic: dict[str, VersionTraffic]) -> dict[str, VersionTraffic]:
    """``traffic`` with the evaluation rows taken out: the versions that have some are read again."""
    evaluations = EvaluationRuns(client)
    # Traces written inside a run are few next to live traffic: read those, find the evaluation rows.
    with_rows: set[str] = set()
    try:
        for info in trace_infos(client, experiment_ids, [f"trace.timestamp_ms >= {since_ms}",
                                                         f"metadata.`{SOURCE_RUN}` LIKE '%'"]):
            model_id = (info.trace_metadata or {}).get(MODEL_ID)
            if model_id in wanted and model_id in traffic and is_evaluation_row(info, evaluations):
                with_rows.add(model_id)
    except AgentOpsError:
        with_rows = {m for m in wanted if m in traffic}  # cannot tell: read each version's traces
    for model_id in with_rows:
        infos = [i for i in trace_infos(client, experiment_ids, [f"trace.timestamp_ms >= {since_ms}",
                                                                 model_clause(model_id)])
                 if not is_evaluation_row(i, evaluations)]
        if infos:
            traffic[model_id] = _figures(infos)
        else:
            traffic.pop(model_id, None)
    return traffic


def find_live_trace(experiment_ids: Sequence[str], clauses: list[str], settings: Settings | None = None, *,
                    evaluations: EvaluationRuns | None = None) -> tuple[bool, int]:
    """Whether a trace matching ``clauses`` (of any age) is live, and the evaluation rows met before it.

    Stops at the first live trace; when there is none, the count is every evaluation row matched.
    """
    if not experiment_ids or not clauses:
        return False, 0
    client = mlflow_client(settings)
    evaluations = evaluations or EvaluationRuns(client)
    rows = 0
    for info in trace_infos(client, experiment_ids, clauses):
        if not is_evaluation_row(info, evaluations):
            return True, rows
        rows += 1
    return False, rows


def model_clause(model_id: str) -> str:
    """The search clause of traces linked to a LoggedModel."""
    return f"metadata.`{MODEL_ID}` = '{escape(model_id)}'"
