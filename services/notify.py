"""Alert delivery through apprise, and the channel URLs it needs, kept as secrets.

A channel URL (``slack://...``, ``workflows://...`` for Microsoft Teams, ``mailtos://...``, ``json://host/path`` and the
rest of apprise's schemes) carries the credentials of the channel, so it is a secret:

* on Databricks it lives in a secret scope (``AGENTOPS_ALERT_SECRET_SCOPE``, ``agentops-alerts`` by
  default; one secret per channel), read and written as the app's service principal;
* elsewhere it lives in a JSON file outside the repository that only its owner may read
  (``AGENTOPS_ALERT_CHANNELS_FILE``, ``~/.config/agentops/alert-channels.json`` by default). A file
  that its group or others can read is refused with the ``chmod`` that fixes it.

A URL is never returned to a page, written to team state, to the delivery history or to a log:
``describe_url`` gives the service name and a short fingerprint instead, and a filter on apprise's
logger blanks every fragment of the URLs being delivered to.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from services.errors import (
    ConfigurationError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from services.settings import PROJECT_ROOT, Backend, Settings, read

_logger = logging.getLogger(__name__)

DEFAULT_SCOPE = "agentops-alerts"
DEFAULT_FILE = Path("~/.config/agentops/alert-channels.json")
# Databricks secret keys: letters, digits, '-', '_' and '.'; at most 128 characters.
CHANNEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_URL = 2000


def validate_channel_name(name: Any) -> str:
    """A channel name: 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit."""
    if not isinstance(name, str) or not CHANNEL_NAME.match(name):
        raise ValidationError(
            f"{name!r} is not a channel name: use 1-64 letters, digits, '-', '_' or '.', starting with a letter "
            "or digit (e.g. oncall-slack)."
        )
    return name


# --- what a URL is, without showing it --------------------------------------------------------


@dataclass(frozen=True)
class ChannelInfo:
    """What can be shown of a channel URL: apprise's service name, its scheme and a fingerprint."""

    service: str
    scheme: str
    fingerprint: str

    @property
    def masked(self) -> str:
        return f"{self.service} ({self.scheme}://•••• #{self.fingerprint})"


def _scheme(url: str) -> str:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    return scheme if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,19}", scheme) else "?"


def describe_url(url: Any) -> ChannelInfo:
    """Check that apprise recognises ``url`` and describe it without its secret parts.

    Raises ``ValidationError`` (which never quotes the URL) when it does not.
    """
    import apprise

    if not isinstance(url, str) or not url.strip():
        raise ValidationError("Give the channel URL, e.g. slack://TokenA/TokenB/TokenC or json://host/path.")
    url = url.strip()
    if len(url) > MAX_URL or any(c.isspace() for c in url):
        raise ValidationError("A channel URL is one URL without spaces, at most 2,000 characters.")
    scheme = _scheme(url)
    with _quiet_apprise():
        plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    if plugin is None or plugin is False:
        raise ValidationError(
            f"apprise does not recognise this channel URL (scheme {scheme!r}). Use one of apprise's URLs: "
            "slack://, workflows:// (Microsoft Teams through Power Automate; apprise 2 retired msteams://), "
            "mailto:// / mailtos:// (e-mail), json:// / jsons:// (a generic JSON webhook), ... — see "
            "https://github.com/caronc/apprise/wiki. Nothing was saved."
        )
    fingerprint = hashlib.sha256(url.encode("utf-8")).hexdigest()[:8]
    return ChannelInfo(str(getattr(plugin, "service_name", scheme) or scheme), scheme, fingerprint)


# --- keeping URLs out of logs ------------------------------------------------------------------

_secret_lock = threading.Lock()
_secret_fragments: dict[str, int] = {}  # fragment -> how many deliveries use it right now
_HIDDEN = "••••"


def _fragments(url: str) -> set[str]:
    rest = url.split("://", 1)[-1]
    from urllib.parse import quote, unquote

    parts = {p for p in re.split(r"[/:@?&=#,;]+", rest) if len(p) >= 4}
    parts |= {unquote(p) for p in parts} | {quote(p, safe="") for p in parts}
    return {url, rest, *parts}


def redact(text: str, urls: tuple[str, ...] = ()) -> str:
    """``text`` with every fragment of ``urls`` (and of URLs being delivered to) replaced by dots."""
    with _secret_lock:
        fragments = set(_secret_fragments)
    for url in urls:
        fragments |= _fragments(url)
    for fragment in sorted(fragments, key=len, reverse=True):
        if fragment:
            text = text.replace(fragment, _HIDDEN)
    return text


class _RedactingFilter(logging.Filter):
    """Blanks secret fragments in apprise's own log records before any handler sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        with _secret_lock:
            active = bool(_secret_fragments)
        if active:
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a malformed record: drop its arguments
                message = str(record.msg)
            record.msg, record.args = redact(message), ()
        return True


_filter = _RedactingFilter()


# A logger's filters see only the records logged to that very logger, not its children's: apprise's
# and those of the HTTP libraries it sends with (urllib3 logs each request line at debug level).
_SENDING_LOGGERS = ("apprise", "urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.retry",
                    "urllib3.response", "requests", "requests_oauthlib.oauth2_session", "oauthlib")


def _install_filter() -> None:
    for name in _SENDING_LOGGERS:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)


class _secret_in_use:
    def __init__(self, url: str) -> None:
        self.parts = _fragments(url)

    def __enter__(self) -> None:
        _install_filter()
        with _secret_lock:
            for p in self.parts:
                _secret_fragments[p] = _secret_fragments.get(p, 0) + 1

    def __exit__(self, *exc: object) -> None:
        with _secret_lock:
            for p in self.parts:
                left = _secret_fragments.get(p, 1) - 1
                if left <= 0:
                    _secret_fragments.pop(p, None)
                else:
                    _secret_fragments[p] = left


class _quiet_apprise:
    """Apprise logs a URL it cannot parse at warning level: silence it while a URL is checked."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("apprise")
        self.level = self.logger.level
        self.logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


# --- delivery ----------------------------------------------------------------------------------


class Kind:
    FIRING = "firing"
    RESOLVED = "resolved"
    TEST = "test"
    NOTICE = "notice"  # a one-off message (a rollout step), not an incident


@dataclass(frozen=True)
class Delivery:
    """The outcome of one notification to one channel (no URL in it)."""

    ok: bool
    attempts: int
    error: str = ""


def deliver(url: str, title: str, body: str, kind: str, *, attempts: int = 3, backoff_s: float = 1.0,
            sleep: Callable[[float], None] = time.sleep) -> Delivery:
    """Send one notification through apprise, retrying with exponential backoff (1 s, 2 s, ...)."""
    import apprise

    notify_type = {Kind.FIRING: apprise.NotifyType.FAILURE, Kind.RESOLVED: apprise.NotifyType.SUCCESS}.get(
        kind, apprise.NotifyType.INFO)
    error = ""
    with _secret_in_use(url):
        for attempt in range(1, max(1, attempts) + 1):
            sender = apprise.Apprise()
            with _quiet_apprise():
                added = sender.add(url)
            if not added:
                return Delivery(False, attempt, "apprise no longer recognises this channel URL; replace the channel.")
            with apprise.LogCapture(level=logging.WARNING) as captured:
                try:
                    ok = bool(sender.notify(body=body, title=title, notify_type=notify_type))
                except Exception as exc:  # noqa: BLE001 - a plugin error is a failed attempt, not a crash
                    ok = False
                    _logger.warning("alert delivery raised %s", redact(type(exc).__name__))
                log_text = captured.getvalue()
            if ok:
                return Delivery(True, attempt)
            error = redact(" ".join(log_text.split())[-300:], (url,)) or "the channel refused the notification"
            _logger.warning("alert delivery attempt %d/%d failed: %s", attempt, attempts, error)
            if attempt < attempts:
                sleep(backoff_s * 2 ** (attempt - 1))
    return Delivery(False, max(1, attempts), error)


# --- where URLs are kept ---------------------------------------------------------------------


class SecretStore(Protocol):
    where: str

    def get(self, name: str) -> str: ...

    def put(self, name: str, url: str) -> None: ...

    def delete(self, name: str) -> None: ...


class LocalSecretFile:
    """Channel URLs in a JSON file ``{name: url}`` outside the repository, readable only by its owner."""

    def __init__(self, path: Path) -> None:
        path = Path(path).expanduser()
        resolved = path.resolve()
        if resolved == PROJECT_ROOT or PROJECT_ROOT in resolved.parents:
            raise ConfigurationError(
                f"The alert channels file {resolved} is inside the repository ({PROJECT_ROOT}), where it could be "
                "committed. Set AGENTOPS_ALERT_CHANNELS_FILE to a path outside it, e.g. "
                "~/.config/agentops/alert-channels.json."
            )
        self.path = resolved
        self.where = f"file {resolved}"

    def _check(self) -> None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return
        if info.st_uid != os.getuid():
            raise ConfigurationError(f"The alert channels file {self.path} belongs to another user; it must be yours.")
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigurationError(
                f"The alert channels file {self.path} can be read by its group or others (mode "
                f"{stat.S_IMODE(info.st_mode):o}); channel URLs are secrets. Run: chmod 600 {self.path}"
            )

    def _read(self) -> dict[str, str]:
        self._check()
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"The alert channels file {self.path} is not valid JSON ({type(exc).__name__}); "
                                     "fix or delete it.") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ConfigurationError(f"The alert channels file {self.path} must hold {{\"name\": \"url\"}}.")
        return data

    def get(self, name: str) -> str:
        value = self._read().get(name)
        if value is None:
            raise NotFoundError(f"Channel {name!r} has no URL in {self.where}; add the channel again.")
        return value

    def _update(self, change: Callable[[dict[str, str]], None]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = self._read()
            change(data)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            out = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            with os.fdopen(out, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=1, sort_keys=True)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def put(self, name: str, url: str) -> None:
        self._update(lambda data: data.__setitem__(name, url))

    def delete(self, name: str) -> None:
        self._update(lambda data: data.pop(name, None))


class DatabricksSecretScope:
    """Channel URLs as secrets of one Databricks secret scope (key = channel name)."""

    def __init__(self, client: Any, scope: str) -> None:
        self.client = client
        self.scope = scope
        self.where = f"secret scope {scope!r}"

    def _call(self, what: str, action: Callable[[], Any]) -> Any:
        from databricks.sdk.errors import (
            NotFound,
            PermissionDenied,
            ResourceDoesNotExist,
        )

        try:
            return action()
        except (ResourceDoesNotExist, NotFound) as exc:
            if re.search(r"scope \S+ does not exist", str(exc), re.IGNORECASE):
                raise ConfigurationError(
                    f"The secret scope {self.scope!r} does not exist. Create it (databricks secrets create-scope "
                    f"{self.scope}) and give the app's service principal WRITE on it, or set "
                    "AGENTOPS_ALERT_SECRET_SCOPE."
                ) from None
            raise NotFoundError(f"{what}: no such secret in {self.where}; add the channel again.") from None
        except PermissionDenied:
            raise PermissionDeniedError(
                f"{what}: the app's service principal may not use {self.where}; grant it WRITE (MANAGE to delete)."
            ) from None

    def get(self, name: str) -> str:
        response = self._call(f"Reading channel {name!r}", lambda: self.client.secrets.get_secret(self.scope, name))
        return base64.b64decode(response.value or "").decode("utf-8")

    def put(self, name: str, url: str) -> None:
        self._call(f"Saving channel {name!r}",
                   lambda: self.client.secrets.put_secret(self.scope, name, string_value=url))

    def delete(self, name: str) -> None:
        try:
            self._call(f"Deleting channel {name!r}", lambda: self.client.secrets.delete_secret(self.scope, name))
        except NotFoundError:
            pass  # already gone


def secret_store(settings: Settings) -> SecretStore:
    """Where this backend keeps channel URLs."""
    if settings.backend is Backend.DATABRICKS:
        from services._clients import app_workspace_client

        # Secrets are not among the scopes a user token can carry: the app's service principal uses them.
        return DatabricksSecretScope(app_workspace_client(settings), read("AGENTOPS_ALERT_SECRET_SCOPE") or DEFAULT_SCOPE)
    return LocalSecretFile(Path(read("AGENTOPS_ALERT_CHANNELS_FILE") or DEFAULT_FILE))
