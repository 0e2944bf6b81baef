"""Plotly charts shared by pages."""

from __future__ import annotations

import plotly.graph_objects as go

from services.serving import Endpoint

_PALETTE = ("#1f6feb", "#d97706", "#059669", "#9333ea", "#dc2626", "#0891b2")


def chart_text(text: object) -> str:
    """Text for a plotly label, hover or axis: plotly renders a subset of HTML (links included) in
    them, so '<', '>' and '&' become entities and a name shows as typed. '%' is dropped from '%{'
    so a name cannot pull a hover-template variable."""
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("%{", "% {"))


def split_chart(endpoints: tuple[Endpoint, ...]) -> go.Figure:
    """Horizontal stacked bars: each endpoint's traffic share per served version."""
    figure = go.Figure()
    for endpoint in endpoints:
        by_entity = {s.entity_name: s for s in endpoint.served}
        for index, route in enumerate(endpoint.routes):
            served = by_entity.get(route.entity_name)
            # A registered version is short as "vN"; a gateway arm is named by its provider and model; external
            # and foundation models on Databricks have no version: they are named by their served entity.
            label = chart_text(f"v{served.model_version}" if served and served.model_version
                               else (served.model_name if served and served.model_name else route.entity_name))
            figure.add_bar(
                y=[chart_text(endpoint.name)],
                x=[route.percentage],
                orientation="h",
                name=f"{chart_text(endpoint.name)} {label}",
                text=f"{label} · {route.percentage}%",
                textposition="inside",
                insidetextanchor="middle",
                marker_color=_PALETTE[index % len(_PALETTE)],
                hovertemplate=f"%{{y}}<br>{label}: %{{x}}%<extra></extra>",
                showlegend=False,
            )
    figure.update_layout(
        barmode="stack",
        height=60 + 48 * max(1, len(endpoints)),
        margin=dict(l=10, r=10, t=10, b=10),
        xaxis=dict(range=[0, 100], ticksuffix="%", title=None),
        yaxis=dict(title=None, autorange="reversed"),
    )
    return figure


def time_axis(figure: go.Figure, *, axis: str = "x") -> go.Figure:
    """Readable time labels: '14:00' over '06 Dec' ticks, dates alone for days; hover says UTC."""
    update = figure.update_xaxes if axis == "x" else figure.update_yaxes
    update(
        type="date",
        tickformatstops=[
            dict(dtickrange=[None, 60_000], value="%H:%M:%S"),
            dict(dtickrange=[60_000, 86_400_000], value="%H:%M<br>%d %b"),
            dict(dtickrange=[86_400_000, None], value="%d %b"),
        ],
        hoverformat="%Y-%m-%d %H:%M UTC",
    )
    # One time bucket alone makes plotly zoom into a second around it (ticks '23:59:59 … 00:00:00'):
    # widen the range to a day either side so the labels are dates.
    import pandas as pd

    # A trace's axis values may be a numpy array (plotly keeps it), whose truth value is ambiguous.
    xs = [x for trace in figure.data for x in (lambda v: [] if v is None else list(v))(getattr(trace, axis, None))]
    stamps = pd.to_datetime(pd.Series(xs), utc=True, errors="coerce").dropna() if xs else pd.Series(dtype="datetime64[ns, UTC]")
    if len(stamps) and stamps.nunique() == 1:
        only = stamps.iloc[0].tz_convert(None)
        update(range=[only - pd.Timedelta(days=1), only + pd.Timedelta(days=1)], dtick=86_400_000)
    return figure
