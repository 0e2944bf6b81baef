"""Turning service errors into messages a user can act on."""

from __future__ import annotations

import streamlit as st

from services.errors import (
    AgentOpsError,
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)


def show_error(exc: Exception, *, what: str = "Something went wrong") -> None:
    """Render an error as a message (never a traceback)."""
    if isinstance(exc, (ValidationError, ConflictError, NotFoundError)):
        st.warning(f"**{what}.** {exc}", icon=":material/warning:")
    elif isinstance(exc, PermissionDeniedError):
        st.error(f"**{what}: permission denied.** {exc}", icon=":material/lock:")
    elif isinstance(exc, ConfigurationError):
        st.error(f"**{what}.** {exc}", icon=":material/settings:")
    elif isinstance(exc, BackendUnavailableError):
        st.error(f"**{what}.** {exc}", icon=":material/cloud_off:")
    elif isinstance(exc, AgentOpsError):
        st.error(f"**{what}.** {exc}")
    else:
        st.error(f"**{what}.** Unexpected {type(exc).__name__}: {exc}")
