import getpass

from services.identity import IdentitySource, resolve_identity
from services.settings import load_settings
from tests.harness.databricks_settings import databricks_settings

LOCAL = load_settings({})
DATABRICKS = databricks_settings("https://x")
FORWARDED = {
    "x-forwarded-email": "ana@example.com",
    "X-Forwarded-User": "123@456",
    "X-FORWARDED-PREFERRED-USERNAME": "ana",
    "X-Forwarded-Access-Token": "secret-token",
}


def test_forwarded_headers_win_case_insensitively():
    identity = resolve_identity(DATABRICKS, FORWARDED)
    assert identity.user == "ana@example.com"
    assert identity.display_name == "ana"
    assert identity.source is IdentitySource.DATABRICKS_APPS
    assert identity.access_token == "secret-token"
    assert "secret-token" not in repr(identity)


def test_local_backend_uses_the_os_user():
    identity = resolve_identity(LOCAL, {})
    assert identity.user == getpass.getuser()
    assert identity.source is IdentitySource.OS_USER


def test_databricks_without_headers_is_unknown_not_the_service_principal():
    identity = resolve_identity(DATABRICKS, {})
    assert identity.source is IdentitySource.UNKNOWN
    assert identity.access_token is None
