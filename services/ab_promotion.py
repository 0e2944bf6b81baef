"""Promoting the winning arm of an endpoint (or rolling back): traffic first, then the alias, both audited."""

from __future__ import annotations

from dataclasses import dataclass

from services import releases, roles, serving
from services._clients import get_settings
from services.audit import AliasAction
from services.errors import AgentOpsError, ValidationError
from services.identity import Identity
from services.promotion import PromotionRequest
from services.serving import EndpointBackend
from services.settings import Settings


@dataclass(frozen=True)
class PromotionOutcome:
    traffic_moved: bool
    alias_moved: bool
    endpoint: serving.Endpoint | None
    message: str


class PartialPromotionError(AgentOpsError):
    """Traffic moved but the alias did not; the message says exactly where things stand."""


def promote_arm(
    endpoint_name: str, entity_name: str, identity: Identity, *, reason: str, alias: str = "champion",
    override_gate: bool = False, action: str = "promote winner", settings: Settings | None = None,
    source: EndpointBackend | None = None, request_id: str | None = None,
) -> PromotionOutcome:
    """Move 100% of traffic to one arm, then point ``alias`` at its version; both audited.

    Traffic moves first. If the alias cannot follow, ``PartialPromotionError`` states that the
    traffic moved and the alias did not, so the operator can retry the alias alone. An arm with no
    registry version (an MLflow AI Gateway provider model) only gets the traffic: there is no alias
    to move. ``request_id`` (one per confirmation) makes a retry after a backend failure complete
    each step exactly once.
    """
    settings = settings or get_settings()
    roles.enforce(identity, roles.Action.CHANGE_TRAFFIC, settings)
    if not reason.strip():
        raise ValidationError("Give a reason; it goes into the audit trail.")
    endpoint = serving.get_endpoint(endpoint_name, settings, backend=source)
    served = {s.entity_name: s for s in endpoint.served}
    if entity_name not in served:
        raise ValidationError(f"{entity_name!r} is not an arm of {endpoint_name!r}.")
    winner = served[entity_name]
    plan = serving.plan_shares(endpoint, {s.entity_name: 100 if s.entity_name == entity_name else 0
                                          for s in endpoint.served})
    stored = serving.apply_split(plan, user=identity.user, reason=reason, action=action, settings=settings,
                                 user_token=identity.access_token, request_id=request_id and f"{request_id}-traffic")
    if not winner.model_version:
        return PromotionOutcome(True, False, stored,
                                f"{endpoint_name}: 100% to {entity_name}. No alias moved: {winner.label} is a "
                                "provider model, not a registered version.")
    try:
        releases.promote(PromotionRequest(
            winner.model_name, alias, winner.model_version, reason=reason, override=override_gate,
            action=AliasAction.ROLLBACK if action.startswith("roll") else AliasAction.PROMOTE,
            request_id=request_id and f"{request_id}-alias",
        ), identity, settings)
    except AgentOpsError as exc:
        raise PartialPromotionError(
            f"Traffic on {endpoint_name!r} now goes 100% to {winner.model_name} v{winner.model_version}, "
            f"but {winner.model_name}@{alias} was NOT moved: {exc} Retry moving the alias on the Versions page, "
            "or roll the traffic back."
        ) from exc
    return PromotionOutcome(True, True, stored,
                            f"{endpoint_name}: 100% to v{winner.model_version}; {alias} → v{winner.model_version}.")
