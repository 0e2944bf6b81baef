"""A deep link as the very first request after the server starts goes through app.py's navigation.

Streamlit 1.67 runs a deep-linked page straight from the ``pages/`` folder (file names in the
sidebar, no backend or identity) until some run has called ``st.navigation``; the pages restart
such a run through ``components.navigation.ensure_app_navigation``.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import chromium
from tests.hardening.served_app import served_app

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("page", ["monitoring", "versions"])
def test_first_request_deep_link_uses_app_navigation(page, tmp_path, artifacts_dir):
    with served_app(tmp_path / "data", tmp_path / "app.log") as url, chromium() as browser:
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        tab.goto(f"{url}/{page}")  # the server's first page request
        sidebar = tab.locator("section[data-testid=stSidebar]")
        sidebar.get_by_text("Backend").wait_for(timeout=60_000)
        tab.screenshot(path=str(artifacts_dir / f"deep-link-{page}.png"))
        text = sidebar.inner_text()
        assert "Versions & releases" in text and "Serving & A/B" in text, text
        assert "\napp\n" not in f"\n{text}\n", f"file-name navigation shown:\n{text}"
        assert tab.url.rstrip("/").endswith(f"/{page}")
