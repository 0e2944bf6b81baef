"""The trace writer: batches, backpressure, retries, and nothing given up on silently."""

from __future__ import annotations

import json
import threading
import time

from mlflow.entities import Trace, TraceData, TraceInfo, TraceLocation, TraceState

from gateway.ledger import TraceLedger
from gateway.trace_writer import TraceWriter
from services._mlflow_internal.span_batch import CapturedTrace


def _trace(i: int) -> CapturedTrace:
    info = TraceInfo(trace_id=f"tr-{i:032x}", trace_location=TraceLocation.from_experiment_id("1"),
                     request_time=0, state=TraceState.OK, execution_duration=1)
    return CapturedTrace(Trace(info, TraceData(spans=[])))


def test_traces_queued_during_a_write_go_out_together_in_the_next_batch():
    release = threading.Event()
    batches: list[list[str]] = []

    def write(traces):
        batches.append([t.trace_id for t in traces])
        release.wait(5)
        return {}

    writer = TraceWriter(write, max_batch=50)
    try:
        assert writer.submit(_trace(0))
        while not batches:
            time.sleep(0.01)
        for i in range(1, 31):  # arrive while the first batch is being written
            assert writer.submit(_trace(i))
        release.set()
        assert writer.flush(5)
    finally:
        writer.close()
    assert [len(b) for b in batches] == [1, 30]
    stats = writer.stats()
    assert (stats.written, stats.failed, stats.batches, stats.largest_batch) == (31, 0, 2, 30)


def test_a_full_queue_blocks_the_producer_then_gives_the_trace_up_loudly(tmp_path):
    release = threading.Event()
    reported: list[list[str]] = []
    writer = TraceWriter(lambda traces: release.wait(5) and {}, max_queue=2, max_batch=1,
                         on_failed=lambda ids, why: reported.append(ids), spool_dir=tmp_path)
    try:
        writer.submit(_trace(0))  # taken by the writer, which then blocks
        time.sleep(0.1)
        assert writer.submit(_trace(1), timeout_s=1) and writer.submit(_trace(2), timeout_s=1)
        started = time.monotonic()
        assert writer.submit(_trace(3), timeout_s=0.3) is False
        assert time.monotonic() - started >= 0.3
        assert reported == [[_trace(3).trace_id]]
        release.set()
        assert writer.submit(_trace(4), timeout_s=5)
        assert writer.flush(5)
    finally:
        writer.close()
    stats = writer.stats()
    assert (stats.written, stats.failed, stats.spooled) == (4, 1, 1)


def test_failures_are_retried_then_spooled_and_reported(tmp_path):
    attempts: list[list[str]] = []

    def write(traces):
        attempts.append([t.trace_id for t in traces])
        if len(attempts) == 1:
            raise RuntimeError("database is locked")
        return {t.trace_id: "experiment deleted" for t in traces if t.trace_id.endswith("2")}

    reported: list[tuple[list[str], str]] = []
    writer = TraceWriter(write, max_batch=10, attempts=3, retry_delay_s=0.01,
                         on_failed=lambda ids, why: reported.append((ids, why)), spool_dir=tmp_path)
    try:
        for i in range(3):
            writer.submit(_trace(i))
        assert writer.flush(5)
    finally:
        writer.close()
    bad = f"tr-{2:032x}"
    # One whole-batch error, then only the trace that keeps failing is retried.
    assert attempts[0] == attempts[1] and len(attempts[0]) == 3 and attempts[2] == [bad]
    assert reported == [([bad], "experiment deleted")]
    stats = writer.stats()
    assert (stats.written, stats.failed, stats.spooled, stats.retries) == (2, 1, 1, 2)
    (spool,) = tmp_path.glob("*.jsonl")
    assert [json.loads(line)["info"]["trace_id"] for line in spool.read_text().splitlines()] == [bad]


def test_ledger_counts_reported_failures_as_lost_at_once_and_recovers_late_arrivals():
    stored: set[str] = set()
    ledger = TraceLedger(lambda ids: [i for i in ids if i in stored], interval_s=0.05)
    try:
        for trace_id in ("a", "b"):
            ledger.add(trace_id)
        ledger.fail(["b"], "experiment deleted")
        stats = ledger.stats()
        assert (stats.pending, stats.lost, stats.failed) == (1, 1, 1)
        stored.update({"a", "b"})  # e.g. replayed from the spool
        time.sleep(0.3)
        stats = ledger.stats()
        assert (stats.recorded, stats.pending, stats.lost, stats.failed) == (2, 0, 0, 0)
    finally:
        ledger.close()
