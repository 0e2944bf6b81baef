"""Guarded rollouts on the Serving page (plan form, timeline, pause / resume / abort / approve) and the
Overview's list of rollouts in progress."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import streamlit as st

from components.confirm import ConfirmKeys, confirm_box
from components.errors import show_error
from components.tables import plain
from services import rollout_controller as rc
from services import rollouts as rollout_rules
from services.errors import AgentOpsError
from services.identity import Identity
from services.rollouts import MEASURE_HELP, Final, Guardrail, Measure, RolloutPlan
from services.settings import Settings

METHOD_HELP = (
    "Decisions use always-valid sequential statistics: a mixture sequential probability ratio test (mSPRT) and "
    "its confidence sequence. However often the controller looks, the chance that it rolls back a challenger that "
    "is within tolerance of the champion stays below alpha (5 % unless the plan says otherwise), shared equally "
    "between the guardrails. A guardrail is breached when the whole interval lies beyond its tolerance, and the "
    "rollout moves to the next step only when every guardrail's interval lies within it, each arm has the "
    "minimum sample and the step's dwell time has passed. Evidence counts from the rollout's start."
)
NO_ROLE = "Changing traffic needs the operator role on this workspace."
DEFAULT_TOLERANCE = {Measure.ERROR_RATE: 0.02, Measure.P95_LATENCY: 0.2, Measure.COST_PER_REQUEST: 0.1,
                     Measure.LIVE_PASS_RATE: 0.05, Measure.THUMBS_DOWN_RATE: 0.05}


def rollouts_frame(rollouts: Sequence[rc.Rollout]) -> pd.DataFrame:
    """One row per rollout: endpoint, challenger, status, share, started by, last decision."""
    rows = []
    for r in rollouts:
        last = next((e for e in reversed(r.timeline) if e.kind != "look"), None)
        rows.append({
            "Endpoint": r.plan.endpoint, "Challenger": r.plan.challenger, "Champion": r.plan.champion,
            "Status": r.status.value, "Challenger share": f"{r.share} %" if r.status.active else "—",
            "Step": f"{r.step + 1} of {len(r.plan.steps)}", "Started by": r.started_by,
            "Last decision": f"{last.action}: {last.reason}" if last else "—",
        })
    return pd.DataFrame(rows, columns=["Endpoint", "Challenger", "Champion", "Status", "Challenger share", "Step",
                                       "Started by", "Last decision"])


def timeline_frame(rollout: rc.Rollout) -> pd.DataFrame:
    """The rollout's looks and decisions, newest first, with the evidence behind each."""
    rows = [{"When": e.at[:19].replace("T", " "), "What": e.kind, "Action": e.action, "Share": f"{e.share} %",
             "By": e.by, "Rule": e.rule or "", "Reason": e.reason,
             "Evidence": "; ".join(f"{k}: {v}" for k, v in e.evidence.items())}
            for e in reversed(rollout.timeline)]
    return pd.DataFrame(rows, columns=["When", "What", "Action", "Share", "By", "Rule", "Reason", "Evidence"])


def rollout_panel(endpoint: str, arms: Sequence[str], *, settings: Settings, identity: Identity, can_change: bool,
                  ports: rc.RolloutPorts, key: str = "rollout") -> None:
    """The endpoint's rollout: its timeline and controls, or a form to start one."""
    try:
        current = rc.get_rollout(endpoint, settings)
    except AgentOpsError as exc:
        show_error(exc, what="Cannot read the rollout")
        return
    if current is not None:
        _current(current, settings=settings, identity=identity, can_change=can_change, ports=ports, key=key)
        if current.status.active:
            return
    _plan_form(endpoint, arms, settings=settings, identity=identity, can_change=can_change, ports=ports, key=key)


def _current(rollout: rc.Rollout, *, settings: Settings, identity: Identity, can_change: bool,
             ports: rc.RolloutPorts, key: str) -> None:
    plan = rollout.plan
    st.markdown(f"**{plain(plan.challenger)}** against **{plain(plan.champion)}** · {rollout.status.value} · "
                f"started by {plain(rollout.started_by)}")
    st.progress(rollout.step / max(len(plan.steps) - 1, 1) if rollout.status.active else 1.0,
                text=" → ".join(f"**{s} %**" if i == rollout.step and rollout.status.active else f"{s} %"
                                for i, s in enumerate(plan.steps)))
    if rollout.pending:
        st.warning("An action is being completed: the controller finishes it on its next look.",
                   icon=":material/sync_problem:")
    st.dataframe(timeline_frame(rollout), hide_index=True, use_container_width=True)
    if not rollout.status.active:
        return
    hint = "" if can_change else NO_ROLE
    actions = []
    if rollout.status is rc.Status.RUNNING:
        actions.append(("Pause", "The controller stops looking and acting; traffic stays as it is.",
                        lambda: rc.pause(plan.endpoint, identity, settings)))
    if rollout.status is rc.Status.PAUSED:
        actions.append(("Resume", "The controller looks and acts again; this step's dwell time starts over.",
                        lambda: rc.resume(plan.endpoint, identity, settings)))
    if rollout.status is rc.Status.AWAITING_APPROVAL:
        actions.append(("Approve promotion",
                        (f"All traffic moves to **{plain(plan.challenger)}**, and for a registered version the "
                         f"**{plain(plan.alias)}** alias too (the promotion gate checks your role and the evidence)."),
                        lambda: rc.approve(plan.endpoint, identity, settings, ports)))
    cols = st.columns(2)
    for (label, summary, run), col in zip(actions, cols):
        with col:
            if confirm_box(summary, keys=ConfirmKeys(confirm=f"{key}::{label}"), confirm_label=label,
                           ask_reason=False, disabled_hint=hint, actor=identity.user).confirmed:
                _do(run, f"{label} failed")
    with cols[-1]:
        sure = st.checkbox("Abort: all traffic to the champion", key=f"{key}::abort_sure", disabled=not can_change)
        answer = confirm_box(
            f"Abort: **{plain(plan.challenger)}** {rollout.share} % → 0 %, **{plain(plan.champion)}** gets all "
            "traffic; aliases stay as they are.", keys=ConfirmKeys(confirm=f"{key}::abort", reason=f"{key}::abort_reason"),
            confirm_label="Abort rollout", reason_label="Reason for aborting (optional, recorded)", disabled_hint=hint,
            missing="" if sure else "Tick the box above to abort.", actor=identity.user)
    if answer.confirmed:
        _do(lambda: rc.abort(plan.endpoint, identity, settings, ports, reason=answer.reason),
            "The rollout was not aborted")


def _plan_form(endpoint: str, arms: Sequence[str], *, settings: Settings, identity: Identity, can_change: bool,
               ports: rc.RolloutPorts, key: str) -> None:
    st.caption(METHOD_HELP)
    if len(arms) < 2:
        st.info("A rollout needs two served versions on this endpoint: serve the challenger next to the champion "
                "first (at 0 %).", icon=":material/alt_route:")
        return
    # Outside the form, so the tolerance fields follow the choice at once.
    chosen = st.multiselect("Guardrails", [m.value for m in Measure],
                            default=[Measure.ERROR_RATE.value, Measure.P95_LATENCY.value], key=f"{key}::rails")
    with st.form(f"{key}::plan"):
        cols = st.columns(2)
        champion = cols[0].selectbox("Champion", list(arms), key=f"{key}::champion")
        challenger = cols[1].selectbox("Challenger", list(arms), index=1, key=f"{key}::challenger")
        steps_text = st.text_input("Steps (challenger's share, %)", "5, 25, 50, 100", key=f"{key}::steps")
        cols = st.columns(3)
        min_sample = cols[0].number_input("Minimum requests per arm", 30, 10_000_000, 500, key=f"{key}::min")
        dwell = cols[1].number_input("Dwell per step (minutes)", 0, 10_080, 30, key=f"{key}::dwell")
        final = cols[2].selectbox("At the end", [f.value for f in Final], key=f"{key}::final")
        guardrails = []
        for name in chosen:
            measure = Measure(name)
            cols = st.columns([2, 1, 1])
            cols[0].caption(MEASURE_HELP[measure])
            tolerance = cols[1].number_input(f"Tolerance: {name}", 0.0, 100.0, DEFAULT_TOLERANCE[measure],
                                             step=0.01, key=f"{key}::tol::{name}")
            scorer = cols[2].text_input(f"Scorer ({name})", key=f"{key}::scorer::{name}") \
                if measure is Measure.LIVE_PASS_RATE else None
            guardrails.append(Guardrail(measure, float(tolerance), (scorer or "").strip() or None))
        submitted = st.form_submit_button("Review plan", disabled=not can_change, key=f"{key}::review")
    planned = f"{key}::planned"
    if submitted:
        st.session_state.pop(planned, None)
        try:
            steps = tuple(int(part) for part in steps_text.replace("→", ",").split(",") if part.strip())
        except ValueError:
            st.error(f"Steps must be whole percents separated by commas (got {plain(steps_text)!r}).")
            return
        plan = RolloutPlan(endpoint, champion, challenger, steps, int(min_sample), int(dwell) * 60,
                           tuple(guardrails), Final(final))
        try:
            st.session_state[planned] = rollout_rules.validate_plan(plan, served=tuple(arms))
        except AgentOpsError as exc:
            show_error(exc, what="The plan cannot run")
            return
    plan = st.session_state.get(planned)
    if plan is None or plan.endpoint != endpoint:
        return
    rails = ", ".join(f"{g.label} within {g.tolerance:g}" for g in plan.guardrails)
    answer = confirm_box(
        f"Start: **{plain(plan.challenger)}** against **{plain(plan.champion)}**, "
        f"{' → '.join(f'{s} %' for s in plan.steps)}; at least {plan.min_sample} requests per arm and "
        f"{plan.dwell_seconds // 60} min per step; guardrails {plain(rails)}; at the end: {plan.final.value}. "
        f"The first step moves {plan.steps[0]} % of traffic now.",
        keys=ConfirmKeys(confirm=f"{key}::start", cancel=f"{key}::start_cancel"), confirm_label="Start rollout",
        ask_reason=False, disabled_hint="" if can_change else NO_ROLE, actor=identity.user)
    if answer.cancelled:
        st.session_state.pop(planned, None)
        st.rerun()
    if answer.confirmed:
        _do(lambda: rc.start(plan, identity, settings, ports), "The rollout was not started",
            forget=planned)


def _do(action, what: str, *, forget: str | None = None) -> None:
    try:
        with st.spinner("Working…"):
            action()
    except AgentOpsError as exc:
        show_error(exc, what=what)
        return
    if forget:
        st.session_state.pop(forget, None)
    st.rerun()
