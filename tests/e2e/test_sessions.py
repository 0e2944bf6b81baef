"""Several users in headless Chromium at once, each with their own forwarded identity headers (as the
Databricks Apps proxy sends them): every browser keeps its own name and role, through the app's
real header accessor (``st.context.headers``), and a viewer cannot press what an operator can."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import chromium
from tests.hardening.conftest import build_store
from tests.hardening.reliability import write_record
from tests.hardening.served_app import served_app

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

USERS = {  # email -> (display name, role)
    "ana@example.com": ("Ana", "operator"),
    "ben@example.com": ("Ben", "viewer"),
    "cleo@example.com": ("Cleo", "reviewer"),
}


@pytest.fixture(scope="module")
def app_with_roles(tmp_path_factory, artifacts_dir):
    from services._clients import configure_mlflow, get_settings

    store = build_store(tmp_path_factory.mktemp("sessions-e2e-store"))
    configure_mlflow(get_settings())
    roles_file = tmp_path_factory.mktemp("sessions-e2e-roles") / "roles.json"
    roles_file.write_text(json.dumps({"users": {u: r for u, (_, r) in USERS.items()}, "default": "viewer"}))
    with served_app(store.settings.data_dir, artifacts_dir / "sessions-app.log",
                    env={"AGENTOPS_ROLES_FILE": str(roles_file)}) as url:
        yield url


def test_browsers_with_different_forwarded_users_keep_their_own_identity(app_with_roles, artifacts_dir):
    url = app_with_roles
    seen: dict[str, dict[str, str]] = {}
    with chromium() as browser:
        pages = {}
        for email, (name, _) in USERS.items():
            context = browser.new_context(viewport={"width": 1400, "height": 1000}, extra_http_headers={
                "X-Forwarded-Email": email, "X-Forwarded-Preferred-Username": name})
            pages[email] = context.new_page()
        # All three load at once, then each moves to the Versions page, then back to the overview.
        for path, ready in (("/", "Overview"), ("/versions", "Versions & releases"), ("/", "Overview")):
            for page in pages.values():
                page.goto(f"{url}{path}", wait_until="commit")
            for email, page in pages.items():
                page.get_by_role("heading", name=ready).first.wait_for(timeout=90_000)
                page.locator('[data-testid="stSidebar"]').get_by_text("Backend").wait_for(timeout=60_000)
                page.wait_for_timeout(1500)
                seen.setdefault(email, {})[path + ready] = page.locator('[data-testid="stSidebar"]').inner_text()
                if ready == "Versions & releases":
                    page.get_by_role("tab", name="Promote / roll back").click()
                    button = page.get_by_role("button", name="Review promotion")
                    role = USERS[email][1]
                    assert button.is_disabled() == (role not in ("operator", "admin")), f"{email}: promote button"
        for email, page in pages.items():
            page.screenshot(path=str(artifacts_dir / f"session-{email.split('@')[0]}.png"), full_page=True)
    checks = 0
    for email, by_page in seen.items():
        name, role = USERS[email]
        for where, sidebar in by_page.items():
            assert name in sidebar and role in sidebar, f"{email} on {where}: {sidebar!r}"
            assert not any(n in sidebar for e, (n, _) in USERS.items() if e != email), f"{email} on {where}: {sidebar!r}"
            checks += 1
    write_record("sessions", "concurrent Chromium users", {"sessions": len(USERS), "page loads": checks,
                                                           "identity/role checks": checks})


def test_a_deep_link_right_after_a_restart_runs_through_app_py(tmp_path_factory, artifacts_dir):
    from services._clients import configure_mlflow, get_settings

    store = build_store(tmp_path_factory.mktemp("deep-link-store"))
    configure_mlflow(get_settings())
    with served_app(store.settings.data_dir, artifacts_dir / "deep-link-app.log") as url, \
            chromium() as browser:
        context = browser.new_context(extra_http_headers={"X-Forwarded-Email": "ana@example.com",
                                                          "X-Forwarded-Preferred-Username": "Ana"})
        page = context.new_page()
        page.goto(f"{url}/versions", wait_until="domcontentloaded")
        page.get_by_role("heading", name="Versions & releases").first.wait_for(timeout=90_000)
        page.wait_for_timeout(3000)
        page.screenshot(path=str(artifacts_dir / "session-deep-link.png"), full_page=True)
        sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
    assert "Ana" in sidebar and "Backend" in sidebar, sidebar  # app.py's sidebar: who and where
    assert "Versions & releases" in sidebar, sidebar  # app.py's navigation titles, not file names
