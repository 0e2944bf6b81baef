"""The workspace summary the Overview page shows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from services import _mlflow_internal as internal
from services import evaluations, registry, serving, traces
from services.serving import ai_gateway
from services._clients import get_settings, mlflow_client, translate_errors
from services.errors import AgentOpsError
from services.settings import Settings
from services.team_state import state_experiment


@dataclass(frozen=True)
class AgentActivity:
    agent: registry.AgentSummary
    last_24h: traces.TraceWindowSummary


@dataclass(frozen=True)
class WorkspaceOverview:
    agents: tuple[AgentActivity, ...]
    endpoints: tuple[serving.Endpoint, ...]
    last_24h: traces.TraceWindowSummary
    latest_evaluations: tuple[evaluations.EvaluationSummary, ...]
    generated_at: datetime
    # MLflow AI Gateway endpoints of an ``mlflow server`` (arms named provider/model), and why they
    # could not be listed when that failed (the rest of the overview still shows).
    gateway_endpoints: tuple[serving.Endpoint, ...] = ()
    gateway_problem: str | None = None

    @property
    def version_count(self) -> int:
        return sum(a.agent.version_count for a in self.agents)

    @property
    def is_empty(self) -> bool:
        return not self.agents and not self.endpoints and not self.gateway_endpoints


def agent_experiment_ids(agents: list[registry.AgentSummary], settings: Settings) -> list[str]:
    """Experiments holding the agents' traces: configured ids plus each agent's discovered ones."""
    ids = list(settings.experiment_ids)
    for agent in agents:
        for experiment_id in agent.experiment_ids or ((agent.experiment_id,) if agent.experiment_id else ()):
            if experiment_id not in ids:
                ids.append(experiment_id)
    return ids


def agent_window(agent: registry.AgentSummary, model_ids: tuple[str, ...], since: datetime, now: datetime,
                 settings: Settings) -> traces.TraceWindowSummary:
    """An agent's last-window traffic: traces linked to its versions' LoggedModels (``mlflow.modelId``),
    or carrying the app's older agent tag; one store-side aggregate."""
    experiment_ids = list(dict.fromkeys([*agent.experiment_ids, *settings.experiment_ids]))
    empty = traces.TraceWindowSummary(since, now, 0, 0, None, None, None)
    if not experiment_ids:
        return empty
    link = internal.TraceLink(model_ids, ((traces.AGENT_TAG, agent.name),))
    with translate_errors("trace metrics"):
        result = internal.aggregate_traces(
            mlflow_client(settings), experiment_ids, start_ms=int(since.timestamp() * 1000),
            end_ms=int(now.timestamp() * 1000), interval_seconds=86400, links=[link], with_models=False,
        )
    total = next((r for r in result.rows if r.bucket_ms is None), None)
    if total is None:
        return empty
    return traces.TraceWindowSummary(since, now, total.requests, total.errors, total.p50_ms, total.p95_ms,
                                     total.recorded_cost if total.recorded_cost else None)


def workspace_overview(settings: Settings | None = None, *, now: datetime | None = None) -> WorkspaceOverview:
    """Agents, alias holders, endpoints, last-24h traffic and latest evaluations, in one value."""
    settings = settings or get_settings()
    now = now or datetime.now(tz=timezone.utc)
    since = now - timedelta(hours=24)
    agents = registry.list_agents(settings)
    experiment_ids = agent_experiment_ids(agents, settings)
    links = registry.all_version_links(settings) if agents else []
    activity = tuple(
        AgentActivity(
            agent,
            agent_window(agent, tuple(l.model_id for l in links if l.agent == agent.name and l.model_id),
                         since, now, settings),
        )
        for agent in agents
    )
    gateway_endpoints, gateway_problem = _gateway_endpoints(settings)
    return WorkspaceOverview(
        gateway_endpoints=gateway_endpoints,
        gateway_problem=gateway_problem,
        agents=activity,
        endpoints=tuple(serving.list_endpoints(settings)),
        last_24h=traces.window_summary(experiment_ids, since, now, settings=settings),
        latest_evaluations=tuple(evaluations.latest_evaluations(experiment_ids, limit=8, settings=settings)),
        generated_at=now,
    )


def _gateway_endpoints(settings: Settings) -> tuple[tuple[serving.Endpoint, ...], str | None]:
    if not ai_gateway.available(settings):
        return (), None
    try:
        return tuple(ai_gateway.list_endpoints(settings)), None
    except AgentOpsError as exc:
        return (), str(exc)


def store_is_empty(settings: Settings | None = None) -> bool:
    """True when the store holds no registered model and no experiment besides ``Default`` (and team state)."""
    settings = settings or get_settings()
    client = mlflow_client(settings)
    with translate_errors("the tracking store"):
        if client.search_registered_models(max_results=1):
            return False
        experiments = client.search_experiments(max_results=10)
    return all(e.name in ("Default", state_experiment(settings)) for e in experiments)
