"""Reading endpoints and changing their traffic splits, audited, on whichever backend holds them."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Callable, Sequence

from services import audit, roles
from services._clients import get_settings, mlflow_client, translate_errors
from services.audit import Change, ChangeKind
from services.errors import ConflictError, NotFoundError, ValidationError
from services.serving.backends import percentages, split_backend
from services.serving.base import ArmTraffic, SplitBackend
from services.serving.entities import (
    Endpoint,
    EndpointBackend,
    ServedVersion,
    TrafficRoute,
    describe_split,
    validate_routes,
)
from services.serving.model_serving import entity_name_for
from services.settings import Settings


@dataclass(frozen=True)
class SplitPlan:
    """A validated change: ``before`` is what the plan was made against, ``after`` what it sets."""

    before: Endpoint
    after: Endpoint

    def percentages(self) -> tuple[dict[str, int], dict[str, int]]:
        return percentages(self.before), percentages(self.after)


def list_endpoints(settings: Settings | None = None, *, backend: EndpointBackend | None = None) -> list[Endpoint]:
    """All endpoints of a backend (by default the app's agent endpoints) with their served versions and split."""
    return split_backend(backend, settings or get_settings()).list_endpoints()


def get_endpoint(name: str, settings: Settings | None = None, *, backend: EndpointBackend | None = None) -> Endpoint:
    """One endpoint by name (``NotFoundError`` if it does not exist); by default an agent endpoint."""
    return split_backend(backend, settings or get_settings()).get(name)


def arm_traffic(endpoint: Endpoint, experiment_ids: Sequence[str], start: datetime, end: datetime, *,
                settings: Settings | None = None) -> tuple[list[ArmTraffic], int]:
    """Each arm's traces in the window, and how many traces of the endpoint name no arm."""
    return split_backend(endpoint.backend, settings or get_settings()).arm_traffic(endpoint, experiment_ids, start, end)


_VERSION = re.compile(r"[0-9]+")


def normalise_version(version: Any) -> str:
    """A registry version number as the registry writes it ("01" and 1 are "1"); ``ValidationError`` otherwise."""
    text = str(version).strip() if isinstance(version, (str, int)) and not isinstance(version, bool) else ""
    if not _VERSION.fullmatch(text):
        raise ValidationError(f"{version!r} is not a version number; versions are whole numbers such as 3.")
    return str(int(text))


def _normalised_weights(weights: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """The split keyed by normalised versions; a version named twice (e.g. "1" and "01") is refused."""
    normalised: dict[tuple[str, str], int] = {}
    for (model_name, version), pct in weights.items():
        # An external or foundation model has no version: it is named by its served entity.
        key = (model_name, "") if version in ("", None) else (model_name, normalise_version(version))
        if key in normalised:
            raise ValidationError(f"{model_name} v{key[1]} is listed twice in the split; give each version one share.")
        normalised[key] = pct
    return normalised


def plan_split(
    endpoint_name: str,
    weights: dict[tuple[str, str], int],
    *,
    sticky: bool | None = None,
    settings: Settings | None = None,
) -> SplitPlan:
    """Validate a proposed split (``(model, version) -> percent``) against the current agent endpoint.

    Nothing is written. Raises ``ValidationError`` for a split that does not sum to 100, a
    negative share or an empty split, and ``NotFoundError`` for an unknown endpoint or version.
    """
    if not weights:
        raise ValidationError("Choose at least one served version.")
    for (model_name, version), pct in weights.items():
        if not isinstance(pct, int) or isinstance(pct, bool):
            raise ValidationError(f"{model_name} v{version}: the share must be a whole number of percent.")
    weights = _normalised_weights(weights)
    before = get_endpoint(endpoint_name, settings)
    if before.read_only:
        raise ValidationError(f"{endpoint_name!r} is {before.read_only}.")
    existing = {(s.model_name, s.model_version): s for s in before.served}
    for model_name, version in weights:
        if not version and (model_name, version) not in existing:
            raise ValidationError(f"{model_name!r} is not served by {endpoint_name!r}; name a registered model version "
                                  "or one of the endpoint's served entities.")
    served = tuple(
        existing.get((m, v)) or ServedVersion(entity_name_for(m, v), m, v) for (m, v) in weights
    )
    routes = tuple(TrafficRoute(s.entity_name, weights[(s.model_name, s.model_version)]) for s in served)
    validate_routes(served, routes)
    # The registry must hold every version we are about to route to.
    client = mlflow_client(settings)
    for model_name, version in weights:
        if (model_name, version) in existing:
            continue
        with translate_errors(f"registered model {model_name!r}"):
            client.get_model_version(model_name, version)
    after = replace(before, served=served, routes=routes, sticky=before.sticky if sticky is None else sticky,
                    config_version=None, pending_routes=(), read_only=None, error=None)
    return SplitPlan(before, after)


def plan_shares(before: Endpoint, shares: dict[str, int]) -> SplitPlan:
    """Validate new shares of the arms ``before`` already serves (entity name -> percent); nothing is written.

    Every arm must get a share (0 keeps it served without traffic).
    """
    _check_shares(shares)
    if before.read_only:
        raise ValidationError(f"{before.name!r} is {before.read_only}.")
    validate_routes(before.served, tuple(TrafficRoute(name, pct) for name, pct in shares.items()))
    missing = [s.entity_name for s in before.served if s.entity_name not in shares]
    if missing:
        raise ValidationError(f"Give {', '.join(missing)} a share too (0 to send it no traffic).")
    ordered = tuple(TrafficRoute(s.entity_name, shares[s.entity_name]) for s in before.served)
    return SplitPlan(before, replace(before, routes=ordered, config_version=None, pending_routes=()))


def plan_weights(endpoint_name: str, weights: dict[str, int], *, settings: Settings | None = None) -> SplitPlan:
    """New shares of an MLflow AI Gateway endpoint's models (model definition name -> percent).

    Attaching or detaching models is done in MLflow's own AI Gateway UI.
    """
    _check_shares(weights)  # before anything is read
    return plan_shares(get_endpoint(endpoint_name, settings, backend=EndpointBackend.MLFLOW_GATEWAY), weights)


def _check_shares(shares: dict[str, int]) -> None:
    if not shares:
        raise ValidationError("Give every model of the endpoint a share.")
    for name, pct in shares.items():
        if not isinstance(pct, int) or isinstance(pct, bool):
            raise ValidationError(f"{name}: the share must be a whole number of percent.")


def apply_split(
    plan: SplitPlan,
    *,
    user: str,
    reason: str,
    action: str = "edit split",
    settings: Settings | None = None,
    user_token: str | None = None,
    progress: Callable[[str], None] | None = None,
    identity: Any = None,
    request_id: str | None = None,
) -> Endpoint:
    """Apply a planned split and record it in the audit trail; returns the endpoint as stored.

    With ``identity`` (pages pass it), the acting user's role is checked first: changing traffic
    needs the operator role, and on Databricks with user authorization a user token.

    The audit intent is written before the endpoint is touched, and completed with the split the
    endpoint holds afterwards. ``request_id`` (one per confirmation) makes a retry after a backend
    failure safe: it completes the recorded attempt (writing the split only if it was not written)
    instead of changing or recording twice, and a retry of a completed one changes nothing.
    """
    settings = settings or get_settings()
    if not reason.strip():
        raise ValidationError("Give a reason for the traffic change; it goes into the audit trail.")
    audit.check_request_id(request_id)
    if identity is not None:
        roles.enforce(identity, roles.Action.CHANGE_TRAFFIC, settings)
    backend = split_backend(plan.before.backend, settings, user_token=user_token, progress=progress)
    return audit.run_two_phase(_SplitChange(plan, user, reason, action, backend), request_id).state


class _SplitChange(audit.TwoPhaseChange[Endpoint]):
    """Writing one plan's split through its backend, as the steps of the audit trail's two-phase change."""

    kind = ChangeKind.TRAFFIC

    def __init__(self, plan: SplitPlan, user: str, reason: str, action: str, backend: SplitBackend) -> None:
        self.plan, self.user, self.reason, self.action, self.backend = plan, user, reason, action, backend
        self.settings = backend.settings
        self.name = plan.before.name
        self.target = {"endpoint": self.name}
        self.lock_key = endpoint_lock(self.name)
        self.before_pct, self.after_pct = plan.percentages()
        self._seen: Endpoint | None = None  # the state the write must still find (its concurrency token)

    def check(self) -> None:
        """Refuse a plan made against a split that has changed since; nothing is recorded or sent."""
        conflict = self.backend.conflict(self.plan.before, self.observe())
        if conflict is not None:
            raise conflict

    def planned(self) -> tuple[dict[str, int], dict[str, int]]:
        return self.before_pct, self.after_pct

    def act(self, intent: Change) -> Endpoint:
        return self.backend.write(self._seen or self.plan.before, self.plan.after, user=self.user)

    def observe(self) -> Endpoint:
        self._seen = self.backend.read(self.name)
        return self._seen

    def recorded(self, state: Endpoint) -> dict[str, int]:
        return percentages(state)

    def holds_requested(self, intent: Change, state: Endpoint) -> bool:
        return self.backend.holds(state, self.plan.after)

    def holds_before(self, intent: Change, state: Endpoint) -> bool:
        return self.backend.holds(state, self.plan.before)

    def same_request(self, earlier: Change) -> ValidationError | None:
        asked = earlier.requested if earlier.requested is not None else earlier.after
        if asked == self.after_pct:
            return None
        return ValidationError(f"Request {earlier.request_id} changed {self.name!r} to {describe_split(asked)}, not "
                               f"{describe_split(self.after_pct)}; start a new confirmation for this one.")

    uncertain = "the split may or may not have changed"

    def what(self, intent: Change | None = None) -> str:
        if intent is None:
            return f"the traffic change on {self.name!r}"
        return f"traffic change on {intent.endpoint!r} to {describe_split(intent.requested or intent.after)}"

    def unchanged(self) -> str:
        return f": the endpoint keeps its split {describe_split(self.before_pct)}"

    def superseded(self, earlier: Change, state: Endpoint) -> ConflictError:
        return ConflictError(
            f"{self.name!r} now splits {describe_split(percentages(state))}, neither the split before the "
            "interrupted change nor the one it asked for: another change happened since. The interrupted attempt "
            "is closed without changing anything; review the new split and try again."
        )

    def describe(self, state: Endpoint) -> str:
        return describe_split(percentages(state))


def endpoint_lock(name: str) -> tuple[str, ...]:
    """The one lock key of every audited change of an endpoint (split changes, endpoint edits, deploys)."""
    return ("traffic", name)


def settle_interrupted(endpoint: Endpoint, change: Change, *, user: str, settings: Settings | None = None,
                       identity: Any = None) -> str:
    """Settle an interrupted change of ``endpoint`` (a split change or a deploy) from what it serves now.

    For when the confirmation that would retry it is gone (another session, a reload). It goes
    through the resume path of every audited change without changing the split again: if the
    endpoint serves what the change asked for, the record is completed as applied; otherwise the
    change did not take effect (or was overwritten since) and the attempt is closed.
    """
    settings = settings or get_settings()
    if identity is not None:
        roles.enforce(identity, roles.Action.CHANGE_TRAFFIC, settings)
    if change.completed:
        return "This change is already recorded as done."
    backend = split_backend(endpoint.backend, settings)

    def observe() -> Endpoint | None:
        try:
            return backend.read(endpoint.name)
        except NotFoundError:  # a deploy that would have created it, or a deleted endpoint
            return None

    def recorded(state: Endpoint | None) -> dict[str, int]:
        return percentages(state) if state is not None else {}

    done = audit.settle(change, lock_key=endpoint_lock(endpoint.name), observe=observe, recorded=recorded, by=user,
                        settings=settings)
    return audit.settled_message(done, endpoint.name, describe_split(recorded(done.state)))
