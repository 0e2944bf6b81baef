"""Widgets for the serving page: arm tables, the history, promote and deploy blocks shared by the
agent-endpoint and AI Gateway sections (the split editor is ``components.split_editor``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import streamlit as st

from components.confirm import ConfirmKeys, confirm_box
from components.split_editor import change_frame
from components.tables import plain, readable
from services.ab import ArmReport, ArmStats, Interval
from services.serving import DeployPlan, Endpoint, version_label
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
                 allow_override: bool = False, actor: str = "") -> PromoteRequest | None:
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
    override = (st.checkbox("Override the promotion gate (needs the reason below)", key=f"{prefix}override::{name}")
                if allow_override else False)
    after = f"{labels[chosen]} 100%" + (after_note(labels[chosen]) if after_note else "")
    answer = confirm_box(f"**Now:** {escape_md(now)}  \n**After:** {escape_md(after)}",
                         keys=ConfirmKeys(confirm=f"{prefix}promote::{name}", reason=f"{prefix}why::{name}"),
                         reason_label="Reason", reason_required=True,
                         disabled_hint="" if can_change else "Your role may not change traffic.", actor=actor)
    if answer.confirmed:
        # The same arm and action keep their request id until ``promote_done``: a retry completes it once.
        kept = st.session_state.get(f"{prefix}request::{name}")
        if kept is None or kept["for"] != (chosen, action):
            kept = st.session_state[f"{prefix}request::{name}"] = {"for": (chosen, action), "id": uuid.uuid4().hex}
        return PromoteRequest(chosen, action, answer.reason, override, kept["id"])
    return None


def deploy_frame(plan: DeployPlan) -> pd.DataFrame:
    """Current → after-deploy share per served version (the new one gets everything)."""
    before, after = plan.percentages()
    return change_frame(before, after, "After deploy %", after_first=True)


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
