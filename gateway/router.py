"""Choosing the arm (served version) of an endpoint for one request."""

from __future__ import annotations

import hashlib
import random

from services.serving import Endpoint, ServedVersion

_BUCKETS = 10_000


def _bucket(endpoint_name: str, key: str) -> int:
    digest = hashlib.sha256(f"{endpoint_name}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % _BUCKETS


def choose_arm(endpoint: Endpoint, *, sticky_key: str | None, rng: random.Random) -> ServedVersion:
    """The served version for a request: by weight, or by a stable hash of ``sticky_key``.

    Sticky assignment maps the key to a fixed point in [0, 1) and walks the cumulative
    weights, so a user keeps their arm while the split is unchanged, and a changed split
    moves only the users whose point now falls in another arm's range.
    """
    routes = [r for r in endpoint.routes if r.percentage > 0]
    if not routes:
        raise LookupError(f"Endpoint {endpoint.name!r} routes no traffic.")
    if endpoint.sticky and sticky_key:
        point = _bucket(endpoint.name, sticky_key) / _BUCKETS * 100
    else:
        point = rng.random() * 100
    served = {s.entity_name: s for s in endpoint.served}
    cumulative = 0.0
    for route in routes:
        cumulative += route.percentage
        if point < cumulative:
            return served[route.entity_name]
    return served[routes[-1].entity_name]
