"""Alerts: rules on live traffic, the channels they notify, incidents and what was sent."""

from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from components.caching import per_user_cache
from components.navigation import ensure_app_navigation

ensure_app_navigation()  # before anything renders: see components/navigation.py

from components.alerting import (
    channel_form,
    channels_frame,
    history_frame,
    incidents_frame,
    rule_form,
    rules_frame,
    when,
)
from components.confirm import NOTHING_CHANGES, ConfirmKeys, changes, confirm_box, held, hold, release
from components.context import allowed, current_identity, current_settings, role_hint
from components.errors import show_error
from components.tables import plain
from services import alerting, notify, registry, roles
from services.errors import AgentOpsError, ValidationError
from services.settings import Settings

NEW = "(new rule)"


@per_user_cache(ttl=60, show_spinner=False)
def _agent_names(settings: Settings) -> list[str]:
    return [a.name for a in registry.list_agents(settings)]


def _apply(change: Callable[[], Any], *, failed: str, done: Callable[[Any], str], forget: str) -> None:
    """Make a confirmed change: its error on the page, or (forgetting the held change) a notice and a rerun."""
    try:
        result = change()
    except AgentOpsError as exc:
        show_error(exc, what=failed)
        return
    release(forget)
    st.session_state["alerts_flash"] = [done(result)]
    st.rerun()


settings = current_settings()
identity = current_identity(settings)
can_manage = allowed(settings, identity, roles.Action.MANAGE_ALERTS)
st.title("Alerts")

try:
    snap = alerting.snapshot(settings)
    agents = _agent_names(settings)
except AgentOpsError as exc:
    show_error(exc, what="Cannot read the alert configuration")
    st.stop()

st.caption(
    "Rules are evaluated by the background worker that `scripts/run` starts (or here, with Evaluate rules now); each incident sends one firing and "
    f"one resolved notification through apprise. Channel URLs are secrets, kept in {plain(snap.secrets_where)}."
    + ("" if can_manage else f" :material/lock: {role_hint(roles.Action.MANAGE_ALERTS)}")
)
for message in st.session_state.pop("alerts_flash", []):
    st.success(message, icon=":material/check_circle:")

firing = [i for i in snap.incidents if i["status"] == "firing"]
cols = st.columns(4)
cols[0].metric("Rules", len(snap.rules))
cols[1].metric("Channels", len(snap.channels))
cols[2].metric("Firing", len(firing))
cols[3].metric("Notifications owed", sum(1 for i in snap.incidents if i.get("owed")))
for incident in firing:
    st.error(f"**{plain(incident['rule'])}** is firing since {plain(when(incident['since']))} "
             f"(incident {plain(incident['incident'])})", icon=":material/notifications_active:")

rules_tab, channels_tab, history_tab = st.tabs(["Rules", "Channels", "Incidents & history"])

with rules_tab:
    if snap.rules:
        st.dataframe(rules_frame(snap.rules), hide_index=True, width="stretch")
    else:
        st.info("**No alert rules yet.** Add a channel first, then a rule below: e.g. error rate above 5 % over "
                "60 minutes, from 20 requests on.", icon=":material/inbox:")
    names = [r.name for r in snap.rules]
    chosen = st.selectbox("Edit", [NEW, *names], key="rule_pick")
    current = next((r for r in snap.rules if r.name == chosen), None)
    values = rule_form(current, [c.name for c in snap.channels], agents, disabled=not can_manage)
    if values is not None:  # reviewed: checked now, saved only once confirmed
        release("alerts.rule")
        try:
            if current is None and values["name"] in names:
                raise ValidationError(f"A rule named {values['name']!r} exists; pick it under Edit to change it.")
            rule = alerting.validate_rule(values)
        except AgentOpsError as exc:
            show_error(exc, what="The rule was not saved")
        else:
            hold("alerts.rule", (values, rule, current.name if current else None))
    pending = held("alerts.rule")
    if pending is not None and pending[2] == (current.name if current else None):
        values, rule, _ = pending
        before = current.to_record() if current is not None and current.name == values["name"] else None
        after = rule.to_record()
        answer = confirm_box(
            f"{'Change' if before else 'Add'} rule **{plain(values['name'])}**:\n\n{changes(before, after)}",
            keys=ConfirmKeys(confirm="rule_save", cancel="rule_save_cancel"), confirm_label="Save rule",
            icon=":material/save:", ask_reason=False, actor=identity.user, held_as="alerts.rule",
            missing=NOTHING_CHANGES if before == after else "")
        if answer.confirmed:
            expected = snap.rule_versions.get(values["name"], 0)
            _apply(lambda: alerting.save_rule(settings, values, identity, expected_version=expected),
                   failed="The rule was not saved", done=lambda r: f"Saved rule {r.name}: {r.condition}.",
                   forget="alerts.rule")
    if current is not None and can_manage:
        with st.expander(f"Delete rule {current.name}"):
            sure = st.checkbox(f"Yes, delete {current.name}", key="rule_delete_sure")
            if confirm_box(None, keys=ConfirmKeys(confirm="rule_delete"), confirm_label="Delete rule", ask_reason=False, actor=identity.user,
                           icon=":material/delete:", missing="" if sure else "Tick the box to delete.").confirmed:
                try:
                    alerting.delete_rule(settings, current.name, identity)
                except AgentOpsError as exc:
                    show_error(exc, what="The rule was not deleted")
                else:
                    st.session_state["alerts_flash"] = [f"Deleted rule {current.name}."]
                    st.session_state.pop("rule_pick", None)
                    st.rerun()
    if snap.rules and can_manage:
        st.divider()
        if confirm_box("Evaluate every enabled rule on live traffic now, as the worker does every minute: incidents "
                       "open or resolve and their channels are notified.",
                       keys=ConfirmKeys(confirm="evaluate_now"), confirm_label="Evaluate rules now",
                       icon=":material/play_arrow:", ask_reason=False, actor=identity.user, compact=True,
                       button_type="secondary").confirmed:
            try:
                with st.spinner("Evaluating rules…"):
                    report = alerting.evaluate_and_notify(settings)
            except AgentOpsError as exc:
                show_error(exc, what="Rules could not be evaluated")
            else:
                st.write(report.summary())
                st.dataframe([{"rule": o.rule, "state": o.state.value, "sample": o.sample, "detail": o.message,
                               "sent": ", ".join(o.sent), "failed": ", ".join(o.failed)} for o in report.outcomes],
                             hide_index=True, width="stretch")

with channels_tab:
    if snap.channels:
        st.dataframe(channels_frame(snap.channels), hide_index=True, width="stretch")
        target = st.selectbox("Channel", [c.name for c in snap.channels], key="channel_pick")
        if confirm_box(f"Send a test notification to **{plain(target)}** now; it is kept in the delivery history.",
                       keys=ConfirmKeys(confirm="send_test"), confirm_label="Send test alert",
                       icon=":material/send:", ask_reason=False, actor=identity.user, compact=True,
                       disabled_hint="" if can_manage else role_hint(roles.Action.MANAGE_ALERTS)).confirmed:
            try:
                with st.spinner(f"Sending a test alert to {target}…"):
                    result = alerting.send_test_alert(settings, target, identity)
            except AgentOpsError as exc:
                show_error(exc, what="The test alert was not sent")
            else:
                if result.ok:
                    st.success(f"Test alert delivered to {plain(target)} ({result.attempts} attempt(s)).")
                else:
                    st.error(f"Test alert to {plain(target)} failed after {result.attempts} attempt(s): "
                             f"{plain(result.error)}")
        if can_manage:
            with st.expander(f"Delete channel {target}"):
                sure = st.checkbox(f"Yes, delete {target}", key="channel_delete_sure")
                deleted = confirm_box(None, keys=ConfirmKeys(confirm="channel_delete"), confirm_label="Delete channel",
                                      ask_reason=False, icon=":material/delete:", actor=identity.user,
                                      missing="" if sure else "Tick the box to delete.").confirmed
            if deleted:
                try:
                    alerting.delete_channel(settings, target, identity)
                except AgentOpsError as exc:
                    show_error(exc, what="The channel was not deleted")
                else:
                    st.session_state["alerts_flash"] = [f"Deleted channel {target}."]
                    st.rerun()
    else:
        st.info("**No channels yet.** Add one with an apprise URL: Slack, Microsoft Teams, e-mail, a JSON webhook "
                "or any other apprise service.", icon=":material/inbox:")
    entered = channel_form(disabled=not can_manage)
    if entered is not None:  # reviewed: checked now (name, what apprise makes of the URL), saved once confirmed
        release("alerts.channel")
        name, url, replace_existing = entered
        try:
            notify.validate_channel_name(name)
            info = notify.describe_url(url)
        except AgentOpsError as exc:
            show_error(exc, what="The channel was not saved")
        else:
            hold("alerts.channel", (name, url, replace_existing, info.masked))
    pending = held("alerts.channel")
    if pending is not None:
        name, url, replace_existing, masked = pending
        exists = name in {c.name for c in snap.channels}
        answer = confirm_box(
            f"{'Replace' if exists else 'Add'} channel **{plain(name)}**: {plain(masked)}"
            + (" (a channel of this name exists: it is refused unless you ticked Replace)"
               if exists and not replace_existing else "")
            + ". The URL is stored as a secret and never shown again.",
            keys=ConfirmKeys(confirm="channel_save", cancel="channel_save_cancel"), confirm_label="Save channel",
            icon=":material/save:", ask_reason=False, actor=identity.user, held_as="alerts.channel")
        if answer.confirmed:
            _apply(lambda: alerting.save_channel(settings, name, url, identity, replace_existing=replace_existing),
                   failed="The channel was not saved", done=lambda c: f"Saved channel {c.name}: {c.masked}.",
                   forget="alerts.channel")

with history_tab:
    st.subheader("Incidents")
    if snap.incidents:
        st.dataframe(incidents_frame(snap.incidents), hide_index=True, width="stretch")
    else:
        st.caption("No rule has fired yet.")
    st.subheader("Notifications sent")
    try:
        sent = alerting.delivery_history(settings)
        change_log = alerting.change_history(settings)
    except AgentOpsError as exc:
        show_error(exc, what="Cannot read the history")
        sent, change_log = [], []
    if sent:
        st.dataframe(history_frame(sent), hide_index=True, width="stretch")
    else:
        st.caption("Nothing sent yet. Send a test alert from the Channels tab.")
    st.subheader("Changes to rules and channels")
    if change_log:
        st.dataframe([{"at": c["at"], "what": c["key"], "version": c["version"], "by": c["user"], "note": c["note"]}
                      for c in change_log], hide_index=True, width="stretch")
    else:
        st.caption("No changes recorded yet.")
