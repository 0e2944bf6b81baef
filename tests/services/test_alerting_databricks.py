"""Channel URLs in a Databricks secret scope: the real databricks-sdk against the strict harness."""

from __future__ import annotations

import pytest
from databricks.sdk import WorkspaceClient

from services import notify
from services.errors import ConfigurationError, NotFoundError, PermissionDeniedError
from services.settings import load_settings
from tests.harness.databricks import DatabricksHarness
from tests.harness.databricks_secrets import SecretsApi
from tests.services.test_alerting import SECRET, _messages, hook, receiver  # noqa: F401 - fixtures used by name

SCOPE = "agentops-alerts"


@pytest.fixture(scope="module")
def workspace():
    secrets = SecretsApi(scopes={SCOPE: {}}, read_only={"reader-token"})
    harness = DatabricksHarness(handlers=[secrets]).start()
    yield harness, secrets
    harness.stop()


def _secret_calls(harness, start: int) -> list[tuple[str, str]]:
    return [(r.method, r.path.split("?")[0]) for r in harness.requests[start:] if "/secrets/" in r.path]


def test_the_app_keeps_channel_urls_in_its_secret_scope(workspace, hook, receiver, monkeypatch):
    harness, secrets = workspace
    monkeypatch.setenv("DATABRICKS_TOKEN", "app-token")
    settings = load_settings({"AGENTOPS_BACKEND": "databricks", "DATABRICKS_HOST": harness.url})
    store = notify.secret_store(settings)
    assert isinstance(store, notify.DatabricksSecretScope) and store.where == f"secret scope {SCOPE!r}"

    start = len(harness.requests)
    store.put("oncall", hook)
    assert secrets.scopes[SCOPE]["oncall"][0] == hook.encode()
    assert store.get("oncall") == hook
    assert notify.deliver(store.get("oncall"), "t", "b", notify.Kind.TEST, attempts=1).ok
    assert [kind for kind, _ in _messages(receiver)] == ["info"]
    store.delete("oncall")
    store.delete("oncall")  # already gone: fine
    assert "oncall" not in secrets.scopes[SCOPE]
    with pytest.raises(NotFoundError, match="add the channel again"):
        store.get("oncall")
    assert _secret_calls(harness, start) == [
        ("POST", "/api/2.0/secrets/put"), ("GET", "/api/2.0/secrets/get"), ("GET", "/api/2.0/secrets/get"),
        ("POST", "/api/2.0/secrets/delete"), ("POST", "/api/2.0/secrets/delete"), ("GET", "/api/2.0/secrets/get")]
    assert all(r.body is None or r.body.get("scope") == SCOPE for r in harness.requests[start:] if "/secrets/" in r.path)


def test_an_unknown_scope_and_a_missing_grant_are_named(workspace, hook):
    harness, secrets = workspace
    missing = notify.DatabricksSecretScope(WorkspaceClient(host=harness.url, token="app-token"), "no-such-scope")
    with pytest.raises(ConfigurationError, match="create-scope no-such-scope") as refused:
        missing.put("oncall", hook)
    assert SECRET not in str(refused.value)
    assert "no-such-scope" not in secrets.scopes
    reader = notify.DatabricksSecretScope(WorkspaceClient(host=harness.url, token="reader-token"), SCOPE)
    with pytest.raises(PermissionDeniedError, match="grant it WRITE"):
        reader.put("oncall", hook)
    assert "oncall" not in secrets.scopes[SCOPE]
