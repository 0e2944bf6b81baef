"""Plotly charts and small widgets of the Monitoring page (no MLflow calls here)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from components.charts import _PALETTE

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
            name = group if len(columns) == 1 else (label if len(groups) == 1 else f"{group} · {label}")
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
    return figure


def breakdown_chart(frame: pd.DataFrame, label: str, value: str, title: str, *, money: bool = True) -> go.Figure:
    """Horizontal bars of ``value`` per ``label`` (e.g. cost by model)."""
    frame = frame.sort_values(value)
    figure = go.Figure(go.Bar(
        x=frame[value], y=frame[label].astype(str), orientation="h",
        marker_color=[_color(i) for i in range(len(frame))],
        text=[f"${v:,.4f}" if money else f"{v:,.0f}" for v in frame[value]], textposition="auto",
    ))
    figure.update_layout(title=dict(text=title, font=dict(size=14)), height=80 + 36 * max(1, len(frame)),
                         margin=dict(l=10, r=10, t=36, b=10))
    figure.update_xaxes(tickprefix="$" if money else "")
    return figure


def span_waterfall(spans: pd.DataFrame) -> go.Figure:
    """Span timings as a waterfall: one bar per span, indented by depth, red when failed."""
    labels = [f"{'  ' * int(d)}{n} ({t})" for d, n, t in zip(spans["depth"], spans["name"], spans["span_type"])]
    colors = ["#dc2626" if e else _color(int(d)) for e, d in zip(spans["error"], spans["depth"])]
    figure = go.Figure(go.Bar(
        base=spans["start_offset_ms"], x=spans["duration_ms"].clip(lower=0.5), y=labels, orientation="h",
        marker_color=colors, text=[f"{v:,.1f} ms" for v in spans["duration_ms"]], textposition="auto",
        hovertemplate="%{y}<br>start +%{base:.1f} ms, %{x:.1f} ms<extra></extra>",
    ))
    figure.update_layout(height=60 + 30 * max(1, len(spans)), margin=dict(l=10, r=10, t=10, b=10),
                         yaxis=dict(autorange="reversed"), xaxis=dict(title="ms since trace start"))
    return figure
