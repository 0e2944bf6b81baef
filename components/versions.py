"""Tables and widgets for the Versions & releases page (no MLflow calls here)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from components.tables import code, plain, readable
from services.audit import Change
from services.gates import CheckStatus, GateRule
from services.promotion import PromotionPlan
from services.releases import AliasState, Drift
from services.prompts import PromptChange, PromptRef
from services.versions import VersionDetail, VersionDiff

_CHECK_ICON = {CheckStatus.PASS: "✅ pass", CheckStatus.FAIL: "❌ fail", CheckStatus.NO_DATA: "➖ no data"}


def _v(version: str | None) -> str:
    return f"v{version}" if version else "—"


def versions_table(frame: pd.DataFrame, readiness: dict[str, str] | None = None) -> pd.DataFrame:
    """The listing frame as shown: one row per version, one column per evaluation metric.

    ``readiness`` maps a version number to its readiness summary (a "Readiness" column).
    """
    metrics = sorted({m for row in frame["metrics"] for m in row}) if not frame.empty else []
    rows = []
    for row in frame.itertuples(index=False):
        shown = {
            "Version": f"v{row.version}",
            "Aliases": ", ".join(row.aliases) or "—",
        }
        if readiness is not None:
            shown["Readiness"] = readiness.get(str(row.version), "—")
        shown |= {
            "Created": row.created,
            "Creator": row.creator or "—",
            "Status": row.status,
            "Git commit": (row.git_commit or "")[:10] or "—",
        }
        shown.update({m.removesuffix("/mean"): row.metrics.get(m) for m in metrics})
        shown.update(
            {
                "Traces (7d)": row.traces,
                "Error rate": row.error_rate,
                "p95 (ms)": row.p95_ms,
                "Cost / request ($)": row.cost_per_request,
                "Params": ", ".join(f"{k}={v}" for k, v in sorted(row.params.items())) or "—",
                "Tags": ", ".join(f"{k}={v}" for k, v in sorted(row.tags.items()) if k != "git_commit") or "—",
                "Source run": row.run_id or "—",
                "LoggedModel": row.model_id or "—",
                "Eval dataset": row.eval_dataset or "—",
            }
        )
        rows.append(shown)
    frame = pd.DataFrame(rows)
    # No traffic or no evaluation leaves a figure out: a dash, never None / nan / NaT.
    return readable(frame, {"Error rate": ".1%", "p95 (ms)": ",.0f", "Cost / request ($)": lambda v: f"${v:.5f}",
                            **{m.removesuffix("/mean"): ".0%" for m in metrics}}, keep=("Traces (7d)",))


def show_versions_table(frame: pd.DataFrame, readiness: dict[str, str] | None = None) -> None:
    shown = versions_table(frame, readiness)
    metric_cols = [c for c in shown.columns if c not in _FIXED]
    st.dataframe(
        shown,
        hide_index=True,
        width="stretch",
        column_config={
            "Aliases": st.column_config.TextColumn(width="large", help="Every alias this version holds, in full"),
            **{c: st.column_config.TextColumn(help="Latest evaluation, share of rows that passed") for c in metric_cols},
        },
    )


_FIXED = {
    "Version", "Aliases", "Readiness", "Created", "Creator", "Status", "Git commit", "Traces (7d)", "Error rate", "p95 (ms)",
    "Cost / request ($)", "Params", "Tags", "Source run", "LoggedModel", "Eval dataset",
}


def show_version_detail(detail: VersionDetail) -> None:
    """Fields, params, tags and evaluation runs of one version."""
    cols = st.columns(4)
    # A metric truncates long text: aliases are listed in full, one per line, as text.
    cols[0].caption("Aliases")
    cols[0].text("\n".join(f"@{a}" for a in detail.aliases) or "—")
    cols[1].metric("Traces (7d)", f"{detail.traffic.traces:,}")
    cols[2].metric("p95 latency", f"{detail.traffic.p95_ms:,.0f} ms" if detail.traffic.p95_ms is not None else "—")
    cols[3].metric("Cost / request",
                   f"${detail.traffic.cost_per_request:.5f}" if detail.traffic.cost_per_request is not None else "—")
    # Registry fields are written by whoever can register a model: shown as text, never as markdown.
    st.markdown(
        f"**Created** {detail.created:%Y-%m-%d %H:%M} UTC"
        f"{' by ' + plain(detail.creator) if detail.creator else ' (the registry recorded no creator)'} · "
        f"**status** {plain(detail.status)}  \n"
        f"**Source run** {code(detail.run_id or '—')} · **LoggedModel** {code(detail.model_id or '—')} · "
        f"**git commit** {code(detail.git_commit or '—')}"
        if detail.created else f"**Source run** {code(detail.run_id or '—')}"
    )
    if detail.description:
        st.caption(plain(detail.description))
    left, right = st.columns(2)
    left.caption("Params")
    left.dataframe(pd.DataFrame(sorted(detail.params.items()), columns=["Param", "Value"]), hide_index=True,
                   width="stretch")
    right.caption("Tags")
    right.dataframe(pd.DataFrame(sorted(detail.tags.items()), columns=["Tag", "Value"]), hide_index=True,
                    width="stretch")
    st.caption("Evaluation runs of this version")
    if detail.evaluations:
        st.dataframe(
            pd.DataFrame(
                [{"Run": e.run_name, "Dataset": e.dataset or "—", "Started": e.started_at, "Status": e.status,
                  **{m.removesuffix("/mean"): v for m, v in sorted(e.metrics.items())},
                  "Linked by": e.linked_by, "Run id": e.run_id}
                 for e in detail.evaluations]
            ).pipe(readable),
            hide_index=True, width="stretch",
        )
    else:
        st.info("This version has no evaluation runs yet. Evaluate it before promoting it.", icon=":material/fact_check:")


def diff_frame(diff: VersionDiff) -> pd.DataFrame:
    """Only the params and tags that differ, side by side."""
    frame = diff.rows.rename(columns={"kind": "Kind", "key": "Key", "left": f"v{diff.left}", "right": f"v{diff.right}"})
    return readable(frame.fillna("(not set)"))


def evidence_frame(plan: PromotionPlan) -> pd.DataFrame:
    """Per-metric evidence: current holder, candidate and delta."""
    return pd.DataFrame(
        [{"Metric": d.metric.removesuffix("/mean"), f"Now ({_v(plan.current_version)})": d.current,
          f"Candidate ({_v(plan.target_version)})": d.candidate, "Δ": d.delta}
         for d in plan.evidence.deltas]
    )


def checks_frame(plan: PromotionPlan) -> pd.DataFrame:
    return pd.DataFrame(
        [{"Rule": c.rule.describe(), "Result": _CHECK_ICON[c.status], "Detail": c.detail} for c in plan.checks]
    )


def show_plan(plan: PromotionPlan) -> None:
    """Before → after, the evidence and the gate verdict of a promotion."""
    st.markdown(
        f"#### {code(f'{plan.agent}@{plan.alias}')}: {_v(plan.current_version)} → {_v(plan.target_version)}"
    )
    cols = st.columns(2)
    cols[0].metric("Points to now", _v(plan.current_version))
    cols[1].metric("Will point to", _v(plan.target_version))
    ev = plan.evidence
    if ev.candidate_eval is None:
        st.warning(f"{_v(plan.target_version)} has no finished evaluation run: there is no evidence for it.",
                   icon=":material/warning:")
    else:
        same = "same dataset" if ev.current_eval else "the current holder has no evaluation on it"
        st.caption(f"Evidence: latest evaluations on **{plain(ev.dataset or 'unnamed dataset')}** ({same}).")
        st.dataframe(evidence_frame(plan), hide_index=True, width="stretch",
                     column_config={"Δ": st.column_config.NumberColumn(format="%+.3f")})
    traffic = ev.candidate_traffic
    st.caption(
        f"Candidate live traffic (7d, evaluation rows not counted): {traffic.traces:,} traces · p95 "
        f"{f'{traffic.p95_ms:,.0f} ms' if traffic.p95_ms is not None else '—'} · cost/request "
        f"{f'${traffic.cost_per_request:.5f}' if traffic.cost_per_request is not None else '—'}"
    )
    if plan.checks:
        st.dataframe(checks_frame(plan), hide_index=True, width="stretch")
    else:
        st.caption("No gate rules are set for this agent.")


def plan_blockers(plan: PromotionPlan) -> list[str]:
    """The plan's verdict as messages for the confirmation: one per reason it is blocked (none: it is not)."""
    messages = []
    if plan.gate_blocked:
        messages.append("**The gate blocks this promotion.** Nothing will change unless you override it "
                        "with a written reason, which is recorded.")
    if plan.readiness_blockers():
        messages.append("**Required readiness items fail**, which blocks like the gate: "
                        + "; ".join(plain(c.title) for c in plan.readiness_blockers())
                        + ". Nothing will change unless you override it with a written reason, which is recorded.")
    return messages


def rules_change(before: list[GateRule], after: list[GateRule] | None) -> str:
    """Before → after of an edit of the gate rules, as markdown."""
    def listed(rules: list[GateRule]) -> str:
        return "; ".join(plain(r.describe()) for r in rules) or "no rules (nothing blocks)"

    return f"**Gate rules now:** {listed(before)}  \n**After saving:** {listed(after or [])}"


def states_frame(states: list[AliasState]) -> pd.DataFrame:
    """Each alias: holder now, last recorded change and whether it moved outside the app."""
    return pd.DataFrame(
        [{"Alias": s.alias, "Holds": _v(s.version),
          "Last change": s.last_change.at if s.last_change else None,
          "By": s.last_change.user if s.last_change else "—",
          "Audit": ("⚠️ " if s.drift in (Drift.EXTERNAL, Drift.REMOVED, Drift.INTERRUPTED) else "") + s.drift.value,
          "Rollback to": _v(s.previous_version)}
         for s in states]
    )


def history_frame(changes: list[Change]) -> pd.DataFrame:
    """Recorded alias changes, newest first; an interrupted attempt shows its requested version and status."""
    return pd.DataFrame(
        [{"When": c.at, "Alias": c.alias, "From": _v(c.from_version),
          "To": _v(c.to_version) if c.completed else f"{_v(c.requested_version)} (requested)",
          "Status": c.status.value,
          "Action": c.action.value, "Who": c.user, "Gate": c.gate.value, "Reason": c.reason or "—",
          "Evidence dataset": (c.evidence or {}).get("dataset") or "—", "Audit run": c.run_id}
         for c in changes]
    )


def prompts_frame(refs: tuple[PromptRef, ...]) -> pd.DataFrame:
    """The prompt versions one version uses: name, version, where MLflow recorded the link."""
    return readable(pd.DataFrame(
        [{"Prompt": r.name, "Version": f"v{r.version}", "Linked on": r.linked_from,
          "First line": (r.template or "").strip().splitlines()[0][:120] if (r.template or "").strip() else None,
          "Note": r.problem}
         for r in refs], columns=["Prompt", "Version", "Linked on", "First line", "Note"]))


def show_linked_prompts(refs: tuple[PromptRef, ...], version: str) -> None:
    """Which prompt-registry versions a version uses, each text behind an expander."""
    st.caption(f"Prompts v{version} uses")
    if not refs:
        st.caption("No prompt-registry version is linked to this version. Load prompts with "
                   "`mlflow.genai.load_prompt(..., model_id=...)` (or while the model is active) to link them.")
        return
    st.dataframe(prompts_frame(refs), hide_index=True, width="stretch")
    for ref in refs:
        if ref.template is not None:
            with st.expander(f"{ref.label}", icon=":material/description:"):
                st.code(ref.template, language=None, wrap_lines=True)


_PROMPT_STATUS = {"changed": "✏️ changed", "same version": "= same version", "same text": "= same text",
                  "only left": "only in the left version", "only right": "only in the right version"}


def show_prompt_changes(changes: tuple[PromptChange, ...], left: str, right: str) -> None:
    """Each prompt either version uses: its version on both sides and a text diff where it changed."""
    if not changes:
        st.caption(f"Neither v{left} nor v{right} has linked prompt-registry versions.")
        return
    st.dataframe(readable(pd.DataFrame(
        [{"Prompt": c.name, f"v{left}": c.left.label if c.left else None,
          f"v{right}": c.right.label if c.right else None, "Change": _PROMPT_STATUS.get(c.status, c.status)}
         for c in changes])), hide_index=True, width="stretch")
    for c in changes:
        if c.diff:
            st.caption(f"{plain(c.name)}: v{plain(c.left.version)} → v{plain(c.right.version)}")
            st.code(c.diff, language="diff", wrap_lines=True)
