"""Page caches that never hand one user's data to another.

On Databricks Apps with user authorization, reads act with the signed-in user's token, so what a
read returns depends on that user's Unity Catalog and endpoint permissions. ``per_user_cache`` is
``st.cache_data`` with the acting user in the key whenever calls carry a user's token; reads made
with the app's own identity (locally, or with no forwarded token) are the same for everyone and
share one entry.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import streamlit as st

from services import connection

F = TypeVar("F", bound=Callable[..., Any])


def cache_scope() -> str:
    """Whose permissions this run's reads carry: the acting user with a token, else "" (the app's)."""
    identity = connection.acting_identity()
    if identity is not None and identity.access_token:
        return identity.user
    return ""


def per_user_cache(**options: Any) -> Callable[[F], F]:
    """``st.cache_data(**options)`` keyed additionally by ``cache_scope()``."""

    def decorate(fn: F) -> F:
        def scoped(scope: str, *args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        # Streamlit keys a cache by module, qualified name and source, and every wrapper has the same
        # source. Pages run as ``__main__``, so the file name keeps two pages' ``_versions`` apart.
        scoped.__module__ = f"{fn.__module__}:{fn.__code__.co_filename}"
        scoped.__qualname__ = fn.__qualname__
        cached = st.cache_data(**options)(scoped)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            return cached(cache_scope(), *args, **kwargs)

        call.clear = cached.clear  # type: ignore[attr-defined]
        return call  # type: ignore[return-value]

    return decorate
