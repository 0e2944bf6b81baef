"""Empty states: suggest the demo seeder only where it can run (an empty store)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import streamlit as st

from components.errors import show_error
from services import overview
from services.errors import AgentOpsError
from services.settings import Settings

T = TypeVar("T")
SEED_COMMAND = "\n\n```\npython -m demo.seed\n```"


def store_is_empty(settings: Settings) -> bool:
    """Whether the store is empty (the seeder refuses any other); False when it cannot be read."""
    try:
        return overview.store_is_empty(settings)
    except AgentOpsError:
        return False


def seed_hint(settings: Settings, lead: str, otherwise: str) -> str:
    """``lead`` + the seeder command on an empty store, ``lead`` + ``otherwise`` on one with content."""
    if store_is_empty(settings):
        return f"{lead} or fill the store with the demo workspace:{SEED_COMMAND}"
    return f"{lead} {otherwise}"


def agents_or_stop(load: Callable[[Settings], list[T]], settings: Settings, *, what: str, lead: str,
                   otherwise: str) -> list[T]:
    """The registered agents ``load`` reads, or the page stops: with the error when the registry cannot be
    read (``what`` says what failed), with the empty state (``seed_hint``) when there are none."""
    try:
        agents = load(settings)
    except AgentOpsError as exc:
        show_error(exc, what=what)
        st.stop()
    if not agents:
        st.info(seed_hint(settings, lead, otherwise), icon=":material/inbox:")
        st.stop()
    return agents
