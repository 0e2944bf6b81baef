"""End to end: the README's run command, a fresh data folder, headless Chromium."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import chromium
from tests.hardening.served_app import free_port, stop_group, wait_healthy

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def running_app(tmp_path_factory, artifacts_dir):
    data_dir = tmp_path_factory.mktemp("e2e-store")
    port = free_port()
    log = artifacts_dir / "e2e-run.log"
    env = {**os.environ, "AGENTOPS_DATA_DIR": str(data_dir), "AGENTOPS_PORT": str(port),
           "AGENTOPS_GATEWAY_URL": f"http://127.0.0.1:{free_port()}"}
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(ROOT / "scripts" / "run")], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log, timeout=420)
        yield url, log
    finally:
        stop_group(process)


def test_overview_shows_the_demo_agents(running_app, artifacts_dir):
    url, log = running_app
    assert "Seeding the demo workspace" in log.read_text(), "the run command did not seed the fresh store"
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 1100})
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_role("heading", name="Overview").wait_for(timeout=90_000)
        page.get_by_text("Serving endpoints").wait_for(timeout=90_000)
        page.wait_for_timeout(2500)  # let the data grids and chart paint
        page.screenshot(path=str(artifacts_dir / "overview.png"), full_page=True)
        body = page.inner_text("body")
        # Agent names live inside canvas data grids; the split chart and sidebar are DOM text.
        assert "support-prod" in page.content()
        assert "Local (embedded SQLite)" in body
        assert "Traceback" not in body
        grid_text = page.evaluate(
            "() => Array.from(document.querySelectorAll('[data-testid=\"stDataFrame\"]'))"
            ".map(e => e.innerText).join('\\n')"
        )
        assert page.locator('[data-testid="stDataFrame"]').count() == 3
        metrics = page.locator('[data-testid="stMetricValue"]').all_inner_texts()
        assert metrics[0] == "2" and metrics[1] == "6", metrics
        assert grid_text is not None

        # The serving page talks to the gateway the run command started.
        page.goto(f"{url}/serving", wait_until="domcontentloaded")
        page.get_by_role("heading", name="Serving & A/B traffic").wait_for(timeout=90_000)
        page.get_by_text("Local gateway:").wait_for(timeout=60_000)
        page.wait_for_timeout(2500)
        page.screenshot(path=str(artifacts_dir / "serving.png"), full_page=True)
        body = page.inner_text("body")
        assert "not reachable" not in body
        # A deep link still runs through app.py's navigation: every page is listed by title.
        for title in ("Overview", "Versions & releases", "Evaluations", "Monitoring", "Serving & A/B", "Review"):
            assert title in body, f"navigation entry {title!r} missing on a deep link"
