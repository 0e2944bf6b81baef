"""Widgets for the serving page: split editor state, arm tables, the change preview, and the
history, promote and deploy blocks shared by the agent-endpoint and AI Gateway sections."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Callable, Hashable

import pandas as pd
import streamlit as st

from components.errors import show_error
from components.tables import plain, readable
from services.ab import ArmReport, ArmStats, Interval
from services.errors import AgentOpsError, BackendUnavailableError
from services.serving import DeployPlan, Endpoint, SplitPlan, version_label
from services.audit import Change


def _ci(interval: Interval, fmt: str) -> str:
    if interval.value is None:
        return "—"
    if interval.low is None or interval.high is None:
        return format(interval.value, fmt)
    return f"{format(interval.value, fmt)} ({format(interval.low, fmt)}–{format(interval.high, fmt)})"


def arms_frame(report: ArmReport) -> pd.DataFrame:
    """One row per arm with 95% intervals written out."""
    rows = []
    for arm in report.arms:
        rows.append({
            "Arm": version_label(arm.model_name, arm.version) + (" (baseline)" if arm.entity_name == report.baseline else ""),
            "Requests": arm.requests,
            "Error rate (95% CI)": _ci(arm.error_rate, ".1%"),
            "p50 ms": arm.p50_ms, "p95 ms": arm.p95_ms, "p99 ms": arm.p99_ms,
            "Median latency (95% CI)": _ci(arm.median_latency, ",.0f"),
            "Tokens / request": arm.tokens_per_request,
            "Cost / request (95% CI)": _ci(arm.cost_per_request, ".5f"),
            "Feedback": arm.feedback_count,
            "Positive (95% CI)": _ci(arm.positive_rate, ".0%"),
            "Mean rating": arm.mean_rating,
            "Scorer pass rate": _ci(arm.scorer_pass_rate, ".0%"),
            # One column per live scorer; "—" on an arm where it has no result.
            **{f"{s.measure} (95% CI)": _ci(s.value, ".0%" if s.pass_fail else ",.2f") + (f", n = {s.n}" if s.n else "")
               for s in arm.live_scorers},
        })
    # An arm without traffic has no latency, tokens or rating: a dash, never None or nan.
    return readable(pd.DataFrame(rows), {c: ",.0f" for c in ("p50 ms", "p95 ms", "p99 ms", "Tokens / request")}
                    | {"Mean rating": ".2f"}, keep=("Requests", "Feedback"))


def comparisons_frame(report: ArmReport) -> pd.DataFrame:
    rows = []
    for comparison in report.comparisons:
        for metric in comparison.metrics:
            rows.append({
                "Candidate": comparison.candidate, "Metric": metric.metric,
                "Baseline": metric.baseline, "Candidate value": metric.candidate,
                "p-value": metric.p_value, "Test": metric.test, "Result": metric.direction.value,
            })
    return readable(pd.DataFrame(rows), {"p-value": ".4f"})


def plan_frame(plan: SplitPlan) -> pd.DataFrame:
    """Current → proposed share per served version."""
    before, after = plan.percentages()
    names = list(dict.fromkeys([*before, *after]))
    return pd.DataFrame([
        {"Served version": n, "Current %": before.get(n, 0), "Proposed %": after.get(n, 0),
         "Change": after.get(n, 0) - before.get(n, 0)}
        for n in names
    ])


def history_frame(changes: list[Change]) -> pd.DataFrame:
    fmt = lambda split: " · ".join(f"{k} {v}%" for k, v in split.items()) or "—"  # noqa: E731
    return pd.DataFrame([
        {"When": c.at, "Who": c.user, "Action": c.action, "Before": fmt(c.before), "After": fmt(c.after),
         "Outcome": c.outcome, "Reason": c.reason}
        for c in changes
    ]).fillna("—").replace("", "—")


def history_block(changes: list[Change]) -> None:
    """The audit trail of one endpoint's traffic changes, or what to do when there is none."""
    if changes:
        st.dataframe(history_frame(changes), hide_index=True, use_container_width=True,
                     column_config={"When": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")})
    else:
        st.info("No traffic changes recorded through the app for this endpoint yet.", icon=":material/history:")


def interrupted_notice(changes: list[Change]) -> str | None:
    """A warning for the newest change when it was interrupted (its outcome is unknown), else None."""
    if changes and not changes[0].completed:
        latest = changes[0]
        asked = " · ".join(f"{k} {v}%" for k, v in (latest.requested or latest.after).items())
        return (f"The last traffic change ({latest.action} to {asked}, by {latest.user}) was interrupted: the "
                "backend stopped answering before it was recorded as done. The split shown above is what the "
                "endpoint serves now. Pressing Confirm again on that confirmation completes it exactly once.")
    return None


# --- the split change confirmation (both sections of the page) ---------------------------------


def propose_split(key: str, plan: SplitPlan) -> None:
    """Keep a reviewed plan under ``key``; a new plan is a new confirmation (a new request id)."""
    st.session_state[key] = plan
    st.session_state.pop(f"{key}::request", None)
    st.session_state.pop(f"{key}::interrupted", None)


def drop_split(key: str) -> None:
    for suffix in ("", "::request", "::interrupted"):
        st.session_state.pop(key + suffix, None)


def split_confirmation(key: str, apply: Callable[[str, Callable[[str], None]], Endpoint], *,
                       note: str | None = None) -> Endpoint | None:
    """Preview the plan under ``key`` and apply it once confirmed; returns the stored endpoint then.

    ``apply(request_id, progress)`` writes the split. The request id is made once per
    confirmation and kept until it succeeds or is cancelled, so pressing Confirm again after an
    interruption completes the same change exactly once instead of making a second one.
    """
    plan: SplitPlan | None = st.session_state.get(key)
    if plan is None:
        return None
    st.subheader("Current → proposed")
    st.dataframe(plan_frame(plan), hide_index=True, use_container_width=True)
    if note:
        st.caption(note)
    request_id = st.session_state.setdefault(f"{key}::request", uuid.uuid4().hex)
    if st.session_state.get(f"{key}::interrupted"):
        st.warning("The last attempt at this change was interrupted. Press **Confirm and apply** again once the "
                   f"backend is back: it completes this change exactly once (request `{request_id}`).",
                   icon=":material/sync_problem:")
    confirm, cancel = st.columns(2)
    if confirm.button("Confirm and apply", type="primary", key=f"{key}::confirm"):
        try:
            with st.status("Applying the new split…", expanded=True) as status:
                stored = apply(request_id, status.write)
                status.update(label="Split applied", state="complete")
        except BackendUnavailableError as exc:
            st.session_state[f"{key}::interrupted"] = True
            show_error(exc, what="The traffic change was interrupted")
        except AgentOpsError as exc:
            show_error(exc, what="The split was not changed")
        else:
            drop_split(key)
            return stored
    if cancel.button("Cancel", key=f"{key}::cancel"):
        drop_split(key)
        st.rerun()
    return None


@dataclass(frozen=True)
class SplitRow:
    """One arm in the split editor: ``ref`` is what the plan function receives as its key."""

    ref: Hashable
    label: str
    widget_id: str  # the stable part of the row's widget keys
    entity_name: str | None = None  # the served entity it edits; None for a version being added


@dataclass(frozen=True)
class VersionSource:
    """Where the editor offers more served versions from: agent name -> latest registered version."""

    agents: dict[str, str | None]
    row: Callable[[str, str], SplitRow]  # (agent, version) -> the row it adds


def split_editor(endpoint: Endpoint, rows: list[SplitRow], *, prefix: str, can_change: bool, locked: str | None,
                 plan: Callable[[dict[Hashable, int], bool | None], SplitPlan],
                 apply: Callable[[SplitPlan, str, str, Callable[[str], None]], Endpoint],
                 intro: str, add: VersionSource | None = None, sticky: bool | None = None,
                 sticky_locked: bool = False, note: str | None = None) -> Endpoint | None:
    """The one split editor, for every backend: shares per arm, a reason, a preview, then confirm.

    ``plan(shares, sticky)`` validates the shares (keyed by each row's ``ref``) into a plan;
    ``apply(plan, reason, request_id, progress)`` writes it, audited. ``add`` offers served versions to
    add from the registry; ``sticky`` (None: not offered) is the endpoint's sticky routing, shown but not
    editable with ``sticky_locked``. ``locked``
    says why the user may not change traffic. Widgets are keyed ``<prefix>pct::<endpoint>::<row>`` etc.
    Returns the stored endpoint once a change was applied.
    """
    name = endpoint.name
    st.markdown(intro)
    state_key = f"{prefix}split_rows::{name}"
    if state_key not in st.session_state:
        st.session_state[state_key] = {row.ref: [row, endpoint.percentage_for(row.entity_name) if row.entity_name else 0]
                                       for row in rows}
    editing: dict[Hashable, list] = st.session_state[state_key]
    for ref, (row, pct) in list(editing.items()):
        c1, c2, _ = st.columns([3, 1, 3], vertical_alignment="bottom")
        editing[ref][1] = int(c1.number_input(escape_md(row.label), min_value=0, max_value=100, step=5,
                                              value=int(pct), key=f"{prefix}pct::{name}::{row.widget_id}"))
        if add is not None and len(editing) > 1 and c2.button("Remove", key=f"{prefix}rm::{name}::{row.widget_id}"):
            del editing[ref]
            st.rerun()
    if add is not None:
        _add_version(name, prefix, editing, add)
    total = sum(pct for _, pct in editing.values())
    if total == 100:
        st.success(f"Total: {total}%", icon=":material/check_circle:")
    else:
        st.error(f"Total: {total}% — the shares must add up to 100% ({100 - total:+d}% to go).", icon=":material/error:")
    chosen_sticky = None
    if sticky is not None:
        chosen_sticky = st.toggle("Sticky assignment (same user or conversation → same version)", value=sticky,
                                  key=f"{prefix}sticky::{name}", disabled=sticky_locked)
    reason = st.text_input("Reason (recorded in the audit trail)", key=f"{prefix}reason::{name}")
    plan_key = f"{prefix}plan::{name}"
    if endpoint.read_only:
        st.caption(f":material/lock: {escape_md(name)} is {escape_md(endpoint.read_only)}.")
    if st.button("Review change", type="primary", disabled=total != 100 or not can_change or bool(endpoint.read_only),
                 key=f"{prefix}review::{name}", help=locked):
        try:
            propose_split(plan_key, plan({ref: pct for ref, (_, pct) in editing.items()}, chosen_sticky))
        except AgentOpsError as exc:
            show_error(exc, what="This split cannot be applied")
    proposed = st.session_state.get(plan_key)
    stored = split_confirmation(plan_key, lambda request_id, progress: apply(proposed, reason, request_id, progress),
                                note=note)
    if stored is not None:
        st.session_state.pop(state_key, None)
    return stored


def _add_version(name: str, prefix: str, editing: dict[Hashable, list], add: VersionSource) -> None:
    with st.expander("Add a served version from the registry"):
        agent_name = st.selectbox("Agent", list(add.agents), key=f"{prefix}add_agent::{name}")
        latest = add.agents.get(agent_name) if agent_name else None
        options = [str(v) for v in range(int(latest), 0, -1)] if latest else []
        version = st.selectbox("Version", options, key=f"{prefix}add_version::{name}")
        if st.button("Add", key=f"{prefix}add::{name}", disabled=not version):
            row = add.row(agent_name, version)
            editing.setdefault(row.ref, [row, 0])
            st.rerun()


def window_select(key: str, container=st) -> int:
    """The judging window, in hours."""
    return container.selectbox("Window", [24, 72, 168, 720], index=2, key=key,
                               format_func=lambda h: f"last {h // 24} days" if h >= 48 else f"last {h} hours")


@dataclass(frozen=True)
class PromoteRequest:
    """What the operator confirmed in ``promote_form``; ``request_id`` is one per confirmation."""

    entity_name: str
    action: str  # "promote winner" or "rollback"
    reason: str
    override_gate: bool = False
    request_id: str | None = None


def promote_done(key: str) -> None:
    """Forget the confirmation of ``promote_form(key=...)`` after it completed."""
    prefix, _, name = key.partition("::")
    st.session_state.pop(f"{prefix}request::{name}", None)


def escape_md(text: str) -> str:
    """Escape markdown so model and endpoint names render as text (bare URLs and e-mails included)."""
    return plain(text)


def promote_form(report: ArmReport, *, key: str, labels: dict[str, str], can_change: bool, caption: str,
                 now: str, after_note: Callable[[str], str] | None = None,
                 allow_override: bool = False) -> PromoteRequest | None:
    """Pick an arm, promote or roll back, with a reason; returns the request once confirmed.

    ``labels`` names each arm (entity name → label); ``now`` describes the current split and
    ``after_note(label)`` what else follows the traffic move (e.g. the alias). ``key`` is
    ``"<prefix>::<endpoint>"``; widgets are keyed ``<prefix>winner::<endpoint>`` etc., so the two
    sections of the page never collide.
    """
    prefix, _, name = key.partition("::")
    st.subheader("Promote or roll back")
    st.caption(caption)
    arms = list(labels)
    default = arms.index(report.winner) if report.winner in labels else 0
    chosen = st.selectbox("Arm", arms, index=default, format_func=labels.get, key=f"{prefix}winner::{name}")
    if report.winner:
        st.success(f"Winner on this window: {labels[report.winner]}", icon=":material/emoji_events:")
    else:
        st.info("No arm is a clear winner on this window.", icon=":material/balance:")
    action = st.radio("Action", ["promote winner", "rollback"], horizontal=True, key=f"{prefix}action::{name}")
    why = st.text_input("Reason", key=f"{prefix}why::{name}")
    override = (st.checkbox("Override the promotion gate (needs the reason above)", key=f"{prefix}override::{name}")
                if allow_override else False)
    after = f"{labels[chosen]} 100%" + (after_note(labels[chosen]) if after_note else "")
    st.markdown(f"**Now:** {escape_md(now)}  \n**After:** {escape_md(after)}")
    if st.button("Confirm", type="primary", key=f"{prefix}promote::{name}", disabled=not why.strip() or not can_change):
        # The same arm and action keep their request id until ``promote_done``: a retry completes it once.
        kept = st.session_state.get(f"{prefix}request::{name}")
        if kept is None or kept["for"] != (chosen, action):
            kept = st.session_state[f"{prefix}request::{name}"] = {"for": (chosen, action), "id": uuid.uuid4().hex}
        return PromoteRequest(chosen, action, why, override, kept["id"])
    return None


def deploy_frame(plan: DeployPlan) -> pd.DataFrame:
    """Current → after-deploy share per served version (the new one gets everything)."""
    before, after = plan.percentages()
    names = list(dict.fromkeys([*after, *before]))
    return pd.DataFrame([
        {"Served version": n, "Current %": before.get(n, 0), "After deploy %": after.get(n, 0),
         "Change": after.get(n, 0) - before.get(n, 0)}
        for n in names
    ])


def arm_label(endpoint: Endpoint, entity_name: str) -> str:
    served = next((s for s in endpoint.served if s.entity_name == entity_name), None)
    return served.label if served else entity_name


def best_arm_by(arms: tuple[ArmStats, ...]) -> dict[str, str]:
    return {a.entity_name: version_label(a.model_name, a.version) for a in arms}


def gateway_models_frame(gateway) -> pd.DataFrame:
    """Models of an MLflow AI Gateway endpoint: arms with their share, then fallbacks in order."""
    share = {r.entity_name: r.percentage for r in gateway.endpoint.routes}
    rows = [{"Model definition": m.name, "Provider / model": m.label, "Role": "arm",
             "Weight": m.weight, "Share %": share.get(m.name, 0)} for m in gateway.primaries]
    rows += [{"Model definition": m.name, "Provider / model": m.label, "Role": f"fallback #{m.fallback_order or '—'}",
              "Weight": None, "Share %": None} for m in gateway.fallbacks]
    return readable(pd.DataFrame(rows))  # a fallback has no weight or share: a dash


def budgets_frame(gateway) -> pd.DataFrame:
    return pd.DataFrame([{"Limit": f"{b.amount:,.2f} {b.unit}", "Window": b.window, "Scope": b.scope,
                          "When exceeded": b.action} for b in gateway.budgets])
