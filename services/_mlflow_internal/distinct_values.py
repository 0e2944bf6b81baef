"""Distinct values among a window's traces: linked model ids, a tag's values.

Both lists come from one helper: on a SQL store one ``SELECT DISTINCT`` over a key/value table
(``trace_request_metadata`` or ``trace_tags``) joined to the window's ``trace_info`` rows; elsewhere
the newest ``sample`` traces are searched without spans, so rare values may be missed.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from mlflow import MlflowClient

from services._mlflow_internal import aggregates
from services._mlflow_internal.trace_links import MODEL_ID_KEY, SOURCE_RUN_KEY

# The most traces one `search_traces` page may ask `mlflow server` for (its handler refuses more).
SEARCH_TRACES_PAGE_LIMIT = 500


def trace_model_ids(
    client: MlflowClient,
    experiment_ids: Sequence[str],
    *,
    start_ms: int,
    end_ms: int,
    sample: int = 1000,
    force_fallback: bool = False,
    live_only: bool = True,
) -> list[str]:
    """Distinct ``mlflow.modelId`` values among the traces of a window (which versions had traffic).

    With ``live_only``, evaluation rows (traces carrying ``mlflow.sourceRun``) do not count.
    """

    def from_info(info: Any) -> str | None:
        metadata = info.trace_metadata or {}
        return None if live_only and metadata.get(SOURCE_RUN_KEY) else metadata.get(MODEL_ID_KEY)

    values = _distinct_values(client, experiment_ids, "metadata", MODEL_ID_KEY, start_ms, end_ms, sample,
                              force_fallback, from_info, without_metadata=SOURCE_RUN_KEY if live_only else None)
    return sorted(values)


def trace_tag_values(
    client: MlflowClient,
    experiment_ids: Sequence[str],
    key: str,
    *,
    start_ms: int,
    end_ms: int,
    sample: int = 1000,
    force_fallback: bool = False,
) -> list[str]:
    """Distinct values of trace tag ``key`` among the traces of a window."""
    values = _distinct_values(client, experiment_ids, "tags", key, start_ms, end_ms, sample, force_fallback,
                              lambda info: info.tags.get(key))
    return sorted(values, key=lambda v: (len(v), v))


def _distinct_values(client: MlflowClient, experiment_ids: Sequence[str], table: str, key: str, start_ms: int,
                     end_ms: int, sample: int, force_fallback: bool, from_info: Callable[[Any], str | None], *,
                     without_metadata: str | None = None) -> set[str]:
    """Distinct non-empty values of ``key`` in the ``table`` ("tags" or "metadata") of a window's traces.

    ``without_metadata`` leaves out traces carrying that metadata key (SQL path; ``from_info`` says
    the same for the fallback, which reads each trace's info).
    """
    if not experiment_ids:
        return set()
    if aggregates.supports_sql_aggregation(client) and not force_fallback:
        import sqlalchemy as sa
        from mlflow.store.tracking.dbmodels.models import SqlTraceInfo, SqlTraceMetadata, SqlTraceTag

        from services._mlflow_internal import store_db

        store = store_db.sql_source(client)
        ti, md = SqlTraceInfo.__table__, SqlTraceMetadata.__table__
        kv = md if table == "metadata" else SqlTraceTag.__table__
        with store.ManagedSessionMaker() as session:  # the store's own experiment scoping (workspaces)
            ids = [int(i) for i in store._filter_experiment_ids(session, [int(i) for i in experiment_ids])]
        statement = (
            sa.select(kv.c.value).distinct()
            .select_from(kv.join(ti, kv.c.request_id == ti.c.request_id))
            .where(ti.c.experiment_id.in_(ids), ti.c.timestamp_ms >= start_ms, ti.c.timestamp_ms < end_ms,
                   kv.c.key == key)
        )
        if without_metadata:
            other = md.alias("without_md")
            statement = statement.where(~sa.exists().where(other.c.request_id == ti.c.request_id,
                                                            other.c.key == without_metadata))
        with store.engine.connect() as connection:
            values = {row[0] for row in connection.execute(statement)}
    else:
        values = {from_info(info) for info in _newest_trace_infos(client, experiment_ids, start_ms, end_ms, sample)}
    return {v for v in values if v}


def _newest_trace_infos(client: MlflowClient, experiment_ids: Sequence[str], start_ms: int, end_ms: int,
                        sample: int) -> list[Any]:
    """The newest ``sample`` trace infos of a window, in pages the server accepts (no spans read)."""
    infos: list[Any] = []
    token = None
    while len(infos) < sample:
        page = client.search_traces(
            locations=list(experiment_ids), filter_string=f"trace.timestamp_ms >= {start_ms} AND "
                                                          f"trace.timestamp_ms < {end_ms}",
            max_results=min(SEARCH_TRACES_PAGE_LIMIT, sample - len(infos)), include_spans=False,
            order_by=["timestamp_ms DESC"], page_token=token,
        )
        infos.extend(t.info for t in page)
        token = page.token
        if not token or not page:
            break
    return infos
