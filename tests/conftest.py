"""Shared fixtures: one seeded demo store per test session, and isolated empty stores."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Decided before any service module reads the environment: tests never touch the
# project's own .agentops/ folder.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="agentops-tests-"))
os.environ["AGENTOPS_BACKEND"] = "local"
os.environ["AGENTOPS_DATA_DIR"] = str(_SESSION_DIR / "seeded")
os.environ["MLFLOW_MODEL_CATALOG_URI"] = ""
os.environ.pop("AGENTOPS_MLFLOW_URI", None)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(autouse=True)
def _mlflow_points_at_the_session_store():
    """Each test starts with MLflow's global URIs on the session store, whatever ran before."""
    from services import _clients

    _clients._cached_settings.cache_clear()
    _clients.configure_mlflow()
    # Nor does a test inherit the user an earlier one acted as (roles.enforce binds the identity
    # for the calls that follow it, and tests share one thread).
    _clients.act_as(None)
    yield
    _clients.act_as(None)


@pytest.fixture(scope="session")
def seeded_settings():
    """Settings of a store seeded once with the demo workspace."""
    from demo import seed
    from services._clients import configure_mlflow, get_settings

    settings = configure_mlflow(get_settings())
    assert seed.seed(settings, progress=lambda *_: None), "the session store was not empty"
    return settings


@pytest.fixture
def isolated_settings(tmp_path):
    """Settings of a fresh, empty local store; MLflow points back at the session store after."""
    from services._clients import configure_mlflow, get_settings
    from services.settings import load_settings

    settings = configure_mlflow(load_settings({"AGENTOPS_DATA_DIR": str(tmp_path / "store")}))
    yield settings
    configure_mlflow(get_settings())


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL cluster for the whole session (``tests/harness/postgres.py``);
    tests take their own database from it with ``postgres.new_database()``."""
    from tests.harness import postgres as pg

    if not pg.available():
        pytest.fail("PostgreSQL is not installed: scripts/test installs Debian's 'postgresql' package.")
    with pg.running_postgres() as cluster:
        yield cluster
