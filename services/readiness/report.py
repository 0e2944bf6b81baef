"""The checklist's values (one item's verdict, the report of one version) and which items block a promotion
(registered-model tag ``agentops.readiness.required``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from services import (
    gates,
    roles,
    versions,
)
from services._clients import (
    get_settings,
    mlflow_client,
    translate_errors,
)
from services.errors import ValidationError
from services.identity import Identity
from services.readiness_checks import (
    TITLES,
    Item,
    LoadCheckResult,
    Verdict,
)
from services.settings import Settings

REQUIRED_TAG = "agentops.readiness.required"
MIN_ROWS = 20  # fewer evaluation rows than this cannot show a regression with any confidence
MIN_DISTINCT_SHARE = 0.8  # at least 80% of the rows must ask something different
STAGING_ALIASES = ("challenger", "staging")
ALIAS_TRACE_TAG = "agentops.alias"

DEFAULT_REQUIRED = frozenset({Item.GATE, Item.LOADS})


@dataclass(frozen=True)
class ReadinessCheck:
    """One checklist item: its verdict, why, and the one action that fixes it."""

    item: Item
    verdict: Verdict
    reason: str
    fix: str = ""
    required: bool = False

    @property
    def title(self) -> str:
        return TITLES[self.item]

    @property
    def blocking(self) -> bool:
        return self.required and self.verdict is Verdict.FAIL


@dataclass(frozen=True)
class ReadinessReport:
    """The checklist of one version, and the gate verdict against ``against`` it was evaluated with."""

    agent: str
    version: str
    against: str
    checks: tuple[ReadinessCheck, ...]
    gate: gates.GateResult | None = None
    load: LoadCheckResult | None = None

    def check(self, item: Item | str) -> ReadinessCheck:
        return next(c for c in self.checks if c.item == Item(item))

    @property
    def failures(self) -> tuple[ReadinessCheck, ...]:
        """Required items that fail: they block a promotion."""
        return tuple(c for c in self.checks if c.blocking)

    @property
    def gate_blocked(self) -> bool:
        return bool(self.gate and self.gate.blocked)

    @property
    def blocked(self) -> bool:
        """True when the version must not be promoted (gate or a required item fails)."""
        return self.gate_blocked or bool(self.failures)

    def counts(self) -> dict[Verdict, int]:
        return {v: sum(1 for c in self.checks if c.verdict is v) for v in Verdict}

    def summary(self) -> str:
        """One line, e.g. ``7/10 pass · 1 fail · 2 unknown``."""
        n = self.counts()
        text = f"{n[Verdict.PASS]}/{len(self.checks)} pass"
        if n[Verdict.FAIL]:
            text += f" · {n[Verdict.FAIL]} fail"
        if n[Verdict.UNKNOWN]:
            text += f" · {n[Verdict.UNKNOWN]} unknown"
        if self.failures:
            text += " · blocked"
        return text

    def audit_summary(self) -> dict[str, Any]:
        """A compact JSON-able summary for the audit record."""
        return {
            "items": {c.item.value: c.verdict.value for c in self.checks},
            "required": sorted(c.item.value for c in self.checks if c.required),
            "failing_required": [c.item.value for c in self.failures],
        }

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable report (what the CI command writes as JSON)."""
        gate = self.gate
        return {
            "agent": self.agent,
            "version": self.version,
            "against": self.against,
            "current_version": gate.current_version if gate else None,
            "promotable": not self.blocked,
            "blocked_by_gate": self.gate_blocked,
            "failing_required_items": [c.item.value for c in self.failures],
            "gate": [
                {"rule": c.rule.describe(), "kind": c.rule.kind.value, "metric": c.rule.metric,
                 "threshold": c.rule.threshold, "status": c.status.value, "observed": c.observed, "detail": c.detail}
                for c in (gate.checks if gate else ())
            ],
            "evidence": gate.evidence.summary() if gate else None,
            "readiness": [
                {"item": c.item.value, "title": c.title, "verdict": c.verdict.value, "required": c.required,
                 "reason": c.reason, "fix": c.fix}
                for c in self.checks
            ],
            "load_check": None if self.load is None else {
                "ok": self.load.ok, "stage": self.load.stage, "error": self.load.error,
                "seconds": round(self.load.seconds, 2), "output_preview": self.load.output_preview,
            },
        }


# --- required items ---------------------------------------------------------------------------

def parse_required(raw: str | None) -> frozenset[Item]:
    """Required items from the tag's JSON list; the defaults when unset."""
    if raw is None or not raw.strip():
        return DEFAULT_REQUIRED
    try:
        data = json.loads(raw)
        if not isinstance(data, list):
            raise TypeError("not a list")
        return frozenset(Item(x) for x in data)
    except (ValueError, TypeError) as exc:
        valid = ", ".join(i.value for i in Item)
        raise ValidationError(f"The {REQUIRED_TAG} tag is not a JSON list of items ({exc}); use some of: {valid}.") from None


def check_items(names: Sequence[str]) -> frozenset[Item]:
    """Item names → items; ``ValidationError`` naming an unknown one."""
    items = set()
    for name in names:
        try:
            items.add(Item(name.strip()))
        except ValueError:
            valid = ", ".join(i.value for i in Item)
            raise ValidationError(f"{name!r} is not a readiness item; use one of: {valid}.") from None
    return frozenset(items)


def set_required_items(agent: str, items: Sequence[str], identity: Identity, settings: Settings | None = None) -> frozenset[Item]:
    """Store which items block a promotion for this agent (a registered-model tag); needs the admin role."""
    agent = versions.check_agent_name(agent)
    checked = check_items(items)
    roles.enforce(identity, roles.Action.EDIT_RULES, settings or get_settings())
    client = mlflow_client(settings)
    with translate_errors(f"registered model {agent!r}"):
        client.set_registered_model_tag(agent, REQUIRED_TAG, json.dumps(sorted(i.value for i in checked)))
        client.set_registered_model_tag(agent, REQUIRED_TAG + ".updated_by", identity.user)
    return checked
