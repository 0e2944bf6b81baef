"""End to end on the Databricks path: the app in ``databricks`` mode behind Apps-style proxies.

A real ``mlflow server`` (seeded with the demo support agent) sits behind the Databricks harness,
which forwards MLflow REST (Unity Catalog registry included) to it and answers serving endpoints,
SCIM ``Me`` and the app's own OAuth M2M login. The app runs from ``scripts/run`` with the variables
Databricks Apps sets and user authorization on. Each browser user goes through their own proxy that
signs requests the way Databricks Apps does. The checks read the harness's records (who, by bearer
token, made each call) and the mlflow server's state (registry alias, audit runs, assessments).

The harness is the strict one: a user's token carries only the scopes databricks.yml declares and is
refused elsewhere ("Invalid scope"), experiment names must be absolute paths, and a split change must
re-send every served entity's configuration. So Model Serving and the user directory are called with
the user's token, MLflow and Unity Catalog by the app's service principal with the user recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.hardening.served_app import free_port, stop_group, wait_healthy
from tests.harness import databricks_workspace as dw
from tests.harness.apps_proxy import AppsProxy, ForwardedUser

ROOT = Path(__file__).resolve().parents[2]
UC_ALIAS = "/api/2.0/mlflow/unity-catalog/registered-models/alias"
# POSTs that only read (MLflow searches by POST; UC hands out read credentials for model files).
_READ_POSTS = ("/search", "/metrics", "/batchGet", "/generate-temporary-credentials", "/search-long-running")
NORA = "nora.notoken@acme.example"  # signs in without a forwarded token (user authorization scopes missing)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@dataclass
class Stack:
    ws: dw.Workspace
    operator: AppsProxy
    reviewer: AppsProxy
    tokenless: AppsProxy
    log: Path

    def server(self) -> MlflowClient:
        return MlflowClient(self.ws.server.tracking_uri, self.ws.server.tracking_uri)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, artifacts_dir):
    root = tmp_path_factory.mktemp("dbx-apps")
    with dw.databricks_workspace(root) as ws:
        port = free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DATABRICKS_", "AGENTOPS_", "MLFLOW_TRACKING_", "MLFLOW_REGISTRY_"))}
        env.update(ws.app_env())
        env.update({"AGENTOPS_DATA_DIR": str(root / "app-data"), "AGENTOPS_PORT": str(port)})
        log = artifacts_dir / "dbx-apps-run.log"
        with log.open("w") as out:
            process = subprocess.Popen([str(ROOT / "scripts" / "run")], cwd=ROOT, env=env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        upstream = f"http://127.0.0.1:{port}"
        proxies: list[AppsProxy] = []
        try:
            wait_healthy(upstream, process, log, timeout=300)
            for number, user in enumerate((dw.OPERATOR, dw.REVIEWER), start=2001):
                proxies.append(AppsProxy(upstream, ForwardedUser(user.email, f"{number}@1234567890", user.display,
                                                                 user.token)).start())
            proxies.append(AppsProxy(upstream, ForwardedUser(NORA, "7007@1234567890", "Nora Notoken")).start())
            yield Stack(ws, proxies[0], proxies[1], proxies[2], log)
        finally:
            for proxy in proxies:
                proxy.stop()
            stop_group(process)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 1100})
    yield context.new_page()
    context.close()


@pytest.fixture(scope="module")
def warmed(stack, browser):
    """One visit to "/" so app.py has run once (see the deep-link test below) before the flows start."""
    context = browser.new_context(viewport={"width": 1440, "height": 1100})
    try:
        first = context.new_page()
        first.goto(f"{stack.operator.url}/", wait_until="domcontentloaded")
        first.get_by_role("heading", name="Overview").wait_for(timeout=120_000)
    finally:
        context.close()
    return stack


def _open(page, proxy: AppsProxy, path: str, heading: str) -> None:
    page.goto(f"{proxy.url}{path}", wait_until="domcontentloaded")
    try:
        page.get_by_role("heading", name=heading).wait_for(timeout=120_000)
        page.locator('[data-testid="stSidebar"]').get_by_text(proxy.user.preferred_username).wait_for(timeout=60_000)
    except Exception:
        page.screenshot(path=str(ROOT / "test-artifacts" / "dbx-failed-open.png"), full_page=True)
        raise


def _writes(calls) -> list:
    return [c for c in calls if c.method != "GET" and not c.path.endswith(_READ_POSTS)]


def _visible(page, selector: str):
    return page.locator(f"{selector}:visible")


def _no_traceback(page) -> None:
    body = page.inner_text("body")
    assert "Traceback" not in body and "HARNESS_ERROR" not in body, body[-2000:]


def _audit_runs(stack: Stack, kind: str) -> list:
    # The audit-experiment resource (AGENTOPS_AUDIT_EXPERIMENT_ID), as app.yaml declares it.
    return stack.server().search_runs([stack.ws.seeded.audit_experiment_id], f"tags.`agentops.audit.kind` = '{kind}'")


def _no_scope_refusal(stack: Stack) -> None:
    assert stack.ws.harness.scope_refusals == [], "a user token was used outside the declared scopes"


def test_a_deep_link_right_after_start_goes_through_app_py(stack, page, artifacts_dir):
    page.goto(f"{stack.operator.url}/versions", wait_until="domcontentloaded")
    page.get_by_role("heading", name="Versions & releases").wait_for(timeout=120_000)
    page.wait_for_timeout(3000)
    page.screenshot(path=str(artifacts_dir / "dbx-first-deep-link.png"), full_page=True)
    sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
    assert "Olivia Ops" in sidebar and "Versions & releases" in sidebar, sidebar


def test_operator_promotes_an_alias_as_the_app_with_the_operator_recorded(warmed, page, artifacts_dir):
    stack = warmed
    start = len(stack.ws.forwarder.calls)
    _open(page, stack.operator, "/versions", "Versions & releases")
    sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
    assert "Databricks Apps · operator" in sidebar, sidebar
    page.get_by_role("tab", name="Promote / roll back").click()
    page.get_by_role("button", name="Review promotion").click(timeout=60_000)
    page.get_by_role("button", name="Confirm promotion").wait_for(timeout=120_000)
    reason = page.get_by_label("Reason (optional, recorded)")
    reason.fill("v2 wins the A/B")
    reason.press("Enter")
    page.wait_for_timeout(1000)
    page.screenshot(path=str(artifacts_dir / "dbx-operator-plan.png"), full_page=True)
    page.get_by_role("button", name="Confirm promotion").click()
    notice = page.locator('[data-testid="stAlert"]').filter(has_text="recorded as")
    notice.wait_for(timeout=120_000)
    # Streamlit puts a word joiner (U+2060) after "@" so e-mail addresses are not turned into links.
    text = " ".join(notice.inner_text().replace("\u2060", "").split())
    page.screenshot(path=str(artifacts_dir / "dbx-operator-promoted.png"), full_page=True)
    assert f"champion: v1 → v2 (recorded as no-rules by {dw.OPERATOR.email})" in text, text
    _no_traceback(page)

    assert stack.server().get_registered_model(dw.AGENT).aliases["champion"] == "2"
    calls = stack.ws.forwarder.calls[start:]
    # No Apps user scope covers Unity Catalog: the app sets the alias, after checking the operator's role.
    sets = [c for c in calls if c.path == UC_ALIAS and c.method == "POST"]
    assert [(c.principal, c.status) for c in sets] == [(stack.ws.app_principal.name, 200)]
    writes = _writes(calls)
    assert writes and {c.principal for c in writes} == {stack.ws.app_principal.name}, [(c.path, c.principal) for c in writes]
    _no_scope_refusal(stack)
    runs = _audit_runs(stack, "alias_change")
    assert [(r.data.tags["agentops.audit.user"], r.data.tags["agentops.audit.to_version"]) for r in runs] == [
        (dw.OPERATOR.email, "2")]


def test_operator_changes_the_traffic_split_with_their_own_token(warmed, page, artifacts_dir):
    stack = warmed
    kept = {e.name: e.as_dict() for e in stack.ws.harness.endpoints[dw.ENDPOINT].config.served_entities}
    start, logged = len(stack.ws.forwarder.calls), len(stack.ws.log.entries)
    _open(page, stack.operator, "/serving", "Serving & A/B traffic")
    for version in ("v1", "v2"):
        share = page.get_by_label(f"{dw.AGENT} {version}")
        share.fill("50")
        share.press("Enter")
        page.wait_for_timeout(800)
    reason = _visible(page, 'input[aria-label="Reason (recorded in the audit trail)"]')
    reason.fill("even split to compare")
    reason.press("Enter")
    page.wait_for_timeout(800)
    page.get_by_role("button", name="Review change").click()
    page.get_by_role("button", name="Confirm and apply").wait_for(timeout=60_000)
    page.screenshot(path=str(artifacts_dir / "dbx-operator-split-plan.png"), full_page=True)
    page.get_by_role("button", name="Confirm and apply").click()
    page.get_by_text("v1 · 50%").wait_for(timeout=120_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(artifacts_dir / "dbx-operator-split-applied.png"), full_page=True)
    _no_traceback(page)

    routes = {r.served_entity_name: r.traffic_percentage
              for r in stack.ws.harness.endpoints[dw.ENDPOINT].config.traffic_config.routes}
    assert routes == {f"{dw.AGENT}_1": 50, f"{dw.AGENT}_2": 50}
    # Model Serving is inside the declared scopes: the operator's own token changes the split …
    puts = [e for e in stack.ws.log.entries[logged:] if e.method == "PUT"]
    assert [(e.path, e.principal) for e in puts] == [(f"/api/2.0/serving-endpoints/{dw.ENDPOINT}/config", dw.OPERATOR.email)]
    # … which changed the traffic and nothing else …
    assert {e.name: e.as_dict() for e in stack.ws.harness.endpoints[dw.ENDPOINT].config.served_entities} == kept
    # … and the audit trail (MLflow) is written by the app, naming the operator, who the page shows.
    writes = _writes(stack.ws.forwarder.calls[start:])
    assert writes and {c.principal for c in writes} == {stack.ws.app_principal.name}
    _no_scope_refusal(stack)
    # Streamlit puts a word joiner (U+2060) after "@": match the part before it.
    page.get_by_text(f"last change by {dw.OPERATOR.email.split('@')[0]}@").wait_for(timeout=60_000)
    runs = _audit_runs(stack, "traffic_change")
    assert len(runs) == 1
    tags = runs[0].data.tags
    assert tags["agentops.audit.user"] == dw.OPERATOR.email
    assert json.loads(tags["agentops.audit.after"]) == {f"{dw.AGENT} v1": 50, f"{dw.AGENT} v2": 50}


def test_reviewer_sees_promotion_and_traffic_controls_disabled(warmed, page, artifacts_dir):
    stack = warmed
    start = len(stack.ws.forwarder.calls)
    _open(page, stack.reviewer, "/versions", "Versions & releases")
    assert "Databricks Apps · reviewer" in page.locator('[data-testid="stSidebar"]').inner_text()
    page.get_by_role("tab", name="Promote / roll back").click()
    page.get_by_role("tabpanel", name="Promote / roll back").get_by_text("Needs the operator role.").wait_for(timeout=60_000)
    assert page.get_by_role("button", name="Review promotion").is_disabled()
    page.screenshot(path=str(artifacts_dir / "dbx-reviewer-versions.png"), full_page=True)
    _open(page, stack.reviewer, "/serving", "Serving & A/B traffic")
    page.get_by_role("button", name="Review change").wait_for(timeout=60_000)
    assert page.get_by_role("button", name="Review change").is_disabled()
    assert "You can look, not change" in page.inner_text("body")
    page.screenshot(path=str(artifacts_dir / "dbx-reviewer-serving.png"), full_page=True)
    _no_traceback(page)
    assert not _writes(stack.ws.forwarder.calls[start:])


def test_reviewer_gives_feedback_that_names_them_as_the_source(warmed, page, artifacts_dir):
    stack = warmed
    start = len(stack.ws.forwarder.calls)
    _open(page, stack.reviewer, "/review", "Review")
    page.get_by_role("button", name="Review next item").click(timeout=60_000)
    page.get_by_role("button", name="Submit review").wait_for(timeout=120_000)
    trace_id = page.get_by_text("reserved for you").inner_text().split()[1]
    assert trace_id in stack.ws.seeded.trace_ids
    page.get_by_text("Bad answer").click()
    page.get_by_label("Comment").fill("Misses the proration rule for annual plans.")
    page.screenshot(path=str(artifacts_dir / "dbx-reviewer-item.png"), full_page=True)
    page.get_by_role("button", name="Submit review").click()
    page.get_by_text("Review stored").wait_for(timeout=120_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(artifacts_dir / "dbx-reviewer-stored.png"), full_page=True)
    _no_traceback(page)

    assessments = stack.server().get_trace(trace_id).info.assessments
    mine = {a.name: a for a in assessments if a.source.source_id == dw.REVIEWER.email}
    assert set(mine) == {"thumbs_up", "comment"}
    assert mine["thumbs_up"].feedback.value is False
    assert str(mine["thumbs_up"].source.source_type).endswith("HUMAN")
    # Claiming and completing the queue item are trace-tag writes: MLflow, so made by the app.
    tag_writes = [c for c in stack.ws.forwarder.calls[start:] if c.path.endswith(f"/traces/{trace_id}/tags")]
    assert tag_writes and {c.principal for c in tag_writes} == {stack.ws.app_principal.name}
    _no_scope_refusal(stack)


def test_reviewers_feedback_was_written_by_the_app_in_their_name(stack):
    posts = [c for c in stack.ws.forwarder.calls if c.method == "POST" and c.path.endswith("/assessments")]
    assert posts, "the feedback test did not run first"
    assert {c.principal for c in posts} == {stack.ws.app_principal.name}


def test_without_a_forwarded_token_nothing_can_be_changed_and_nothing_is_sent(warmed, page, artifacts_dir):
    stack = warmed
    start = len(stack.ws.forwarder.calls)
    _open(page, stack.tokenless, "/versions", "Versions & releases")
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("No user token was forwarded").wait_for(timeout=60_000)
    assert "Databricks Apps · viewer" in sidebar.inner_text()
    page.get_by_role("tab", name="Promote / roll back").click()
    assert page.get_by_role("button", name="Review promotion").is_disabled()
    page.screenshot(path=str(artifacts_dir / "dbx-tokenless-versions.png"), full_page=True)
    _no_traceback(page)
    calls = stack.ws.forwarder.calls[start:]
    assert not _writes(calls)
    # Reads fall back to the app's identity; nothing went out in the user's name without their token.
    assert NORA not in {c.principal for c in calls}
