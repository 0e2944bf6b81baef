"""One way for the fault tests to open a page of the app on a store of their own."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

APP = Path(__file__).resolve().parents[2] / "app.py"


@contextmanager
def app_page(settings, monkeypatch: pytest.MonkeyPatch, page: str, *, timeout: int = 90) -> Iterator:
    """An AppTest already on ``page`` (e.g. ``"pages/serving.py"``) over ``settings.data_dir``.

    Points ``AGENTOPS_DATA_DIR`` at the store and clears the settings and data caches; afterwards
    restores the session's environment and MLflow configuration, whatever happened.
    """
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from services import _clients

    monkeypatch.setenv("AGENTOPS_DATA_DIR", str(settings.data_dir))
    _clients._cached_settings.cache_clear()
    st.cache_data.clear()
    try:
        app = AppTest.from_file(str(APP), default_timeout=timeout)
        app.run()
        app.switch_page(page).run()
        yield app
    finally:
        monkeypatch.undo()  # restores the session's AGENTOPS_DATA_DIR
        _clients._cached_settings.cache_clear()
        _clients.configure_mlflow()
