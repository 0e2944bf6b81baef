"""What the gateway accepts from a client: the request body, its request id, and the errors it answers.

A client names a request with ``client_request_id`` in the body (the field Databricks Model Serving
records) or an ``X-Request-Id`` header; the gateway makes one up otherwise and returns it in
``X-Request-Id``. ``GatewayError`` carries the HTTP status and Databricks-style error code of a
refusal; the web layer (``gateway.app``) turns it into the JSON answer.
"""

from __future__ import annotations

import uuid
from typing import Any

REQUEST_ID_FIELD = "client_request_id"
REQUEST_ID_HEADER = "X-Request-Id"
REPLAYED_HEADER = "X-AgentOps-Replayed"
_MAX_REQUEST_ID = 200


class GatewayError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def validate_request(body: Any) -> dict[str, Any]:
    """The body as a dict, or a 400 naming what is wrong (a ResponsesAgent request: ``input`` messages)."""
    if not isinstance(body, dict):
        raise GatewayError(400, "INVALID_PARAMETER_VALUE", "The request body must be a JSON object.")
    items = body.get("input")
    if not isinstance(items, list) or not items:
        raise GatewayError(400, "INVALID_PARAMETER_VALUE", "'input' must be a non-empty list of messages.")
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "role" not in item and "type" not in item:
            raise GatewayError(400, "INVALID_PARAMETER_VALUE", f"input[{index}] is not a message object.")
    context = body.get("context")
    if context is not None and not isinstance(context, dict):
        raise GatewayError(400, "INVALID_PARAMETER_VALUE", "'context' must be an object.")
    return body


def split_request_id(request: dict[str, Any], header: str | None) -> tuple[dict[str, Any], str, bool]:
    """(the request without ``client_request_id``, the request id, whether the client named it)."""
    field = request.get(REQUEST_ID_FIELD)
    if field is not None:
        request = {k: v for k, v in request.items() if k != REQUEST_ID_FIELD}  # not part of the model's input
    for name, value in ((REQUEST_ID_FIELD, field), (REQUEST_ID_HEADER, header)):
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip() or len(value) > _MAX_REQUEST_ID or not value.isprintable():
            raise GatewayError(400, "INVALID_PARAMETER_VALUE",
                               f"{name} must be a non-empty printable string of at most {_MAX_REQUEST_ID} characters.")
    if field is not None and header is not None and field != header:
        raise GatewayError(400, "INVALID_PARAMETER_VALUE",
                           f"{REQUEST_ID_FIELD} ({field!r}) and the {REQUEST_ID_HEADER} header ({header!r}) differ; "
                           "send one request id.")
    named = field if field is not None else header
    return request, named or f"gw-{uuid.uuid4().hex}", named is not None
