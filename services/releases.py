"""Releases: the one promotion entry point, rollback, and each alias's history and drift.

``promote`` takes a ``PromotionRequest`` (``services.promotion``): it checks the role, judges the
plan once (gate + readiness), applies the blocking and override rules, and moves the alias. Every
alias change made here is recorded by ``services.audit`` with the registry state observed around
the change, so the trail never disagrees with the registry. Gate rules are in ``services.gates``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from services import audit, registry, roles, versions
from services._clients import get_settings, mlflow_client, translate_errors
from services.audit import AliasAction, Change, ChangeKind, ChangeStatus
from services.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from services.gates import check_alias
from services.identity import Identity
from services.promotion import PromotionPlan, PromotionRequest, RollbackRequest, Seen, decide, plan_promotion
from services.settings import Backend, Settings


class Drift(StrEnum):
    RECORDED = "recorded"  # the last record's to-version is what the alias holds
    EXTERNAL = "moved outside the app"  # the alias points elsewhere than the last record says
    UNRECORDED = "never changed through the app"
    REMOVED = "removed outside the app"  # recorded, but the alias no longer exists
    INTERRUPTED = "interrupted change"  # the newest record is an intent never completed (backend failed mid-change)


@dataclass(frozen=True)
class AliasState:
    alias: str
    version: str | None
    last_change: Change | None
    drift: Drift
    previous_version: str | None  # what a one-click rollback would restore
    interrupted: Change | None = None  # an uncompleted intent newer than the last completed change


@dataclass(frozen=True)
class PromotionResult:
    change: Change
    plan: PromotionPlan
    superseded: bool = False  # another operator moved the alias right after this change
    messages: tuple[str, ...] = field(default=())


# --- mutations ----------------------------------------------------------------------------

def promote(request: PromotionRequest, identity: Identity, settings: Settings | None = None) -> PromotionResult:
    """The one way an alias moves: role, plan (gate + readiness, judged once), verdict, audited change.

    The blocking and override rules are ``promotion.decide``'s. ``request.request_id`` identifies
    one confirmation: a retry with the same id after a backend failure completes the recorded
    attempt (alias set if not yet, record completed) instead of changing or recording twice; a
    retry of a completed one returns it unchanged.
    """
    request = request.checked()
    reason, action, request_id = request.reason, request.action, request.request_id
    audit.check_request_id(request_id)
    roles.enforce(identity, roles.Action.PROMOTE, settings or get_settings())
    plan = plan_promotion(request.agent, request.alias, request.version, settings, load=request.load)
    gate, evidence = decide(plan, request)
    move = _AliasMove(mlflow_client(settings), plan, identity, action=action, reason=reason, gate=gate,
                      evidence=evidence, seen=request.seen, settings=settings)
    done = audit.run_two_phase(move, request_id)
    change, after = done.record, done.state
    if done.path is audit.Path.ALREADY_DONE:
        return PromotionResult(change, plan, change.to_version != change.requested_version,
                               ("This confirmation was already carried out; nothing changed again.",))
    if done.path is audit.Path.RECORD_COMPLETED:
        return PromotionResult(change, plan, False, ("Completed an interrupted promotion: the alias had already "
                                                     "moved; its audit record is now complete.",))
    superseded = after != plan.target_version
    if done.path is audit.Path.RESUMED:
        return PromotionResult(change, plan, superseded,
                               ("Completed an interrupted promotion: the alias was set and recorded once.",))
    messages = (f"Another change moved {plan.alias} to {_label(after)} at the same time; recorded as observed.",) if superseded else ()
    return PromotionResult(change, plan, superseded, messages)


class _AliasMove(audit.TwoPhaseChange["str | None"]):
    """Moving one alias, as the steps of the audit trail's two-phase change."""

    kind = ChangeKind.ALIAS

    def __init__(self, client: Any, plan: PromotionPlan, identity: Identity, *, action: AliasAction, reason: str,
                 gate: Any, evidence: dict[str, Any], seen: Seen | None,
                 settings: Settings | None) -> None:
        self.client, self.plan, self.identity, self.settings = client, plan, identity, settings
        self.user, self.action, self.reason, self.seen = identity.user, action, reason, seen
        self.target = {"model": plan.agent, "alias": plan.alias}
        self.detail = {"gate": gate.value, "override": gate is audit.GateOutcome.OVERRIDDEN, "evidence": evidence}
        self.lock_key = ("alias", plan.agent, plan.alias)
        self.before: str | None = None

    def check(self) -> None:
        plan = self.plan
        self.before = _read_alias(self.client, plan.agent, plan.alias)
        if self.seen is not None and self.before != self.seen.version:
            raise ConflictError(
                f"{plan.agent}@{plan.alias} now points to {_label(self.before)}, not {_label(self.seen.version)} "
                "as when you looked. Nothing changed; review the new state and try again."
            )

    def planned(self) -> tuple[str | None, str]:
        # Recorded before the alias moves, so a failure after this point leaves a record that says
        # "interrupted" rather than an alias move nobody recorded.
        return self.before, self.plan.target_version

    def act(self, intent: Change) -> str | None:
        plan = self.plan
        with translate_errors(f"setting {plan.agent}@{plan.alias}"):
            self.client.set_registered_model_alias(plan.agent, plan.alias, intent.requested_version)
        # Record what the registry actually holds now, not what we asked for.
        return self.observe()

    def observe(self) -> str | None:
        return _read_alias(self.client, self.plan.agent, self.plan.alias)

    def recorded(self, state: str | None) -> str | None:
        return state

    def same_request(self, earlier: Change) -> ValidationError | None:
        if earlier.requested_version == self.plan.target_version:
            return None
        return ValidationError(
            f"Request {earlier.request_id} was a promotion of {self.plan.agent}@{self.plan.alias} to "
            f"v{earlier.requested_version}, not v{self.plan.target_version}; start a new confirmation for this one."
        )

    def refused(self, exc: Exception) -> Exception:
        if isinstance(exc, PermissionDeniedError):
            return PermissionDeniedError(_alias_refused(self.plan, self.identity, self.settings or get_settings(), exc))
        return exc

    uncertain = "the alias may or may not have moved"

    def what(self, intent: Change | None = None) -> str:
        plan = self.plan
        if intent is None:
            return f"the promotion of {plan.agent}@{plan.alias} → v{plan.target_version}"
        return f"{plan.agent}@{plan.alias} → v{intent.requested_version}"

    def unchanged(self) -> str:
        return f": the alias still points to {_label(self.before)}"

    def superseded(self, earlier: Change, state: str | None) -> ConflictError:
        return ConflictError(
            f"{self.plan.agent}@{self.plan.alias} now points to {_label(state)}, not {_label(earlier.from_version)} or "
            f"v{earlier.requested_version}: another change happened after the interrupted promotion. "
            "The interrupted attempt is closed without changing anything; review the new state and try again."
        )

    def describe(self, state: str | None) -> str:
        return _label(state)


def _alias_refused(plan: PromotionPlan, identity: Identity, settings: Settings, exc: Exception) -> str:
    """Which grant the user lacks when the registry refuses an alias change."""
    who = identity.display_name or identity.user
    if settings.backend is Backend.DATABRICKS:
        # No Databricks Apps user scope covers the registry: the app sets aliases as its service principal.
        needs = (f"{who} may promote in this app, but the app sets aliases as its own service principal, and in "
                 f"Unity Catalog that needs the service principal to own the registered model {plan.agent} (or "
                 "MANAGE on it), plus USE CATALOG on its catalog and USE SCHEMA on its schema. Ask the model's owner "
                 "to grant these to the app's service principal.")
    else:
        needs = f"{who} needs permission to edit the registered model {plan.agent} on this MLflow server."
    return f"{plan.agent}@{plan.alias} was not changed: the registry refused it. {needs} ({exc})"


def rollback(request: RollbackRequest, identity: Identity, settings: Settings | None = None) -> PromotionResult:
    """Point an alias back at its previous recorded holder (skips the gate: rollbacks restore)."""
    # The role first: a user who may not promote learns that, not what the trail holds.
    roles.enforce(identity, roles.Action.PROMOTE, settings or get_settings())
    state = alias_state(request.agent, request.alias, settings)
    if state.previous_version is None:
        raise NotFoundError(
            f"No previous holder of {request.agent}@{request.alias} is recorded; promote a version explicitly instead."
        )
    return promote(PromotionRequest(
        request.agent, request.alias, state.previous_version, reason=request.reason or "rollback", override=True,
        request_id=request.request_id, seen=request.seen or Seen(state.version), action=AliasAction.ROLLBACK,
    ), identity, settings)


def settle_interrupted(agent: str, alias: str, identity: Identity, settings: Settings | None = None) -> str:
    """Settle an alias's interrupted change whose confirmation is gone, from what the registry holds now.

    The resume path of every audited change, without moving the alias again: the record is
    completed when the alias holds the version the change asked for, else the attempt is closed.
    """
    roles.enforce(identity, roles.Action.PROMOTE, settings or get_settings())
    state = alias_state(agent, alias, settings)
    if state.interrupted is None:
        return f"{agent}@{alias} has no interrupted change to settle."
    client = mlflow_client(settings)
    done = audit.settle(state.interrupted, lock_key=("alias", agent, alias), recorded=lambda version: version,
                        observe=lambda: _read_alias(client, agent, alias), by=identity.user, settings=settings)
    return audit.settled_message(done, f"{agent}@{alias}", _label(done.state))


# --- history ------------------------------------------------------------------------------

def alias_history(agent: str, alias: str | None = None, settings: Settings | None = None, *,
                  include_interrupted: bool = False) -> list[Change]:
    """Recorded changes of an agent's aliases, newest first (interrupted attempts only when asked)."""
    agent = versions.check_agent_name(agent)
    if alias is not None:
        alias = check_alias(alias)
    return audit.alias_changes(agent, alias, settings=settings, completed_only=not include_interrupted)


def holder_at(agent: str, alias: str, when: datetime, settings: Settings | None = None) -> str | None:
    """The version the trail says held ``alias`` at ``when`` (None: not held or nothing recorded)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    history = alias_history(agent, alias, settings)
    for change in history:
        if change.at <= when:
            return change.to_version
    # Before the first recorded change the alias held that change's from-version.
    return history[-1].from_version if history else None


def alias_states(agent: str, settings: Settings | None = None) -> list[AliasState]:
    """Each alias the agent has now or had through the app, with drift against the trail."""
    agent = versions.check_agent_name(agent)
    client = mlflow_client(settings)
    with translate_errors(f"registered model {agent!r}"):
        current = registry.aliases_of(client.get_registered_model(agent))
    history = audit.alias_changes(agent, settings=settings)
    names = sorted(set(current) | {c.alias for c in history})
    return [_state(name, current.get(name), [c for c in history if c.alias == name]) for name in names]


def alias_state(agent: str, alias: str, settings: Settings | None = None) -> AliasState:
    """One alias now, its last recorded change and the version a rollback would restore."""
    agent = versions.check_agent_name(agent)
    alias = check_alias(alias)
    client = mlflow_client(settings)
    with translate_errors(f"registered model {agent!r}"):
        current = registry.aliases_of(client.get_registered_model(agent)).get(alias)
    return _state(alias, current, audit.alias_changes(agent, alias, settings=settings))


def _state(alias: str, version: str | None, records: list[Change]) -> AliasState:
    history = [c for c in records if c.completed]
    last = history[0] if history else None
    interrupted = next((c for c in records if c.status is ChangeStatus.INTERRUPTED
                        and (last is None or c.at_ns > last.at_ns)), None)
    if last is None:
        drift = Drift.UNRECORDED
    elif version is None:
        drift = Drift.REMOVED
    elif last.to_version == version:
        drift = Drift.RECORDED
    else:
        drift = Drift.EXTERNAL
    previous = None
    if drift is Drift.RECORDED:
        previous = _undo_target(history, version)
    elif drift is Drift.EXTERNAL:
        previous = last.to_version
    if interrupted is not None:
        # Whether it moved the alias is unknown until retried; offer no rollback meanwhile.
        return AliasState(alias, version, last, Drift.INTERRUPTED, None, interrupted)
    return AliasState(alias, version, last, drift, previous)


def _undo_target(history: list[Change], version: str | None) -> str | None:
    """The holder a rollback restores: the trail replayed as an undo stack (newest-first ``history``).

    A promotion pushes the holder it replaced (no-op promotions push nothing); a rollback that restored
    the top of the stack pops it, so after rolling back, the next rollback goes further back instead of
    re-applying the move just undone.
    """
    stack: list[str] = []
    for change in reversed(history):
        if change.action is AliasAction.ROLLBACK:
            if stack and stack[-1] == change.to_version:
                stack.pop()
        elif change.from_version and change.from_version != change.to_version:
            stack.append(change.from_version)
    while stack and stack[-1] == version:
        stack.pop()
    return stack[-1] if stack else None


def _read_alias(client: Any, agent: str, alias: str) -> str | None:
    with translate_errors(f"registered model {agent!r}"):
        return registry.aliases_of(client.get_registered_model(agent)).get(alias)


def _label(version: object) -> str:
    return f"v{version}" if version else "nothing"
