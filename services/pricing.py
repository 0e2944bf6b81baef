"""Price table per LLM model, stored with the team's data (record ``prices`` of ``services.team_state``).

MLflow records a cost on LLM spans whose model is in its catalog; for other models the
monitoring service estimates cost as tokens x these prices. Prices are US dollars per one
million tokens; cached input tokens are priced separately (they are part of the input tokens).
An embedded store's former ``<data_dir>/pricing.json`` is migrated into the tracking store once.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from services import roles, team_state
from services.errors import ValidationError
from services.settings import Settings

PRICING_FILE = "pricing.json"


@dataclass(frozen=True)
class ModelPrice:
    """Dollars per million tokens for one model."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float

    def cost(self, input_tokens: float, output_tokens: float, cached_input_tokens: float = 0.0) -> float:
        """Dollar cost of a token count (cached tokens are a subset of the input tokens)."""
        cached = min(cached_input_tokens, input_tokens)
        return (
            (input_tokens - cached) * self.input_per_mtok
            + cached * self.cached_input_per_mtok
            + output_tokens * self.output_per_mtok
        ) / 1_000_000


# Public list prices (USD per 1M tokens) at the time of writing; users edit them on the page.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o-mini": ModelPrice(0.15, 0.60, 0.075),
    "gpt-4o": ModelPrice(2.50, 10.00, 1.25),
    "gpt-4.1": ModelPrice(2.00, 8.00, 0.50),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60, 0.10),
    "claude-3-5-sonnet": ModelPrice(3.00, 15.00, 0.30),
}


def _path(settings: Settings) -> Path:
    return settings.data_dir / PRICING_FILE


def validate_prices(raw: Mapping[str, Any]) -> dict[str, ModelPrice]:
    """Check a mapping model -> {input_per_mtok, output_per_mtok, cached_input_per_mtok}."""
    prices: dict[str, ModelPrice] = {}
    for model, entry in raw.items():
        name = str(model).strip()
        if not name:
            raise ValidationError("A price row has no model name; give every row the model's name.")
        if name in prices:
            raise ValidationError(f"Model {name!r} appears twice in the price table; keep one row.")
        if isinstance(entry, ModelPrice):
            entry = asdict(entry)
        if not isinstance(entry, Mapping):
            raise ValidationError(f"Prices of {name!r} must be a mapping of the three per-million prices.")
        values = {}
        for key in ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok"):
            value = entry.get(key)
            if key == "cached_input_per_mtok" and (value is None or value == ""):
                value = entry.get("input_per_mtok")  # no cache discount unless given
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValidationError(
                    f"{key} of {name!r} is {value!r}; enter a number of dollars per million tokens."
                ) from None
            if not math.isfinite(number) or number < 0:
                raise ValidationError(f"{key} of {name!r} is {number}; prices must be zero or more.")
            values[key] = number
        prices[name] = ModelPrice(**values)
    return prices


PRICES_KEY = "prices"


def _parse_file(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValidationError(
            f"The price table {path} cannot be read ({exc}). Fix or delete the file to start from the defaults."
        ) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
        raise ValidationError(f"The price table {path} has no 'models' mapping. Delete it to start from the defaults.")
    return _payload(validate_prices(raw["models"]))


def _payload(prices: Mapping[str, ModelPrice]) -> dict[str, Any]:
    return {"unit": "USD per 1M tokens", "models": {m: asdict(p) for m, p in sorted(prices.items())}}


def _record(settings: Settings) -> Any:
    record = team_state.read(PRICES_KEY, settings)
    if record is None:
        record = team_state.migrate_file(PRICES_KEY, _path(settings), _parse_file, settings)
    return record


def load_prices(settings: Settings) -> dict[str, ModelPrice]:
    """The team's price table; the defaults when none was saved yet."""
    record = _record(settings)
    if record is None:
        return dict(DEFAULT_PRICES)
    models = record.value.get("models") if isinstance(record.value, dict) else None
    if not isinstance(models, dict):
        raise ValidationError("The stored price table has no 'models' mapping; save the table again.")
    return validate_prices(models)


def prices_version(settings: Settings) -> int:
    """The stored version of the price table (0: never saved), for a conflict-checked save."""
    record = _record(settings)
    return record.version if record else 0


def save_prices(settings: Settings, prices: Mapping[str, Any], identity: Any = None, *,
                expected_version: int | None = None) -> dict[str, ModelPrice]:
    """Validate and store the price table with the team's data; return what was stored.

    With ``identity`` (pages should pass it), editing prices needs the admin role, like other settings.
    With ``expected_version`` (the version the editor loaded), a concurrent edit gives ``ConflictError``.
    """
    checked = validate_prices(prices)
    if identity is not None:
        roles.enforce(identity, roles.Action.EDIT_RULES, settings)
    if expected_version is None:
        expected_version = prices_version(settings)
    team_state.write(PRICES_KEY, _payload(checked), expected_version=expected_version,
                     user=getattr(identity, "user", None) or "unknown", settings=settings,
                     note=f"{len(checked)} model prices")
    return checked
