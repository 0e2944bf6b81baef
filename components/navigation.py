"""Bookkeeping for the page list that ``app.py`` declares, and the guard that keeps deep links working
on a fresh server."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from components.context import PAGES

_PAGES_DIR = Path(__file__).resolve().parent.parent / "pages"
_HOME = "overview"  # app.py's default page
_declared = False


def declare(sections: dict[str, list]) -> dict[str, list]:
    """Record ``app.py``'s pages for ``page_link`` (keyed by URL path) and return them for ``st.navigation``."""
    global _declared
    PAGES.clear()
    PAGES.update({page.url_path: page for pages in sections.values() for page in pages})
    _declared = True
    return sections


def ensure_app_navigation() -> None:
    """Restart a run that Streamlit began without ``app.py``.

    On the first request after the server starts, Streamlit 1.67 sees the ``pages/`` folder and
    runs a deep-linked page directly, with a file-name sidebar, before ``app.py`` has called
    ``st.navigation``. Declaring a navigation here (one page per file, under the same URL paths
    as ``app.py``'s) switches Streamlit to ``st.navigation`` mode for the process; the rerun then
    goes through ``app.py`` to the same page.
    """
    if _declared:
        return
    files = sorted(_PAGES_DIR.glob("*.py"))
    st.navigation(declare({"": [st.Page(str(path.relative_to(_PAGES_DIR.parent)), default=path.stem == _HOME)
                                for path in files]}))
    st.rerun()
