"""Typed errors raised by the service layer; pages turn them into messages."""

from __future__ import annotations


class AgentOpsError(Exception):
    """Base class: the message is written for the person using the app."""


class ConfigurationError(AgentOpsError):
    """A setting is missing or invalid; the message names the variable."""


class BackendUnavailableError(AgentOpsError):
    """The tracking store or workspace cannot be reached or read."""


class NotFoundError(AgentOpsError):
    """The named object does not exist."""


class PermissionDeniedError(AgentOpsError):
    """The backend refused the call; the message names the missing grant."""


class ConflictError(AgentOpsError):
    """The object changed meanwhile or an update is already in progress."""


class ValidationError(AgentOpsError):
    """User input is invalid; the message says what is wrong and how to fix it."""


# One reading of a backend's error, shared by every caller that classifies one (the MLflow client,
# the Databricks SDK, the AI Gateway's REST answers, a databricks-agents child's report): an error
# code first, then the exception's class name (the SDK's classes are named after the codes), then
# the HTTP status.
_BY_CODE: dict[str, type[AgentOpsError]] = {
    "RESOURCE_DOES_NOT_EXIST": NotFoundError, "NOT_FOUND": NotFoundError,
    "PERMISSION_DENIED": PermissionDeniedError, "UNAUTHENTICATED": PermissionDeniedError,
    "RESOURCE_ALREADY_EXISTS": ConflictError, "RESOURCE_CONFLICT": ConflictError, "ABORTED": ConflictError,
    "INVALID_PARAMETER_VALUE": ValidationError, "BAD_REQUEST": ValidationError, "INVALID_STATE": ValidationError,
}
_BY_NAME: dict[str, type[AgentOpsError]] = {
    "NotFound": NotFoundError, "ResourceDoesNotExist": NotFoundError,
    "PermissionDenied": PermissionDeniedError, "Unauthenticated": PermissionDeniedError,
    "ResourceConflict": ConflictError, "ResourceAlreadyExists": ConflictError, "Aborted": ConflictError,
    "BadRequest": ValidationError, "InvalidParameterValue": ValidationError,
}
_BY_STATUS: dict[int, type[AgentOpsError]] = {
    400: ValidationError, 401: PermissionDeniedError, 403: PermissionDeniedError, 404: NotFoundError,
    409: ConflictError,
}


def error_class(*, code: str | None = None, names: tuple[str, ...] = (), status: int | None = None
                ) -> type[AgentOpsError] | None:
    """The typed error a backend's error code, exception class names or HTTP status stand for, or None.

    ``names``: the exception's class and its bases (``[c.__name__ for c in type(exc).__mro__]``).
    """
    if code and code in _BY_CODE:
        return _BY_CODE[code]
    for name in names:
        if name in _BY_NAME:
            return _BY_NAME[name]
    return _BY_STATUS.get(status) if status is not None else None


def typed_error(kind: type[AgentOpsError] | None, what: str, message: str) -> AgentOpsError:
    """The typed error of ``kind`` (see :func:`error_class`) about ``what``; without a kind, the backend failed."""
    if kind is NotFoundError:
        return NotFoundError(f"Not found in {what}: {message}")
    if kind is PermissionDeniedError:
        return PermissionDeniedError(f"{what} refused the call: {message}")
    if kind in (ConflictError, ValidationError):
        return kind(message)
    return BackendUnavailableError(f"Could not read {what}: {message}")
