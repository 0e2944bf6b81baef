"""The demo workspace, checked through MLflow's own client."""

from __future__ import annotations

from datetime import datetime, timezone

import mlflow
import pytest
from mlflow import MlflowClient

from demo import seed
from services import overview, serving

pytestmark = pytest.mark.slow

def _endpoint_records(settings) -> dict:
    """The stored endpoint configurations (team state records: version and value of each)."""
    from services import team_state

    return {k: (r.version, r.value) for k, r in team_state.read_all(settings, serving.ENDPOINT_KEY).items()}



@pytest.fixture(scope="module")
def client(seeded_settings):
    return MlflowClient(tracking_uri=seeded_settings.tracking_uri, registry_uri=seeded_settings.registry_uri)


@pytest.mark.parametrize("agent", seed.DEMO_AGENTS, ids=lambda a: a.name)
def test_versions_aliases_params_and_commits(client, agent):
    model = client.get_registered_model(agent.name)
    versions = client.search_model_versions(f"name='{agent.name}'")
    assert len(versions) >= 3
    assert {a: int(v) for a, v in model.aliases.items()} == agent.aliases
    for version in versions:
        assert len(version.tags["git_commit"]) == 40
        assert version.source.startswith("models:/m-")
        logged = client.get_logged_model(version.source.removeprefix("models:/"))
        assert logged.params["strategy"] == version.tags["strategy"]
        run = client.get_run(version.run_id)
        assert run.data.params["llm_model"]
        assert run.data.tags["mlflow.source.git.commit"] == version.tags["git_commit"]


@pytest.mark.parametrize("agent", seed.DEMO_AGENTS, ids=lambda a: a.name)
def test_evaluation_runs_rank_the_versions(client, agent):
    experiment_id = client.get_registered_model(agent.name).tags["agentops.experiment_id"]
    runs = client.search_runs([experiment_id], "tags.`mlflow.runType` = 'genai_evaluate'")
    by_version = {r.data.tags["agentops.version"]: r for r in runs}
    assert len(by_version) >= 2
    facts = {v: r.data.metrics["expected_facts/mean"] for v, r in by_version.items()}
    # v2 is the measurably better version, v3 the regression.
    assert facts["2"] > facts["1"] > facts["3"]
    rows = len(seed.load_eval_rows(agent))
    assert rows >= 30
    for run in by_version.values():
        traces = mlflow.search_traces(locations=[experiment_id], run_id=run.info.run_id, return_type="list", include_spans=False)
        assert len(traces) == rows, "every evaluation row must be stored"


@pytest.mark.parametrize("agent", seed.DEMO_AGENTS, ids=lambda a: a.name)
def test_live_traces_are_linked_costed_and_spread(client, agent):
    experiment_id = client.get_registered_model(agent.name).tags["agentops.experiment_id"]
    days, errors, reviewed = set(), 0, 0
    for number in agent.split:
        version = client.get_model_version(agent.name, str(number))
        model_id = version.source.removeprefix("models:/")
        linked = mlflow.search_traces(
            locations=[experiment_id], model_id=model_id, return_type="list", include_spans=False,
        )
        traces = [t for t in linked if t.info.tags.get("agentops.endpoint") == agent.endpoint]
        assert traces, f"no live traces for v{number}"
        for trace in traces:
            assert trace.info.tags["agentops.arm"] == f"{agent.name}-{number}"
            days.add(datetime.fromtimestamp(trace.info.request_time / 1000, tz=timezone.utc).date())
            if str(trace.info.state) .endswith("ERROR"):
                errors += 1
            else:
                assert trace.info.token_usage["total_tokens"] > 0
                assert trace.info.cost["total_cost"] > 0
            reviewed += any(a.source.source_type == "HUMAN" for a in trace.info.assessments)
    assert len(days) >= 6
    assert errors > 0
    assert reviewed > 0


def test_endpoints_match_the_split(seeded_settings):
    endpoints = {e.name: e for e in serving.list_endpoints(seeded_settings)}
    for agent in seed.DEMO_AGENTS:
        endpoint = endpoints[agent.endpoint]
        assert {r.entity_name: r.percentage for r in endpoint.routes} == {
            f"{agent.name}-{n}": pct for n, pct in agent.split.items()
        }


def test_seeding_a_non_empty_store_changes_nothing(seeded_settings, client):
    before = len(client.search_model_versions())
    config_before = _endpoint_records(seeded_settings)
    assert seed.seed(seeded_settings, progress=lambda *_: None) is False
    assert len(client.search_model_versions()) == before
    assert _endpoint_records(seeded_settings) == config_before
    assert config_before
    assert not overview.store_is_empty(seeded_settings)
