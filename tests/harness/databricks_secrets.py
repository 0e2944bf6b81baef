"""The Databricks Secrets API as a ``DatabricksHarness`` extension, as strict as a workspace.

Answers ``/api/2.0/secrets/{put,get,delete,list}`` and ``/api/2.0/secrets/scopes/list`` with bodies
built from the SDK's types (``GetSecretResponse``, ``ListSecretsResponse``, ``ListScopesResponse``),
checks every request's fields against the SDK's own method signatures, and refuses what a workspace
refuses: an unknown scope (404 ``RESOURCE_DOES_NOT_EXIST`` "Scope X does not exist!"), an unknown key,
a key with characters outside ``[A-Za-z0-9_.-]``, and a principal without WRITE on the scope (403).
Scopes are created by the test (``scopes``), as an admin does with the CLI; the app never creates one.
"""

from __future__ import annotations

import base64
import inspect
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from databricks.sdk.service.workspace import (
    GetSecretResponse,
    ListScopesResponse,
    ListSecretsResponse,
    ScopeBackendType,
    SecretMetadata,
    SecretsAPI,
    SecretScope,
)

from tests.harness.mlflow_forward import _raw_request_path, bearer_token

_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _fields(method: str) -> set[str]:
    return {p for p in inspect.signature(getattr(SecretsAPI, method)).parameters if p != "self"}


@dataclass
class SecretsApi:
    """Secret scopes: scope -> {key: (bytes, last updated ms)}; tokens refused WRITE in ``read_only``."""

    scopes: dict[str, dict[str, tuple[bytes, int]]] = field(default_factory=dict)
    read_only: set[str] = field(default_factory=set)  # bearer tokens without WRITE

    def __call__(self, method: str, path: str, body: Any, headers: Any) -> tuple[int, Any] | None:
        if not path.startswith("/api/2.0/secrets/"):
            return None
        query = {k: v[-1] for k, v in parse_qs(_raw_request_path().partition("?")[2]).items()}
        fields = {**query, **(body if isinstance(body, dict) else {})}
        route = {("POST", "/api/2.0/secrets/put"): "put_secret", ("GET", "/api/2.0/secrets/get"): "get_secret",
                 ("POST", "/api/2.0/secrets/delete"): "delete_secret", ("GET", "/api/2.0/secrets/list"): "list_secrets",
                 ("GET", "/api/2.0/secrets/scopes/list"): "list_scopes"}.get((method, path))
        if route is None:
            return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No API at {path}"}
        unknown = set(fields) - _fields(route)
        if unknown:
            return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": f"Unknown fields: {sorted(unknown)}"}
        if route == "list_scopes":
            scopes = [SecretScope(name=s, backend_type=ScopeBackendType.DATABRICKS) for s in sorted(self.scopes)]
            return 200, ListScopesResponse(scopes=scopes).as_dict()
        scope = fields.get("scope") or ""
        if scope not in self.scopes:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Scope {scope} does not exist!"}
        secrets = self.scopes[scope]
        if route == "list_secrets":
            found = [SecretMetadata(key=k, last_updated_timestamp=t) for k, (_, t) in sorted(secrets.items())]
            return 200, ListSecretsResponse(secrets=found).as_dict()
        key = fields.get("key") or ""
        if not _KEY.match(key):
            return 400, {"error_code": "INVALID_PARAMETER_VALUE",
                         "message": f"Invalid secret key {key!r}: use alphanumerics, '-', '_' and '.'"}
        if route in ("put_secret", "delete_secret") and bearer_token(headers) in self.read_only:
            return 403, {"error_code": "PERMISSION_DENIED", "message": f"User does not have WRITE permission on scope {scope}"}
        if route == "put_secret":
            if ("string_value" in fields) == ("bytes_value" in fields):
                return 400, {"error_code": "INVALID_PARAMETER_VALUE",
                             "message": "Exactly one of string_value and bytes_value must be given"}
            value = (fields["string_value"].encode("utf-8") if "string_value" in fields
                     else base64.b64decode(fields["bytes_value"]))
            secrets[key] = (value, int(time.time() * 1000))
            return 200, {}
        if key not in secrets:
            action = "get" if route == "get_secret" else "delete"
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST",
                         "message": f"Failed to {action} secret {key} for scope {scope}."}
        if route == "delete_secret":
            del secrets[key]
            return 200, {}
        return 200, GetSecretResponse(key=key, value=base64.b64encode(secrets[key][0]).decode()).as_dict()
