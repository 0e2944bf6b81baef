"""Turning service errors into messages a user can act on."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import streamlit as st

from components.tables import plain

from services.errors import (
    AgentOpsError,
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)

T = TypeVar("T")


def show_error(exc: Exception, *, what: str = "Something went wrong") -> None:
    """Render an error as a message (never a traceback).

    The message is shown as text: exception messages quote names and values from the registry,
    traces and uploads, which are untrusted and must not render as markdown links or images.
    """
    what, text = plain(what), plain(exc)
    if isinstance(exc, (ValidationError, ConflictError, NotFoundError)):
        st.warning(f"**{what}.** {text}", icon=":material/warning:")
    elif isinstance(exc, PermissionDeniedError):
        st.error(f"**{what}: permission denied.** {text}", icon=":material/lock:")
    elif isinstance(exc, ConfigurationError):
        st.error(f"**{what}.** {text}", icon=":material/settings:")
    elif isinstance(exc, BackendUnavailableError):
        st.error(f"**{what}.** {text}", icon=":material/cloud_off:")
    elif isinstance(exc, AgentOpsError):
        st.error(f"**{what}.** {text}")
    else:
        st.error(f"**{what}.** Unexpected {type(exc).__name__}: {text}")


def read_or(fallback: T, what: str, load: Callable[..., T], *args) -> T:
    """``load(*args)``, or ``fallback`` with the error shown when it fails (``what`` says what was not read)."""
    try:
        return load(*args)
    except AgentOpsError as exc:
        show_error(exc, what=what)
        return fallback
