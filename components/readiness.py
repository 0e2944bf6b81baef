"""The release-readiness checklist as tables and widgets (no MLflow calls here)."""

from __future__ import annotations

from typing import Callable

import pandas as pd
import streamlit as st

from services.readiness import LoadCheckResult, ReadinessReport, Verdict

_ICON = {Verdict.PASS: "✅ pass", Verdict.FAIL: "❌ fail", Verdict.UNKNOWN: "❔ unknown"}


def checklist_frame(report: ReadinessReport) -> pd.DataFrame:
    """One row per item: result, whether it blocks, why, and the one action that fixes it."""
    return pd.DataFrame(
        [{"Item": c.title, "Result": _ICON[c.verdict], "Required": "required" if c.required else "advisory",
          "Why": c.reason, "Fix": c.fix or "—"} for c in report.checks]
    )


def readiness_cell(report: ReadinessReport | None) -> str:
    """The short text shown in the versions list."""
    if report is None:
        return "—"
    mark = "⛔" if report.blocked else ("⚠️" if any(c.verdict is Verdict.FAIL for c in report.checks) else "✅")
    return f"{mark} {report.summary()}"


def show_readiness(report: ReadinessReport, *, key: str,
                   run_load_check: Callable[[Callable[[str], None]], LoadCheckResult] | None = None) -> bool:
    """The checklist of one version; a button runs the load check. Returns True when it was run."""
    st.markdown(f"##### Release readiness of v{report.version}: {report.summary()}")
    st.dataframe(checklist_frame(report), hide_index=True, width="stretch")
    if report.failures:
        st.warning("Required items fail: " + "; ".join(f"**{c.title}** — {c.reason}" for c in report.failures),
                   icon=":material/rule:")
    if run_load_check is None:
        return False
    label = "Re-run the load check" if report.load is not None else "Check it loads and answers its input example"
    if st.button(label, icon=":material/play_circle:", key=key):
        with st.status(f"Loading v{report.version} in a separate process…", expanded=True) as status:
            result = run_load_check(status.write)
            status.update(label="The model loads and answers" if result.ok else f"Failed at {result.stage}",
                          state="complete" if result.ok else "error")
        return True
    return False
