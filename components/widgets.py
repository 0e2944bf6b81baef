"""Widget state helpers shared by pages."""

from __future__ import annotations

from typing import Iterable

import streamlit as st


def reset_when_changed(marker: str, value: object, dependents: Iterable[str]) -> bool:
    """Forget the dependent widgets' state when ``value`` (e.g. the chosen agent) changed since the last run.

    A version, run or alias picked for one agent means nothing for another: its widgets start over
    at their defaults instead of keeping a stale choice. Returns True when something was reset.
    """
    key = f"_reset_marker.{marker}"
    previous = st.session_state.get(key, value)
    st.session_state[key] = value
    if previous == value:
        return False
    for dependent in dependents:
        st.session_state.pop(dependent, None)
    return True
