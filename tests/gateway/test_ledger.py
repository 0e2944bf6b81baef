"""The trace ledger: confirmed, overdue-then-late, and truly lost traces are told apart."""

from __future__ import annotations

import time

from gateway.ledger import TraceLedger


def test_late_traces_are_recovered_and_missing_ones_reported():
    stored: set[str] = set()
    ledger = TraceLedger(lambda ids: [i for i in ids if i in stored], lost_after_s=0.2, interval_s=0.05)
    try:
        for trace_id in ("a", "b", "c"):
            ledger.add(trace_id)
        stored.add("a")
        time.sleep(0.5)
        assert ledger.stats().lost == 2 and ledger.stats().recorded == 1
        stored.add("b")  # lands late: no longer lost
        time.sleep(0.3)
        stats = ledger.stats()
        assert (stats.produced, stats.recorded, stats.pending, stats.lost) == (3, 2, 0, 1)
        assert ledger.drain(0.3).lost == 1
    finally:
        ledger.close()


def test_backpressure_blocks_until_traces_are_confirmed():
    stored: set[str] = set()
    ledger = TraceLedger(lambda ids: [i for i in ids if i in stored], max_pending=2, interval_s=0.05)
    try:
        ledger.add("x")
        ledger.add("y")
        assert ledger.wait_for_room(timeout_s=0.2) is False
        stored.update({"x", "y"})
        assert ledger.wait_for_room(timeout_s=2) is True
    finally:
        ledger.close()
