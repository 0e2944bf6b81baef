"""Tables and forms of the Alerts page: rules, channels, incidents and what was sent."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any

import pandas as pd
import streamlit as st

from services.alerting import (
    MIN_SAMPLE,
    WINDOW_MINUTES,
    AlertRule,
    Channel,
    Measure,
)

MEASURE_HELP = {
    Measure.ERROR_RATE: "share of requests whose trace ended in ERROR (0-1); fires above",
    Measure.P95_LATENCY: "95th percentile of request latency in ms; fires above",
    Measure.COST_PER_REQUEST: "recorded + estimated cost per request in USD; fires above",
    Measure.SCORER_PASS_RATE: "share of assessed traces whose live-scorer value passes the criterion; fires below",
    Measure.THUMBS_DOWN_RATE: "share of traces with a negative value of a boolean feedback; fires above",
}
NONE = ""


def when(iso: Any) -> str:
    """An ISO time from the team state as ``YYYY-MM-DD HH:MM UTC`` ("" when unset)."""
    if not iso:
        return ""
    try:
        from datetime import datetime

        return datetime.fromisoformat(str(iso)).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return str(iso)


def rules_frame(rules: Sequence[AlertRule]) -> pd.DataFrame:
    """One row per rule: name, condition, scope, channels, enabled."""
    return pd.DataFrame(
        [{"rule": r.name, "condition": r.condition, "scope": r.scope, "channels": ", ".join(r.channels) or "—",
          "enabled": r.enabled} for r in rules],
        columns=["rule", "condition", "scope", "channels", "enabled"],
    )


def channels_frame(channels: Sequence[Channel]) -> pd.DataFrame:
    """One row per channel, its URL masked (service, scheme and a fingerprint only)."""
    return pd.DataFrame(
        [{"channel": c.name, "service": c.service, "url": c.masked, "secret kept in": c.where,
          "changed by": c.updated_by, "changed at": c.updated_at} for c in channels],
        columns=["channel", "service", "url", "secret kept in", "changed by", "changed at"],
    )


def incidents_frame(incidents: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per rule that ever fired: status, incident, since, resolved, the notification still owed."""
    rows = [{**i, "since": when(i.get("since")), "resolved_at": when(i.get("resolved_at")), "owed": i.get("owed") or ""}
            for i in incidents]
    return pd.DataFrame(rows, columns=["rule", "status", "incident", "since", "resolved_at", "owed", "value", "sample"])


def history_frame(entries: Sequence[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"at": when(e.get("at")), "rule": e.get("rule") or f"({e.get('kind') or 'test'})", "incident": e.get("incident"), "kind": e.get("kind"),
          "channel": e.get("channel"), "delivered": e.get("ok"), "attempts": e.get("attempts"),
          "error": e.get("error") or "", "by": e.get("by")} for e in entries],
        columns=["at", "rule", "incident", "kind", "channel", "delivered", "attempts", "error", "by"],
    )


def rule_form(current: AlertRule | None, channel_names: Sequence[str], agents: Sequence[str], *,
              disabled: bool) -> dict[str, Any] | None:
    """The rule editor; returns the entered values when Review was pressed (validation is the service's).

    Widget keys end with ``@<rule>`` when a stored rule is edited, so picking another rule shows its values
    (a keyed widget keeps its state across runs whatever its default says).
    """
    c = current
    suffix = f"@{c.name}" if c else ""
    with st.form(f"alert_rule_form{suffix}", border=True):
        top = st.columns([2, 2, 1])
        name = top[0].text_input("Rule name", value=c.name if c else "", key=f"rule_name{suffix}",
                                 help="letters, digits, '-', '_' or '.'", disabled=disabled)
        measures = list(Measure)
        measure = top[1].selectbox("Measure", measures, index=measures.index(c.measure) if c else 0,
                                   format_func=lambda m: m.label, key=f"rule_measure{suffix}", disabled=disabled)
        threshold = top[2].number_input("Threshold", value=float(c.threshold) if c else 0.05, min_value=0.0,
                                        format="%.4f", key=f"rule_threshold{suffix}", disabled=disabled,
                                        help="rates are shares (0.05 = 5%), latency in ms, cost in USD")
        st.caption(" · ".join(f"**{m.label}**: {h}" for m, h in MEASURE_HELP.items()))
        row = st.columns(4)
        window = row[0].number_input("Window (minutes)", min_value=1, max_value=WINDOW_MINUTES[1] * 10,
                                     value=c.window_minutes if c else 60, step=5, key=f"rule_window{suffix}", disabled=disabled)
        min_sample = row[1].number_input("Minimum sample", min_value=0, value=c.min_sample if c else 20,
                                         key=f"rule_min_sample{suffix}", disabled=disabled,
                                         help=f"requests (or assessed traces) the window must hold before the rule "
                                              f"judges; {MIN_SAMPLE[0]} to {MIN_SAMPLE[1]:,}")
        assessment = row[2].text_input("Scorer or feedback name", value=(c.assessment or "") if c else "",
                                       key=f"rule_assessment{suffix}", disabled=disabled,
                                       help="pass-rate and thumbs-down rules: the assessment to read")
        criterion = row[3].text_input("Pass criterion", value=c.pass_criterion if c else "yes",
                                      key=f"rule_criterion{suffix}", disabled=disabled,
                                      help="scorer pass rate: yes, >= 0.7 (or >, <, <=), or == label")
        scope = st.columns(4)
        agent_options = [NONE, *agents]
        agent = scope[0].selectbox("Agent", agent_options,
                                   index=agent_options.index(c.agent) if c and c.agent in agent_options else 0,
                                   format_func=lambda a: a or "any agent", key=f"rule_agent{suffix}", disabled=disabled)
        version = scope[1].text_input("Version", value=(c.version or "") if c else "", key=f"rule_version{suffix}",
                                      disabled=disabled)
        endpoint = scope[2].text_input("Endpoint", value=(c.endpoint or "") if c else "", key=f"rule_endpoint{suffix}",
                                       disabled=disabled)
        arm = scope[3].text_input("Arm", value=(c.arm or "") if c else "", key=f"rule_arm{suffix}", disabled=disabled)
        bottom = st.columns([3, 1])
        channels = bottom[0].multiselect("Notify channels", list(channel_names),
                                         default=[ch for ch in (c.channels if c else ()) if ch in channel_names],
                                         key=f"rule_channels{suffix}", disabled=disabled)
        enabled = bottom[1].checkbox("Enabled", value=c.enabled if c else True, key=f"rule_enabled{suffix}", disabled=disabled)
        pressed = st.form_submit_button("Review rule", icon=":material/fact_check:", disabled=disabled)
    if not pressed:
        return None
    return dict(name=name.strip(), measure=measure.value, threshold=threshold, window_minutes=int(window),
                min_sample=int(min_sample), agent=agent or None, version=version.strip() or None,
                endpoint=endpoint.strip() or None, arm=arm.strip() or None, assessment=assessment.strip() or None,
                pass_criterion=criterion.strip() or "yes", channels=list(channels), enabled=enabled)


def channel_form(*, disabled: bool) -> tuple[str, str, bool] | None:
    """The channel editor: name, URL (masked input) and whether to replace an existing channel (on Review)."""
    with st.form("alert_channel_form", clear_on_submit=True, border=True):
        cols = st.columns([1, 3])
        name = cols[0].text_input("Channel name", key="channel_name", placeholder="oncall-slack", disabled=disabled)
        url = cols[1].text_input("Channel URL (apprise)", type="password", key="channel_url", disabled=disabled,
                                 placeholder="slack://TokenA/TokenB/TokenC/#alerts · workflows://... (Teams) · "
                                             "mailtos://user:pass@host?to=... · json://host/path",
                                 help="Any apprise URL. It is stored as a secret and never shown again.")
        replace = st.checkbox("Replace the channel if it exists", key="channel_replace", disabled=disabled)
        pressed = st.form_submit_button("Review channel", icon=":material/fact_check:", disabled=disabled)
    if not pressed:
        return None
    return name.strip(), url, replace
