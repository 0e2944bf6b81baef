"""Fixtures shared by the page tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from services import _clients


@pytest.fixture
def use_store(monkeypatch):
    """Point the app (which reads settings from the environment) at another store."""

    def use(data_dir: Path) -> None:
        monkeypatch.setenv("AGENTOPS_DATA_DIR", str(data_dir))
        _clients._cached_settings.cache_clear()

    yield use
    monkeypatch.undo()
    _clients._cached_settings.cache_clear()
    _clients.configure_mlflow()
