"""End to end on a workspace another team's code wrote (tests/realworld): the app in headless Chromium.

The workspace is written with MLflow's public APIs only (no ``agentops.*`` tag or setting); one app
start, four pages. Figures are the builder's facts, read from the data grids' accessible tables
(the visible cells are drawn on a canvas).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.e2e.conftest import chromium
from tests.hardening.served_app import served_app
from tests.realworld.workspace import BULK_AGENT, UNICODE_AGENT, build

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

_GRIDS = """() => Array.from(document.querySelectorAll('[data-testid="stDataFrame"]')).map(grid =>
    Array.from(grid.querySelectorAll('table tr')).map(row =>
        Array.from(row.querySelectorAll('th,td')).map(cell => cell.innerText.trim())))"""


def _grids(page) -> list[list[list[str]]]:
    """Every data grid on the page as rows of cell texts (header row first)."""
    return [g for g in page.evaluate(_GRIDS) if g]


def _table(page, column: str, *, keys: set[str] | None = None, timeout_s: float = 90) -> list[dict[str, str]]:
    """The rows of the first grid with ``column`` as dicts keyed by its header.

    Waits for the grid to paint and, with ``keys``, for its first column to hold exactly those values
    (a rerun after a widget change repaints the grid a moment later); asserts on what it found then.
    """
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        for grid in _grids(page):
            header, *rows = grid
            found = [dict(zip(header, row)) for row in rows]
            if column in header and rows and (keys is None or {row[0] for row in rows} == keys):
                return found
            if column in header and rows and time.monotonic() > deadline:
                return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no table with a {column!r} column; grids: {[g[0] for g in _grids(page)]}")
        page.wait_for_timeout(500)


def _pick(page, label: str, option: str) -> None:
    """Choose ``option`` in the select box labelled exactly ``label`` and see that it holds it; a choice made
    while the page was still rerunning can be lost (seen on a loaded machine), so it is made again, twice at most."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has=page.get_by_text(label, exact=True)).first
    shown = ""
    for _ in range(3):
        box.click()
        page.get_by_role("option", name=option, exact=True).click()
        _settle(page, 300)
        shown = box.evaluate("e => e.innerText + ' ' + Array.from(e.querySelectorAll('input')).map(i => i.value).join(' ')")
        if option in shown:
            return
    raise AssertionError(f"the select box {label!r} shows {shown!r}, not {option!r}")


def _settle(page, ms: int = 1500) -> None:
    """Wait for Streamlit to finish the rerun (its status widget disappears), then for the grids to paint."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=90_000)
    page.wait_for_timeout(ms)


@pytest.fixture(scope="module")
def realworld_app(artifacts_dir):
    facts = build(Path(tempfile.mkdtemp(prefix="agentops-realworld-e2e-")) / "store")
    from services._clients import configure_mlflow, get_settings

    configure_mlflow(get_settings())  # the builder pointed MLflow's globals at its store
    with served_app(facts.data_dir, artifacts_dir / "realworld-e2e.log", timeout_s=180) as url:
        yield url, facts


def test_the_other_teams_workspace_in_the_browser(realworld_app, artifacts_dir):
    url, facts = realworld_app
    support = facts.agents[UNICODE_AGENT]
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 1100})

        # Overview: every agent, the unicode one with its traces counted through the model id.
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_role("heading", name="Overview").wait_for(timeout=120_000)
        _settle(page)
        agents = {row["Agent"]: row for row in _table(page, "Traces (24h)")}
        assert set(agents) == set(facts.agents)
        for name, agent in facts.agents.items():
            assert agents[name]["Traces (24h)"] == str(sum(v.traces for v in agent.versions.values())), name
        assert "Traceback" not in page.inner_text("body")

        # Monitoring: the agent's traces split by version, exactly as written.
        page.goto(f"{url}/monitoring", wait_until="domcontentloaded")
        page.get_by_role("heading", name="Monitoring").wait_for(timeout=120_000)
        page.get_by_text("Aggregated in the store").wait_for(timeout=120_000)
        _pick(page, "Agent", UNICODE_AGENT)
        _settle(page)
        page.screenshot(path=str(artifacts_dir / "realworld-monitoring.png"), full_page=True)
        expected = {v for v, f in support.versions.items() if f.traces}
        by_version = {row["version"]: row for row in _table(page, "requests", keys=expected)}
        assert set(by_version) == expected
        for number, version in support.versions.items():
            assert (by_version[number]["requests"], by_version[number]["errors"]) == (
                str(version.traces), str(version.errors)), number
        metrics = dict(zip(page.locator('[data-testid="stMetricLabel"]').all_inner_texts(),
                           page.locator('[data-testid="stMetricValue"]').all_inner_texts()))
        assert metrics["Requests"] == str(sum(v.traces for v in support.versions.values()))
        _pick(page, "Agent", BULK_AGENT)
        _settle(page)
        expected = {v: str(f.traces) for v, f in facts.agents[BULK_AGENT].versions.items() if f.traces}
        bulk = {row["version"]: row["requests"] for row in _table(page, "requests", keys=set(expected))}
        assert bulk == expected

        # Evaluations: both runs made outside the app, one tied to its version, one bare.
        page.goto(f"{url}/evaluations", wait_until="domcontentloaded")
        page.get_by_role("heading", name="Evaluation runs").wait_for(timeout=120_000)
        _settle(page)
        runs = {row["Run"]: row for row in _table(page, "Linked by")}
        with_model, bare = facts.eval_runs["with_model"], facts.eval_runs["bare"]
        version = next(v.version for v in support.versions.values() if v.model_id == with_model.model_id)
        assert runs[with_model.run_id]["Version"] == f"v{version}"
        assert runs[bare.run_id]["Version"] == "not attached"

        # Review: the team's own feedback names, with counts per value.
        page.goto(f"{url}/review", wait_until="domcontentloaded")
        page.get_by_role("heading", name="Review", exact=True).wait_for(timeout=120_000)
        page.get_by_role("tab", name="Feedback charts").click()
        page.get_by_role("heading", name="Feedback names").wait_for(timeout=120_000)
        _settle(page)
        page.screenshot(path=str(artifacts_dir / "realworld-review.png"), full_page=True)
        names = {row["name"]: row for row in _table(page, "counts per value")}
        assert set(names) == set(facts.feedback)
        for name, counts in facts.feedback.items():
            for value, n in counts.items():
                label = ("true" if value else "false") if isinstance(value, bool) else (
                    str(int(value)) if isinstance(value, float) and value.is_integer() else str(value))
                assert f"{label}: {n}" in names[name]["counts per value"], (name, names[name])
        assert "Traceback" not in page.inner_text("body")
