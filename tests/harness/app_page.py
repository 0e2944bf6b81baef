"""Open one page of the app in Streamlit's AppTest, the way every page test starts."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def run_page(page: str | None = None, *, timeout: float = 60) -> AppTest:
    """The app run once, switched to ``page`` (``pages/<name>.py``; the entry page when None), run again."""
    app = AppTest.from_file(APP, default_timeout=timeout)
    app.run()
    if page:
        app.switch_page(page)
        app.run()
    return app


def open_page(page: str | None = None, *, timeout: float = 60) -> AppTest:
    """``run_page``, and the page raised nothing."""
    app = run_page(page, timeout=timeout)
    assert not app.exception, app.exception
    return app


def button(app: AppTest, label: str):
    """The page's button with this label."""
    return next(b for b in app.button if b.label == label)
