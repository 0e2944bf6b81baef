"""Counts, errors, latency percentiles, tokens, cost and model mix per group and bucket: SQL where
the store's tables can be read, ``query_trace_metrics`` otherwise."""

from __future__ import annotations

from typing import Sequence

from mlflow import MlflowClient

from services._mlflow_internal import rollups
from services._mlflow_internal.aggregate_fallback import _aggregate_metrics_api
from services._mlflow_internal.aggregate_rows import TraceAggregates
from services._mlflow_internal.aggregate_sql import _aggregate_sql
from services._mlflow_internal.trace_links import TraceLink


def supports_sql_aggregation(client: MlflowClient) -> bool:
    """True when the fast aggregate can read the store's tables: an embedded SQL store on SQLite or
    PostgreSQL, or a server whose database URL was given (``store_db``)."""
    from services._mlflow_internal import store_db

    return store_db.sql_source(client) is not None


def aggregate_traces(
    client: MlflowClient,
    experiment_ids: Sequence[str],
    *,
    start_ms: int,
    end_ms: int,
    interval_seconds: int,
    group_tag: str | None = None,
    groups: Sequence[str] = (),
    tag_equals: dict[str, str] | None = None,
    status: str | None = None,
    with_models: bool = True,
    force_fallback: bool = False,
    links: Sequence[TraceLink] = (),
    group_links: dict[str, TraceLink] | None = None,
    evaluation_rows: bool = False,
    use_rollups: bool = True,
) -> TraceAggregates:
    """Counts, errors, latency percentiles, tokens, cost and model mix per group and bucket.

    Traces are those of ``experiment_ids`` started in ``[start_ms, end_ms)`` whose tags equal
    ``tag_equals``, that match every one of ``links`` (and whose status is ``status``). Figures
    are split by ``group_links`` (label -> link; a trace may count in several labels, e.g. two
    aliases on one version) or, the older form, by ``group_tag``'s value among ``groups``. On a
    SQLite store this runs two SQL statements (the model link is a join on
    ``trace_request_metadata``); elsewhere (REST, Databricks, other databases) it falls back to
    ``query_trace_metrics`` calls per group and linked model. Without ``with_models`` the model
    mix (the costlier half on SQLite) is skipped and ``models`` is empty. Traces linked by model
    id are live traffic: evaluation rows of the same LoggedModel (``mlflow.sourceRun``) are left
    out on a SQL store unless ``evaluation_rows`` (the fallback cannot tell them apart).

    Behind ``mlflow server`` on PostgreSQL (``AGENTOPS_STORE_DB_URL``), queries the incremental
    roll-ups can answer (``rollups``: filters and split on model ids and the app's tags, buckets of
    whole 15 minutes) read those instead of scanning every
    trace (``path`` ``"rollup"``; percentiles within 1%); ``use_rollups=False`` scans directly.
    """
    if group_tag and not groups:
        raise ValueError("group_tag needs the group values to aggregate")
    if group_tag:
        group_links = {g: TraceLink(tags=((group_tag, g),)) for g in dict.fromkeys(groups)}
    group_links = dict(group_links or {})
    if group_links:
        keys = {k for link in group_links.values() for k, _ in link.tags}
        if len(keys) > 1:
            raise ValueError(f"the groups' tags use several keys ({sorted(keys)}); use one")
        if any(link.is_empty for link in group_links.values()):
            raise ValueError("every group needs a model id or a tag to select its traces")
    tag_pairs = tuple(sorted((tag_equals or {}).items()))
    links = tuple(link for link in links)
    if any(link.is_empty for link in links):
        # A filter that nothing can match (an agent without versions): no traces.
        return TraceAggregates((), (), "empty", 0)
    args = (list(experiment_ids), start_ms, end_ms, interval_seconds, group_links, tag_pairs, status,
            with_models, links)
    from services._mlflow_internal import store_db

    if supports_sql_aggregation(client) and not force_fallback:
        source = store_db.sql_source(client)
        # The team path: a server's PostgreSQL read through AGENTOPS_STORE_DB_URL (embedded stores keep
        # the direct statements).
        if (use_rollups and isinstance(source, store_db.SqlSource)
                and rollups.can_answer(interval_seconds, group_links, tag_pairs, links)):
            target = rollups.rollup_store_for(source, store_db.registered_url(getattr(client, "tracking_uri", "") or ""))
            if target is not None:
                with source.ManagedSessionMaker() as session:  # the store's own experiment scoping
                    ids = source._filter_experiment_ids(session, [int(i) for i in experiment_ids])
                return rollups.aggregate(target, source, ids, *args[1:], evaluation_rows=evaluation_rows)
        return _aggregate_sql(source, *args, evaluation_rows=evaluation_rows)
    return _aggregate_metrics_api(client, *args)

