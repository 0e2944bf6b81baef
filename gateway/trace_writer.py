"""A bounded queue of captured traces, written to the store in batches by one thread.

Requests hand their finished trace to ``submit``; one writer thread takes whatever has queued
(up to ``max_batch``) and writes it with one call of ``write`` (the store's bulk path), so the
batch grows by itself under load. When traffic is light it lingers up to ``linger_s`` to gather
a few traces per write: each write has a fixed cost (a commit), and a writer that wakes for
every single trace takes the interpreter lock from requests more often. Nothing is dropped
silently:

* the queue is bounded: ``submit`` blocks while it is full (backpressure on the request that
  produced the trace) and returns False only after ``timeout_s``, for the caller to count;
* ``write`` returns the traces it could not write (id -> error) or raises for the whole batch;
  those are retried with backoff (the write is idempotent), and what still fails is spooled as
  JSON lines when a spool directory is set, logged with its ids, and reported to ``on_failed``;
* what was written is reported to ``on_written`` (the trace ledger), after the commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from services._mlflow_internal.span_batch import CapturedTrace

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriterStats:
    queued: int
    in_flight: int
    written: int
    failed: int
    spooled: int
    batches: int
    largest_batch: int
    retries: int


class TraceWriter:
    """Writes ``CapturedTrace`` objects in batches with ``write(traces)``."""

    def __init__(
        self,
        write: Callable[[Sequence[CapturedTrace]], Mapping[str, str]],
        *,
        max_queue: int = 2_000,
        max_batch: int = 200,
        linger_s: float = 0.1,
        attempts: int = 4,
        retry_delay_s: float = 0.2,
        on_written: Callable[[list[str]], None] | None = None,
        on_failed: Callable[[list[str], str], None] | None = None,
        spool_dir: Path | None = None,
    ) -> None:
        self._write = write
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._urgent = False  # flush() or close() waiting: write without lingering
        self._attempts = attempts
        self._retry_delay_s = retry_delay_s
        self._on_written = on_written
        self._on_failed = on_failed
        self._spool_dir = spool_dir
        self._queue: deque[CapturedTrace] = deque()
        self._in_flight = 0
        self._written = self._failed = self._spooled = self._batches = self._largest = self._retries = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="trace-writer", daemon=True)
        self._thread.start()

    def submit(self, trace: CapturedTrace, *, timeout_s: float = 30.0) -> bool:
        """Queue a trace; blocks while the queue is full.

        False if no room came within the timeout (or the writer is closed): the trace is then
        given up on like a failed write (spooled, logged, reported to ``on_failed``).
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self._queue) >= self._max_queue and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            accepted = len(self._queue) < self._max_queue and not self._closed
            if accepted:
                self._queue.append(trace)
                # Wake the writer only when it has something new to do: a first trace to wait
                # on, or a full batch to stop lingering for.
                if len(self._queue) == 1 or len(self._queue) >= self._max_batch:
                    self._cond.notify_all()
        if not accepted:
            self._give_up([trace], "the writer is closed" if self._closed else f"the queue stayed full for {timeout_s:g} s")
        return accepted

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything submitted so far was written or given up; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._urgent = True
                self._cond.notify_all()
                self._cond.wait(remaining)
        return True

    def close(self, timeout_s: float = 60.0) -> None:
        """Write what is queued, then stop the thread."""
        self.flush(timeout_s)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def stats(self) -> WriterStats:
        with self._cond:
            return WriterStats(len(self._queue), self._in_flight, self._written, self._failed, self._spooled,
                               self._batches, self._largest, self._retries)

    # --- the writer thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                linger_until = time.monotonic() + self._linger_s
                while len(self._queue) < self._max_batch and not (self._urgent or self._closed):
                    remaining = linger_until - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
                self._in_flight = len(batch)
                if not self._queue:
                    self._urgent = False
                self._cond.notify_all()  # room for blocked submitters
            try:
                failed, error = self._write_with_retries(batch)
                if self._on_written is not None and len(failed) < len(batch):
                    failed_ids = {t.trace_id for t in failed}
                    self._on_written([t.trace_id for t in batch if t.trace_id not in failed_ids])
                if failed:
                    self._give_up(failed, error)
            except Exception:  # noqa: BLE001 - the thread must outlive any one batch
                _logger.exception("the trace writer failed on a batch of %d traces", len(batch))
                failed = batch
                with self._cond:
                    self._failed += len(batch)
            with self._cond:
                self._in_flight = 0
                self._written += len(batch) - len(failed)
                self._batches += 1
                self._largest = max(self._largest, len(batch))
                self._cond.notify_all()

    def _write_with_retries(self, batch: list[CapturedTrace]) -> tuple[list[CapturedTrace], str]:
        """The traces still unwritten after all attempts, and the last error."""
        remaining, error = batch, ""
        for attempt in range(self._attempts):
            try:
                failures = self._write(remaining)
            except Exception as exc:  # noqa: BLE001 - any store error: retry, then count
                failures = {t.trace_id: f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                            for t in remaining}
            if not failures:
                return [], ""
            remaining = [t for t in remaining if t.trace_id in failures]
            error = next(iter(failures.values()))
            _logger.warning("writing %d of %d traces failed (attempt %d/%d): %s", len(remaining), len(batch),
                            attempt + 1, self._attempts, error)
            if attempt + 1 < self._attempts:
                with self._cond:
                    self._retries += 1
                time.sleep(self._retry_delay_s * (2**attempt))
        return remaining, error

    def _give_up(self, batch: list[CapturedTrace], error: str) -> None:
        ids = [t.trace_id for t in batch]
        with self._cond:
            self._failed += len(batch)
        spooled = self._spool(batch)
        _logger.error("%d traces could not be recorded (%s)%s: %s", len(ids), error,
                      f"; spooled to {spooled}" if spooled else "", ", ".join(ids))
        if self._on_failed is not None:
            try:
                self._on_failed(ids, error)
            except Exception:  # noqa: BLE001 - already logged above with the ids
                _logger.exception("on_failed raised")

    def _spool(self, batch: list[CapturedTrace]) -> Path | None:
        if self._spool_dir is None:
            return None
        try:
            self._spool_dir.mkdir(parents=True, exist_ok=True)
            path = self._spool_dir / f"unrecorded-traces-{time.strftime('%Y%m%d')}.jsonl"
            with path.open("a", encoding="utf-8") as handle:
                for captured in batch:
                    handle.write(captured.trace.to_json() + "\n")
        except Exception:  # noqa: BLE001 - the traces are still counted and logged
            _logger.exception("could not spool unrecorded traces")
            return None
        with self._cond:
            self._spooled += len(batch)
        return path
