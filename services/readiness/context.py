"""What the checklist reads once per agent, for any number of its versions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services import (
    alerting,
    alerts,
    live_scoring,
    registry,
    serving,
    version_traffic,
    versions,
)
from services._clients import (
    mlflow_client,
    translate_errors,
)
from services.errors import AgentOpsError
from services.evaluations import EvaluationSummary
from services.readiness.report import REQUIRED_TAG, parse_required
from services.readiness_checks import (
    Item,
)
from services.settings import Settings


@dataclass
class AgentContext:
    agent: str
    settings: Settings
    client: Any
    model: Any
    experiment_ids: list[str]
    runs: list[EvaluationSummary]
    traffic: dict[str, versions.VersionTraffic]
    required: frozenset[Item]
    endpoints: list[Any] | None
    endpoints_error: str
    thresholds: dict[str, Any] | None
    thresholds_error: str
    dataset_cache: dict[str, tuple[int, int] | None] = field(default_factory=dict)
    evaluations: version_traffic.EvaluationRuns | None = None  # which runs are evaluations, looked up once
    alert_rules: int | None = None  # enabled alert rules watching the agent (None: could not be read)
    live: Any = None  # the agent's live-scoring configuration, if any
    live_error: str = ""


def read_context(agent: str, settings: Settings, required: frozenset[Item] | None) -> AgentContext:
    client = mlflow_client(settings)
    with translate_errors(f"registered model {agent!r}"):
        model = client.get_registered_model(agent)
    if required is None:
        required = parse_required((model.tags or {}).get(REQUIRED_TAG))
    with translate_errors(f"versions of {agent!r}"):
        all_versions = registry.agent_versions(client, agent)
    experiment_ids = versions.agent_experiment_ids(agent, settings, model=model, versions=all_versions)
    runs = versions.evaluations_for(agent, settings, experiment_ids=experiment_ids)
    # Live traffic per LoggedModel (the model-id link), evaluation rows left out.
    traffic = version_traffic.live_traffic_by_model(
        experiment_ids, [m for m in map(registry.model_id_of, all_versions) if m], settings)
    endpoints, endpoints_error = None, ""
    try:
        endpoints = serving.list_endpoints(settings)
    except AgentOpsError as exc:
        endpoints_error = str(exc)
    thresholds, thresholds_error = None, ""
    try:
        thresholds = alerts.load_thresholds(settings)
    except AgentOpsError as exc:
        thresholds_error = str(exc)
    alert_rules: int | None = None
    try:
        alert_rules = len(alerting.rules_for(settings, agent))
    except AgentOpsError as exc:
        thresholds_error = thresholds_error or str(exc)
    live, live_error = None, ""
    try:
        live, _ = live_scoring.load_config(agent, settings)
    except AgentOpsError as exc:
        live_error = str(exc)
    return AgentContext(agent, settings, client, model, experiment_ids, runs, traffic, required,
                    endpoints, endpoints_error, thresholds, thresholds_error,
                    evaluations=version_traffic.EvaluationRuns(client), alert_rules=alert_rules, live=live,
                    live_error=live_error)
