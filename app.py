"""Agent Ops Console: entry point and navigation."""

import streamlit as st

from components.context import PAGES, current_identity, current_role, current_settings
from components.sidebar import render_sidebar

st.set_page_config(page_title="Agent Ops Console", page_icon=":material/hub:", layout="wide")

PAGES.update(
    {
        "overview": st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
        "versions": st.Page("pages/versions.py", title="Versions & releases", icon=":material/sell:"),
        "monitoring": st.Page("pages/monitoring.py", title="Monitoring", icon=":material/monitoring:"),
        "evaluations": st.Page("pages/evaluations.py", title="Evaluations", icon=":material/fact_check:"),
        "serving": st.Page("pages/serving.py", title="Serving & A/B", icon=":material/alt_route:"),
        "review": st.Page("pages/review.py", title="Review", icon=":material/rate_review:"),
    }
)
navigation = st.navigation(list(PAGES.values()))
settings = current_settings()
identity = current_identity(settings)
render_sidebar(settings, identity, current_role(settings, identity).label)
navigation.run()
