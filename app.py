"""Agent Ops Console: entry point and navigation (every page of the app, by sidebar section)."""

import streamlit as st

from components.context import current_identity, current_role, current_settings, roles_unset
from components.navigation import declare
from components.sidebar import render_sidebar

st.set_page_config(page_title="Agent Ops Console", page_icon=":material/hub:", layout="wide")

# New st.Page objects every run: Streamlit lets a run call each page object once.
navigation = st.navigation(declare({
    "": [
        st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    ],
    "Release": [
        st.Page("pages/versions.py", title="Versions & releases", icon=":material/sell:"),
        st.Page("pages/evaluations.py", title="Evaluations", icon=":material/fact_check:"),
    ],
    "Operate": [
        st.Page("pages/serving.py", title="Serving & A/B", icon=":material/alt_route:"),
        st.Page("pages/monitoring.py", title="Monitoring", icon=":material/monitoring:"),
        st.Page("pages/alerts.py", title="Alerts", icon=":material/notifications:"),
    ],
    "Quality": [
        st.Page("pages/review.py", title="Review", icon=":material/rate_review:"),
    ],
}))
settings = current_settings()
identity = current_identity(settings)
render_sidebar(settings, identity, current_role(settings, identity).label,
               roles_unset=roles_unset(settings, identity))
navigation.run()
