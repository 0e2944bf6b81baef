"""Empty states: suggest the demo seeder only where it can run (an empty store)."""

from __future__ import annotations

from services import overview
from services.errors import AgentOpsError
from services.settings import Settings

SEED_COMMAND = "\n\n```\npython -m demo.seed\n```"


def store_is_empty(settings: Settings) -> bool:
    """Whether the store is empty (the seeder refuses any other); False when it cannot be read."""
    try:
        return overview.store_is_empty(settings)
    except AgentOpsError:
        return False


def seed_hint(settings: Settings, lead: str, otherwise: str) -> str:
    """``lead`` + the seeder command on an empty store, ``lead`` + ``otherwise`` on one with content."""
    if store_is_empty(settings):
        return f"{lead} or fill the store with the demo workspace:{SEED_COMMAND}"
    return f"{lead} {otherwise}"
