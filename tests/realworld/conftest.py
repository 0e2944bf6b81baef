"""One real-world workspace per test session, built with MLflow's public APIs only."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.realworld.workspace import WorkspaceFacts, build


@pytest.fixture(scope="session")
def realworld() -> WorkspaceFacts:
    """The facts of a workspace another team's code wrote (see ``tests/realworld/workspace.py``)."""
    from services._clients import configure_mlflow, get_settings

    facts = build(Path(tempfile.mkdtemp(prefix="agentops-realworld-")) / "store")
    configure_mlflow(get_settings())
    return facts


@pytest.fixture
def realworld_settings(realworld):
    """Settings reading the real-world workspace; no experiment ids configured, no app tags."""
    from services._clients import configure_mlflow, get_settings
    from services.settings import load_settings

    settings = configure_mlflow(load_settings({"AGENTOPS_DATA_DIR": str(realworld.data_dir)}))
    yield settings
    configure_mlflow(get_settings())


@pytest.fixture
def on_realworld(realworld, monkeypatch):
    """The app (which reads settings from the environment) points at the real-world store, with fresh caches."""
    import streamlit as st

    from services import _clients

    monkeypatch.setenv("AGENTOPS_DATA_DIR", str(realworld.data_dir))
    monkeypatch.delenv("AGENTOPS_EXPERIMENT_IDS", raising=False)
    _clients._cached_settings.cache_clear()
    st.cache_data.clear()
    yield realworld
    monkeypatch.undo()
    _clients._cached_settings.cache_clear()
    _clients.configure_mlflow()
    st.cache_data.clear()
