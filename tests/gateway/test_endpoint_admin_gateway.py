"""An endpoint created, edited or deleted from the app is served (or refused) by the running gateway at once."""

from __future__ import annotations

import httpx

from services import endpoint_admin
from services.identity import Identity, IdentitySource
from tests.gateway.conftest import MODEL

QUESTION = {"input": [{"role": "user", "content": "How do I reset my password?"}]}
OPS = Identity("olivia@example.com", "Olivia", IdentitySource.OS_USER)


def _ask(url: str, endpoint: str) -> httpx.Response:
    return httpx.post(f"{url}/serving-endpoints/{endpoint}/invocations", json=QUESTION, timeout=60)


def test_running_gateway_follows_create_edit_and_delete(gateway_store, running_gateway):
    url, name = running_gateway.url, "made-in-the-ui"
    assert _ask(url, name).status_code == 404
    endpoint_admin.apply(endpoint_admin.plan_create(name, {(MODEL, "1"): 100}, settings=gateway_store),
                         identity=OPS, reason="new endpoint", settings=gateway_store)
    first = _ask(url, name)
    assert first.status_code == 200 and first.headers["X-AgentOps-Arm"] == f"{MODEL}_1"

    endpoint_admin.apply(endpoint_admin.plan_edit(name, {(MODEL, "2"): 100}, settings=gateway_store),
                         identity=OPS, reason="switch", settings=gateway_store)
    second = _ask(url, name)
    assert second.status_code == 200 and second.headers["X-AgentOps-Arm"] == f"{MODEL}_2"

    endpoint_admin.apply(endpoint_admin.plan_delete(name, settings=gateway_store), identity=OPS, reason="done",
                         settings=gateway_store)
    assert _ask(url, name).status_code == 404
    assert name not in httpx.get(f"{url}/serving-endpoints", timeout=30).text
