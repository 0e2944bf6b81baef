"""The "Live scoring" section of the Monitoring page: per agent, which scorers run on live traffic,
on what share of traces, on which traces; and what the background worker last did."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Sequence

import streamlit as st

from components.caching import per_user_cache
from components.confirm import NOTHING_CHANGES, ConfirmKeys, changes, confirm_box, held, hold, release
from components.context import allowed, role_hint
from components.errors import show_error
from components.live_quality import render_live_quality
from components.tables import plain
from services import live_scoring, roles
from services.errors import AgentOpsError
from services.identity import Identity
from services.settings import Backend, Settings

ACTION = roles.Action.MANAGE_LIVE_SCORING


@per_user_cache(ttl=30, show_spinner=False)
def _configs(settings: Settings) -> dict[str, tuple[live_scoring.LiveScoringConfig, int]]:
    return live_scoring.load_all(settings)


def _summary(config: live_scoring.LiveScoringConfig | None) -> str:
    if config is None:
        return "not configured"
    text = f"{', '.join(config.scorers)} on {config.sample_rate:.0%} of traces"
    if config.filter_string:
        text += f" where {config.filter_string}"
    return text + ("" if config.enabled else " (paused)")


def _worker_status(settings: Settings) -> None:
    if settings.backend is Backend.DATABRICKS:
        st.caption(":material/cloud: On Databricks, production monitoring runs the registered live scorers; "
                   "saving here registers and starts them in the agent's experiments.")
        return
    status = live_scoring.read_status(settings)
    if status is None:
        st.info("**The background worker has not run on this store yet.** `scripts/run` starts it beside the "
                "gateway; or run `python -m agentops worker`.", icon=":material/schedule:")
        return
    cols = st.columns(4)
    last = (status.last_run or "—").replace("T", " ")[:19]
    cols[0].metric("Last run (UTC)", last[11:] or last, help=f"{last} UTC, took {status.last_duration_s:.1f} s")
    cols[1].metric("Traces scored (last run)", status.traces_scored_last)
    cols[2].metric("Traces scored (total)", status.traces_scored_total)
    cols[3].metric("Lag", "—" if status.lag_seconds is None else f"{status.lag_seconds:,.0f} s",
                   help="How far behind now the newest scored trace is (the worker waits for traces to finish).")
    for error in status.errors:
        st.warning(plain(error), icon=":material/error:")


def render_live_scoring(settings: Settings, identity: Identity, agents: Sequence[str], agent: str | None,
                        start: datetime, end: datetime, split: str = "Version") -> None:
    """The Live scoring section: worker status, the chosen agent's configuration, quality over time."""
    st.subheader("Live scoring")
    _worker_status(settings)
    if not agents:
        return
    try:
        configs = _configs(settings)
    except AgentOpsError as exc:
        show_error(exc, what="Cannot read the live-scoring configuration")
        return
    chosen = agent or st.selectbox("Agent to configure", list(agents), key="live_agent")
    current, version = configs.get(chosen, (None, 0))
    st.caption(f"**{plain(chosen)}**: {plain(_summary(current))}.")
    can_edit = allowed(settings, identity, ACTION)
    with st.expander("Configure live scoring", icon=":material/rule:", expanded=current is None and can_edit):
        _form(settings, identity, chosen, current, version, can_edit)
    render_live_quality(settings, chosen, start, end, split)


def _form(settings: Settings, identity: Identity, agent: str, current: live_scoring.LiveScoringConfig | None,
          version: int, can_edit: bool) -> None:
    base = current or live_scoring.LiveScoringConfig(scorers=("latency_budget",), sample_rate=0.1)
    choices = live_scoring.catalog(settings)
    usable = [c.name for c in choices if c.available]
    labels = {c.name: f"{c.label} ({c.kind})" for c in choices}
    blocked: dict[str, list[str]] = {}
    for c in choices:
        if not c.available:
            blocked.setdefault(c.reason, []).append(c.label)
    for reason, names in blocked.items():
        st.caption(f":material/block: {plain(', '.join(names))} unavailable: {plain(reason)}")
    key = f"live_{agent}_{version}"
    if flash := st.session_state.pop(f"live_{agent}_flash", None):
        st.success(flash, icon=":material/check_circle:")
    with st.form(key=f"{key}_form", border=False):
        picked = st.multiselect("Scorers", usable, default=[s for s in base.scorers if s in usable],
                                format_func=lambda n: labels.get(n, n), key=f"{key}_scorers")
        cols = st.columns(3)
        rate = cols[0].number_input("Sample rate (0–1)", value=float(base.sample_rate), step=0.05, format="%.2f",
                                    key=f"{key}_rate", help="Share of new traces scored, e.g. 0.1 = one in ten.")
        latency = cols[1].number_input("Latency budget (ms)", value=float(base.latency_budget_ms), step=100.0,
                                       key=f"{key}_latency")
        cost = cols[2].number_input("Cost budget (USD)", value=float(base.cost_budget_usd), step=0.001,
                                    format="%.4f", key=f"{key}_cost")
        filter_string = st.text_input("Trace filter (optional, MLflow search syntax)", value=base.filter_string,
                                      placeholder="tag.`agentops.arm` = 'b'", key=f"{key}_filter")
        terms = st.text_input("Forbidden terms (comma-separated)", value=", ".join(base.forbidden_terms),
                              key=f"{key}_terms")
        guidelines = st.text_area("Guidelines (one per line; for the Guidelines judge)",
                                  value="\n".join(base.guidelines), key=f"{key}_guidelines")
        enabled = st.toggle("Running", value=base.enabled, key=f"{key}_enabled")
        reviewed = st.form_submit_button("Review live scoring", icon=":material/fact_check:", disabled=not can_edit)
    if not can_edit:
        st.caption(f":material/lock: {role_hint(ACTION)}")
    if reviewed:  # checked now, saved only once confirmed
        release(key)
        wanted = live_scoring.LiveScoringConfig(
            scorers=tuple(picked), sample_rate=float(rate), filter_string=filter_string.strip(),
            latency_budget_ms=float(latency), cost_budget_usd=float(cost),
            forbidden_terms=tuple(t.strip() for t in terms.split(",") if t.strip()),
            guidelines=tuple(g.strip() for g in guidelines.splitlines() if g.strip()), enabled=enabled)
        try:
            hold(key, live_scoring.validate(agent, wanted, settings))
        except AgentOpsError as exc:
            show_error(exc, what="Live scoring not saved")
    wanted = held(key)
    if wanted is not None:
        answer = confirm_box(
            f"Live scoring of **{plain(agent)}**: {plain(_summary(current))} → {plain(_summary(wanted))}\n\n"
            + changes(asdict(current) if current is not None else None, asdict(wanted)),
            keys=ConfirmKeys(confirm=f"{key}_save", cancel=f"{key}_save_cancel"), confirm_label="Save live scoring",
            icon=":material/save:", ask_reason=False, actor=identity.user, held_as=key,
            missing=NOTHING_CHANGES if current == wanted else "")
        if answer.confirmed:
            try:
                with st.spinner("Saving live scoring…"):
                    live_scoring.save_config(agent, wanted, identity=identity, settings=settings,
                                             expected_version=version)
                _configs.clear()
                release(key)
                st.session_state[f"live_{agent}_flash"] = (f"Live scoring of {plain(agent)}: {plain(_summary(current))} → "
                                                    f"{plain(_summary(wanted))}.")
                st.rerun()
            except AgentOpsError as exc:
                show_error(exc, what="Live scoring not saved")
    if current is None or not can_edit:
        return
    with st.container(border=True):  # inside the "Configure live scoring" expander, which cannot hold another
        sure = st.checkbox(f"Yes, stop scoring {agent}'s live traffic", key=f"{key}_remove_sure")
        removed = confirm_box(None, keys=ConfirmKeys(confirm=f"{key}_remove"), confirm_label="Remove live scoring",
                              icon=":material/delete:", ask_reason=False, actor=identity.user,
                              missing="" if sure else "Tick the box to remove.").confirmed
    if removed:
        try:
            live_scoring.delete_config(agent, identity=identity, settings=settings)
            _configs.clear()
            st.success(f"Live scoring of {plain(agent)} removed; its past results stay on the traces.")
        except AgentOpsError as exc:
            show_error(exc, what="Live scoring not removed")
