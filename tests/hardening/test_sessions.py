"""Several users at once: each Streamlit session keeps its own identity, role and cached data.

Four AppTest sessions (forwarded headers per session, through the one accessor the app reads them
with) run the pages at the same time from a thread pool, over one store and one process-wide set
of ``st.cache_data`` caches, as a served app would. Then two reviewers open the same trace one
after the other: the second never sees the first one's earlier judgement in the review form.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.util import patch_config_options

from services import feedback as fb
from services import review_queue as rq
from services._clients import configure_mlflow
from tests.hardening.conftest import AGENT, build_store
from tests.hardening.reliability import write_record

pytestmark = pytest.mark.slow

APP = str(Path(__file__).resolve().parents[2] / "app.py")
USERS = {  # email -> (display name, role)
    "alice@example.com": ("Alice", "operator"),
    "bob@example.com": ("Bob", "viewer"),
    "carol@example.com": ("Carol", "reviewer"),
    "dave@example.com": ("Dave", "admin"),
}
HEADERS_KEY = "_test_forwarded_headers"


def _session_headers():
    """The request-headers accessor, per session: each AppTest carries its own forwarded headers."""
    return dict(st.session_state.get(HEADERS_KEY, {}))


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    store = build_store(tmp_path_factory.mktemp("sessions-store"))
    roles_file = tmp_path_factory.mktemp("sessions-roles") / "roles.json"
    roles_file.write_text(json.dumps({"users": {u: r for u, (_, r) in USERS.items()}, "default": "viewer"}))
    return store, roles_file


_COMPILE_LOCK = threading.Lock()


@pytest.fixture
def app_env(shared_store, monkeypatch):
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache

    from services import _clients

    # A served app has one script cache that compiles under a lock; each AppTest has its own, and
    # CPython 3.11's compiler is not safe to run from several threads at once.
    original = ScriptCache.get_bytecode

    def serialized(self, script_path):
        with _COMPILE_LOCK:
            return original(self, script_path)

    monkeypatch.setattr(ScriptCache, "get_bytecode", serialized)

    # Streamlit keeps "v1 pages folder or st.navigation" in one class attribute, and every AppTest
    # run resets it, so concurrent sessions would flip each other between the modes. A served app
    # is in st.navigation mode from its first run on (components.navigation sees to it; the e2e
    # deep-link test checks that), so every session here runs in that mode.
    original_init = PagesManager.__init__

    def navigation_mode(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", navigation_mode)

    store, roles_file = shared_store
    monkeypatch.setenv("AGENTOPS_DATA_DIR", str(store.settings.data_dir))
    monkeypatch.setenv("AGENTOPS_ROLES_FILE", str(roles_file))
    monkeypatch.setattr("components.context.request_headers", _session_headers)
    _clients._cached_settings.cache_clear()
    st.cache_data.clear()
    yield store
    monkeypatch.undo()
    _clients._cached_settings.cache_clear()
    configure_mlflow()


def _session(email: str) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=120)
    app.session_state[HEADERS_KEY] = {"X-Forwarded-Email": email, "X-Forwarded-Preferred-Username": USERS[email][0]}
    return app


def _sidebar_text(app: AppTest) -> str:
    return " ".join(m.value for m in app.sidebar.markdown)


def _visit(app: AppTest, page: str | None) -> AppTest:
    if page:
        app.switch_page(page)
    app.run()
    return app


def test_concurrent_sessions_keep_their_own_identity_and_role(app_env):
    sessions = {email: _session(email) for email in USERS}
    # Every run goes through app.py, so every page shows the acting user's sidebar.
    pages = [None, "pages/versions.py", "pages/overview.py", "pages/review.py", "pages/evaluations.py",
             "pages/overview.py", "pages/versions.py", "pages/review.py"]
    runs = checks = 0
    started = time.perf_counter()
    # AppTest turns Streamlit's global "global.appTest" option on for each run and restores it after; with
    # runs in parallel threads, the first run to finish switched it off under the others, whose widgets
    # then missed their test bookkeeping (a KeyError in AppTest, about one run in three). Held on for the
    # whole test, every run restores it to on.
    with patch_config_options({"global.appTest": True}), ThreadPoolExecutor(max_workers=len(sessions)) as pool:
        for page in pages:
            # Every session runs this page at the same time, over the shared caches.
            list(pool.map(lambda app: _visit(app, page), sessions.values()))
            runs += len(sessions)
            for email, app in sessions.items():
                name, role = USERS[email]
                assert not app.exception, f"{email} on {page}: {app.exception}"
                others = [n for e, (n, _) in USERS.items() if e != email]
                sidebar = _sidebar_text(app)
                assert name in sidebar and role in sidebar, f"{email} on {page} sees sidebar {sidebar!r}"
                assert not any(other in sidebar for other in others), f"{email} sees another user: {sidebar!r}"
                checks += 1
                if page == "pages/review.py":
                    captions = " ".join(c.value for c in app.caption)
                    assert f"**{name}**" in captions, captions
                    can_review = role in ("reviewer", "operator", "admin")
                    assert any("not review" in w.value for w in app.warning) != can_review
                    assert not any(f"**{other}**" in captions for other in others)
                    checks += 1
                if page == "pages/versions.py":
                    review = next(b for b in app.button if b.key == "versions.review")
                    assert review.disabled == (role not in ("operator", "admin")), f"{email}: promote button"
                    checks += 1
                if page == "pages/evaluations.py" and role in ("viewer", "reviewer"):
                    run = next(b for b in app.button if b.key == "eval_run")
                    assert run.disabled, f"{email} may start an evaluation"
                    checks += 1
    write_record("sessions", "concurrent AppTest sessions", {
        "sessions": len(sessions), "page runs": runs, "identity/role checks": checks,
        "seconds": round(time.perf_counter() - started, 1)})


def test_a_reviewers_earlier_judgement_is_never_shown_to_another(app_env):
    store = app_env
    trace = store.trace_ids[3]
    queue = rq.create_queue(rq.QueueSpec("isolation", rq.QueueSource.HAND_PICKED, (store.experiment_id,), agent=AGENT,
                                         trace_ids=(trace,)), "dave@example.com", store.settings)
    secret = "alice's private note 7f3a"
    fb.submit_review(trace, fb.Review(thumbs_up=False, comment=secret), "alice@example.com", settings=store.settings)

    def open_item(email: str) -> AppTest:
        app = _visit(_session(email), "pages/review.py")
        picker = next(s for s in app.selectbox if s.key == "review_queue")
        picker.set_value(queue.queue_id).run()
        next(b for b in app.button if b.key == "review_next").click().run()
        assert not app.exception, app.exception
        return app

    alice = open_item("alice@example.com")
    comment = next(t for t in alice.text_area if t.label == "Comment")
    assert comment.value == secret, "alice's own earlier judgement should prefill her form"
    next(b for b in alice.button if b.key == "review_skip").click().run()  # gives the item back

    carol = open_item("carol@example.com")  # the same trace, now through the same process-wide caches
    comment = next(t for t in carol.text_area if t.label == "Comment")
    assert comment.value == "", f"carol's form shows {comment.value!r}"
    assert secret not in " ".join(str(e.value) for e in carol.main.children.values() if hasattr(e, "value"))
    write_record("sessions", "review form prefill across reviewers", {"sessions": 2, "leaks": 0})
