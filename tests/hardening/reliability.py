"""Figures the hardening tests produce, written as JSON records that ``scripts/reliability`` renders.

Every record is one JSON file ``<dir>/<section>/<name>.json``::

    {"section": "bad_input", "name": "releases.promote",
     "figures": {"inputs tried": 60, "typed errors": 52, "accepted": 8, "state checks": 60},
     "detail": {"ValidationError": 40, "NotFoundError": 12},
     "notes": "..."}

``figures`` are the numbers shown as table columns (one table per section, columns are the
union of the section's figure names); ``detail`` is free-form and listed under the table.
Sections the renderer knows get a title and an explanation; any other section (faults, gateway
load, ...) is rendered the same way with its name as the title, so later tests only need to call
:func:`write_record`.

The folder is ``$AGENTOPS_RELIABILITY_DIR`` or ``test-artifacts/reliability`` by default.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parents[2]
_lock = threading.Lock()


def records_dir() -> Path:
    """Where records are written (created on demand)."""
    return Path(os.environ.get("AGENTOPS_RELIABILITY_DIR") or ROOT / "test-artifacts" / "reliability")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "record"


def write_record(section: str, name: str, figures: Mapping[str, int | float | str],
                 detail: Mapping[str, Any] | None = None, notes: str = "") -> Path:
    """Write (replace) one record; returns its path."""
    folder = records_dir() / _slug(section)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_slug(name)}.json"
    payload = {"section": section, "name": name, "figures": dict(figures), "detail": dict(detail or {}),
               "notes": notes}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_records(folder: Path | None = None) -> list[dict[str, Any]]:
    """Every record under the folder, sorted by section and name."""
    folder = folder or records_dir()
    records = []
    for path in sorted(folder.glob("*/*.json")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: (r.get("section", ""), r.get("name", "")))


@dataclass
class InputTally:
    """What a property test fed one entry point and how it answered, per example."""

    entry_point: str
    tried: int = 0
    accepted: int = 0
    state_checks: int = 0
    errors: Counter = field(default_factory=Counter)
    notes: str = ""

    def rejected(self, exc: BaseException) -> None:
        with _lock:
            self.tried += 1
            self.errors[type(exc).__name__] += 1

    def ok(self) -> None:
        with _lock:
            self.tried += 1
            self.accepted += 1

    def state_checked(self) -> None:
        with _lock:
            self.state_checks += 1

    def write(self) -> None:
        if not self.tried:
            return
        write_record(
            "bad_input", self.entry_point,
            {"inputs tried": self.tried, "typed errors": sum(self.errors.values()), "accepted": self.accepted,
             "state checks": self.state_checks},
            detail=dict(sorted(self.errors.items())), notes=self.notes,
        )


class Tallies:
    """One ``InputTally`` per entry point, written when the test module finishes."""

    def __init__(self) -> None:
        self._by_name: dict[str, InputTally] = {}

    def __call__(self, entry_point: str) -> InputTally:
        with _lock:
            return self._by_name.setdefault(entry_point, InputTally(entry_point))

    def write_all(self) -> None:
        for tally in self._by_name.values():
            tally.write()
