"""The demo's traces are linked the way a real workspace's are: by mlflow.modelId, with no agent or version tag."""

from __future__ import annotations

from collections import Counter

from mlflow import MlflowClient

from services import registry
from services.links import ModelIndex


def test_demo_traces_name_their_version_only_through_the_model_id(seeded_settings):
    client = MlflowClient(seeded_settings.tracking_uri, seeded_settings.tracking_uri)
    agents = registry.list_agents(seeded_settings)
    assert agents
    index = ModelIndex(client)
    for agent in agents:
        found = client.search_traces(locations=list(agent.experiment_ids), max_results=200, include_spans=False)
        assert found, agent.name
        by_version: Counter = Counter()
        for trace in found:
            tags = trace.info.tags or {}
            assert "agentops.agent" not in tags and "agentops.version" not in tags, trace.info.trace_id
            model_id = (trace.info.trace_metadata or {}).get("mlflow.modelId")
            if "agentops.endpoint" in tags:  # live traffic (evaluation rows have no endpoint)
                linked = index.version_of(model_id) if model_id else None
                assert linked is not None and linked[0] == agent.name, trace.info.trace_id
                assert tags["agentops.arm"] == f"{agent.name}-{linked[1]}"
                by_version[linked[1]] += 1
        assert len(by_version) >= 2, (agent.name, by_version)  # the demo A/B-tests two versions per agent
