"""The one two-phase mechanism every audited change goes through: intent -> act -> complete, and on a
retry with the same request id, resume (complete once), return (already done) or close (superseded).

A kind of change (an alias move, a traffic split, a deploy, a gate-rule edit) is a ``TwoPhaseChange``:
its steps as methods. ``settle`` closes an interrupted change whose confirmation is gone through the
same resume path, without making the change again.
"""

from __future__ import annotations

import threading
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Callable, Generic, Mapping, TypeVar

from services.audit.trail import Change, ChangeKind, abandon, complete_change, find_change, open_change
from services.errors import (
    BackendUnavailableError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from services.settings import Settings

S = TypeVar("S")


class Path(StrEnum):
    """How ``run_two_phase`` (or ``settle``) got to its result."""

    APPLIED = "applied"  # recorded, changed and completed now
    ALREADY_DONE = "already done"  # a retry of a completed request: nothing changed again
    RECORD_COMPLETED = "record completed"  # the change had landed before a failure; only the record was completed
    RESUMED = "resumed"  # an interrupted request whose change had not landed: changed and completed once
    NOT_APPLIED = "closed: not applied"  # settled: the change had not landed; the attempt is closed
    SUPERSEDED = "closed: superseded"  # settled: someone changed the state since; the attempt is closed


@dataclass(frozen=True)
class TwoPhaseResult(Generic[S]):
    record: Change
    state: S  # what the backend holds afterwards
    path: Path


class TwoPhaseChange(ABC, Generic[S]):
    """One kind of audited change, as the steps ``run_two_phase`` drives.

    ``S`` is the backend state the change is about (an alias's version, an endpoint's split).
    Finding, opening and completing the record are the same for every kind: a kind says what
    it changes (``kind``, ``target``), what the record holds before and asks for (``planned``)
    and how a state is recorded (``recorded``).
    """

    kind: ChangeKind
    target: Mapping[str, str]
    lock_key: tuple[str, ...]
    settings: Settings | None
    user: str = ""
    reason: str = ""
    action: str = ""
    detail: Mapping[str, Any] = {}

    def find(self, request_id: str) -> Change | None:
        """The record written earlier for ``request_id``, if any."""
        return find_change(self.kind, self.target, request_id, settings=self.settings)

    @abstractmethod
    def check(self) -> None:
        """Refuse a stale plan before anything is recorded (``ConflictError``)."""

    @abstractmethod
    def planned(self) -> tuple[Any, Any]:
        """What the record holds before the change and what it asks for (called after ``check``)."""

    def open(self, request_id: str) -> Change:
        """Write the intent."""
        before, requested = self.planned()
        return open_change(self.kind, self.target, action=self.action, user=self.user, reason=self.reason,
                           before=before, requested=requested, request_id=request_id, detail=self.detail,
                           settings=self.settings)

    @abstractmethod
    def act(self, intent: Change) -> S:
        """Make the change; returns what the backend then holds."""

    @abstractmethod
    def observe(self) -> S:
        """What the backend holds now."""

    @abstractmethod
    def recorded(self, state: S) -> Any:
        """``state`` as the record holds it (a version, a split by label, a list of rules)."""

    def outcome(self, state: S) -> str:
        return "applied"

    def complete(self, intent: Change, state: S, *, outcome: str | None = None) -> Change:
        """Complete the intent with the observed state."""
        return complete_change(intent, self.recorded(state), outcome=outcome or self.outcome(state),
                               settings=self.settings)

    def holds_requested(self, intent: Change, state: S) -> bool:
        """Whether ``state`` is what the intent asked for."""
        return self.recorded(state) == intent.requested

    def holds_before(self, intent: Change, state: S) -> bool:
        """Whether ``state`` is what the intent found before changing."""
        return self.recorded(state) == intent.before

    def same_request(self, earlier: Change) -> ValidationError | None:
        """Why ``earlier`` (found by request id) is not this change (None: it is)."""
        return None

    def refused(self, exc: Exception) -> Exception:
        """The error to raise when the backend refused the change (default: as raised)."""
        return exc

    def close_refused(self, intent: Change, exc: Exception) -> None:
        """Close the intent of a change the backend refused (default: it leaves the trail)."""
        _quietly_abandon(intent, str(exc), self.settings)

    def not_recorded(self, exc: BackendUnavailableError) -> BackendUnavailableError:
        """The error when the intent could not be written (nothing changed)."""
        return BackendUnavailableError(f"The MLflow backend stopped answering before {self.what()} was recorded. "
                                       f"Nothing changed{self.unchanged()}. Retry once the backend is back. ({exc})")

    def interrupted(self, intent: Change, when: str, exc: Exception) -> BackendUnavailableError:
        """The error when the backend stopped answering after the intent was written."""
        return BackendUnavailableError(
            f"The backend stopped answering {when} ({self.what(intent)}), so {self.uncertain}. It is recorded as "
            f"interrupted (request {intent.request_id}); retry the same confirmation once the backend is back and it "
            f"completes exactly once. ({exc})")

    # How the two errors above name the change; a kind may say it in its own words.
    uncertain = "it may or may not have changed"  # what a change cut off mid-way may have done

    def what(self, intent: Change | None = None) -> str:
        """The change in words: as recorded in ``intent``, or (None) as about to be recorded."""
        return f"{intent.action} on {intent.subject}" if intent is not None else f"the change of {self._subject()}"

    def unchanged(self) -> str:
        """What still holds when nothing changed, as ``: …`` (default: nothing to add)."""
        return ""

    def superseded(self, earlier: Change, state: S) -> ConflictError:
        """The error when a retry finds neither the state before nor the one asked for."""
        return ConflictError(
            f"{earlier.subject} now holds {self.describe(state)}, neither what it held before the interrupted change "
            "nor what it asked for: another change happened since. The interrupted attempt is closed without "
            "changing anything; review the new state and try again.")

    def describe(self, state: S) -> str:
        return str(self.recorded(state))

    def _subject(self) -> str:
        return self.target.get("endpoint") or "@".join(self.target.values())


def run_two_phase(change: TwoPhaseChange[S], request_id: str | None) -> TwoPhaseResult[S]:
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


def settle(record: Change, *, lock_key: tuple[str, ...], observe: Callable[[], S], recorded: Callable[[S], Any],
           by: str, settings: Settings | None = None) -> TwoPhaseResult[S]:
    """Settle an interrupted change whose confirmation is gone, through the resume path of ``run_two_phase``.

    Nothing is changed again: if the backend holds what the change asked for, the record is
    completed (``RECORD_COMPLETED``); otherwise the attempt is closed (``NOT_APPLIED`` when the
    backend holds what it held before, ``SUPERSEDED`` when someone changed it since).
    """
    change: _Observed[S] = _Observed(record, lock_key, observe, recorded, settings)
    with change_lock(*lock_key):
        current = change.find(record.request_id) if record.request_id else record
        if current is None:
            raise ConflictError(f"The interrupted change of {record.subject} was closed meanwhile; reload to see it.")
        return _resume(change, current, settled_by=by)


def _act_and_complete(change: TwoPhaseChange[S], intent: Change) -> tuple[Change, S]:
    try:
        state = change.act(intent)
    except (PermissionDeniedError, ValidationError, NotFoundError, ConflictError) as exc:
        # The backend answered and refused: nothing changed, so the intent is closed.
        change.close_refused(intent, exc)
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


def _resume(change: TwoPhaseChange[S], earlier: Change, *, settled_by: str | None = None) -> TwoPhaseResult[S]:
    """A retry (or settling) of a recorded request: return it if complete, else complete it exactly once."""
    if settled_by is None and (mismatch := change.same_request(earlier)) is not None:
        raise mismatch
    now = change.observe()
    if earlier.completed:
        return TwoPhaseResult(earlier, now, Path.ALREADY_DONE)
    if change.holds_requested(earlier, now):
        # The change landed before the failure; only the record is missing its completion.
        outcome = None if settled_by is None else f"applied (settled by {settled_by})"
        try:
            return TwoPhaseResult(change.complete(earlier, now, outcome=outcome), now, Path.RECORD_COMPLETED)
        except BackendUnavailableError as exc:
            raise change.interrupted(earlier, "while completing the audit record", exc) from exc
    before = change.holds_before(earlier, now)
    if settled_by is not None:
        why = "not applied" if before else "overwritten by a later change"
        abandon(earlier, f"settled by {settled_by}: {why}; it held {change.describe(now)}", settings=change.settings)
        return TwoPhaseResult(earlier, now, Path.NOT_APPLIED if before else Path.SUPERSEDED)
    if before:
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


class _Observed(TwoPhaseChange[S]):
    """A recorded change seen only through what the backend holds now (``settle``: never made again)."""

    def __init__(self, record: Change, lock_key: tuple[str, ...], observe: Callable[[], S],
                 recorded: Callable[[S], Any], settings: Settings | None) -> None:
        self.kind, self.target, self.lock_key, self.settings = record.kind, record.target, lock_key, settings
        self._observe, self._recorded = observe, recorded

    def check(self) -> None:
        raise NotImplementedError("settling never records a new change")

    def planned(self) -> tuple[Any, Any]:
        raise NotImplementedError("settling never records a new change")

    def act(self, intent: Change) -> S:
        raise NotImplementedError("settling never makes the change again")

    def observe(self) -> S:
        return self._observe()

    def recorded(self, state: S) -> Any:
        return self._recorded(state)


_locks: dict[tuple[str, ...], threading.Lock] = {}
_locks_guard = threading.Lock()


def change_lock(*key: str) -> threading.Lock:
    """One lock per changed thing (an alias, an endpoint): two operators in this process never
    interleave check, change and record on it."""
    with _locks_guard:
        return _locks.setdefault(tuple(key), threading.Lock())


def settled_message(done: TwoPhaseResult[Any], subject: str, holds: str) -> str:
    """What ``settle`` did, in a sentence for the operator (``holds``: what ``subject`` holds now)."""
    if done.path is Path.ALREADY_DONE:
        return "This change is already recorded as done."
    if done.path is Path.RECORD_COMPLETED:
        return f"{subject} holds what the change asked for ({holds}); it is now recorded as applied."
    why = "not applied" if done.path is Path.NOT_APPLIED else "overwritten by a later change"
    return f"{subject} holds {holds}: the interrupted change was {why}, and is closed."
