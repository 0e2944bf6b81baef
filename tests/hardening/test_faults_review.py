"""Faults while reviewing: the MLflow server is killed part-way through a review submission, a dataset
save or curation, or a queue's creation, restarted on the same store, and the caller's error, the
stored state and a retry are checked.

Like ``test_faults.py``: a real ``mlflow server`` (``RestartableServer``) on one port and one SQLite
store, killed deterministically by wrapping one client method (SIGKILL right before the chosen call
goes out, or right after it returned), so the restart is the same backend coming back. Each retry is
the same action by the same user; a second retry must change nothing.
"""

from __future__ import annotations

import time
import uuid

import pytest
from mlflow import MlflowClient
from mlflow.tracing.client import TracingClient

from services import datasets
from services import feedback as fb
from services import review_queue as rq
from services.errors import BackendUnavailableError
from tests.hardening.mlflow_restart import count_calls, kill_at_call, restartable_backend
from tests.hardening.page_session import app_page
from tests.hardening.reliability import write_record
from tests.services.test_feedback import QUESTIONS, make_traces

pytestmark = pytest.mark.slow

REVIEWER = "rev@example.com"
REVIEW = fb.Review(thumbs_up=False, rating=2, comment="Missed the point", corrected_answer="It is zero.",
                   labels={"tone": "rude", "note": "fine"})
# In the order submit_review writes them: the feedback, then the corrected answer (an expectation).
REVIEW_VALUES = {"thumbs_up": False, "rating": 2, "comment": "Missed the point", "tone": "rude", "note": "fine",
                 "expected_response": "It is zero."}
ROWS = [{"inputs": {"question": f"Where is order {i}?"}, "expectations": {"expected_facts": [f"order {i}"]}}
        for i in range(5)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with restartable_backend(tmp_path_factory.mktemp("review-faults-server")) as (srv, settings):
        _, experiment_id, ids = make_traces(settings, 12, name="review-faults")
        traces = iter(ids)
        yield srv, settings, experiment_id, traces


def _kill_at(monkeypatch, srv: RestartableServer, cls, method: str, call: int, when: str = "before") -> dict:
    """SIGKILL the server at the ``call``-th call of ``cls.method`` (before it goes out, or after it returned)."""
    return kill_at_call(monkeypatch, srv.kill, cls, method, call=call, when=when)


def _current(settings, trace_id: str) -> list[tuple[str, object]]:
    """The reviewer's currently valid assessments as (name, value), one entry per assessment."""
    history = fb.assessment_history(trace_id, settings)
    mine = history[history["valid"] & (history["reviewer"] == REVIEWER)]
    return sorted(zip(mine["name"], mine["value"]), key=lambda nv: nv[0])


def _restart(srv: RestartableServer) -> None:
    assert not srv.alive()
    srv.start()


# --- review submissions ------------------------------------------------------------------------

REVIEW_POINTS = [
    # (point, which log_assessment call is killed, through a queue)
    ("between two feedback values", 3, False),
    ("before the corrected answer", 6, False),
    ("after the review, before the queue marks the item done", None, True),
]


@pytest.mark.parametrize(("point", "fatal_call", "queued"), REVIEW_POINTS, ids=[p[0].replace(" ", "-") for p in REVIEW_POINTS])
def test_server_killed_mid_review_then_retry_completes_exactly_once(server, monkeypatch, point, fatal_call, queued):
    srv, settings, _, traces = server
    if not srv.alive():
        srv.start()
    trace_id = next(traces)
    queue = None
    if queued:
        queue = rq.create_queue(rq.QueueSpec(f"faults {uuid.uuid4().hex[:6]}", rq.QueueSource.HAND_PICKED, (),
                                             trace_ids=(trace_id,)), "owner@example.com", settings)
        assert rq.next_item(queue, REVIEWER, settings=settings).trace_id == trace_id

    def submit():
        if queue is not None:
            return rq.submit_queue_review(queue, trace_id, REVIEW, REVIEWER, questions=QUESTIONS, settings=settings)
        return fb.submit_review(trace_id, REVIEW, REVIEWER, questions=QUESTIONS, settings=settings)

    with monkeypatch.context() as patch:
        if queued:  # complete() writes the item's done tag: the first trace-tag write after the review
            calls = _kill_at(patch, srv, MlflowClient, "set_trace_tag", 1)
        else:
            calls = _kill_at(patch, srv, TracingClient, "log_assessment", fatal_call)
        began = time.monotonic()
        with pytest.raises(fb.ReviewPartlySavedError) as failed:
            submit()
        error_s = time.monotonic() - began
    error = failed.value
    message = str(error)
    assert isinstance(error, BackendUnavailableError) and not srv.alive()
    assert "Traceback" not in message and "\n" not in message
    assert "Retrying is safe" in message and "submit the review again" in message, message
    if queued:
        assert calls["n"] == 1 and (error.stored, error.total) == (6, 6)
        assert "review was saved, but the queue could not mark the item done" in message, message
        stored_before = 6
    else:
        assert calls["n"] == fatal_call and (error.stored, error.total) == (fatal_call - 1, 6)
        assert f"only partly saved: {fatal_call - 1} of the 6" in message, message
        stored_before = fatal_call - 1

    _restart(srv)
    # After the restart: exactly what the caller was told was stored is there, each value once.
    after_restart = _current(settings, trace_id)
    expected_first = sorted(list(REVIEW_VALUES.items())[:stored_before], key=lambda nv: nv[0])
    assert after_restart == expected_first
    if queued:
        (item,) = rq.queue_items(queue, settings)
        assert item.reviewed_by == () and item.claimed_by == REVIEWER  # not marked done; still the reviewer's

    # The retry (the same review by the same reviewer) writes only what is missing ...
    with monkeypatch.context() as patch:
        writes = count_calls(patch, TracingClient, "log_assessment")
        began = time.monotonic()
        written = submit()
        retry_s = time.monotonic() - began
        retry_writes = len(writes)
        # ... and a second retry writes nothing.
        second = submit()
    assert written == retry_writes == 6 - stored_before and second == 0 and len(writes) == retry_writes
    current = _current(settings, trace_id)
    names = [n for n, _ in current]
    assert sorted(names) == sorted(REVIEW_VALUES) and len(names) == len(set(names))  # one current value each
    assert dict(current) == REVIEW_VALUES
    assert len(fb.assessment_history(trace_id, settings)) == 6  # nothing written twice
    assert fb.current_review(trace_id, REVIEWER, settings) == REVIEW
    if queued:
        (item,) = rq.queue_items(queue, settings)
        assert item.reviewed_by == (REVIEWER,) and item.claimed_by is None

    write_record("faults", f"review submission: server killed {point}", {
        "error": type(error).__name__,
        "error after (s)": round(error_s, 2),
        "restart (s)": round(srv.starts[-1], 1),
        "judgements stored before the kill": stored_before,
        "written on retry": retry_writes,
        "written on second retry": second,
        "current values per field": max(names.count(n) for n in names),
        "retry (s)": round(retry_s, 2),
        "state agrees": "yes",
    }, detail={"message": message[:300]},
        notes="mlflow server SIGKILLed at this step of a six-judgement review (feedback values, label answers, a "
              "corrected answer), restarted on the same SQLite store; the retry is the same review by the same "
              "reviewer." + (" Through the review queue (submit_queue_review)." if queued else ""))


# --- evaluation datasets -----------------------------------------------------------------------

DATASET_POINTS = ["save_dataset", "curate_to_dataset"]


def _named(name: str) -> list:
    from mlflow.genai.datasets import search_datasets

    return [d for d in search_datasets(filter_string=f"name = '{name}'", max_results=10) if d.name == name]


@pytest.mark.parametrize("entry", DATASET_POINTS)
def test_server_killed_between_dataset_creation_and_merge_then_retry_completes_exactly_once(server, monkeypatch, entry):
    srv, settings, experiment_id, traces = server
    if not srv.alive():
        srv.start()
    name = f"faults-{entry}-{uuid.uuid4().hex[:6]}"
    if entry == "save_dataset":
        rows = ROWS

        def save() -> str:
            return datasets.save_dataset(name, rows, experiment_id, settings)
    else:
        reviewed = [next(traces) for _ in range(3)]
        for number, trace_id in enumerate(reviewed):
            fb.submit_review(trace_id, fb.Review(corrected_answer=f"Answer {number}."), REVIEWER, settings=settings)
        rows = fb.curation_rows(reviewed, settings)[0]

        def save() -> str:
            return fb.curate_to_dataset(reviewed, name, experiment_id, settings).dataset_id

    with monkeypatch.context() as patch:
        calls = _kill_at(patch, srv, MlflowClient, "create_dataset", 1, when="after")
        began = time.monotonic()
        with pytest.raises(BackendUnavailableError) as failed:
            save()
        error_s = time.monotonic() - began
    message = str(failed.value)
    assert calls["n"] == 1 and not srv.alive()
    assert "Traceback" not in message and "\n" not in message
    assert f"{name!r} was created, but its rows may not all be stored" in message and "again" in message, message
    assert "instead of making a second one" in message and "not added twice" in message, message

    _restart(srv)
    # After the restart: the dataset exists, holds no rows, is marked unfinished and is not offered.
    (left,) = _named(name)
    assert len(left.to_df()) == 0
    assert datasets._pending(left) is not None
    assert name not in {d.name for d in datasets.list_datasets([experiment_id], settings).datasets}

    with monkeypatch.context() as patch:
        creates = count_calls(patch, MlflowClient, "create_dataset")
        began = time.monotonic()
        dataset_id = save()
        retry_s = time.monotonic() - began
        again = save()
    assert dataset_id == again == left.dataset_id and creates == []
    (finished,) = _named(name)
    assert datasets._pending(finished) is None
    stored = datasets.load_dataset_rows(name, settings)
    questions = sorted(r["inputs"]["question"] for r in stored)
    assert questions == sorted(r["inputs"]["question"] for r in rows)  # every row exactly once
    assert {r["inputs"]["question"]: r["expectations"] for r in stored} == {
        r["inputs"]["question"]: r["expectations"] for r in rows}
    assert name in {d.name for d in datasets.list_datasets([experiment_id], settings).datasets}

    write_record("faults", f"review dataset: server killed between {entry}'s dataset creation and record merge", {
        "error": type(failed.value).__name__,
        "error after (s)": round(error_s, 2),
        "restart (s)": round(srv.starts[-1], 1),
        "datasets after restart": 1,
        "rows after restart": 0,
        "datasets created on retry": len(creates),
        "rows after retry": len(stored),
        "rows expected": len(rows),
        "retry (s)": round(retry_s, 2),
        "state agrees": "yes",
    }, detail={"message": message[:300]},
        notes=f"mlflow server SIGKILLed right after {entry} created the evaluation dataset, before its rows were "
              "merged; restarted on the same SQLite store. The retry (same name, same rows) finishes that dataset; a "
              "second retry changes nothing.")


# --- review queues -----------------------------------------------------------------------------

QUEUE_POINTS = [
    # (point, method, which call is killed, traces tagged when killed)
    ("mid-way through tagging its traces", "set_trace_tag", 3, 2),
    ("before the queue is marked complete", "set_tag", 1, 4),
]


def _queue_runs(settings, name: str) -> list:
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(rq.REVIEW_EXPERIMENT)
    return [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get(rq.NAME_TAG) == name]


def _tagged(settings, experiment_id: str, queue_id: str) -> list[str]:
    client = MlflowClient(settings.tracking_uri)
    found = client.search_traces(locations=[experiment_id], filter_string=f"tag.`{rq.QUEUE_TAG}{queue_id}` = '1'",
                                 include_spans=False)
    return sorted(t.info.trace_id for t in found)


@pytest.mark.parametrize(("point", "method", "fatal_call", "tagged_before"), QUEUE_POINTS,
                         ids=[p[0].replace(" ", "-") for p in QUEUE_POINTS])
def test_server_killed_mid_queue_creation_then_retry_completes_exactly_once(server, monkeypatch, point, method,
                                                                            fatal_call, tagged_before):
    srv, settings, experiment_id, _ = server
    if not srv.alive():
        srv.start()
    name = f"faults queue {uuid.uuid4().hex[:6]}"
    ids = _some_traces(settings, experiment_id)
    spec = rq.QueueSpec(name, rq.QueueSource.HAND_PICKED, (experiment_id,), trace_ids=tuple(ids))
    request_id = uuid.uuid4().hex

    with monkeypatch.context() as patch:
        calls = _kill_at(patch, srv, MlflowClient, method, fatal_call)
        began = time.monotonic()
        with pytest.raises(BackendUnavailableError) as failed:
            rq.create_queue(spec, "owner@example.com", settings, request_id=request_id)
        error_s = time.monotonic() - began
    message = str(failed.value)
    assert calls["n"] == fatal_call and not srv.alive()
    assert "Traceback" not in message and "\n" not in message
    assert f"only partly created ({tagged_before} of 4 trace(s) added)" in message, message
    assert "not listed until it is complete" in message and "Create queue again" in message, message

    _restart(srv)
    # After the restart: one unfinished queue run holding the traces tagged so far, and no listed queue.
    (partial,) = _queue_runs(settings, name)
    assert partial.data.tags[rq.KIND_TAG] == rq.PENDING_KIND
    assert len(_tagged(settings, experiment_id, partial.info.run_id)) == tagged_before
    assert name not in {q.name for q in rq.list_queues(settings)}

    with monkeypatch.context() as patch:
        tags = count_calls(patch, MlflowClient, "set_trace_tag")
        runs = count_calls(patch, MlflowClient, "create_run")
        began = time.monotonic()
        queue = rq.create_queue(spec, "owner@example.com", settings, request_id=request_id)
        retry_s = time.monotonic() - began
        retry_tags = len(tags)
        again = rq.create_queue(spec, "owner@example.com", settings, request_id=request_id)
    assert queue.queue_id == again.queue_id == partial.info.run_id and runs == []
    assert retry_tags == 4 - tagged_before and len(tags) == retry_tags  # the second retry wrote nothing
    assert [q.queue_id for q in rq.list_queues(settings) if q.name == name] == [queue.queue_id]
    assert len(_queue_runs(settings, name)) == 1
    assert _tagged(settings, experiment_id, queue.queue_id) == sorted(ids)
    assert sorted(i.trace_id for i in rq.queue_items(queue, settings)) == sorted(ids)
    assert rq.get_queue(queue.queue_id, settings).name == name

    write_record("faults", f"review queue: server killed {point}", {
        "error": type(failed.value).__name__,
        "error after (s)": round(error_s, 2),
        "restart (s)": round(srv.starts[-1], 1),
        "traces tagged before the kill": tagged_before,
        "listed after restart": 0,
        "queue runs created on retry": len(runs),
        "trace tags written on retry": retry_tags,
        "trace tags written on second retry": len(tags) - retry_tags,
        "queues listed": 1,
        "retry (s)": round(retry_s, 2),
        "state agrees": "yes",
    }, detail={"message": message[:300]},
        notes="mlflow server SIGKILLed at this step of review_queue.create_queue (4 hand-picked traces), restarted on "
              "the same SQLite store; the retry is the same spec by the same user with the page's request id.")


def _some_traces(settings, experiment_id: str) -> list[str]:
    """Four of the store's traces (a trace can be in several queues)."""
    client = MlflowClient(settings.tracking_uri)
    return sorted(t.info.trace_id for t in client.search_traces(locations=[experiment_id], include_spans=False))[:4]


# --- the Review page -----------------------------------------------------------------------------


def test_the_review_page_says_a_review_was_partly_saved_and_keeps_the_answers(isolated_settings, monkeypatch):
    """A submission interrupted after two judgements: the page says so, the form keeps the answers, and
    pressing Submit again stores the rest exactly once."""


    _, experiment_id, ids = make_traces(isolated_settings, 1, name="review-page")
    MlflowClient(tracking_uri=isolated_settings.tracking_uri, registry_uri=isolated_settings.registry_uri) \
        .create_registered_model("agent-a", tags={"agentops.experiment_id": experiment_id})
    fb.set_label_questions("agent-a", QUESTIONS, isolated_settings)
    queue = rq.create_queue(rq.QueueSpec("triage", rq.QueueSource.HAND_PICKED, (), agent="agent-a",
                                         trace_ids=tuple(ids)), "owner@example.com", isolated_settings)
    monkeypatch.setattr("components.context.request_headers", lambda: {"X-Forwarded-Email": REVIEWER})
    with app_page(isolated_settings, monkeypatch, "pages/review.py") as app:
        assert not app.exception
        next(b for b in app.button if b.label == "Review next item").click().run()
        app.radio(key="review_form_thumbs").set_value(":material/thumb_down: Bad answer")
        app.select_slider(key="review_form_rating").set_value("2")
        app.text_area(key="review_form_comment").input("Missed the point")
        app.text_area(key="review_form_corrected").input("It is zero.")
        app.selectbox(key="review_form_label_tone").select("rude")
        app.text_input(key="review_form_label_note").input("fine")

        original = TracingClient.log_assessment
        calls = {"n": 0}

        def dies_at_the_third(self, trace_id, assessment):
            calls["n"] += 1
            if calls["n"] >= 3:
                raise ConnectionError("Connection refused")
            return original(self, trace_id, assessment)

        with monkeypatch.context() as patch:
            patch.setattr(TracingClient, "log_assessment", dies_at_the_third)
            next(b for b in app.button if b.label == "Submit review").click().run()
        assert not app.exception
        errors = [e.value for e in app.error]
        assert any("The submission was interrupted" in e and "only partly saved: 2 of the 6" in e
                   and "submit the review again" in e and "Retrying is safe" in e for e in errors), errors
        assert not any("Traceback" in e for e in errors)
        assert any("Your answers are still in the form" in i.value for i in app.info)
        assert not app.success
        # The form still holds what the reviewer typed.
        assert app.text_area(key="review_form_comment").value == "Missed the point"
        assert app.text_area(key="review_form_corrected").value == "It is zero."
        assert app.selectbox(key="review_form_label_tone").value == "rude"
        assert app.radio(key="review_form_thumbs").value == ":material/thumb_down: Bad answer"
        assert len(_current(isolated_settings, ids[0])) == 2

        # Submit again: the rest is stored, each value once, and the item is done.
        next(b for b in app.button if b.label == "Submit review").click().run()
        assert not app.exception and not app.error, [e.value for e in app.error]
        assert any("Review stored" in s.value for s in app.success)
        assert dict(_current(isolated_settings, ids[0])) == REVIEW_VALUES
        assert len(fb.assessment_history(ids[0], isolated_settings)) == 6
        assert rq.progress(queue, REVIEWER, isolated_settings).mine == 1
        write_record("faults", "review submission: the Review page after a part-saved submission", {
            "judgements stored before the failure": 2,
            "message says partly saved": "yes",
            "answers kept in the form": "yes",
            "stored after Submit again": 6,
            "assessments in the trace": 6,
        }, notes="AppTest of pages/review.py: the third assessment write fails as a dead server does; the page "
                 "names how much was stored and what to do, keeps the form, and Submit again completes it once.")
