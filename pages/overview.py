"""Overview: a real summary of the connected workspace."""

from __future__ import annotations

import streamlit as st

from components.caching import per_user_cache
from components.navigation import ensure_app_navigation

ensure_app_navigation()  # before anything renders: see components/navigation.py

from components.charts import split_chart
from components.context import current_settings, page_link
from components.empty import seed_hint
from components.errors import show_error
from components.tables import agents_frame, endpoints_frame, evaluations_frame, metric_columns, plain
from services import overview as overview_service
from services._clients import check_connection
from services.errors import AgentOpsError
from services.settings import Settings


@per_user_cache(ttl=30, show_spinner=False)
def _load(settings: Settings) -> overview_service.WorkspaceOverview:
    check_connection(settings)
    return overview_service.workspace_overview(settings)


settings = current_settings()
st.title("Overview")

try:
    with st.spinner("Reading the workspace…"):
        data = _load(settings)
except AgentOpsError as exc:
    show_error(exc, what="Cannot read the workspace")
    st.stop()

st.caption(f"Connected to `{settings.workspace_label}` · as of {data.generated_at:%Y-%m-%d %H:%M} UTC")

if data.is_empty:
    st.info(
        seed_hint(settings, "**This workspace has no registered agents yet.** Register an agent version in MLflow,",
                  "(for example `mlflow.pyfunc.log_model(..., registered_model_name=...)`); this store already "
                  "holds other data, so the demo seeder would refuse it."),
        icon=":material/inbox:",
    )
    st.stop()

window = data.last_24h
kpis = st.columns(6)
kpis[0].metric("Agents", len(data.agents))
kpis[1].metric("Versions", data.version_count)
kpis[2].metric("Traces (24h)", f"{window.traces:,}")
kpis[3].metric("Errors (24h)", f"{window.errors:,}",
               help="Traces whose root span failed", delta=None)
kpis[4].metric("Error rate (24h)", f"{window.error_rate:.1%}" if window.error_rate is not None else "—")
kpis[5].metric("p95 latency (24h)", f"{window.p95_ms:,.0f} ms" if window.p95_ms is not None else "—")
page_link("monitoring", "Explore traces, latency and cost", icon=":material/monitoring:")

st.subheader("Agents")
st.caption("Who holds each alias, and each agent's traffic over the last 24 hours.")
st.dataframe(
    agents_frame(data.agents),
    hide_index=True,
    use_container_width=True,
    column_config={
        "Error rate (24h)": st.column_config.NumberColumn(format="percent"),
        "p95 latency (ms)": st.column_config.NumberColumn(format="%.0f"),
        "Cost (24h, $)": st.column_config.NumberColumn(format="$%.4f"),
    },
)
page_link("versions", "Browse versions, promote or roll back aliases", icon=":material/sell:")

left, right = st.columns(2, gap="large")
with left:
    st.subheader("Serving endpoints")
    if data.endpoints:
        st.plotly_chart(split_chart(data.endpoints), use_container_width=True, config={"displayModeBar": False})
        st.dataframe(
            endpoints_frame(data.endpoints),
            hide_index=True,
            use_container_width=True,
            column_config={"Updated": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")},
        )
    else:
        st.info("No agent endpoints are configured.", icon=":material/route:")
    if data.gateway_endpoints:
        st.markdown("**MLflow AI Gateway**")
        st.plotly_chart(split_chart(data.gateway_endpoints), use_container_width=True,
                        config={"displayModeBar": False}, key="overview_gateway_chart")
        st.dataframe(endpoints_frame(data.gateway_endpoints), hide_index=True, use_container_width=True,
                     column_config={"Updated": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")})
    elif data.gateway_problem:
        st.warning(f"MLflow AI Gateway endpoints could not be listed: {plain(data.gateway_problem)}",
                   icon=":material/cloud_off:")
    page_link("serving", "Change traffic splits", icon=":material/alt_route:")
with right:
    st.subheader("Latest evaluations")
    if data.latest_evaluations:
        frame = evaluations_frame(data.latest_evaluations)
        st.dataframe(
            frame,
            hide_index=True,
            use_container_width=True,
            column_config={
                "Started": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
                **{name: st.column_config.NumberColumn(format="percent", help="Share of rows that passed")
                   for name in metric_columns(frame)},
            },
        )
    else:
        st.info("No evaluation runs yet.", icon=":material/fact_check:")
    page_link("evaluations", "Run and compare evaluations", icon=":material/fact_check:")

if st.button("Refresh", icon=":material/refresh:"):
    _load.clear()
    st.rerun()
