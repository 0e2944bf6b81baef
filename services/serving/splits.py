"""Reading endpoints and changing their traffic splits, audited, on whichever backend holds them."""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Callable, Sequence

from services import audit, roles, traffic_audit
from services._clients import get_settings, mlflow_client, translate_errors
from services.errors import BackendUnavailableError, ConflictError, NotFoundError, PermissionDeniedError, ValidationError
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
    write = _SplitWriter(plan, user, backend)
    before_pct, after_pct = plan.percentages()
    name = plan.before.name
    with _split_lock(name):
        if request_id:
            earlier = traffic_audit.find_traffic_change(name, request_id, settings=settings)
            if earlier is not None:
                return _resume_split(write, earlier)
        write.check_unchanged()
        try:
            intent = traffic_audit.open_traffic_change(
                name, action=action, user=user, reason=reason, before=before_pct, after=after_pct,
                request_id=request_id or uuid.uuid4().hex, settings=settings,
            )
        except BackendUnavailableError as exc:
            raise BackendUnavailableError(
                f"The MLflow backend stopped answering before the traffic change on {name!r} was recorded. "
                f"Nothing changed: the endpoint keeps its split {describe_split(before_pct)}. "
                f"Retry once the backend is back. ({exc})"
            ) from exc
        return _write_and_record(write, intent)


class _SplitWriter:
    """Writes one plan's split through its backend, against the state it last read."""

    def __init__(self, plan: SplitPlan, user: str, backend: SplitBackend) -> None:
        self.plan, self.user, self.backend = plan, user, backend
        self.settings = backend.settings
        self._seen: Endpoint | None = None

    @property
    def name(self) -> str:
        return self.plan.before.name

    def current(self) -> Endpoint:
        self._seen = self.backend.read(self.name)  # the state the write must still find
        return self._seen

    def holds(self, endpoint: Endpoint, target: Endpoint) -> bool:
        return self.backend.holds(endpoint, target)

    def check_unchanged(self) -> None:
        """Refuse a plan made against a split that has changed since; nothing is recorded or sent."""
        conflict = self.backend.conflict(self.plan.before, self.current())
        if conflict is not None:
            raise conflict

    def write(self) -> Endpoint:
        return self.backend.write(self._seen or self.plan.before, self.plan.after, user=self.user)


def _write_and_record(write: _SplitWriter, intent: Any) -> Endpoint:
    """Write the split for an open intent, then complete the intent with the split the endpoint holds."""
    try:
        stored = write.write()
    except (PermissionDeniedError, ValidationError, NotFoundError, ConflictError) as exc:
        # The backend answered and refused: the split did not change, so the intent leaves the trail.
        _quietly_abandon(intent, str(exc), write.settings)
        raise
    except BackendUnavailableError as exc:
        raise _split_interrupted(intent, "while the new split was being written", exc) from exc
    try:
        traffic_audit.complete_traffic_change(intent, percentages(stored), settings=write.settings)
    except BackendUnavailableError as exc:
        raise _split_interrupted(intent, "after the new split was applied, before its audit record was completed",
                                 exc) from exc
    return stored


def _resume_split(write: _SplitWriter, earlier: Any) -> Endpoint:
    """A retry of a recorded request: return it if complete, else complete it exactly once."""
    _, after_pct = write.plan.percentages()
    asked = earlier.requested if earlier.requested is not None else earlier.after
    if asked != after_pct:
        raise ValidationError(
            f"Request {earlier.request_id} changed {write.name!r} to {describe_split(asked)}, not "
            f"{describe_split(after_pct)}; start a new confirmation for this one."
        )
    current = write.current()
    if earlier.completed:
        return current
    if write.holds(current, write.plan.after):
        # The split was written before the failure; only the record is missing its completion.
        try:
            traffic_audit.complete_traffic_change(earlier, percentages(current), settings=write.settings)
        except BackendUnavailableError as exc:
            raise _split_interrupted(earlier, "while completing the audit record", exc) from exc
        return current
    if write.holds(current, write.plan.before):
        return _write_and_record(write, earlier)
    # Someone else changed the split since: completing would overwrite their change.
    _quietly_abandon(earlier, f"superseded: the endpoint held {describe_split(percentages(current))} on retry",
                     write.settings)
    raise ConflictError(
        f"{write.name!r} now splits {describe_split(percentages(current))}, neither the split before the "
        f"interrupted change nor the one it asked for: another change happened since. The interrupted attempt "
        "is closed without changing anything; review the new split and try again."
    )


def settle_interrupted(endpoint: Endpoint, change: Any, *, user: str, settings: Settings | None = None,
                       identity: Any = None) -> str:
    """Settle an interrupted traffic change from the split ``endpoint`` serves now; returns what was recorded.

    For when the confirmation that would retry it is gone (another session, a reload): if the
    endpoint serves the split the change asked for, the record is completed as applied; otherwise
    the change did not take effect (or was overwritten since) and the attempt is closed.
    """
    settings = settings or get_settings()
    if identity is not None:
        roles.enforce(identity, roles.Action.CHANGE_TRAFFIC, settings)
    if change.completed:
        return "This change is already recorded as done."
    current = split_backend(endpoint.backend, settings).read(endpoint.name)
    now = percentages(current)
    if now == (change.requested or change.after):
        traffic_audit.complete_traffic_change(change, now, outcome="applied (settled by " + user + ")",
                                              settings=settings)
        return f"{endpoint.name} serves the split the change asked for; it is now recorded as applied."
    why = "not applied" if now == change.before else "overwritten by a later change"
    traffic_audit.abandon_traffic_change(change, f"settled by {user}: {why}; the endpoint served {describe_split(now)}",
                                         settings=settings)
    return f"{endpoint.name} serves {describe_split(now)}: the interrupted change was {why}, and is closed."


def _split_interrupted(intent: Any, when: str, exc: Exception) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"The backend stopped answering {when} (traffic change on {intent.endpoint!r} to "
        f"{describe_split(intent.requested or intent.after)}), so the split may or may not have changed. "
        f"It is recorded as interrupted (request {intent.request_id}); retry the same confirmation once the "
        f"backend is back and it completes exactly once. ({exc})"
    )


def _quietly_abandon(intent: Any, why: str, settings: Settings) -> None:
    try:
        traffic_audit.abandon_traffic_change(intent, why, settings=settings)
    except BackendUnavailableError:
        pass  # stays "interrupted" in the trail; a retry reconciles it


_split_locks: dict[str, threading.Lock] = {}
_split_locks_guard = threading.Lock()


def _split_lock(endpoint_name: str) -> threading.Lock:
    """One lock per endpoint: two operators in this process never interleave check-write-record."""
    with _split_locks_guard:
        return _split_locks.setdefault(endpoint_name, threading.Lock())
