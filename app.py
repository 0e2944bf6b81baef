"""Agent Ops Console: entry point and navigation."""

import streamlit as st

from components.context import current_identity, current_role, current_settings, roles_unset
from components.navigation import app_pages
from components.sidebar import render_sidebar

st.set_page_config(page_title="Agent Ops Console", page_icon=":material/hub:", layout="wide")

navigation = st.navigation(app_pages())
settings = current_settings()
identity = current_identity(settings)
render_sidebar(settings, identity, current_role(settings, identity).label,
               roles_unset=roles_unset(settings, identity))
navigation.run()
