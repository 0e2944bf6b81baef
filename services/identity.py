"""Who is using the app: the forwarded Databricks Apps user, or the OS user locally."""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Mapping

from services.settings import Backend, Settings


class IdentitySource(StrEnum):
    DATABRICKS_APPS = "databricks-apps"
    OS_USER = "os-user"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Identity:
    user: str
    display_name: str
    source: IdentitySource
    # Kept out of repr so a token never lands in a log line.
    access_token: str | None = field(default=None, repr=False)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted and value:
            return value.strip()
    return None


def resolve_identity(settings: Settings, headers: Mapping[str, str] | None = None) -> Identity:
    """The current user: from ``X-Forwarded-*`` headers on Databricks, else the OS user."""
    headers = headers or {}
    email = _header(headers, "X-Forwarded-Email")
    user = _header(headers, "X-Forwarded-User")
    preferred = _header(headers, "X-Forwarded-Preferred-Username")
    if email or user or preferred:
        principal = email or preferred or user or ""
        return Identity(
            user=principal,
            display_name=preferred or email or principal,
            source=IdentitySource.DATABRICKS_APPS,
            access_token=_header(headers, "X-Forwarded-Access-Token"),
        )
    if settings.backend is Backend.DATABRICKS:
        # Inside Databricks Apps every request carries these headers; without them we do not
        # know who is acting, so say so rather than borrow the service principal's name.
        return Identity(user="unknown", display_name="unknown user", source=IdentitySource.UNKNOWN)
    try:
        name = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        name = "local-user"
    return Identity(user=name, display_name=name, source=IdentitySource.OS_USER)
