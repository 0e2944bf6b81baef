"""Per-request context for pages: settings, the signed-in user and the page registry."""

from __future__ import annotations

from typing import Mapping

import streamlit as st

from components.errors import show_error
from services import connection, roles
from services.errors import AgentOpsError
from services.identity import Identity, resolve_identity
from services.settings import Backend, Settings


def request_headers() -> Mapping[str, str]:
    """Headers of the current request (Databricks Apps forwards the user in them).

    The single accessor the app uses, so tests (AppTest cannot set headers) can replace it.
    """
    try:
        return dict(st.context.headers or {})
    except Exception:  # noqa: BLE001 - no request context (bare script runs)
        return {}


def current_settings() -> Settings:
    """Settings for this process, or an error on the page and a stop."""
    try:
        return connection.configure_mlflow()
    except AgentOpsError as exc:
        show_error(exc, what="The app is not configured")
        st.stop()
        raise  # unreachable: st.stop raises


def current_identity(settings: Settings) -> Identity:
    """The signed-in user (forwarded headers) or the OS user locally; this run's calls act for them."""
    identity = resolve_identity(settings, request_headers())
    # Every run starts here (app.py, then the page), so a run never inherits another user's identity.
    connection.act_as(identity)
    return identity


def current_role(settings: Settings, identity: Identity) -> "roles.Role":
    """The signed-in user's role, resolved once per session and user (never shared across users)."""
    key = f"_agentops_role::{identity.user}"
    if key not in st.session_state:
        try:
            st.session_state[key] = roles.role_for(identity, settings)
        except AgentOpsError as exc:
            show_error(exc, what="Could not read your role; acting as a viewer")
            st.session_state[key] = roles.Role.VIEWER
    return st.session_state[key]


def roles_unset(settings: Settings, identity: Identity) -> bool:
    """Whether this shared store has no roles yet (so everyone is a viewer); read once per session."""
    key = f"_agentops_roles_unset::{identity.user}"
    if key not in st.session_state:
        try:
            st.session_state[key] = (settings.backend is not Backend.DATABRICKS
                                     and roles.roles_table(settings)[1] is roles.RolesSource.UNSET)
        except AgentOpsError:
            st.session_state[key] = False  # the role lookup already showed the error
    return st.session_state[key]


def allowed(settings: Settings, identity: Identity, action: "roles.Action") -> bool:
    """Whether the current user's role permits ``action`` (pages disable what it does not)."""
    return current_role(settings, identity) >= roles.NEEDED[action]


def role_hint(action: "roles.Action") -> str:
    return f"Needs the {roles.NEEDED[action].label} role."


# Pages register here under a stable key so other pages link to them only when they exist.
PAGES: dict[str, st.Page] = {}


def page_link(key: str, label: str, *, icon: str | None = None) -> None:
    """A link to a registered page; nothing when that page is not part of this app."""
    page = PAGES.get(key)
    if page is not None:
        st.page_link(page, label=label, icon=icon)
