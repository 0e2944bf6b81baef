"""The builder wrote what it says it wrote, read back with MLflow's public APIs only."""

from __future__ import annotations

from mlflow import MlflowClient

from tests.realworld.workspace import BULK_AGENT, BULK_VERSIONS, UNICODE_AGENT


def test_builder_facts_match_the_store(realworld):
    client = MlflowClient(realworld.tracking_uri, realworld.tracking_uri)
    for agent in realworld.agents.values():
        versions = client.search_model_versions(f"name='{agent.name}'", max_results=1000)
        assert {str(v.version) for v in versions} == set(agent.versions)
        for v in versions:
            assert v.source == f"models:/{agent.versions[str(v.version)].model_id}"
    support = realworld.agents[UNICODE_AGENT]
    traces = client.search_traces(locations=[support.experiment_id], max_results=1000, include_spans=False)
    by_model = {}
    for t in traces:
        if t.info.request_metadata.get("mlflow.sourceRun"):
            continue  # evaluation rows
        key = t.info.request_metadata.get("mlflow.modelId")
        by_model.setdefault(key, []).append(t.info)
        assert not any(k.startswith("agentops.") for k in t.info.tags)
    for version in support.versions.values():
        infos = by_model[version.model_id]
        assert len(infos) == version.traces
        assert sum(i.state.value == "ERROR" for i in infos) == version.errors
        assert sum((i.token_usage or {}).get("input_tokens", 0) for i in infos) == version.input_tokens
    assert len(by_model[None]) == len(realworld.unlinked_trace_ids)
    assert sum(len(v) for k, v in by_model.items() if k) == sum(v.traces for v in support.versions.values()) + len(
        realworld.orphan_trace_ids)
    assert len(realworld.agents[BULK_AGENT].versions) == BULK_VERSIONS
    for model in client.search_registered_models():
        assert not any(k.startswith("agentops.") for k in model.tags)
