"""Untrusted content: script, HTML and markdown payloads in traces, reviews and registry fields are
shown as text in headless Chromium, and nothing in them runs, loads or links.

Every field an agent, a user of the agent or a registry writer controls carries a payload
(``tests/e2e/untrusted_store.py``): ``<script>``, ``<img onerror>``, ``<svg onload>``, a
``javascript:`` iframe, markdown links (``javascript:`` and http), a markdown image and an HTML
link pointing at a local "pixel" server that counts every request. After each page renders:

* no dialog opened and ``window.__pwned`` was never set;
* the pixel server was never asked for anything (no injected image loaded);
* the DOM holds no link to the pixel server or to ``javascript:``, no payload image, no element
  with a payload event handler and no payload script;
* the payload's own text is on the page, so the check is not passing on an empty page.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.hardening.served_app import served_app
from tests.hardening.untrusted_store import MARK, build, payload
from tests.hardening.reliability import write_record

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

_PROBE = """([pixel, mark]) => {
  const href = (e) => e.getAttribute('href') || e.getAttribute('xlink:href') || '';
  // Payload URLs point at the pixel server, or are relative ("web-...", "pix-...") where a field forbids ':'.
  const links = [...document.querySelectorAll('a')].map(href)
      .filter(h => h.trim().toLowerCase().startsWith('javascript:') || h.includes(pixel) || /(^|\/)web-/.test(h));
  const images = [...document.querySelectorAll('img, image, source, video, audio')]
      .map(e => e.getAttribute('src') || href(e)).filter(s => s.includes(pixel) || s.includes('pix-'));
  const handlers = [...document.querySelectorAll('*')].filter(e => [...e.attributes].some(
      a => a.name.startsWith('on') && a.value.includes('__pwned'))).map(e => e.tagName);
  const scripts = [...document.querySelectorAll('script')].filter(s => s.textContent.includes(mark)).length;
  const frames = [...document.querySelectorAll('iframe, embed, object')]
      .filter(f => (f.getAttribute('src') || f.getAttribute('data') || '').includes('__pwned')).length;
  return {pwned: window.__pwned === undefined ? null : String(window.__pwned), links, images, handlers, scripts, frames};
}"""


class _Pixel(ThreadingHTTPServer):
    """Counts every request: an injected image or prefetched link would show up here."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.hits.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def pixel():
    server = _Pixel()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def untrusted_app(tmp_path_factory, artifacts_dir, pixel):
    """Streamlit serving a store full of payloads (no demo seed, no gateway)."""
    from services._clients import configure_mlflow, get_settings
    from services.identity import resolve_identity
    from services import feedback as fb

    data_dir = tmp_path_factory.mktemp("untrusted-store")
    store = build(data_dir, pixel.url)
    # The browser's user (the OS user locally) has an earlier review too, so the form is prefilled with a payload.
    me = resolve_identity(store["settings"], {}).user
    fb.submit_review(store["trace_ids"][0], fb.Review(thumbs_up=False, comment=payload("mycomment", pixel.url)), me,
                     settings=store["settings"])
    configure_mlflow(get_settings())
    with served_app(data_dir, artifacts_dir / "untrusted-app.log") as url:
        yield url, store


_FINDINGS: dict[str, dict] = {}


class Visit:
    """One page visit: dialogs are recorded, and ``check`` probes the DOM and the pixel server."""

    def __init__(self, browser, pixel, name: str) -> None:
        self.name, self.pixel = name, pixel
        self.page = browser.new_page(viewport={"width": 1440, "height": 1400})
        self.dialogs: list[str] = []
        pixel.hits.clear()
        self.page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))

    def open(self, url: str, heading: str) -> None:
        self.page.goto(url, wait_until="domcontentloaded")
        self.page.get_by_role("heading", name=heading).first.wait_for(timeout=90_000)
        self.page.wait_for_timeout(2500)

    def expand_all(self) -> None:
        for summary in self.page.locator('[data-testid="stExpander"] summary').all():
            if summary.is_visible() and summary.get_attribute("aria-expanded") != "true":
                summary.click()
                self.page.wait_for_timeout(300)
        self.page.wait_for_timeout(1500)

    def check(self, artifacts: Path, must_show: list[str]) -> dict:
        self.page.wait_for_timeout(1500)  # let any injected image request land
        self.page.screenshot(path=str(artifacts / f"untrusted-{self.name}.png"), full_page=True)
        found = self.page.evaluate(_PROBE, [self.pixel.url, MARK])
        found["dialogs"] = list(self.dialogs)
        found["pixel_hits"] = list(self.pixel.hits)
        body = self.page.inner_text("body")
        found["missing_text"] = [text for text in must_show if text not in body]
        found["payloads_on_page"] = body.count(MARK)
        _FINDINGS[self.name] = found
        return found


def _assert_inert(found: dict, where: str) -> None:
    assert not found["dialogs"], f"{where}: a dialog opened: {found['dialogs']}"
    assert found["pwned"] is None, f"{where}: payload code ran ({found['pwned']})"
    assert not found["pixel_hits"], f"{where}: the page fetched payload URLs {found['pixel_hits']}"
    assert not found["images"], f"{where}: payload images in the page {found['images']}"
    assert not found["links"], f"{where}: payload links in the page {found['links']}"
    assert not found["handlers"] and not found["scripts"] and not found["frames"], f"{where}: {found}"
    assert not found["missing_text"], f"{where}: payload text not shown as text: {found['missing_text']}"


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    for name, found in _FINDINGS.items():
        write_record("untrusted_content", name, {
            "payloads on the page": found["payloads_on_page"],
            "scripts run / dialogs": int(found["pwned"] is not None) + len(found["dialogs"]),
            "payload requests": len(found["pixel_hits"]),
            "injected links": len(found["links"]),
            "injected images": len(found["images"]),
            "shown as text": "yes" if not found["missing_text"] else "no",
        }, detail={k: v for k, v in found.items() if k != "payloads_on_page"})


def test_trace_detail_shows_payloads_as_text(untrusted_app, browser, pixel, artifacts_dir):
    url, store = untrusted_app
    visit = Visit(browser, pixel, "monitoring-trace")
    visit.open(f"{url}/monitoring", "Monitoring")
    visit.page.get_by_role("tab", name="Trace explorer").click()
    visit.page.get_by_text("traces, newest first").wait_for(timeout=60_000)
    grid = visit.page.locator('[data-testid="stDataFrame"]:visible').first
    grid.wait_for(timeout=60_000)
    visit.page.wait_for_timeout(1000)
    box = grid.bounding_box()
    visit.page.mouse.click(box["x"] + 15, box["y"] + 52)  # the first row's selection box
    visit.page.get_by_role("heading", name=f"Trace {store['trace_ids'][0]}").wait_for(timeout=60_000)
    visit.expand_all()
    found = visit.check(artifacts_dir, [
        "<script>window.__pwned='script-q'</script>",  # span inputs, as code
        "<script>window.__pwned='script-toolout'</script>",
        "[link-err](javascript:",  # the span's error message, markdown shown as typed
        "[link-span](javascript:",  # the span name in the expander label
    ])
    _assert_inert(found, "Monitoring trace detail")


def test_review_conversation_shows_payloads_as_text(untrusted_app, browser, pixel, artifacts_dir):
    url, _ = untrusted_app
    visit = Visit(browser, pixel, "review-conversation")
    visit.open(f"{url}/review", "Review")
    visit.page.get_by_role("button", name="Review next item").click()
    visit.page.get_by_role("heading", name="Conversation").wait_for(timeout=60_000)
    visit.expand_all()
    found = visit.check(artifacts_dir, [
        "<script>window.__pwned='script-q'</script>",  # the user's question
        "<img src=",  # the answer's image tag, as text
        "[link-a](javascript:",
    ])
    comment = visit.page.get_by_label("Comment").first.input_value()
    assert "<script>window.__pwned='script-mycomment'</script>" in comment, "the prefilled comment lost its text"
    _assert_inert(found, "Review conversation")


def test_review_shows_trace_tags_as_text(untrusted_app, browser, pixel, artifacts_dir):
    url, _ = untrusted_app
    visit = Visit(browser, pixel, "review-tags")
    visit.open(f"{url}/review", "Review")
    visit.page.locator('[data-testid="stSelectbox"]:visible').first.click()
    visit.page.get_by_role("option", name="tags queue", exact=False).first.click()
    visit.page.wait_for_timeout(1500)
    visit.page.get_by_role("button", name="Review next item").click()
    visit.page.get_by_role("heading", name="Conversation").wait_for(timeout=60_000)
    found = visit.check(artifacts_dir, ["plain question", "![pix-agenttag](pix-agenttag.png)",
                                        "[link-vertag](javascript:"])
    _assert_inert(found, "Review conversation of a trace with payload tags")


def test_versions_page_shows_registry_payloads_as_text(untrusted_app, browser, pixel, artifacts_dir):
    url, _ = untrusted_app
    visit = Visit(browser, pixel, "versions")
    visit.open(f"{url}/versions", "Versions & releases")
    visit.expand_all()
    found = visit.check(artifacts_dir, [
        "[link-desc2](javascript:",  # the version description
        "backtick-commit2",  # the git commit tag that tries to break out of inline code
    ])
    _assert_inert(found, "Versions page")
    for tab in ("Promote", "History"):
        tabs = visit.page.get_by_role("tab", name=tab)
        if tabs.count():
            tabs.first.click()
            visit.page.wait_for_timeout(2500)
            visit.expand_all()
            visit.name = f"versions-{tab.lower()}"
            pixel.hits.clear()
            _assert_inert(visit.check(artifacts_dir, []), f"Versions page, {tab} tab")


def test_overview_shows_names_as_text(untrusted_app, browser, pixel, artifacts_dir):
    url, _ = untrusted_app
    visit = Visit(browser, pixel, "overview")
    visit.open(f"{url}/", "Overview")
    visit.page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    found = visit.check(artifacts_dir, ["<a href="])  # the endpoint name in the split chart, as typed
    _assert_inert(found, "Overview")
