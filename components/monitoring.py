"""Plotly charts and small widgets of the Monitoring page (no MLflow calls here).

Group, model and span names come from traces and tags, which the traced agent writes: every text
that reaches plotly goes through ``chart_text`` (plotly renders a subset of HTML, links included).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from components.charts import _PALETTE, chart_text, time_axis
from components.tables import plain
from services.errors import ValidationError
from services.trace_explorer import TraceDetail

_LAYOUT = dict(height=260, margin=dict(l=10, r=10, t=36, b=10), legend=dict(orientation="h", y=-0.2),
               hovermode="x unified")


def _color(index: int) -> str:
    return _PALETTE[index % len(_PALETTE)]


def series_chart(series: pd.DataFrame, columns: dict[str, str], title: str, *, y_format: str = "",
                 y_suffix: str = "", bars: bool = False) -> go.Figure:
    """One line (or bar) per group and column: ``columns`` maps a series column to its label."""
    figure = go.Figure()
    groups = list(dict.fromkeys(series["group"]))
    dashes = ("solid", "dash", "dot")
    for g_index, group in enumerate(groups):
        frame = series[series["group"] == group]
        for c_index, (column, label) in enumerate(columns.items()):
            name = chart_text(group if len(columns) == 1 else (label if len(groups) == 1 else f"{group} · {label}"))
            if bars:
                figure.add_bar(x=frame["bucket"], y=frame[column], name=name, marker_color=_color(g_index))
            else:
                figure.add_scatter(
                    x=frame["bucket"], y=frame[column], name=name, mode="lines",
                    line=dict(color=_color(g_index if len(groups) > 1 else c_index),
                              dash=dashes[c_index % len(dashes)] if len(groups) > 1 else "solid"),
                    connectgaps=False,
                )
    figure.update_layout(title=dict(text=title, font=dict(size=14)), barmode="stack", **_LAYOUT)
    figure.update_yaxes(tickformat=y_format, ticksuffix=y_suffix, rangemode="tozero")
    time_axis(figure)
    return figure


def breakdown_chart(frame: pd.DataFrame, label: str, value: str, title: str, *, money: bool = True) -> go.Figure:
    """Horizontal bars of ``value`` per ``label`` (e.g. cost by model)."""
    frame = frame.sort_values(value)
    figure = go.Figure(go.Bar(
        x=frame[value], y=[chart_text(v) for v in frame[label]], orientation="h",
        marker_color=[_color(i) for i in range(len(frame))],
        text=[f"${v:,.4f}" if money else f"{v:,.0f}" for v in frame[value]], textposition="auto",
    ))
    figure.update_layout(title=dict(text=title, font=dict(size=14)), height=80 + 36 * max(1, len(frame)),
                         margin=dict(l=10, r=10, t=36, b=10))
    figure.update_xaxes(tickprefix="$" if money else "")
    return figure


def span_waterfall(spans: pd.DataFrame) -> go.Figure:
    """Span timings as a waterfall: one bar per span, indented by depth, red when failed."""
    labels = [chart_text(f"{'  ' * int(d)}{n} ({t})") for d, n, t in zip(spans["depth"], spans["name"], spans["span_type"])]
    colors = ["#dc2626" if e else _color(int(d)) for e, d in zip(spans["error"], spans["depth"])]
    figure = go.Figure(go.Bar(
        base=spans["start_offset_ms"], x=spans["duration_ms"].clip(lower=0.5), y=labels, orientation="h",
        marker_color=colors, text=[f"{v:,.1f} ms" for v in spans["duration_ms"]], textposition="auto",
        hovertemplate="%{y}<br>start +%{base:.1f} ms, %{x:.1f} ms<extra></extra>",
    ))
    figure.update_layout(height=60 + 30 * max(1, len(spans)), margin=dict(l=10, r=10, t=10, b=10),
                         yaxis=dict(autorange="reversed"), xaxis=dict(title="ms since trace start"))
    return figure


def present(value: Any) -> Any | None:
    """``None`` for a missing cell (None, NaN, pandas' NA): pandas 3 stores a missing string as NaN."""
    if value is None or isinstance(value, (list, dict, tuple)):
        return value
    return None if pd.isna(value) else value


def number_text(value: Any, fmt: str = ",") -> str:
    """A figure for a caption, "—" when missing; whole floats (counts next to missing values) as ints."""
    value = present(value)
    if value is None:
        return "—"
    if isinstance(value, float) and value.is_integer() and fmt == ",":
        value = int(value)
    return format(value, fmt)


def trace_detail_block(detail: TraceDetail, plot_config: dict | None = None) -> None:
    """One trace: figures, errors, the span waterfall, each span's inputs and outputs, assessments.

    Span names, errors and models are written by the traced agent: they are shown as typed
    (``plain`` in markdown, ``chart_text`` in the chart, ``st.code`` for inputs and outputs).
    """
    st.subheader(f"Trace {plain(detail.trace_id)}")
    usage = detail.token_usage
    cols = st.columns(4)
    cols[0].metric("Status", detail.status)
    cols[1].metric("Latency", f"{detail.latency_ms:,} ms" if detail.latency_ms is not None else "—")
    cols[2].metric("Tokens (in / out)", f"{usage.get('input_tokens', 0):,} / {usage.get('output_tokens', 0):,}"
                   if usage else "no usage recorded")
    cols[3].metric("Cost", f"${detail.cost:,.6f}" if detail.cost is not None else "not recorded")
    for message in detail.errors:
        st.error(plain(message), icon=":material/error:")
    st.plotly_chart(span_waterfall(detail.spans), width="stretch", config=plot_config or {})
    for _, span in detail.spans.iterrows():
        error, model = present(span["error"]), present(span["model"])
        title = f"{'· ' * int(span['depth'])}{plain(span['name'])} ({plain(span['span_type'])}) — {span['duration_ms']:,.1f} ms"
        with st.expander(title, icon=":material/error:" if error else None):
            if error:
                st.error(plain(error))
            if model:  # LLM spans only; on others the column is missing (NaN), not a model called "nan"
                st.caption(f"Model {plain(model)} · tokens in {number_text(span['input_tokens'])} / out "
                           f"{number_text(span['output_tokens'])} · cost {number_text(span['cost'], '.6f')}")
            st.markdown("**Inputs**")
            st.code(present(span["inputs"]) or "—", language="json")
            st.markdown("**Outputs**")
            st.code(present(span["outputs"]) or "—", language="json")
    st.markdown("**Assessments**")
    if detail.assessments.empty:
        st.caption("No assessments on this trace.")
    else:
        st.dataframe(detail.assessments.astype({"value": str}), hide_index=True, width="stretch")


def price_rows(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The edited price table as ``{model: prices}`` for ``pricing.save_prices``.

    A model named twice is refused here: turned into a mapping first, the later row would silently
    replace the earlier one before validation could see both.
    """
    rows: dict[str, dict[str, Any]] = {}
    for _, row in frame.iterrows():
        model = "" if present(row.get("model")) is None else str(row["model"]).strip()
        if model in rows:
            raise ValidationError(f"The model {model!r} is listed twice in the price table; keep one row per model.")
        rows[model] = {k: present(v) for k, v in row.drop("model", errors="ignore").items()}
    return rows
