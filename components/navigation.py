"""The app's pages, declared once, and the guard that keeps deep links working on a fresh server."""

from __future__ import annotations

import streamlit as st

from components.context import PAGES


_declared = False


def app_pages() -> list:
    """The app's pages in sidebar order, as new ``st.Page`` objects for this run.

    Streamlit lets a run call each page object once, so pages are never shared between runs or
    sessions; ``PAGES`` (for ``page_link``) is refreshed with this run's objects.
    """
    global _declared
    PAGES.update(
        {
            "overview": st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
            "versions": st.Page("pages/versions.py", title="Versions & releases", icon=":material/sell:"),
            "monitoring": st.Page("pages/monitoring.py", title="Monitoring", icon=":material/monitoring:"),
            "evaluations": st.Page("pages/evaluations.py", title="Evaluations", icon=":material/fact_check:"),
            "serving": st.Page("pages/serving.py", title="Serving & A/B", icon=":material/alt_route:"),
            "review": st.Page("pages/review.py", title="Review", icon=":material/rate_review:"),
            "alerts": st.Page("pages/alerts.py", title="Alerts", icon=":material/notifications:"),
        }
    )
    _declared = True
    return list(PAGES.values())


def ensure_app_navigation() -> None:
    """Restart a run that Streamlit began without ``app.py``.

    On the first request after the server starts, Streamlit 1.67 sees the ``pages/`` folder and
    runs a deep-linked page directly, with a file-name sidebar, before ``app.py`` has called
    ``st.navigation``. Declaring the navigation here switches Streamlit to ``st.navigation`` mode
    for the process; the rerun then goes through ``app.py`` to the same page.
    """
    if _declared:
        return
    st.navigation(app_pages())
    st.rerun()
