"""The app reads a workspace written by other code through MLflow's own links (issue 17, items 1, 2, 5).

Every figure is checked against the facts the builder wrote, never against numbers copied here.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services import _mlflow_internal as internal
from services import monitoring as mon
from services import trace_explorer
from services import registry
from services.errors import NotFoundError
from tests.realworld.workspace import BULK_AGENT, EMPTY_AGENT, QUIET_AGENT, UNICODE_AGENT


def _query(realworld, agent=None, **filters) -> mon.TraceQuery:
    end = datetime.now(tz=timezone.utc) + timedelta(minutes=5)
    ids = tuple(sorted(realworld.experiment_ids))
    return mon.TraceQuery(ids, end - timedelta(days=1), end, agent=agent, **filters)


def test_agents_find_their_experiments_from_their_logged_models(realworld, realworld_settings):
    agents = {a.name: a for a in registry.list_agents(realworld_settings)}
    assert set(agents) == set(realworld.agents)
    for name, facts in realworld.agents.items():
        agent = agents[name]
        assert agent.experiment_id == facts.experiment_id
        assert agent.experiment_ids == ((facts.experiment_id,) if facts.experiment_id else ())
        assert agent.version_count == len(facts.versions)
        assert agent.aliases == dict(sorted(facts.aliases.items()))


def test_every_version_links_to_its_logged_model(realworld, realworld_settings):
    for name in (UNICODE_AGENT, BULK_AGENT, QUIET_AGENT):
        links, experiments = registry.agent_links(name, realworld_settings)
        facts = realworld.agents[name]
        assert experiments == [facts.experiment_id]
        assert {l.version: l.model_id for l in links} == {v: f.model_id for v, f in facts.versions.items()}
        assert all(l.experiment_id == facts.experiment_id for l in links)
    with pytest.raises(NotFoundError):
        registry.agent_links("no such agent", realworld_settings)


def test_monitoring_splits_by_version_through_the_model_id(realworld, realworld_settings):
    facts = realworld.agents[UNICODE_AGENT]
    versions = sorted(facts.versions)
    data = mon.monitoring_data(_query(realworld, UNICODE_AGENT), "version", versions, settings=realworld_settings)
    assert data.aggregation_path == "sql"
    totals = data.totals.set_index("group")
    for number, version in facts.versions.items():
        assert totals.loc[number, "requests"] == version.traces
        assert totals.loc[number, "errors"] == version.errors
        assert totals.loc[number, "input_tokens"] == version.input_tokens
        assert totals.loc[number, "output_tokens"] == version.output_tokens
    # The agent's total leaves out the traces with no model id and the evaluation rows.
    whole = mon.monitoring_data(_query(realworld, UNICODE_AGENT), settings=realworld_settings).totals.iloc[0]
    assert whole["requests"] == sum(v.traces for v in facts.versions.values())
    assert whole["errors"] == sum(v.errors for v in facts.versions.values())


def test_alias_split_and_filters_follow_the_current_holder(realworld, realworld_settings):
    facts = realworld.agents[UNICODE_AGENT]
    aliases = sorted(facts.aliases)
    data = mon.monitoring_data(_query(realworld, UNICODE_AGENT), "alias", aliases, settings=realworld_settings)
    totals = data.totals.set_index("group")
    for alias, number in facts.aliases.items():
        assert totals.loc[alias, "requests"] == facts.versions[number].traces
    v1 = facts.versions["1"]
    only = mon.monitoring_data(_query(realworld, UNICODE_AGENT, version="1"), settings=realworld_settings)
    assert (only.totals.iloc[0]["requests"], only.totals.iloc[0]["errors"]) == (v1.traces, v1.errors)
    errors = trace_explorer.count_matching(_query(realworld, UNICODE_AGENT, status=mon.Status.ERROR), settings=realworld_settings)
    assert errors == sum(v.errors for v in facts.versions.values())


def test_sql_and_fallback_agree_on_model_id_groups(realworld, realworld_settings):
    from mlflow import MlflowClient

    facts = realworld.agents[UNICODE_AGENT]
    client = MlflowClient(realworld.tracking_uri)
    query = _query(realworld)
    # Versions without evaluation rows: the fallback cannot leave those out (AND-only filters).
    versions = {n: v for n, v in facts.versions.items() if v.model_id != realworld.eval_runs["with_model"].model_id}
    groups = {n: internal.TraceLink((v.model_id,), (("agentops.version", n),)) for n, v in versions.items()}
    agent_link = internal.TraceLink(tuple(v.model_id for v in facts.versions.values()))
    args = dict(start_ms=query.start_ms, end_ms=query.end_ms, interval_seconds=3600, group_links=groups,
                links=[agent_link])
    fast = internal.aggregate_traces(client, list(query.experiment_ids), **args)
    slow = internal.aggregate_traces(client, list(query.experiment_ids), **args, force_fallback=True)
    assert (fast.path, slow.path) == ("sql", "query_trace_metrics")
    whole = lambda result: {r.group: (r.requests, r.errors, r.input_tokens) for r in result.rows if r.bucket_ms is None}
    assert whole(fast) == whole(slow) == {
        n: (v.traces, v.errors, v.input_tokens) for n, v in versions.items()
    }


def test_versions_with_traffic_and_an_agent_without_any(realworld, realworld_settings):
    facts = realworld.agents[UNICODE_AGENT]
    assert set(mon.versions_with_traffic(_query(realworld, UNICODE_AGENT), realworld_settings)) == set(facts.versions)
    bulk = {n for n, v in realworld.agents[BULK_AGENT].versions.items() if v.traces}
    assert set(mon.versions_with_traffic(_query(realworld, BULK_AGENT), realworld_settings)) == bulk
    for quiet in (QUIET_AGENT, EMPTY_AGENT):
        assert mon.versions_with_traffic(_query(realworld, quiet), realworld_settings) == []
        assert mon.monitoring_data(_query(realworld, quiet), settings=realworld_settings).is_empty


def test_explorer_names_agent_and_version_from_the_model_id(realworld, realworld_settings):
    facts = realworld.agents[UNICODE_AGENT]
    page = trace_explorer.search_page(trace_explorer.ExplorerQuery(_query(realworld, UNICODE_AGENT)), page_size=500,
                           settings=realworld_settings)
    expected = {t: n for n, v in facts.versions.items() for t in v.trace_ids}
    assert dict(zip(page.rows.trace_id, page.rows.version)) == expected
    assert set(page.rows.agent) == {UNICODE_AGENT} and set(page.rows.link) == {"model id"}
    v2 = trace_explorer.search_page(trace_explorer.ExplorerQuery(_query(realworld, UNICODE_AGENT, version="2")), page_size=500,
                         settings=realworld_settings)
    assert set(v2.rows.trace_id) == set(facts.versions["2"].trace_ids)
    everything = trace_explorer.search_page(trace_explorer.ExplorerQuery(_query(realworld)), page_size=500, settings=realworld_settings)
    rows = everything.rows.set_index("trace_id")
    unlinked = rows.loc[realworld.unlinked_trace_ids]
    assert set(unlinked.link) == {"no model id on the trace"} and unlinked.version.isna().all()
    orphans = rows.loc[realworld.orphan_trace_ids]
    assert set(orphans.link) == {"model id of no registered version"} and orphans.version.isna().all()
    assert orphans.model_id.notna().all()


def test_bulk_agent_figures_per_version(realworld, realworld_settings):
    facts = realworld.agents[BULK_AGENT]
    busy = [n for n, v in facts.versions.items() if v.traces]
    data = mon.monitoring_data(_query(realworld, BULK_AGENT), "version", busy, settings=realworld_settings)
    totals = data.totals.set_index("group")
    for number in busy:
        assert totals.loc[number, "requests"] == facts.versions[number].traces
