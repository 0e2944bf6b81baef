"""Promotion: the request a confirmation sends, the plan it is judged on, and the rules that block it.

A promotion is judged once per confirmation: ``plan_promotion`` reads the registry, the gate
(``services.gates``) and the readiness checklist (``services.readiness``) into one
``PromotionPlan``; ``decide`` applies the blocking and override rules to it. ``releases.promote``
is the one entry point that does both and then moves the alias, audited. Pages display a plan's
verdict and send a ``PromotionRequest``; they never decide whether something is blocked.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from services import gates, readiness, versions
from services.audit import AliasAction, GateOutcome
from services.errors import ValidationError
from services.gates import GateBlockedError, GateCheck, GateResult
from services.readiness import Item, LoadCheckResult, ReadinessCheck, ReadinessReport
from services.settings import Settings


@dataclass(frozen=True)
class Seen:
    """The holder of the alias the operator saw when confirming (``version=None``: it was unset)."""

    version: str | None


@dataclass(frozen=True)
class PromotionRequest:
    """One confirmed promotion: move ``alias`` of ``agent`` to ``version``.

    Attributes:
        reason: recorded in the audit trail; required when ``override`` is set.
        override: promote although the gate or a required readiness item fails.
        request_id: one id per confirmation; a retry with the same id completes the same change
            exactly once instead of making a second one.
        seen: the holder the operator saw; when given and the alias now points elsewhere, nothing
            changes (``ConflictError``). ``None`` does not compare.
        load: the result of a load check run for this version, judged as the readiness item.
        action: recorded as a promotion or a rollback.
    """

    agent: str
    alias: str
    version: str | int
    reason: str = ""
    override: bool = False
    request_id: str | None = None
    seen: Seen | None = None
    load: LoadCheckResult | None = None
    action: AliasAction = AliasAction.PROMOTE

    @classmethod
    def confirming(cls, plan: PromotionPlan, *, reason: str = "", override: bool = False,
                   request_id: str | None = None) -> PromotionRequest:
        """The request confirming a reviewed plan: the holder it showed must still hold the alias."""
        return cls(plan.agent, plan.alias, plan.target_version, reason=reason, override=override,
                   request_id=request_id, seen=Seen(plan.current_version), load=plan.readiness.load)

    def checked(self) -> PromotionRequest:
        """The request with its reason trimmed; ``ValidationError`` when an override has no reason."""
        reason = (self.reason or "").strip()
        if self.override and not reason:
            raise ValidationError("Overriding the gate needs a written reason.")
        return replace(self, reason=reason)


@dataclass(frozen=True)
class RollbackRequest:
    """Point ``alias`` back at its previous recorded holder (rollbacks restore: the gate is not applied)."""

    agent: str
    alias: str
    reason: str = ""
    request_id: str | None = None
    seen: Seen | None = None  # the holder seen; None: the holder read when the rollback starts


@dataclass(frozen=True)
class PromotionPlan:
    """What a promotion would do: the alias now and after, the gate and the readiness checklist."""

    agent: str
    alias: str
    current_version: str | None
    target_version: str
    gate: GateResult
    readiness: ReadinessReport

    @property
    def evidence(self) -> gates.Evidence:
        return self.gate.evidence

    @property
    def checks(self) -> tuple[GateCheck, ...]:
        return self.gate.checks

    @property
    def gate_blocked(self) -> bool:
        return self.gate.blocked

    @property
    def readiness_failures(self) -> tuple[ReadinessCheck, ...]:
        """Required readiness items that fail: they block like a failing gate rule."""
        return self.readiness.failures

    @property
    def blocked(self) -> bool:
        """True when confirming needs an override with a written reason."""
        return self.gate_blocked or bool(self.readiness_failures)

    @property
    def is_noop(self) -> bool:
        return self.current_version == self.target_version

    def readiness_blockers(self) -> tuple[ReadinessCheck, ...]:
        """Failing required items other than the gate item when the gate already blocks (said once)."""
        return tuple(c for c in self.readiness_failures if not (self.gate_blocked and c.item is Item.GATE))

    def blockers(self) -> list[str]:
        """Each failing gate rule and required readiness item, as one line."""
        return self.gate.failures() + [f"readiness: {c.title} ({c.reason})" for c in self.readiness_blockers()]


def plan_promotion(agent: str, alias: str, version: str | int, settings: Settings | None = None, *,
                   load: LoadCheckResult | None = None) -> PromotionPlan:
    """Before → after for an alias, the gate and the readiness checklist; changes nothing."""
    agent = versions.check_agent_name(agent)
    alias = gates.check_alias(alias)
    number = versions.check_version(version)
    report = readiness.assess(agent, number, settings, against=alias, load=load)
    gate = report.gate
    assert gate is not None  # assess always judges the gate
    return PromotionPlan(agent, alias, gate.current_version, number, gate, report)


def decide(plan: PromotionPlan, request: PromotionRequest) -> tuple[GateOutcome, dict[str, Any]]:
    """The blocking and override rules: the gate outcome and evidence to record, or ``GateBlockedError``."""
    if plan.blocked and not request.override:
        raise GateBlockedError(f"The gate blocks v{plan.target_version} as {plan.alias}: {'; '.join(plan.blockers())}. "
                               "Nothing changed. Override with a written reason if you must.")
    if not plan.checks and not plan.readiness_failures:
        gate = GateOutcome.NO_RULES
    else:
        gate = GateOutcome.OVERRIDDEN if plan.blocked else GateOutcome.PASSED
    evidence = plan.evidence.summary() | {"checks": plan.gate.summary(), "readiness": plan.readiness.audit_summary()}
    return gate, evidence
