"""Accounting for gateway traces: every request's trace is confirmed stored, or counted lost.

MLflow exports traces asynchronously and its queue discards traces when it overflows
(shared/MLFLOW-NOTES.md). The gateway therefore tracks each trace id it produced until the
store has it, applies backpressure when too many are still unconfirmed, and counts (and logs)
any trace that never arrives instead of losing it silently.

A writer that stores traces itself (the gateway's batched ``TraceWriter``) reports the outcome:
``confirm`` once its transaction committed, ``fail`` when it gave up, so such traces need no
polling (``add(..., poll=False)``); they are polled only if they become overdue.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LedgerStats:
    produced: int
    recorded: int
    pending: int
    lost: int  # not stored: overdue, or reported failed by the writer
    failed: int = 0  # of ``lost``: traces the writer reported it could not record


class TraceLedger:
    """Pending trace ids, confirmed in batches by ``exists(ids) -> ids found``."""

    def __init__(
        self,
        exists: Callable[[list[str]], Iterable[str]],
        *,
        max_pending: int = 2_000,
        lost_after_s: float = 120.0,
        interval_s: float = 0.5,
    ) -> None:
        self._exists = exists
        self._max_pending = max_pending
        self._lost_after_s = lost_after_s
        self._interval_s = interval_s
        self._pending: dict[str, float] = {}
        self._unpolled: set[str] = set()  # pending, but a writer will confirm or fail them
        # Overdue: not stored within ``lost_after_s``. Still checked every round, so a trace that
        # lands late under heavy load moves to recorded; what stays here is reported as lost.
        self._overdue: set[str] = set()
        self._failed: set[str] = set()
        self._produced = self._recorded = 0
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="trace-ledger", daemon=True)
        self._thread.start()

    def wait_for_room(self, timeout_s: float) -> bool:
        """Block while too many traces are unconfirmed (backpressure); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while len(self._pending) >= self._max_pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True

    def add(self, trace_id: str, *, poll: bool = True) -> None:
        """Track a produced trace; ``poll=False`` when a writer will ``confirm`` or ``fail`` it."""
        with self._lock:
            self._pending[trace_id] = time.monotonic()
            self._produced += 1
            if not poll:
                self._unpolled.add(trace_id)

    def confirm(self, trace_ids: list[str]) -> None:
        """Count traces as recorded: the writer's transaction with them committed."""
        with self._lock:
            self._mark_recorded(trace_ids)
            self._lock.notify_all()

    def fail(self, trace_ids: list[str], reason: str) -> None:
        """Count traces as lost now (the writer gave up on them); still recovered if they land."""
        with self._lock:
            for trace_id in trace_ids:
                self._unpolled.discard(trace_id)
                if self._pending.pop(trace_id, None) is not None:
                    self._overdue.add(trace_id)
                    self._failed.add(trace_id)
            self._lock.notify_all()
        _logger.error("%d traces could not be recorded (%s)", len(trace_ids), reason)

    def stats(self) -> LedgerStats:
        with self._lock:
            return LedgerStats(self._produced, self._recorded, len(self._pending), len(self._overdue),
                               len(self._failed))

    def drain(self, timeout_s: float, *, wait_for_lost: bool = True) -> LedgerStats:
        """Confirm pending traces until none is left (nor lost, unless told not to wait) or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.confirm_once()
            stats = self.stats()
            if not stats.pending and not (stats.lost and wait_for_lost):
                break
            time.sleep(self._interval_s)
        return self.stats()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def confirm_once(self) -> None:
        with self._lock:
            ids = [i for i in self._pending if i not in self._unpolled] + list(self._overdue)
        if not ids:
            return
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            try:
                found.update(self._exists(ids[start : start + 500]))
            except Exception:  # noqa: BLE001 - the store may be briefly busy; try next round
                _logger.warning("could not confirm traces; will retry", exc_info=True)
                return
        now = time.monotonic()
        with self._lock:
            self._mark_recorded(found)
            for trace_id, since in list(self._pending.items()):
                if now - since > self._lost_after_s:
                    del self._pending[trace_id]
                    self._unpolled.discard(trace_id)
                    self._overdue.add(trace_id)
                    _logger.error("trace %s not stored after %.0f s (counted as lost)", trace_id, self._lost_after_s)
            self._lock.notify_all()

    def _mark_recorded(self, trace_ids: Iterable[str]) -> None:
        for trace_id in trace_ids:
            self._unpolled.discard(trace_id)
            if self._pending.pop(trace_id, None) is not None:
                self._recorded += 1
            elif trace_id in self._overdue:
                self._overdue.discard(trace_id)
                self._failed.discard(trace_id)
                self._recorded += 1
                _logger.warning("trace %s was stored late (no longer counted as lost)", trace_id)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.confirm_once()
