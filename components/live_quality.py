"""Quality over time from live scorers: pass rate (or mean score) per time bucket and version, alias
group or arm, with confidence intervals (Wilson for pass/fail)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from components.caching import per_user_cache
from components.charts import chart_text
from components.errors import show_error
from services import live_quality
from services.errors import AgentOpsError
from services.settings import Settings

_PALETTE = ("#1f6feb", "#d97706", "#059669", "#9333ea", "#dc2626", "#0891b2")


@per_user_cache(ttl=60, show_spinner=False)
def _results(settings: Settings, agent: str, start: datetime, end: datetime) -> pd.DataFrame:
    return live_quality.live_results(agent, settings, start=start, end=end)


def _freq(start: datetime, end: datetime) -> str:
    hours = (end - start).total_seconds() / 3600
    return "5min" if hours <= 2 else "1h" if hours <= 48 else "1D"


def quality_chart(quality: pd.DataFrame, scorer: str, start: datetime | None = None,
                  end: datetime | None = None) -> go.Figure:
    """One line per group with its interval as error bars."""
    figure = go.Figure()
    part = quality[quality["scorer"] == scorer]
    for index, (group, rows) in enumerate(part.groupby("group", sort=True)):
        label = chart_text(f"v{group}" if str(group).isdigit() else group)
        figure.add_scatter(
            x=rows["bucket"], y=rows["rate"], mode="lines+markers", name=label,
            marker_color=_PALETTE[index % len(_PALETTE)],
            error_y={"type": "data", "symmetric": False, "array": rows["high"] - rows["rate"],
                     "arrayminus": rows["rate"] - rows["low"]},
            customdata=rows[["n"]].to_numpy(),
            hovertemplate=f"{label}<br>%{{x}}<br>%{{y:.0%}} (n=%{{customdata[0]}})<extra></extra>",
        )
    figure.update_layout(height=260, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                         title=chart_text(scorer), yaxis={"tickformat": ".0%", "range": [0, 1.05]},
                         showlegend=True, xaxis={"range": [start, end]} if start and end else {})
    return figure


def render_live_quality(settings: Settings, agent: str, start: datetime, end: datetime, split: str = "Version") -> None:
    """Quality over time per version (or arm) from the live scorers' assessments in the window."""
    try:
        results = _results(settings, agent, start, end)
    except AgentOpsError as exc:
        show_error(exc, what="Cannot read live-scorer results")
        return
    if results.empty:
        st.caption("No live-scorer results in this window yet: configure live scoring above; the worker scores "
                   "new traces as they arrive.")
        return
    by = "arm" if split == "Arm" else "version"
    quality = live_quality.quality_over_time(results, by=by, freq=_freq(start, end))
    st.caption(f"Live quality per {by}: pass rate per bucket with 95% Wilson intervals "
               f"({len(results):,} results on {results['trace_id'].nunique():,} traces).")
    for scorer in sorted(quality["scorer"].unique()):
        st.plotly_chart(quality_chart(quality, scorer, start, end), config={"displayModeBar": False}, key=f"live_q_{scorer}")
    with st.expander("Per-bucket figures"):
        st.dataframe(quality.assign(rate=quality["rate"].round(3), low=quality["low"].round(3),
                                    high=quality["high"].round(3)), hide_index=True, width="stretch")
