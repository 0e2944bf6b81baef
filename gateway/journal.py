"""The gateway's request journal: idempotency by request id, and a write-ahead copy of each trace.

Why: a served request's trace waits in memory (the ``TraceWriter``'s queue) for up to a batch
before the store has it. If the gateway process dies there (SIGKILL, OOM, power to the process),
the client already holds a 200 whose trace would be gone. And a client that lost the response in
the crash retries, which without a request id would serve and trace the same request twice.

What: one small SQLite database next to the store (``<data dir>/gateway-journal.sqlite``, WAL,
``synchronous=NORMAL``), one row per request that reached the model, written *before* the response
is sent:

* ``request_id`` (primary key) — the client's ``client_request_id`` (the body field Databricks
  Model Serving records in inference tables) or ``X-Request-Id`` header; the gateway makes one up
  when the client sent none and returns it in ``X-Request-Id``, so the client can retry with it;
* ``fingerprint`` — a hash of the endpoint and the request body: the same id with a different
  request is refused (409), never answered with another request's response;
* the response (status, body, headers naming arm and trace id), replayed to any retry;
* ``trace`` — the captured trace (pickled, exactly what the trace writer would send) while the
  store does not have it yet; cleared when the writer's transaction committed (``written``).

States: ``pending`` (the trace is held here until written), ``written``, ``failed`` (the writer gave
up after retries; the trace is in the spool file and counted in ``could_not_record``) and
``untracked`` (no captured trace: MLflow's exporter records it and the ledger polls the store).

At start the gateway resubmits every ``pending`` trace to the writer; writing is idempotent
(``start_trace`` merges, ``log_spans`` upserts), so a trace that did commit just before a crash
is not stored twice. Rows older than the idempotency window are deleted once they are no longer
pending; a retry after the window is a new request.

Guarantees and limits:

* a response was sent ⇒ its row (and trace) survived any crash of the gateway *process*; with
  ``synchronous=NORMAL`` an OS crash or power loss may lose the last commits (as the store's own
  SQLite may);
* one trace per request id: a retry of a journaled request is answered from the journal
  (``X-AgentOps-Replayed: true``) without calling the model or tracing again;
* a request that died before its row was committed never got a response; its retry calls the
  model again (model calls are at-least-once, traces and responses exactly once);
* only traces the gateway writes itself (the batched writer, on a SQL store) are held here; on
  other stores (``untracked``) MLflow's exporter queues the trace in memory, so a crash keeps the
  answer and the idempotency but may lose that trace, and the next process cannot tell;
* one gateway process per data folder is the supported setup; two sharing a journal still never
  journal an id twice (the primary key decides, the loser's trace is discarded and the winner's
  answer returned), but both may have called the model.

The pickled traces are the gateway's own data in the user's data folder (the same trust as the
SQLite store next to it); the journal is never read from anywhere else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from services._mlflow_internal.span_batch import CapturedTrace

_logger = logging.getLogger(__name__)

PENDING, WRITTEN, FAILED, UNTRACKED = "pending", "written", "failed", "untracked"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id  TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    endpoint    TEXT NOT NULL,
    arm         TEXT NOT NULL,
    trace_id    TEXT NOT NULL,
    status      INTEGER NOT NULL,
    body        TEXT NOT NULL,
    headers     TEXT NOT NULL,
    trace       BLOB,
    state       TEXT NOT NULL,
    created     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_trace_id ON requests (trace_id);
CREATE INDEX IF NOT EXISTS requests_state ON requests (state);
CREATE INDEX IF NOT EXISTS requests_created ON requests (created);
"""


@dataclass(frozen=True)
class JournalEntry:
    """One journaled request: what was answered, and by which arm and trace."""

    request_id: str
    fingerprint: str
    endpoint: str
    arm: str
    trace_id: str
    status: int
    body: Any
    headers: dict[str, str]
    state: str


@dataclass(frozen=True)
class JournalStats:
    requests: int  # journaled requests in the idempotency window (and older ones still pending)
    pending: int  # traces held here, not yet confirmed in the store
    written: int
    failed: int  # the writer gave up on them (spooled and counted in could_not_record)
    untracked: int  # recorded by MLflow's exporter, confirmed by polling


def fingerprint(endpoint: str, body: Any) -> str:
    """A stable hash of the endpoint and request body (key order does not matter)."""
    canonical = json.dumps({"endpoint": endpoint, "body": body}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class RequestJournal:
    """Rows of served requests in one SQLite file; safe to call from many threads."""

    def __init__(self, path: Path, *, window_s: float = 3_600.0) -> None:
        self.path = path
        self.window_s = window_s
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection, serialised by a lock: each statement is short, and the sqlite3 module
        # releases the GIL while SQLite works. isolation_level=None: every statement commits.
        self._conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._expired_at = time.monotonic()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes
            self._conn.executescript(_SCHEMA)
        self.expire()

    # --- requests ---------------------------------------------------------------------------------

    def lookup(self, request_id: str) -> JournalEntry | None:
        """The journaled answer for this request id, if any."""
        with self._lock:
            row = self._conn.execute(
                "SELECT request_id, fingerprint, endpoint, arm, trace_id, status, body, headers, state "
                "FROM requests WHERE request_id = ?", (request_id,),
            ).fetchone()
        return None if row is None else _entry(row)

    def record(self, entry: JournalEntry, captured: CapturedTrace | None) -> tuple[JournalEntry, bool]:
        """Journal a served request (with its trace while unwritten); (the entry that holds the id, inserted?).

        When another gateway journaled the same id first, its entry is returned and nothing is
        written: the caller answers with it and discards its own trace.
        """
        blob = None
        state = UNTRACKED
        if captured is not None:
            blob = pickle.dumps(captured, protocol=pickle.HIGHEST_PROTOCOL)
            state = PENDING
        try:
            with self._lock:
                self._conn.execute(
                    "INSERT INTO requests (request_id, fingerprint, endpoint, arm, trace_id, status, body, headers,"
                    " trace, state, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (entry.request_id, entry.fingerprint, entry.endpoint, entry.arm, entry.trace_id, entry.status,
                     json.dumps(entry.body, default=str), json.dumps(entry.headers), blob, state, time.time()),
                )
        except sqlite3.IntegrityError:
            existing = self.lookup(entry.request_id)
            if existing is not None:
                return existing, False
            raise
        return JournalEntry(**{**entry.__dict__, "state": state}), True

    # --- traces -----------------------------------------------------------------------------------

    def mark_written(self, trace_ids: list[str]) -> None:
        """The store has these traces: drop their copies (and, every ten minutes, expired rows)."""
        self._set_state(trace_ids, WRITTEN)
        if time.monotonic() - self._expired_at > 600:
            self.expire()

    def mark_failed(self, trace_ids: list[str]) -> None:
        """The writer gave up on these (they are spooled): stop holding them for replay."""
        self._set_state(trace_ids, FAILED)

    def unwritten(self, chunk: int = 200) -> Iterator[CapturedTrace]:
        """Every trace still pending, oldest first (read in chunks, unpickled lazily)."""
        last = 0
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT rowid, trace_id, trace FROM requests WHERE state = ? AND rowid > ? ORDER BY rowid LIMIT ?",
                    (PENDING, last, chunk),
                ).fetchall()
            if not rows:
                return
            for rowid, trace_id, blob in rows:
                last = rowid
                try:
                    yield pickle.loads(blob)
                except Exception:  # noqa: BLE001 - an unreadable row is reported, never retried forever
                    _logger.exception("journaled trace %s cannot be read; counted as not recorded", trace_id)
                    self._set_state([trace_id], FAILED)

    def stats(self) -> JournalStats:
        with self._lock:
            counts = dict(self._conn.execute("SELECT state, count(*) FROM requests GROUP BY state").fetchall())
        return JournalStats(sum(counts.values()), counts.get(PENDING, 0), counts.get(WRITTEN, 0),
                            counts.get(FAILED, 0), counts.get(UNTRACKED, 0))

    def expire(self) -> int:
        """Forget requests older than the window (never a pending one); how many were deleted."""
        self._expired_at = time.monotonic()
        with self._lock:
            cursor = self._conn.execute("DELETE FROM requests WHERE created < ? AND state != ?",
                                        (time.time() - self.window_s, PENDING))
        return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _set_state(self, trace_ids: list[str], state: str) -> None:
        for start in range(0, len(trace_ids), 500):
            part = trace_ids[start : start + 500]
            marks = ",".join("?" * len(part))
            with self._lock:
                self._conn.execute(f"UPDATE requests SET state = ?, trace = NULL WHERE trace_id IN ({marks})",
                                   (state, *part))


def _entry(row: tuple) -> JournalEntry:
    request_id, fp, endpoint, arm, trace_id, status, body, headers, state = row
    return JournalEntry(request_id, fp, endpoint, arm, trace_id, int(status), json.loads(body), json.loads(headers), state)
