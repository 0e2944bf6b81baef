"""One read of the team's alert configuration and incident states (what the Alerts page shows), and the
history of changes to rules and channels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services import notify, team_state
from services.alerting.channels import Channel, list_channels
from services.alerting.rules import (
    CHANNEL_KEY,
    INCIDENT_KEY,
    RULE_KEY,
    AlertRule,
    list_rules,
)
from services.errors import AgentOpsError
from services.settings import Settings


def incidents(settings: Settings) -> list[dict[str, Any]]:
    """Each rule's incident state: status, incident id, since, the notification still owed."""
    return list(snapshot(settings).incidents)


def change_history(settings: Settings, limit: int = 50) -> list[dict[str, Any]]:
    """Who changed which rule or channel, newest first."""
    return [h for h in team_state.history(settings, limit=limit * 3)
            if str(h.get("key", "")).startswith((RULE_KEY, CHANNEL_KEY))][:limit]



@dataclass(frozen=True)
class AlertSnapshot:
    """Rules, channels and incidents as one read of the team state (what the Alerts page shows)."""

    rules: tuple[AlertRule, ...]
    channels: tuple[Channel, ...]
    incidents: tuple[dict[str, Any], ...]
    rule_versions: Mapping[str, int]
    secrets_where: str


def snapshot(settings: Settings) -> AlertSnapshot:
    """The team's alert configuration and incident states, read once."""
    records = team_state.read_all(settings, "alert-")
    found = []
    for key, record in sorted(records.items()):
        if key.startswith(INCIDENT_KEY):
            value = record.value or {}
            found.append({"rule": key[len(INCIDENT_KEY):], "status": value.get("status"),
                          "incident": value.get("incident"), "since": value.get("since"),
                          "resolved_at": value.get("resolved_at"), "owed": value.get("pending"),
                          "value": value.get("value"), "sample": value.get("sample")})
    try:
        where = notify.secret_store(settings).where
    except AgentOpsError as exc:
        where = f"not available: {exc}"
    return AlertSnapshot(tuple(list_rules(settings, records)), tuple(list_channels(settings, records)), tuple(found),
                         {k[len(RULE_KEY):]: r.version for k, r in records.items() if k.startswith(RULE_KEY)}, where)
