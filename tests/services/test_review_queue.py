"""Review queues in MLflow: filling, claims under concurrency, completion, progress, conversation view."""

from __future__ import annotations

import threading
import time

import pytest

from services import feedback as fb
from services import review_queue as rq
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
    import mlflow
    from mlflow.entities import AssessmentSource, AssessmentSourceType

    mlflow.log_feedback(trace_id=ids[2], name="expected_facts", value=False,
                        source=AssessmentSource(source_type=AssessmentSourceType.CODE, source_id="expected_facts"))
    low = rq.create_queue(rq.QueueSpec("low", rq.QueueSource.LOW_SCORES, scorer="expected_facts", **window), "o@x", isolated_settings)
    assert [i.trace_id for i in rq.queue_items(low, isolated_settings)] == [ids[2]]
    assert {q.name for q in rq.list_queues(isolated_settings)} == {"neg", "sample", "low"}


@pytest.mark.parametrize("spec, error, message", [
    (rq.QueueSpec("", rq.QueueSource.HAND_PICKED, (), trace_ids=("tr-1",)), ValidationError, "name"),
    (rq.QueueSpec("q", rq.QueueSource.HAND_PICKED, ()), ValidationError, "empty"),
    (rq.QueueSpec("q", rq.QueueSource.HAND_PICKED, (), trace_ids=("tr-doesnotexist",)), NotFoundError, "does not exist"),
    (rq.QueueSpec("q", rq.QueueSource.NEGATIVE_FEEDBACK, ("0",), start_ms=0, end_ms=NOW_MS), ValidationError, "empty"),
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
