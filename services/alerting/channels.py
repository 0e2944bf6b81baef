"""Delivery channels (apprise URLs kept in the secret store, never in team state), sending to them, one-off
notices, and the delivery history (``alert-deliveries``: rule, channel, kind, outcome, attempts; no URL)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services import notify, roles, team_state
from services.alerting.rules import (
    CHANNEL_KEY,
    DELIVERIES_KEY,
    EVALUATOR,
    HISTORY_SIZE,
    delete_record,
    list_rules,
    live_records,
    user_of,
)
from services.errors import AgentOpsError, ConflictError, NotFoundError, ValidationError
from services.notify import Delivery, Kind
from services.settings import Settings

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Channel:
    """A delivery channel as pages see it: never its URL."""

    name: str
    service: str
    scheme: str
    fingerprint: str
    where: str
    updated_by: str
    updated_at: datetime | None

    @property
    def masked(self) -> str:
        return notify.ChannelInfo(self.service, self.scheme, self.fingerprint).masked


def list_channels(settings: Settings, records: Mapping[str, team_state.Record] | None = None) -> list[Channel]:
    """The team's channels (names, services, fingerprints)."""
    records = team_state.read_all(settings, "alert-") if records is None else records
    return [Channel(name, str(r.value.get("service", "")), str(r.value.get("scheme", "")),
                    str(r.value.get("fingerprint", "")), str(r.value.get("where", "")), r.updated_by, r.updated_at)
            for name, r in sorted(live_records(records, CHANNEL_KEY).items())]


def save_channel(settings: Settings, name: str, url: str, identity: Any, *, replace_existing: bool = False) -> Channel:
    """Add (or, with ``replace_existing``, change) a channel: the URL goes to the secret store, the rest to team state.

    The URL is checked with apprise before anything is stored; a URL apprise does not recognise is refused.
    """
    notify.validate_channel_name(name)
    info = notify.describe_url(url)
    roles.enforce(identity, roles.Action.MANAGE_ALERTS, settings)
    current = team_state.read(CHANNEL_KEY + name, settings)
    if current is not None and not current.value.get("deleted") and not replace_existing:
        raise ConflictError(f"A channel named {name!r} exists; pick another name or replace it. Nothing was saved.")
    store = notify.secret_store(settings)
    store.put(name, url.strip())
    value = {"name": name, "service": info.service, "scheme": info.scheme, "fingerprint": info.fingerprint,
             "where": store.where}
    record = team_state.write(CHANNEL_KEY + name, value, expected_version=current.version if current else 0,
                              user=user_of(identity), settings=settings,
                              note=f"alert channel {name}: {info.service} #{info.fingerprint}")
    return Channel(name, info.service, info.scheme, info.fingerprint, store.where, record.updated_by, record.updated_at)


def delete_channel(settings: Settings, name: str, identity: Any) -> None:
    """Delete a channel and its secret (operator role; recorded); refused while a rule uses it."""
    def unused(records: Mapping[str, Any]) -> None:
        users = [r.name for r in list_rules(settings, records) if name in r.channels]
        if users:
            raise ValidationError(f"Channel {name!r} is used by rule(s) {', '.join(users)}; remove it from them first.")

    delete_record(settings, CHANNEL_KEY, name, identity, "alert channel", unused)
    notify.secret_store(settings).delete(name)


def send_test_alert(settings: Settings, channel: str, identity: Any, *, attempts: int = 3,
                    backoff_s: float = 1.0) -> Delivery:
    """Send a test notification to one channel now (operator role); recorded in the delivery history."""
    roles.enforce(identity, roles.Action.MANAGE_ALERTS, settings)
    records = team_state.read_all(settings, "alert-")
    if CHANNEL_KEY + channel not in {CHANNEL_KEY + n for n in live_records(records, CHANNEL_KEY)}:
        raise NotFoundError(f"There is no channel {channel!r}.")
    who = user_of(identity)
    result = send(settings, channel, f"[TEST] Agent Ops Console alert channel {channel}",
                   f"A test alert sent by {who}. If you read this, alerts reach this channel.", Kind.TEST,
                   attempts=attempts, backoff_s=backoff_s)
    log_deliveries(settings, [delivery_entry(channel, Kind.TEST, result, rule="", incident="", by=who)])
    return result



def send(settings: Settings, channel: str, title: str, body: str, kind: str, *, attempts: int,
          backoff_s: float) -> Delivery:
    try:
        url = notify.secret_store(settings).get(channel)
    except AgentOpsError as exc:
        return Delivery(False, 0, f"the channel URL cannot be read: {exc}")
    return notify.deliver(url, title, body, kind, attempts=attempts, backoff_s=backoff_s)



def delivery_entry(channel: str, kind: str, result: Delivery, *, rule: str, incident: str, by: str,
           value: float | None = None, sample: int | None = None) -> dict[str, Any]:
    return {"at": datetime.now(tz=UTC).isoformat(), "rule": rule, "incident": incident, "kind": kind,
            "channel": channel, "ok": result.ok, "attempts": result.attempts, "error": notify.redact(result.error),
            "value": value, "sample": sample, "by": by}


def log_deliveries(settings: Settings, entries: Iterable[dict[str, Any]]) -> None:
    entries = list(entries)
    if not entries:
        return
    for _ in range(5):
        try:
            team_state.update(DELIVERIES_KEY, lambda v: {"entries": (list((v or {}).get("entries", [])) + entries)[-HISTORY_SIZE:]},
                              user=EVALUATOR, settings=settings, default={"entries": []},
                              note=f"{len(entries)} alert delivery record(s)")
            return
        except ConflictError:
            continue
    _logger.warning("alert delivery history not updated after 5 conflicting writes")


def delivery_history(settings: Settings) -> list[dict[str, Any]]:
    """What was sent, newest first: time, rule, incident, kind, channel, outcome, attempts, error (no URLs)."""
    record = team_state.read(DELIVERIES_KEY, settings)
    return list(reversed((record.value or {}).get("entries", []))) if record else []



NOTICE_KEY = "alert-notice:"


def notify_channels(settings: Settings, title: str, body: str, *, key: str, channels: Iterable[str] | None = None,
                    by: str = EVALUATOR, attempts: int = 3, backoff_s: float = 1.0) -> list[Delivery]:
    """Send a one-off notice (e.g. a rollout step) to ``channels`` (all channels when None), once per ``key``.

    The key is claimed in team state before anything is sent, so a second caller or a restarted worker with
    the same key sends nothing (returns ``[]``). Deliveries are recorded in the delivery history.
    """
    if not isinstance(key, str) or not key.strip() or len(key) > 500:
        raise ValidationError("A notice needs a key (what makes it unique), at most 500 characters.")
    records = team_state.read_all(settings, "alert-")
    names = [c.name for c in list_channels(settings, records)] if channels is None else list(channels)
    slug = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    try:
        team_state.write(NOTICE_KEY + slug, {"key": key[:200], "title": title[:200], "channels": names},
                         expected_version=0, user=by, settings=settings, note=f"notice {title[:200]}")
    except ConflictError:
        return []  # sent (or being sent) by someone else
    results, entries = [], []
    for name in names:
        result = send(settings, name, title, body, Kind.NOTICE, attempts=attempts,
                       backoff_s=backoff_s)
        results.append(result)
        entries.append(delivery_entry(name, Kind.NOTICE, result, rule="", incident=key[:200], by=by))
    log_deliveries(settings, entries)
    return results
