"""Where the app writes its own records (the audit trail, the review queues): one caption, read at most every 30 s."""

from __future__ import annotations

import streamlit as st

from components.caching import per_user_cache
from components.tables import plain
from services import app_experiments
from services.errors import AgentOpsError
from services.settings import Settings


@per_user_cache(ttl=30, show_spinner=False)
def _homes(settings: Settings) -> tuple[app_experiments.AppExperiment, ...]:
    return app_experiments.app_experiments(settings)


def show_home(settings: Settings, variable: str) -> None:
    """A caption naming the experiment ``variable`` points at and whether it exists yet; nothing when unreadable."""
    try:
        home = next(e for e in _homes(settings) if e.variable == variable)
    except (AgentOpsError, StopIteration):
        return
    st.caption(f":material/folder: {plain(app_experiments.describe(home))}")


def forget_homes() -> None:
    """After a change that may have created one of them."""
    _homes.clear()
