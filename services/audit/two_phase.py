"""The one two-phase mechanism every audited change goes through: intent -> act -> complete, and on a
retry with the same request id, resume (complete once), return (already done) or close (superseded).

A kind of change (an alias move, a traffic split) is a ``TwoPhaseChange``: its steps as methods.
"""

from __future__ import annotations

import threading
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from services.audit.trail import Change, abandon
from services.errors import (
    BackendUnavailableError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from services.settings import Settings

C = TypeVar("C", bound=Change)
S = TypeVar("S")


class Path(StrEnum):
    """How ``run_two_phase`` got to its result."""

    APPLIED = "applied"  # recorded, changed and completed now
    ALREADY_DONE = "already done"  # a retry of a completed request: nothing changed again
    RECORD_COMPLETED = "record completed"  # the change had landed before a failure; only the record was completed
    RESUMED = "resumed"  # an interrupted request whose change had not landed: changed and completed once


@dataclass(frozen=True)
class TwoPhaseResult(Generic[C, S]):
    record: C
    state: S  # what the backend holds afterwards
    path: Path


class TwoPhaseChange(ABC, Generic[C, S]):
    """One kind of audited change, as the steps ``run_two_phase`` drives.

    ``S`` is the backend state the change is about (an alias's version, an endpoint's split).
    """

    lock_key: tuple[str, ...]
    settings: Settings | None

    @abstractmethod
    def find(self, request_id: str) -> C | None:
        """The record written earlier for ``request_id``, if any."""

    @abstractmethod
    def check(self) -> None:
        """Refuse a stale plan before anything is recorded (``ConflictError``)."""

    @abstractmethod
    def open(self, request_id: str) -> C:
        """Write the intent."""

    @abstractmethod
    def act(self, intent: C) -> S:
        """Make the change; returns what the backend then holds."""

    @abstractmethod
    def observe(self) -> S:
        """What the backend holds now."""

    @abstractmethod
    def complete(self, intent: C, state: S) -> C:
        """Complete the intent with the observed state."""

    @abstractmethod
    def holds_requested(self, intent: C, state: S) -> bool:
        """Whether ``state`` is what the intent asked for."""

    @abstractmethod
    def holds_before(self, intent: C, state: S) -> bool:
        """Whether ``state`` is what the intent found before changing."""

    def same_request(self, earlier: C) -> ValidationError | None:
        """Why ``earlier`` (found by request id) is not this change (None: it is)."""
        return None

    def refused(self, exc: Exception) -> Exception:
        """The error to raise when the backend refused the change (default: as raised)."""
        return exc

    @abstractmethod
    def not_recorded(self, exc: BackendUnavailableError) -> BackendUnavailableError:
        """The error when the intent could not be written (nothing changed)."""

    @abstractmethod
    def interrupted(self, intent: C, when: str, exc: Exception) -> BackendUnavailableError:
        """The error when the backend stopped answering after the intent was written."""

    @abstractmethod
    def superseded(self, earlier: C, state: S) -> ConflictError:
        """The error when a retry finds neither the state before nor the one asked for."""

    def describe(self, state: S) -> str:
        return str(state)


def run_two_phase(change: TwoPhaseChange[C, S], request_id: str | None) -> TwoPhaseResult[C, S]:
    """Record the intent, make the change, complete the record with what the backend then holds.

    With ``request_id`` (one per confirmation), a retry after a failure resumes the recorded
    attempt: it completes it exactly once, returns a completed one unchanged, and closes it without
    changing anything when someone else changed the state since.
    """
    with change_lock(*change.lock_key):
        if request_id:
            earlier = change.find(request_id)
            if earlier is not None:
                return _resume(change, earlier)
        change.check()
        try:
            intent = change.open(request_id or uuid.uuid4().hex)
        except BackendUnavailableError as exc:
            raise change.not_recorded(exc) from exc
        record, state = _act_and_complete(change, intent)
        return TwoPhaseResult(record, state, Path.APPLIED)


def _act_and_complete(change: TwoPhaseChange[C, S], intent: C) -> tuple[C, S]:
    try:
        state = change.act(intent)
    except (PermissionDeniedError, ValidationError, NotFoundError, ConflictError) as exc:
        # The backend answered and refused: nothing changed, so the intent leaves the trail.
        _quietly_abandon(intent, str(exc), change.settings)
        mapped = change.refused(exc)
        if mapped is exc:
            raise
        raise mapped from exc
    except BackendUnavailableError as exc:
        raise change.interrupted(intent, "while the change was being made", exc) from exc
    try:
        return change.complete(intent, state), state
    except BackendUnavailableError as exc:
        raise change.interrupted(intent, "after the change was made, before its audit record was completed",
                                 exc) from exc


def _resume(change: TwoPhaseChange[C, S], earlier: C) -> TwoPhaseResult[C, S]:
    """A retry of a recorded request: return it if complete, else complete it exactly once."""
    if (mismatch := change.same_request(earlier)) is not None:
        raise mismatch
    now = change.observe()
    if earlier.completed:
        return TwoPhaseResult(earlier, now, Path.ALREADY_DONE)
    if change.holds_requested(earlier, now):
        # The change landed before the failure; only the record is missing its completion.
        try:
            return TwoPhaseResult(change.complete(earlier, now), now, Path.RECORD_COMPLETED)
        except BackendUnavailableError as exc:
            raise change.interrupted(earlier, "while completing the audit record", exc) from exc
    if change.holds_before(earlier, now):
        record, state = _act_and_complete(change, earlier)
        return TwoPhaseResult(record, state, Path.RESUMED)
    # Someone else changed it since: completing would overwrite their change.
    _quietly_abandon(earlier, f"superseded: the backend held {change.describe(now)} on retry", change.settings)
    raise change.superseded(earlier, now)


def _quietly_abandon(intent: Change, why: str, settings: Settings | None) -> None:
    try:
        abandon(intent, why, settings=settings)
    except BackendUnavailableError:
        pass  # stays "interrupted" in the trail; a retry or the next read reconciles it


_locks: dict[tuple[str, ...], threading.Lock] = {}
_locks_guard = threading.Lock()


def change_lock(*key: str) -> threading.Lock:
    """One lock per changed thing (an alias, an endpoint): two operators in this process never
    interleave check, change and record on it."""
    with _locks_guard:
        return _locks.setdefault(tuple(key), threading.Lock())
