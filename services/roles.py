"""Roles in the app (viewer < reviewer < operator < admin) and the checks mutations go through.

Where a role comes from:

* Databricks: the signed-in user's workspace groups (``current_user.me()`` with the user's own
  token), mapped by ``AGENTOPS_ROLE_GROUPS`` (e.g. ``admin=ops-admins,operator=release-managers,
  reviewer=domain-experts``). Users in no mapped group are viewers.
* The embedded store and an ``mlflow server``: the roles record stored with the team's data
  (``services.team_state``), ``{"users": {"ana@example.com": "reviewer"}, "default": "viewer"}``,
  which admins edit (``grant``) and everyone on the store shares. ``AGENTOPS_ROLES_FILE``, when
  set, names a file of the same shape managed outside the app; it then overrides the record.
  An embedded store's former ``<data dir>/roles.json`` is migrated into the record once.
* Without any roles record: the embedded store is a one-person workspace and its user is admin;
  on a shared ``mlflow server`` everyone is a **viewer** (an unconfigured shared server must not
  hand everyone admin); the first admin is set with ``python -m agentops roles init --admin USER``.

Pages hide or disable what a role may not do; the services call ``require`` again.
"""

from __future__ import annotations

import json
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any, Iterable, Mapping

from services.errors import ConfigurationError, ConflictError, PermissionDeniedError, ValidationError
from services.identity import Identity
from services.settings import Backend, Settings, read


class Role(IntEnum):
    VIEWER = 1
    REVIEWER = 2
    OPERATOR = 3
    ADMIN = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> "Role":
        try:
            return cls[text.strip().upper()]
        except KeyError:
            valid = ", ".join(r.label for r in cls)
            raise ConfigurationError(f"{text!r} is not a role; use one of: {valid}.") from None


class Action(StrEnum):
    VIEW = "view"
    REVIEW = "give feedback"
    PROMOTE = "promote or roll back aliases"
    CHANGE_TRAFFIC = "change traffic splits"
    RUN_EVALUATION = "run evaluations"
    EDIT_RULES = "edit gate rules, label questions and thresholds"
    MANAGE_ALERTS = "create, change or delete alert rules and channels"
    MANAGE_LIVE_SCORING = "create, change or delete live scorers"


NEEDED: Mapping[Action, Role] = {
    Action.VIEW: Role.VIEWER,
    Action.REVIEW: Role.REVIEWER,
    Action.RUN_EVALUATION: Role.OPERATOR,
    Action.PROMOTE: Role.OPERATOR,
    Action.CHANGE_TRAFFIC: Role.OPERATOR,
    Action.EDIT_RULES: Role.ADMIN,
    Action.MANAGE_ALERTS: Role.OPERATOR,
    Action.MANAGE_LIVE_SCORING: Role.OPERATOR,
}


def parse_group_mapping(text: str) -> dict[str, Role]:
    """``admin=g1,operator=g2`` → {group: role}; a group named twice keeps the higher role."""
    mapping: dict[str, Role] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        role_text, sep, group = part.partition("=")
        if not sep or not group.strip():
            raise ConfigurationError(f"AGENTOPS_ROLE_GROUPS entry {part!r} must look like role=group.")
        role = Role.parse(role_text)
        mapping[group.strip()] = max(role, mapping.get(group.strip(), Role.VIEWER))
    return mapping


def role_from_groups(groups: Iterable[str], mapping: Mapping[str, Role]) -> Role:
    """The highest role any of the user's groups maps to (viewer if none)."""
    return max((mapping[g] for g in groups if g in mapping), default=Role.VIEWER)


ROLES_KEY = "roles"


class RolesSource(StrEnum):
    FILE = "roles file"
    STORE = "stored roles"
    ONE_PERSON = "one-person store"
    UNSET = "no roles set"


def roles_file(settings: Settings, environ: Mapping[str, str] | None = None) -> Path | None:
    """The roles file managed outside the app (``AGENTOPS_ROLES_FILE``), or None when it is not set."""
    value = read("AGENTOPS_ROLES_FILE", environ)
    return Path(value) if value else None


def _parse_table(data: Any, where: str) -> dict[str, Any]:
    try:
        users = {str(k).lower(): Role.parse(str(v)) for k, v in (data.get("users") or {}).items()}
        default = Role.parse(str(data.get("default", "viewer")))
    except (ValueError, AttributeError, ConfigurationError) as exc:
        raise ConfigurationError(f"The roles in {where} are not valid: {exc}") from None
    return {"users": {u: r.label for u, r in sorted(users.items())}, "default": default.label}


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"The roles file {path} is not valid: {exc}") from None
    return _parse_table(data, str(path))


def roles_table(settings: Settings, environ: Mapping[str, str] | None = None) -> tuple[dict[str, Any] | None, RolesSource, int]:
    """The roles in force: (table or None, where it comes from, stored version)."""
    from services import team_state

    path = roles_file(settings, environ)
    if path is not None:
        if not path.exists():
            raise ConfigurationError(f"AGENTOPS_ROLES_FILE names {path}, which does not exist.")
        return _read_file(path), RolesSource.FILE, 0
    record = team_state.read(ROLES_KEY, settings)
    if record is None:
        record = team_state.migrate_file(ROLES_KEY, settings.data_dir / "roles.json", _read_file, settings)
    if record is not None:
        return _parse_table(record.value, "the stored roles record"), RolesSource.STORE, record.version
    if settings.backend is Backend.LOCAL:
        return None, RolesSource.ONE_PERSON, 0
    return None, RolesSource.UNSET, 0


def local_role(identity: Identity, settings: Settings, environ: Mapping[str, str] | None = None) -> Role:
    """A user's role from the team's roles (embedded store without roles: admin; shared server: viewer)."""
    table, source, _ = roles_table(settings, environ)
    if table is None:
        return Role.ADMIN if source is RolesSource.ONE_PERSON else Role.VIEWER
    return Role.parse(table["users"].get(identity.user.lower(), table["default"]))


def grant(user: str, role: Role | str, *, identity: Identity, settings: Settings,
          expected_version: int | None = None) -> dict[str, Any]:
    """Give ``user`` a role in the stored roles record (admins only; recorded with who did it)."""
    from services import team_state

    user = (user or "").strip().lower()
    if not user or any(not c.isprintable() for c in user) or len(user) > 256:
        raise ValidationError(f"{user!r} is not a user name; give the user's email or name.")
    role = role if isinstance(role, Role) else Role.parse(str(role))
    enforce(identity, Action.EDIT_RULES, settings)
    table, source, version = roles_table(settings)
    if source is RolesSource.FILE:
        raise ValidationError("Roles come from AGENTOPS_ROLES_FILE here; edit that file instead.")
    table = dict(table or {"users": {}, "default": Role.VIEWER.label})
    if source is RolesSource.ONE_PERSON:
        table["users"] = {identity.user.lower(): Role.ADMIN.label}  # the one person keeps admin
    table["users"] = {**table["users"], user: role.label}
    record = team_state.write(ROLES_KEY, table, expected_version=version if expected_version is None else expected_version,
                              user=identity.user, settings=settings, note=f"{user} → {role.label}")
    return record.value


def init_roles(admin: str, settings: Settings, *, by: str) -> dict[str, Any]:
    """Set the first admin of a store that has no roles record yet (``ConflictError`` once one exists)."""
    from services import team_state

    admin = (admin or "").strip().lower()
    if not admin:
        raise ValidationError("Name the first admin (their email or user name).")
    table = {"users": {admin: Role.ADMIN.label}, "default": Role.VIEWER.label}
    try:
        return team_state.write(ROLES_KEY, table, expected_version=0, user=by, settings=settings,
                                note=f"first admin {admin}").value
    except ConflictError:
        raise ConflictError("This store already has roles; an admin grants new ones in the app.") from None


def databricks_role(identity: Identity, workspace_client: Any, environ: Mapping[str, str] | None = None) -> Role:
    """A Databricks user's role from their workspace groups (read with their own client)."""
    mapping = parse_group_mapping(read("AGENTOPS_ROLE_GROUPS", environ))
    if not mapping:
        return Role.VIEWER
    me = workspace_client.current_user.me()
    groups = [g.display for g in (me.groups or []) if g.display]
    return role_from_groups(groups, mapping)


def resolve_role(identity: Identity, settings: Settings, *, workspace_client: Any = None,
                 environ: Mapping[str, str] | None = None) -> Role:
    """The identity's role on this backend."""
    if settings.backend is Backend.DATABRICKS:
        if workspace_client is None:
            return Role.VIEWER
        return databricks_role(identity, workspace_client, environ)
    return local_role(identity, settings, environ)


def require(role: Role, action: Action, identity: Identity) -> None:
    """Raise ``PermissionDeniedError`` unless ``role`` may perform ``action``."""
    needed = NEEDED[action]
    if role < needed:
        raise PermissionDeniedError(
            f"{identity.display_name} is a {role.label} and may not {action.value}: that needs the "
            f"{needed.label} role. Ask an admin to add you to a group mapped to {needed.label}."
        )


def user_authorization_required(environ: Mapping[str, str] | None = None) -> bool:
    """True when the app is configured to act as the signed-in user (``AGENTOPS_USER_AUTHORIZATION=on``)."""
    return read("AGENTOPS_USER_AUTHORIZATION", environ).lower() in ("1", "on", "true", "yes")


def require_user_token(identity: Identity, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a privileged write that would silently run as the app's service principal."""
    if settings.backend is Backend.DATABRICKS and user_authorization_required(environ) and not identity.access_token:
        raise PermissionDeniedError(
            "User authorization is on, but this request carries no user token (X-Forwarded-Access-Token). "
            "The app will not fall back to its service principal for this change; reload the app, or ask an "
            "admin to enable user authorization scopes for it."
        )


def role_for(identity: Identity, settings: Settings) -> Role:
    """The identity's role, reading Databricks groups with the user's own token when present."""
    client = None
    if settings.backend is Backend.DATABRICKS and identity.access_token:
        from services._clients import translate_errors, workspace_client

        with translate_errors("the workspace's user directory"):
            client = workspace_client(settings, user_token=identity.access_token)
            return resolve_role(identity, settings, workspace_client=client)
    return resolve_role(identity, settings, workspace_client=client)


def enforce(identity: Identity, action: Action, settings: Settings) -> Role:
    """The service-side check every mutation makes (pages check too, to hide what is not allowed).

    On Databricks it also makes the rest of the request act for ``identity``: the write that follows
    goes out with this user's token, whatever the request context held before.
    """
    if action is not Action.VIEW:
        require_user_token(identity, settings)
    if settings.backend is Backend.DATABRICKS:
        from services import _clients

        _clients.act_as(identity)
    role = role_for(identity, settings)
    require(role, action, identity)
    return role
