"""Overview: a real summary of the connected workspace."""

from __future__ import annotations

import streamlit as st

from components.caching import per_user_cache
from components.navigation import ensure_app_navigation

ensure_app_navigation()  # before anything renders: see components/navigation.py

from components.charts import split_chart
from components.confirm import ConfirmKeys, confirm_box, held, hold, release
from components.context import (
    allowed,
    current_identity,
    current_settings,
    page_link,
    role_hint,
)
from components.empty import seed_hint
from components.errors import read_or, show_error
from components.rollouts import rollouts_frame
from components.tables import (
    DASH,
    agents_frame,
    endpoints_frame,
    evaluations_frame,
    metric_columns,
    plain,
)
from services import overview as overview_service
from services import roles, rollout_controller
from services.connection import check_connection
from services.errors import AgentOpsError, ConflictError
from services.settings import Backend, Settings


@per_user_cache(ttl=30, show_spinner=False)
def _load(settings: Settings) -> overview_service.WorkspaceOverview:
    check_connection(settings)
    return overview_service.workspace_overview(settings)


@per_user_cache(ttl=30, show_spinner=False)
def _rollouts(settings: Settings) -> list[rollout_controller.Rollout]:
    return [r for r in rollout_controller.list_rollouts(settings) if r.status.active]


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
        )
    else:
        st.info("No agent endpoints are configured.", icon=":material/route:")
    if data.gateway_endpoints:
        st.markdown("**MLflow AI Gateway**")
        st.plotly_chart(split_chart(data.gateway_endpoints), use_container_width=True,
                        config={"displayModeBar": False}, key="overview_gateway_chart")
        st.dataframe(endpoints_frame(data.gateway_endpoints), hide_index=True, use_container_width=True,
                     placeholder=DASH,
                     column_config={"Updated": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")})
    elif data.gateway_problem:
        st.warning(f"MLflow AI Gateway endpoints could not be listed: {plain(data.gateway_problem)}",
                   icon=":material/cloud_off:")
    in_progress = read_or([], "Cannot read the rollouts", _rollouts, settings)
    if in_progress:
        st.markdown("**Rollouts in progress**")
        st.dataframe(rollouts_frame(in_progress), hide_index=True, use_container_width=True)
    page_link("serving", "Change traffic splits", icon=":material/alt_route:")
with right:
    st.subheader("Latest evaluations")
    if data.latest_evaluations:
        frame = evaluations_frame(data.latest_evaluations)
        st.dataframe(
            frame,
            hide_index=True,
            use_container_width=True,
            column_config={name: st.column_config.TextColumn(help="Share of rows that passed")
                           for name in metric_columns(frame)},
        )
    else:
        st.info("No evaluation runs yet.", icon=":material/fact_check:")
    page_link("evaluations", "Run and compare evaluations", icon=":material/fact_check:")

if settings.backend is not Backend.DATABRICKS:
    identity = current_identity(settings)
    with st.expander("Team roles", icon=":material/admin_panel_settings:"):
        try:
            table, source, version = roles.roles_table(settings)
        except AgentOpsError as exc:
            show_error(exc, what="Cannot read the roles")
            table, source, version = None, None, 0
        if source is roles.RolesSource.FILE:
            st.caption("Roles come from the file named by `AGENTOPS_ROLES_FILE`; edit that file to change them.")
        elif source is roles.RolesSource.ONE_PERSON:
            st.caption("No roles are stored: this embedded store is a one-person workspace and you are admin. "
                       "Granting a role below keeps you admin and stores the roles with the store's data.")
        elif source is roles.RolesSource.UNSET:
            st.caption("No roles are stored on this shared server, so everyone is a viewer. Set the first admin "
                       "with `python -m agentops roles init --admin <user>`.")
        if table:
            st.dataframe([{"User": u, "Role": r} for u, r in table["users"].items()]
                         + [{"User": "everyone else", "Role": table["default"]}], hide_index=True)
        can_grant = source in (roles.RolesSource.STORE, roles.RolesSource.ONE_PERSON) and allowed(
            settings, identity, roles.Action.EDIT_RULES)
        seen = st.session_state.setdefault("overview_roles_version", version)
        with st.form("overview_grant"):
            cols = st.columns([3, 2])
            who = cols[0].text_input("User (email or user name)", disabled=not can_grant)
            role = cols[1].selectbox("Role", [r.label for r in roles.Role], index=1, disabled=not can_grant)
            if not can_grant:
                st.caption(role_hint(roles.Action.EDIT_RULES))
            reviewed = st.form_submit_button("Review grant", icon=":material/fact_check:", disabled=not can_grant)
        if flash := st.session_state.pop("overview_grant_flash", None):
            st.success(flash, icon=":material/check_circle:")
        if reviewed:  # shown now, granted only once confirmed (the service checks the name)
            release("overview.grant")
            if who.strip():
                hold("overview.grant", (who.strip().lower(), role))
            else:
                st.warning("Give the user's email or name. Nothing was granted.", icon=":material/edit_off:")
        pending = held("overview.grant")
        if pending is not None:
            user, new_role = pending
            users = (table or {}).get("users", {})
            now = users.get(user) or f"{(table or {}).get('default', roles.Role.VIEWER.label)} (everyone else)"
            answer = confirm_box(f"**{plain(user)}**: {plain(now)} → **{plain(new_role)}**",
                                 keys=ConfirmKeys(confirm="overview_grant_go", cancel="overview_grant_cancel"),
                                 confirm_label="Grant role", icon=":material/how_to_reg:", ask_reason=False,
                                 actor=identity.user, held_as="overview.grant")
            if answer.confirmed:
                try:
                    roles.grant(user, new_role, identity=identity, settings=settings, expected_version=seen)
                    release("overview.grant")
                    st.session_state.pop("overview_roles_version", None)
                    st.session_state.pop(f"_agentops_role::{identity.user}", None)
                    st.session_state["overview_grant_flash"] = f"{user} is now {new_role}."
                    st.rerun()
                except AgentOpsError as exc:
                    if isinstance(exc, ConflictError):
                        st.session_state["overview_roles_version"] = version
                    show_error(exc, what="Role not granted")

if st.button("Refresh", icon=":material/refresh:"):
    _load.clear()
    _rollouts.clear()
    st.rerun()
