"""The workspace summary the Overview page shows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from services import evaluations, registry, serving, traces
from services._clients import get_settings, mlflow_client, translate_errors
from services.settings import Settings


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
    """Experiments holding the agents' traces: configured ids plus each agent's tagged experiment."""
    ids = list(settings.experiment_ids)
    ids += [a.experiment_id for a in agents if a.experiment_id and a.experiment_id not in ids]
    return ids


def workspace_overview(settings: Settings | None = None, *, now: datetime | None = None) -> WorkspaceOverview:
    """Agents, alias holders, endpoints, last-24h traffic and latest evaluations, in one value."""
    settings = settings or get_settings()
    now = now or datetime.now(tz=timezone.utc)
    since = now - timedelta(hours=24)
    agents = registry.list_agents(settings)
    experiment_ids = agent_experiment_ids(agents, settings)
    activity = tuple(
        AgentActivity(
            agent,
            traces.window_summary([agent.experiment_id], since, now, settings=settings)
            if agent.experiment_id
            else traces.TraceWindowSummary(since, now, 0, 0, None, None, None),
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
    from services import ai_gateway
    from services.errors import AgentOpsError

    if not ai_gateway.available(settings):
        return (), None
    try:
        return tuple(ai_gateway.list_endpoints(settings)), None
    except AgentOpsError as exc:
        return (), str(exc)


def store_is_empty(settings: Settings | None = None) -> bool:
    """True when the store holds no registered model and no experiment besides ``Default`` (and team state)."""
    from services.team_state import state_experiment

    settings = settings or get_settings()
    client = mlflow_client(settings)
    with translate_errors("the tracking store"):
        if client.search_registered_models(max_results=1):
            return False
        experiments = client.search_experiments(max_results=10)
    return all(e.name in ("Default", state_experiment(settings)) for e in experiments)
