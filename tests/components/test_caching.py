"""Page caches keep users with their own permissions apart, and share entries made as the app."""

from __future__ import annotations

from services._clients import acting_as
from services.identity import Identity, IdentitySource

from components.caching import per_user_cache


def _user(name: str, token: str | None) -> Identity:
    return Identity(user=name, display_name=name, source=IdentitySource.DATABRICKS_APPS, access_token=token)


def test_entries_are_kept_per_user_with_a_token_and_shared_without():
    calls: list[str] = []

    @per_user_cache(ttl=60, show_spinner=False)
    def agents(settings_key: str) -> list[str]:
        calls.append(settings_key)
        return [f"visible-{len(calls)}"]

    agents.clear()
    with acting_as(_user("olivia@example.com", "tok-o")):
        olivia = agents("s")
    with acting_as(_user("rafael@example.com", "tok-r")):
        rafael = agents("s")
    with acting_as(_user("olivia@example.com", "tok-o")):
        assert agents("s") == olivia  # her own entry, not recomputed
    assert rafael != olivia and len(calls) == 2

    with acting_as(_user("nina@example.com", None)):
        app_read = agents("s")  # no token: the read acted as the app, shared with everyone
    with acting_as(None):
        assert agents("s") == app_read
    assert len(calls) == 3


def test_two_cached_functions_do_not_share_entries():
    @per_user_cache(ttl=60)
    def first(x: int) -> str:
        return f"first-{x}"

    @per_user_cache(ttl=60)
    def second(x: int) -> str:
        return f"second-{x}"

    assert (first(1), second(1)) == ("first-1", "second-1")


def test_same_named_functions_of_two_page_scripts_do_not_share_entries():
    """Pages run as ``__main__``: two pages' ``_versions`` differ only by their file."""
    found = []
    for filename, value in (("pages/a.py", "from a"), ("pages/b.py", "from b")):
        namespace = {"__name__": "__main__"}
        exec(compile(f"def _versions(agent):\n    return {value!r}\n", filename, "exec"), namespace)
        found.append(per_user_cache(ttl=60)(namespace["_versions"])("support-agent"))
    assert found == ["from a", "from b"]
