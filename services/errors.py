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
