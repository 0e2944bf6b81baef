"""Review queues in MLflow: filling, claims under concurrency, completion, progress, conversation view."""

from __future__ import annotations

import threading
import time

import pytest

from services import feedback as fb
from services import review_queue as rq
from services.review_queue import items as rq_items
from services.errors import BackendUnavailableError, ConflictError, NotFoundError, ValidationError
from tests.services.test_feedback import make_traces

NOW_MS = time.time_ns() // 1_000_000


def _hand_picked(settings, ids, *, reviews: int = 1, name: str = "q"):
    spec = rq.QueueSpec(name, rq.QueueSource.HAND_PICKED, (), trace_ids=tuple(ids), reviews_per_item=reviews)
    return rq.create_queue(spec, "owner@example.com", settings)


def test_concurrent_reviewers_never_get_the_same_item(isolated_settings):
    _, _, ids = make_traces(isolated_settings, 6)
    queue = _hand_picked(isolated_settings, ids)
    claimed: dict[str, list[str]] = {}
    barrier = threading.Barrier(4)

    def reviewer(name: str) -> None:
        barrier.wait()
        got = []
        for _ in range(3):
            item = rq.next_item(queue, name, settings=isolated_settings)
            if item is None:
                break
            got.append(item.trace_id)
            rq.complete(queue, item.trace_id, name, isolated_settings)
        claimed[name] = got

    threads = [threading.Thread(target=reviewer, args=(f"r{i}@example.com",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handed = [t for got in claimed.values() for t in got]
    assert sorted(handed) == sorted(ids), "every item handed out exactly once"
    progress = rq.progress(queue, settings=isolated_settings)
    assert (progress.total, progress.completed, progress.remaining) == (6, 6, 0)
    assert progress.per_reviewer["reviewed"].sum() == 6


def test_claims_are_exclusive_resumable_and_expire(isolated_settings):
    _, _, ids = make_traces(isolated_settings, 2)
    queue = _hand_picked(isolated_settings, ids, reviews=2)
    first = rq.next_item(queue, "a@x", settings=isolated_settings)
    assert rq.next_item(queue, "a@x", settings=isolated_settings).trace_id == first.trace_id  # resumes own claim
    second = rq.next_item(queue, "b@x", settings=isolated_settings)
    assert second.trace_id != first.trace_id
    assert rq.next_item(queue, "c@x", settings=isolated_settings) is None  # both held
    with pytest.raises(ConflictError):
        rq.check_can_review(queue, first.trace_id, "b@x", isolated_settings)
    rq.release(queue, second.trace_id, "b@x", isolated_settings)
    assert rq.next_item(queue, "c@x", claim_seconds=-1, settings=isolated_settings).trace_id == second.trace_id
    # c's claim expired at once, so d can take the item; two reviews per item are needed.
    assert rq.next_item(queue, "d@x", settings=isolated_settings).trace_id == second.trace_id
    progress = rq.progress(queue, "a@x", settings=isolated_settings)
    assert (progress.completed, progress.in_progress, progress.mine) == (0, 2, 0)


def test_sources_fill_queues(isolated_settings):
    _, experiment_id, ids = make_traces(isolated_settings, 4)
    fb.submit_review(ids[1], fb.Review(thumbs_up=False), "user@x", settings=isolated_settings)
    window = dict(experiment_ids=(experiment_id,), agent="agent-a", start_ms=0, end_ms=NOW_MS + 60_000)
    negative = rq.create_queue(rq.QueueSpec("neg", rq.QueueSource.NEGATIVE_FEEDBACK, **window), "o@x", isolated_settings)
    assert [i.trace_id for i in rq.queue_items(negative, isolated_settings)] == [ids[1]]
    sample = rq.create_queue(rq.QueueSpec("sample", rq.QueueSource.SAMPLE, size=3, **window), "o@x", isolated_settings)
    assert len(rq.queue_items(sample, isolated_settings)) == 3
    # A whole float (a number widget's 2.0) is the whole number it holds.
    whole = rq.create_queue(rq.QueueSpec("whole", rq.QueueSource.SAMPLE, size=2.0, reviews_per_item=2.0, **window),
                            "o@x", isolated_settings)
    assert len(rq.queue_items(whole, isolated_settings)) == 2 and whole.reviews_per_item == 2
    import mlflow
    from mlflow.entities import AssessmentSource, AssessmentSourceType

    mlflow.log_feedback(trace_id=ids[2], name="expected_facts", value=False,
                        source=AssessmentSource(source_type=AssessmentSourceType.CODE, source_id="expected_facts"))
    low = rq.create_queue(rq.QueueSpec("low", rq.QueueSource.LOW_SCORES, scorer="expected_facts", **window), "o@x", isolated_settings)
    assert [i.trace_id for i in rq.queue_items(low, isolated_settings)] == [ids[2]]
    assert {q.name for q in rq.list_queues(isolated_settings)} == {"neg", "sample", "whole", "low"}


@pytest.mark.parametrize("spec, error, message", [
    (rq.QueueSpec("", rq.QueueSource.HAND_PICKED, (), trace_ids=("tr-1",)), ValidationError, "name"),
    (rq.QueueSpec("q", rq.QueueSource.HAND_PICKED, ()), ValidationError, "empty"),
    (rq.QueueSpec("q", rq.QueueSource.HAND_PICKED, (), trace_ids=("tr-doesnotexist",)), NotFoundError, "does not exist"),
    (rq.QueueSpec("q", rq.QueueSource.NEGATIVE_FEEDBACK, ("0",), start_ms=0, end_ms=NOW_MS), ValidationError, "empty"),
    # Sizes and reviewer counts that are not whole numbers are refused before any search.
    *[(rq.QueueSpec("q", rq.QueueSource.SAMPLE, ("0",), start_ms=0, end_ms=NOW_MS, size=size), ValidationError,
       "whole number of traces") for size in (float("nan"), float("inf"), 2.7, "ten", "5", True, None)],
    *[(rq.QueueSpec("q", rq.QueueSource.SAMPLE, ("0",), start_ms=0, end_ms=NOW_MS, reviews_per_item=n),
       ValidationError, "whole number of reviewers") for n in (1.5, float("nan"), "2")],
])
def test_bad_queues_store_nothing(isolated_settings, spec, error, message):
    make_traces(isolated_settings, 1)
    with pytest.raises(error, match=message):
        rq.create_queue(spec, "o@x", isolated_settings)
    assert rq.list_queues(isolated_settings) == []


def test_deleted_trace_is_skipped_and_refused(isolated_settings):
    client, experiment_id, ids = make_traces(isolated_settings, 2)
    queue = _hand_picked(isolated_settings, ids)
    client.delete_traces(experiment_id, trace_ids=[ids[0]])
    item = rq.next_item(queue, "a@x", settings=isolated_settings)
    assert item.trace_id == ids[1]
    with pytest.raises(NotFoundError, match="deleted meanwhile"):
        rq.check_can_review(queue, ids[0], "a@x", isolated_settings)
    with pytest.raises(NotFoundError):
        rq.conversation(ids[0], isolated_settings)


def test_conversation_reads_like_a_chat(isolated_settings):
    _, _, ids = make_traces(isolated_settings, 1)
    conv = rq.conversation(ids[0], isolated_settings)
    assert [(t.role, t.text) for t in conv.turns] == [("user", "What is 0?")]
    assert conv.answer == "It is 0."
    assert [c.name for c in conv.tool_calls] == ["lookup"] and '"q0"' in conv.tool_calls[0].arguments
    assert conv.agent == "agent-a" and conv.version == "1"


def test_labeling_session_is_databricks_only(isolated_settings):
    _, _, ids = make_traces(isolated_settings, 1)
    queue = _hand_picked(isolated_settings, ids)
    with pytest.raises(BackendUnavailableError, match="only on Databricks"):
        rq.databricks_labeling_session(queue, ids, ["a@x"], isolated_settings)


# --- claims across processes ---------------------------------------------------------------------


def _schedules(a_steps: int, b_steps: int):
    """Every order of two attempts' store operations (``True`` = A moves)."""
    from itertools import combinations

    total = a_steps + b_steps
    for a_turns in combinations(range(total), a_steps):
        yield [i in a_turns for i in range(total)]


def _interleave(make_a, make_b, schedule) -> tuple[object, object]:
    """Drive two step generators in ``schedule`` order (a finished one's turns pass to the other)."""
    gens = {True: make_a(), False: make_b()}
    results: dict[bool, object] = {}
    for turn in schedule + [True, False] * 8:
        who = turn if turn not in results else (not turn)
        if who in results:
            break
        try:
            next(gens[who])
        except StopIteration as done:
            results[who] = done.value
    return results[True], results[False]


def _naive_claim_steps(client, queue_id, trace_id, reviewer):
    """The earlier scheme: one shared claim tag, written if it looked free, then read back."""
    key = rq.CLAIM_TAG + queue_id
    free = key not in (client.get_trace(trace_id).info.tags or {})
    yield "read"
    if not free:
        return None
    client.set_trace_tag(trace_id, key, reviewer)
    yield "write"
    won = (client.get_trace(trace_id).info.tags or {}).get(key) == reviewer
    yield "read"
    return won or None


@pytest.mark.slow
def test_two_claim_attempts_in_every_interleaving_never_both_win(isolated_settings):
    client, _, (trace_id,) = make_traces(isolated_settings, 1)
    queue = _hand_picked(isolated_settings, [trace_id])
    qid = queue.queue_id

    def reset():
        for key in rq_items._tags(client, trace_id):
            if key.startswith(rq.CLAIM_TAG):
                client.delete_trace_tag(trace_id, key)

    outcomes = set()
    for schedule in _schedules(5, 5):  # announce, read, ticket, read, hold/withdraw
        reset()
        a, b = _interleave(lambda: rq.claim_steps(client, qid, trace_id, "a@x"),
                           lambda: rq.claim_steps(client, qid, trace_id, "b@x"), schedule)
        assert not (a and b), f"both attempts won under schedule {schedule}"
        holder = rq.queue_items(queue, isolated_settings)[0].claimed_by
        assert holder == ("a@x" if a else "b@x" if b else None)
        outcomes.add((bool(a), bool(b)))
    # Run one after the other, the first attempt wins; some overlaps give it to B, some to neither.
    assert {(True, False), (False, True)} <= outcomes

    # The checker is able to fail: the earlier single-tag scheme hands the item to both.
    double = 0
    for schedule in _schedules(3, 3):
        reset()
        a, b = _interleave(lambda: _naive_claim_steps(client, qid, trace_id, "a@x"),
                           lambda: _naive_claim_steps(client, qid, trace_id, "b@x"), schedule)
        double += bool(a and b)
    assert double > 0


def _drive(steps):
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def test_an_attempt_started_from_a_stale_read_does_not_reopen_a_finished_item(isolated_settings):
    client, _, (trace_id,) = make_traces(isolated_settings, 1)
    queue = _hand_picked(isolated_settings, [trace_id])
    assert rq.queue_items(queue, isolated_settings)[0].claimed_by is None  # what b saw before a finished
    item = rq.next_item(queue, "a@x", settings=isolated_settings)
    rq.complete(queue, item.trace_id, "a@x", isolated_settings)
    # b's attempt runs on its older read: the item looked free and unreviewed.
    assert _drive(rq.claim_steps(client, queue.queue_id, trace_id, "b@x", reviews_needed=1)) is None
    (after,) = rq.queue_items(queue, isolated_settings)
    assert (after.claimed_by, after.reviewed_by) == (None, ("a@x",))
    assert not [k for k in rq_items._tags(client, trace_id) if k.startswith(rq.CLAIM_TAG)], "the withdrawn attempt left no tag"


def _hammer(data_dir: str, queue_id: str, reviewer: str, barrier, results) -> None:
    """One OS process: claim, hold briefly, complete, until this reviewer has done every item."""
    import random as _random
    import time as _time

    from services import review_queue as queue_service
    from services._clients import configure_mlflow
    from services.settings import load_settings

    settings = configure_mlflow(load_settings({"AGENTOPS_DATA_DIR": data_dir}))
    queue = queue_service.get_queue(queue_id, settings)
    rng = _random.Random()
    log = []
    barrier.wait()
    deadline = _time.time() + 120
    while _time.time() < deadline:
        item = queue_service.next_item(queue, reviewer, settings=settings)
        if item is None:
            left = [i for i in queue_service.queue_items(queue, settings)
                    if reviewer not in i.reviewed_by and len(i.reviewed_by) < queue.reviews_per_item]
            if not left:
                break
            _time.sleep(rng.uniform(0.0, 0.03))
            continue
        start = _time.time()
        _time.sleep(rng.uniform(0.0, 0.02))
        end = _time.time()
        log.append((item.trace_id, reviewer, start, end))
        queue_service.complete(queue, item.trace_id, reviewer, settings)
    results.put(log)


@pytest.mark.slow
@pytest.mark.parametrize("reviews", [1, 4])
def test_reviewers_in_separate_processes_never_hold_the_same_item_at_once(isolated_settings, reviews, monkeypatch):
    import multiprocessing
    import sys

    # A spawned child first re-runs the parent's __main__ file. Under the whole suite that can be
    # app.py (run by earlier page tests), which must not run outside Streamlit: give the children none.
    main = sys.modules["__main__"]
    monkeypatch.setattr(main, "__spec__", None, raising=False)
    monkeypatch.delattr(main, "__file__", raising=False)

    _, _, ids = make_traces(isolated_settings, 3 if reviews > 1 else 6)
    reviewers = [f"p{i}@example.com" for i in range(4)]
    # With four reviews per item each item is handed out four times, so all four processes compete
    # for the same few items the whole time; with one, each item must go to exactly one of them.
    queue = _hand_picked(isolated_settings, ids, reviews=reviews)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(reviewers)), ctx.Queue()
    processes = [ctx.Process(target=_hammer, args=(str(isolated_settings.data_dir), queue.queue_id, r, barrier, results))
                 for r in reviewers]
    for process in processes:
        process.start()
    logs = [results.get(timeout=240) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    handed = sorted((entry for log in logs for entry in log), key=lambda e: (e[0], e[2]))
    if reviews == len(reviewers):
        assert sorted((t, r) for t, r, _, _ in handed) == sorted((t, r) for t in ids for r in reviewers), \
            "each reviewer got each item exactly once"
    else:
        assert sorted(t for t, _, _, _ in handed) == sorted(ids), "each item went to exactly one reviewer"
    for earlier, later in zip(handed, handed[1:]):
        if earlier[0] == later[0]:
            assert later[2] >= earlier[3], f"{later[1]} was handed {later[0]} while {earlier[1]} still held it"
    progress = rq.progress(queue, settings=isolated_settings)
    assert (progress.total, progress.completed) == (len(ids), len(ids))


def test_a_claim_in_the_earlier_single_tag_format_is_still_honoured(isolated_settings):
    client, _, ids = make_traces(isolated_settings, 1)
    queue = _hand_picked(isolated_settings, ids)
    client.set_trace_tag(ids[0], rq.CLAIM_TAG + queue.queue_id, f"old@x|{time.time() + 600:.3f}")
    assert rq.queue_items(queue, isolated_settings)[0].claimed_by == "old@x"
    assert rq.next_item(queue, "new@x", settings=isolated_settings) is None
    rq.complete(queue, ids[0], "old@x", isolated_settings)
    assert rq.next_item(queue, "new@x", settings=isolated_settings) is None  # one review per item: done
    assert rq.queue_items(queue, isolated_settings)[0].reviewed_by == ("old@x",)


# --- interrupted creation ------------------------------------------------------------------------


def _tagging_fails_at(monkeypatch, call: int | None):
    """Count trace-tag writes; the ``call``-th fails as a dead server does."""
    from mlflow import MlflowClient

    original = MlflowClient.set_trace_tag
    calls: list[str] = []

    def set_trace_tag(self, trace_id, key, value):
        calls.append(trace_id)
        if len(calls) == call:
            raise ConnectionError("Connection refused")
        return original(self, trace_id, key, value)

    monkeypatch.setattr(MlflowClient, "set_trace_tag", set_trace_tag)
    return calls


def _queue_runs(settings, name: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name(rq.REVIEW_EXPERIMENT)
    return [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get(rq.NAME_TAG) == name]


def test_an_interrupted_queue_is_not_listed_and_a_retry_finishes_it_once(isolated_settings, monkeypatch):
    _, _, ids = make_traces(isolated_settings, 4)
    spec = rq.QueueSpec("triage", rq.QueueSource.HAND_PICKED, (), trace_ids=tuple(ids))
    with monkeypatch.context() as patch:
        _tagging_fails_at(patch, 2)
        with pytest.raises(BackendUnavailableError) as failed:
            rq.create_queue(spec, "o@x", isolated_settings, request_id="req-1")
    message = str(failed.value)
    assert "only partly created (1 of 4" in message and "Create queue again" in message and "Traceback" not in message
    assert rq.list_queues(isolated_settings) == []  # the partial queue is not offered
    (partial,) = _queue_runs(isolated_settings, "triage")
    assert partial.data.tags[rq.KIND_TAG] == rq.PENDING_KIND
    with pytest.raises(NotFoundError, match="not finished"):
        rq.get_queue(partial.info.run_id, isolated_settings)

    with monkeypatch.context() as patch:
        written = _tagging_fails_at(patch, None)
        queue = rq.create_queue(spec, "o@x", isolated_settings, request_id="req-1")
        assert len(written) == 3  # only the traces still missing
        again = rq.create_queue(spec, "o@x", isolated_settings, request_id="req-1")
        assert len(written) == 3  # the same confirmation again: nothing written
    assert queue.queue_id == again.queue_id == partial.info.run_id
    assert [q.queue_id for q in rq.list_queues(isolated_settings)] == [queue.queue_id]
    assert sorted(i.trace_id for i in rq.queue_items(queue, isolated_settings)) == sorted(ids)
    assert rq.get_queue(queue.queue_id, isolated_settings) == queue
    assert len(_queue_runs(isolated_settings, "triage")) == 1
    # A new confirmation of the same spec is a second queue, as before.
    rq.create_queue(spec, "o@x", isolated_settings, request_id="req-2")
    assert len(rq.list_queues(isolated_settings)) == 2


def test_a_retry_without_a_request_id_finishes_an_interrupted_sample_to_its_size(isolated_settings, monkeypatch):
    _, experiment_id, ids = make_traces(isolated_settings, 6)
    spec = rq.QueueSpec("sample", rq.QueueSource.SAMPLE, (experiment_id,), start_ms=0, end_ms=NOW_MS + 60_000, size=3)
    with monkeypatch.context() as patch:
        first = _tagging_fails_at(patch, 2)
        with pytest.raises(BackendUnavailableError, match="only partly created"):
            rq.create_queue(spec, "o@x", isolated_settings)
    # Another user's identical spec is their own queue, not this unfinished one.
    theirs = rq.create_queue(spec, "someone@x", isolated_settings)
    # The retry draws a new sample but keeps the trace already added and tops up to the size.
    queue = rq.create_queue(spec, "o@x", isolated_settings)
    items = [i.trace_id for i in rq.queue_items(queue, isolated_settings)]
    assert len(items) == 3 and first[0] in items
    assert {q.queue_id for q in rq.list_queues(isolated_settings)} == {queue.queue_id, theirs.queue_id}
    assert len(_queue_runs(isolated_settings, "sample")) == 2
