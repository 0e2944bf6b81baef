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
            # A registered version is short as "vN"; a gateway arm is named by its provider and model.
            label = chart_text((f"v{served.model_version}" if served.model_version else served.model_name)
                               if served else route.entity_name)
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
