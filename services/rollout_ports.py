"""The rollout controller's ports on the real services: splits through the serving backends and the
audited change mechanism, evidence from the endpoint's traces (``ab.endpoint_samples``), promotion
through the one gated promotion path, notices through the alert channels."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import numpy as np

from services import ab, alerting, audit, registry, releases, serving
from services.errors import AgentOpsError, NotFoundError
from services.identity import Identity, IdentitySource
from services.promotion import PromotionRequest
from services.rollout_controller import evidence_from_arms
from services.rollouts import ArmEvidence, Baseline, RolloutPlan
from services.settings import Backend, Settings

_logger = logging.getLogger(__name__)

BASELINE_WINDOW = timedelta(hours=24)
ACTION = "rollout"


class ServicePorts:
    """``rollout_controller.RolloutPorts`` on the app's services, for one settings object.

    Build one per tick of the controller (or per page run): the registry's agents are listed once
    per instance, not at every look.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._agents: list[registry.AgentSummary] | None = None

    def _endpoint(self, name: str) -> serving.Endpoint:
        """The app's agent endpoint ``name``; with an ``mlflow server``, else its MLflow AI Gateway endpoint."""
        try:
            return serving.get_endpoint(name, self.settings)
        except NotFoundError:
            if self.settings.backend is not Backend.MLFLOW:
                raise
        try:
            return serving.get_endpoint(name, self.settings, backend=serving.EndpointBackend.MLFLOW_GATEWAY)
        except NotFoundError:
            raise NotFoundError(f"{name!r} is neither an agent endpoint nor an MLflow AI Gateway endpoint.") from None

    def served_arms(self, endpoint: str) -> dict[str, int]:
        return _shares(self._endpoint(endpoint))

    def _experiments(self, endpoint: serving.Endpoint) -> list[str]:
        models = {s.model_name for s in endpoint.served}
        ids: list[str] = []
        if self._agents is None:
            self._agents = registry.list_agents(self.settings)
        for agent in self._agents:
            if agent.name in models:
                ids.extend(i for i in (agent.experiment_id, *agent.experiment_ids) if i)
        return list(dict.fromkeys(ids))

    def _arms(self, plan: RolloutPlan, start: datetime, end: datetime) -> dict[str, ab.ArmSample]:
        endpoint = self._endpoint(plan.endpoint)
        samples, _ = ab.endpoint_samples(endpoint, self._experiments(endpoint), start, end, settings=self.settings)
        return {s.entity_name: s for s in samples}

    def baseline(self, plan: RolloutPlan) -> Baseline:
        now = datetime.now(tz=timezone.utc)
        champion = self._arms(plan, now - BASELINE_WINDOW, now).get(plan.champion)
        if champion is None or not champion.requests:
            return Baseline()
        costs = list(champion.costs)
        return Baseline(p95_latency_ms=float(np.percentile(champion.latencies_ms, 95)),
                        cost_per_request=float(np.mean(costs)) if costs else None)

    def evidence(self, plan: RolloutPlan, baseline: Baseline, since: datetime, until: datetime) -> ArmEvidence:
        arms = self._arms(plan, since, until)
        empty = ab.ArmSample(plan.challenger, "", "", (), 0, (), (), (), (), ())
        return evidence_from_arms(plan, baseline, arms.get(plan.challenger, empty),
                                  arms.get(plan.champion, empty))

    def set_shares(self, endpoint: str, shares: dict[str, int], *, request_id: str, actor: str, reason: str) -> None:
        current = self._endpoint(endpoint)
        wanted = {**{s.entity_name: 0 for s in current.served}, **shares}
        change_id = f"{request_id}-traffic"
        if _shares(current) == wanted and audit.find_change(audit.ChangeKind.TRAFFIC, {"endpoint": endpoint}, change_id,
                                                            settings=self.settings) is None:
            return  # already there before this action: nothing to change, nothing to record
        # Otherwise the audited change runs, or resumes: a split that landed before an interruption
        # (the backend went away before its record was completed) is completed in the trail, not
        # written again.
        plan = serving.plan_shares(current, wanted)
        serving.apply_split(plan, user=actor, reason=reason, action=ACTION, settings=self.settings,
                            request_id=change_id)

    def promote(self, plan: RolloutPlan, *, request_id: str, actor: str, reason: str) -> None:
        endpoint = self._endpoint(plan.endpoint)
        served = next(s for s in endpoint.served if s.entity_name == plan.challenger)
        if not served.model_version:
            return  # a provider model has no alias to move: the traffic was all there is
        identity = Identity(actor, actor, IdentitySource.UNKNOWN)
        releases.promote(PromotionRequest(served.model_name, plan.alias, served.model_version,
                                          reason=f"Guarded rollout on {plan.endpoint}: {reason}",
                                          request_id=f"{request_id}-alias"), identity, self.settings)

    def notify(self, title: str, body: str, *, key: str) -> None:
        try:
            alerting.notify_channels(self.settings, title, body, key=key, by="rollout controller")
        except AgentOpsError as exc:  # a channel problem must not stop the rollout's action
            _logger.warning("rollout notice %s not sent: %s", key, exc)


def _shares(endpoint: serving.Endpoint) -> dict[str, int]:
    """Each served arm's share of traffic in percent (0 for an arm no route names)."""
    return {**{s.entity_name: 0 for s in endpoint.served},
            **{r.entity_name: int(r.percentage) for r in endpoint.routes}}
