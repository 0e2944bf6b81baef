"""Sidebar: which backend and workspace the app is connected to, and who the user is."""

from __future__ import annotations

import streamlit as st

from services.identity import Identity, IdentitySource
from services.roles import user_authorization_required
from services.settings import Backend, Settings, missing_databricks_env

_BACKEND_LABEL = {
    Backend.LOCAL: "Local (embedded SQLite)",
    Backend.MLFLOW: "MLflow server",
    Backend.DATABRICKS: "Databricks",
}


def render_sidebar(settings: Settings, identity: Identity, role_label: str | None = None, *,
                   roles_unset: bool = False) -> None:
    """Backend badge, workspace and user in the sidebar."""
    with st.sidebar:
        st.markdown(f"**Backend** &nbsp; :blue-badge[{_BACKEND_LABEL[settings.backend]}]")
        st.caption("Workspace")
        st.code(settings.workspace_label, language=None, wrap_lines=True)
        missing = missing_databricks_env()
        if missing:
            st.warning("Not set: " + ", ".join(f"`{m}`" for m in missing)
                       + ". Add the app resources in app.yaml / databricks.yml.", icon=":material/settings:")
        if settings.databricks_app_name:
            st.caption(f"App: {settings.databricks_app_name}")
        who = identity.display_name
        if identity.source is IdentitySource.UNKNOWN:
            st.warning("Signed-in user unknown: no forwarded identity headers.", icon=":material/person_off:")
        else:
            origin = "Databricks Apps" if identity.source is IdentitySource.DATABRICKS_APPS else "OS user"
            role = f" · {role_label}" if role_label else ""
            st.markdown(f":material/person: **{who}**  \n:gray[{origin}{role}]")
        if roles_unset:
            st.warning("**No roles are set up on this shared MLflow server, so everyone is a viewer** (an "
                       "unconfigured server must not make everyone admin). Someone with access to the server sets "
                       "the first admin once: `python -m agentops roles init --admin <user>`; admins then grant "
                       "roles under *Team roles* on the Overview page.", icon=":material/admin_panel_settings:")
        if (settings.backend is Backend.DATABRICKS and user_authorization_required()
                and identity.source is not IdentitySource.UNKNOWN and not identity.access_token):
            st.warning("**No user token was forwarded**, so you can look but not change anything: the app does not "
                       "act as its service principal for you. Reload the app; if this stays, ask an admin to enable "
                       "user authorization (scopes) for it.", icon=":material/key_off:")
