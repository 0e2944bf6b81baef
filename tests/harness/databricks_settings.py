"""The app's settings on the Databricks backend, built one way for every test that needs them.

``databricks_env`` is the environment the app reads (backend, host, data folder, anything else);
``databricks_settings`` the settings object made from it, for service calls that take settings;
``use_app_env`` puts an environment into this process as Databricks Apps would (for AppTest pages
and code that reads settings from the environment), with a fresh settings cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from services import _clients
from services.settings import Settings, load_settings


def _host(target: Any) -> str:
    """A harness's url, or the host as given."""
    return str(getattr(target, "url", target))


def databricks_env(target: Any, data_dir: str | Path | None = None, **extra: str) -> dict[str, str]:
    """``AGENTOPS_BACKEND=databricks`` against ``target`` (a harness or a host), plus ``extra`` variables."""
    env = {"AGENTOPS_BACKEND": "databricks", "DATABRICKS_HOST": _host(target)}
    if data_dir is not None:
        env["AGENTOPS_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def databricks_settings(target: Any, data_dir: str | Path | None = None, **extra: str) -> Settings:
    """The app's settings on the Databricks backend against ``target`` (a harness or a host)."""
    return load_settings(databricks_env(target, data_dir, **extra))


def use_app_env(monkeypatch: Any, env: Mapping[str, str], *, unset: tuple[str, ...] = (),
                configure: bool = False) -> Settings | None:
    """Set ``env`` (and remove ``unset``) for this test, clearing the cached settings.

    With ``configure``, MLflow is pointed at the new settings and they are returned. ``monkeypatch``
    restores the environment; the caller clears the settings cache again when it undoes it.
    """
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in unset:
        monkeypatch.delenv(key, raising=False)
    _clients._cached_settings.cache_clear()
    return _clients.configure_mlflow(load_settings()) if configure else None
