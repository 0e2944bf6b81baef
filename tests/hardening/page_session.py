"""One way for the tests to open a page of the app on a store of their own (the fault tests, the AI Gateway page)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import pytest

from services.settings import Backend
from tests.harness.app_page import run_page

@contextmanager
def app_page(settings, monkeypatch: pytest.MonkeyPatch, page: str | None, *, timeout: int = 90,
             env: Mapping[str, str] | None = None) -> Iterator:
    """An AppTest already on ``page`` (e.g. ``"pages/serving.py"``; None: the first page) over ``settings``.

    Points ``AGENTOPS_DATA_DIR`` at the store (and, on the ``mlflow`` backend, the app at the same
    server), sets ``env`` and clears the settings and data caches; afterwards restores the session's
    environment and MLflow configuration, whatever happened.
    """
    import streamlit as st

    from services import _clients

    monkeypatch.setenv("AGENTOPS_DATA_DIR", str(settings.data_dir))
    if settings.backend is Backend.MLFLOW:
        monkeypatch.setenv("AGENTOPS_BACKEND", Backend.MLFLOW.value)
        monkeypatch.setenv("AGENTOPS_MLFLOW_URI", settings.mlflow_uri)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    _clients._cached_settings.cache_clear()
    st.cache_data.clear()
    try:
        yield run_page(page, timeout=timeout)
    finally:
        monkeypatch.undo()  # restores the session's AGENTOPS_DATA_DIR
        _clients._cached_settings.cache_clear()
        _clients.configure_mlflow()
