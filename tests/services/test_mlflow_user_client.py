"""Per-user MLflow clients: MLflow internals still where we use them, and every call carries the user's token."""

from __future__ import annotations

import pytest

from services import _clients
from services._mlflow_internal import user_client as _mlflow_user_client
from services.identity import Identity, IdentitySource
from tests.harness.databricks import DatabricksHarness
from tests.harness.databricks_settings import databricks_settings
from tests.harness.mlflow_forward import bearer_token

ANA = Identity("ana@example.com", "Ana", IdentitySource.DATABRICKS_APPS, access_token="ana-token")
BO = Identity("bo@example.com", "Bo", IdentitySource.DATABRICKS_APPS, access_token="bo-token")
TOKENLESS = Identity("cy@example.com", "Cy", IdentitySource.DATABRICKS_APPS)
MODEL = {"name": "main.agents.support", "creation_timestamp": 1, "last_updated_timestamp": 2,
         "aliases": [{"alias": "champion", "version": "3"}], "tags": [{"key": "k", "value": "v"}]}


def test_mlflow_internals_the_user_client_relies_on_are_still_there():
    # Fails loudly (naming what moved) when an MLflow upgrade changes any of them.
    _mlflow_user_client.check_internals()


@pytest.fixture
def workspace(monkeypatch, tmp_path):
    """A harness answering two MLflow calls and noting the bearer token of each; the app's own token in env."""
    seen: list[tuple[str, str | None]] = []

    def mlflow_api(method, path, body, headers):
        if path.startswith("/api/2.0/mlflow/"):
            seen.append((path, bearer_token(headers)))
            if path.endswith("/experiments/search"):
                return 200, {"experiments": []}
            if path.endswith("/unity-catalog/registered-models/get"):
                return 200, {"registered_model": MODEL}
            if path.endswith("/unity-catalog/registered-models/search"):
                return 200, {"registered_models": [{"name": MODEL["name"]}]}
        return None

    harness = DatabricksHarness(handlers=[mlflow_api]).start()
    for key in ("DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET", "DATABRICKS_CONFIG_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DATABRICKS_HOST", harness.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", "app-token")
    settings = databricks_settings(harness, tmp_path)
    with _clients.acting_as(None):
        yield settings, seen
    harness.stop()


def test_each_users_calls_carry_their_own_token_and_never_the_apps(workspace):
    settings, seen = workspace
    host = settings.databricks_host
    ana = _mlflow_user_client.user_mlflow_client(host, "ana-token")
    bo = _mlflow_user_client.user_mlflow_client(host, "bo-token")
    ana.search_experiments()
    bo.get_registered_model(MODEL["name"])
    ana.get_registered_model(MODEL["name"])
    assert seen == [
        ("/api/2.0/mlflow/experiments/search", "ana-token"),
        ("/api/2.0/mlflow/unity-catalog/registered-models/get", "bo-token"),
        ("/api/2.0/mlflow/unity-catalog/registered-models/get", "ana-token"),
    ]
    # The Unity Catalog answer is parsed by MLflow's own UC store.
    assert ana.get_registered_model(MODEL["name"]).aliases == {"champion": "3"}


def test_the_backend_switch_makes_mlflow_calls_as_the_app_and_workspace_calls_for_the_user(workspace):
    # No Databricks Apps user scope covers MLflow: whoever is signed in, MLflow calls carry the app's
    # credentials; workspace calls (Model Serving, SCIM, SQL: the declared scopes) carry the user's.
    settings, seen = workspace
    _clients.configure_mlflow(settings)
    try:
        with _clients.acting_as(ANA):
            _clients.mlflow_client(settings).search_experiments()
            assert _clients.workspace_client(settings).config.token == "ana-token"
        with _clients.acting_as(BO):
            _clients.mlflow_client(settings).search_experiments()
            assert _clients.workspace_client(settings).config.token == "bo-token"
        with _clients.acting_as(TOKENLESS):
            _clients.mlflow_client(settings).search_experiments()
        assert [token for _, token in seen] == ["app-token", "app-token", "app-token"]
        assert _clients.acting_identity() is None
    finally:
        _clients.configure_mlflow(_clients.get_settings())


def test_unity_catalog_search_results_can_be_read_like_any_model(workspace):
    settings, _ = workspace
    _clients.configure_mlflow(settings)
    try:
        with _clients.acting_as(ANA):
            models = _clients.mlflow_client(settings).search_registered_models()
        # MLflow's RegisteredModelSearch turns these into methods that raise; the app gets plain empties.
        assert [(m.name, m.tags, m.aliases) for m in models] == [(MODEL["name"], {}, {})]
    finally:
        _clients.configure_mlflow(_clients.get_settings())


def test_a_missing_host_or_token_is_refused_not_replaced():
    with pytest.raises(_mlflow_user_client.UserClientUnavailable, match="token"):
        _mlflow_user_client.user_mlflow_client("https://x", "")
