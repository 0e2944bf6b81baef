"""Bad input over reviews and feedback values, label questions, review queues, curation and
evaluation requests: typed errors with a message and the store unchanged."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services import eval_jobs, evaluations
from services import feedback as fb
from services import review_queue as rq
from services.errors import ValidationError
from tests.hardening.conftest import AGENT, DATASET, attempt
from tests.hardening.strategies import ALIASES, FILTER_TEXT, NAMES, VERSIONS, one_bad_field

pytestmark = pytest.mark.slow

# --- reviews ---------------------------------------------------------------------------------

_REVIEW = one_bad_field(
    {"thumbs_up": st.sampled_from([True, False, None]), "rating": st.sampled_from([None, 1, 3, 5]),
     "comment": st.sampled_from(["", "fine", "<script>alert(1)</script>", "🙂 ok"]),
     "corrected_answer": st.sampled_from(["", "It shipped on Monday."]),
     "labels": st.sampled_from([{}, {"tone": "ok"}, {"note": "short"}, {"tone": "rude", "note": ""}])},
    {"thumbs_up": st.one_of(st.text(max_size=4), st.integers(-1, 2), st.floats()),
     "rating": st.one_of(st.integers(-3, 9), st.floats(), st.booleans(), st.text(max_size=3)),
     "comment": st.one_of(st.just("x" * (fb.MAX_COMMENT + 1)), st.text(max_size=20)),
     "corrected_answer": st.one_of(st.just("y" * (fb.MAX_ANSWER + 1)), st.just("   ")),
     "labels": st.dictionaries(st.sampled_from(["tone", "note", "unknown", "", "thumbs_up"]),
                               st.one_of(st.sampled_from(["ok", "rude", "meh", ""]), st.integers(), st.none(),
                                         st.just("z" * (fb.MAX_COMMENT + 1))), max_size=2)},
)
_TRACE = st.one_of(st.sampled_from(["first", "second"]),
                   st.one_of(st.sampled_from(["tr-" + "f" * 32, "", " ", "tr-1 2", "tr-'x'"]), st.text(max_size=12)))
_REVIEWER = st.one_of(st.sampled_from(["rev@example.com", "other@example.com", "révi@example.com"]),
                      st.sampled_from(["", " ", "unknown"]))


@settings(max_examples=60)
@given(review=_REVIEW, trace=_TRACE, reviewer=_REVIEWER)
@example(review={"thumbs_up": None, "rating": None, "comment": "", "corrected_answer": "", "labels": {}},
         trace="first", reviewer="rev@example.com")
@example(review={"thumbs_up": True, "rating": 6, "comment": "", "corrected_answer": "", "labels": {}},
         trace="first", reviewer="rev@example.com")
def test_reviews_are_checked_before_anything_is_stored(hard_store, tallies, review, trace, reviewer):
    trace_id = {"first": hard_store.trace_ids[0], "second": hard_store.trace_ids[1]}.get(trace, trace)
    value = fb.Review(**review)
    written, exc = attempt(tallies("feedback.submit_review"), hard_store,
                           lambda: fb.submit_review(trace_id, value, reviewer, questions=hard_store.questions,
                                                    settings=hard_store.settings, identity=hard_store.identity),
                           what=f"submit_review({review}, {trace_id!r}, {reviewer!r})")
    if exc is None:
        # What the reviewer now holds on the trace is what they submitted.
        current = fb.current_review(trace_id, reviewer, hard_store.settings)
        if value.thumbs_up is not None:
            assert current.thumbs_up is value.thumbs_up
        if value.rating is not None:
            assert current.rating == value.rating
        if value.comment.strip():
            assert current.comment == value.comment.strip()


_QUESTION = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.sampled_from(["tone", "accuracy_2", "Tone", "2nd", "thumbs_up", "", "a" * 51]),
                      st.text(max_size=8), st.integers()),
    "prompt": st.one_of(st.sampled_from(["Is it right?", "", "  "]), st.text(max_size=10), st.none()),
    "kind": st.one_of(st.sampled_from(["choice", "text", "CHOICE", "number"]), st.integers(), st.lists(st.text())),
    "options": st.one_of(st.lists(st.sampled_from(["yes", "no", "", " ", "yes"]), max_size=3), st.text(max_size=4),
                         st.lists(st.integers(), max_size=2)),
    "extra": st.just(1),
})
_GOOD_QUESTIONS = st.lists(st.fixed_dictionaries({
    "name": st.sampled_from(["tone", "accuracy_2", "safe"]), "prompt": st.sampled_from(["Is it right?", "Tone?"]),
    "options": st.sampled_from([["yes", "no"], ["ok", "rude", "meh"]])}), max_size=3, unique_by=lambda q: q["name"])
_QUESTIONS_TEXT = st.one_of(
    _GOOD_QUESTIONS.map(json.dumps),
    st.lists(_QUESTION, max_size=3).map(json.dumps),
    st.lists(_QUESTION, min_size=21, max_size=22).map(json.dumps),
    st.text(max_size=30),
    st.sampled_from(["", "null", "{}", "[1, 2]", '{"name": "x"}', "[" * 3000]),
)


@settings(max_examples=120)
@given(text=_QUESTIONS_TEXT.filter(lambda t: not t.startswith("[" * 3000)), agent=st.one_of(st.just(AGENT), NAMES))
@example(text='[{"name": "tone", "prompt": "Tone?", "options": ["ok", "rude"]}]', agent=AGENT)
def test_label_questions_are_checked_before_they_are_stored(hard_store, tallies, text, agent):
    tally = tallies("feedback.parse_questions + set_label_questions")

    def parse_and_store():
        questions = fb.parse_questions(text)
        fb.set_label_questions(agent, questions, hard_store.settings)
        return questions

    questions, exc = attempt(tally, hard_store, parse_and_store, what=f"label questions {text[:60]!r}")
    if exc is None:
        assert fb.label_questions(agent, hard_store.settings) == questions
        fb.set_label_questions(agent, hard_store.questions, hard_store.settings)  # the other tests' questions


def test_deeply_nested_label_questions_are_refused(hard_store):
    with pytest.raises(ValidationError):
        fb.parse_questions("[" * 3000)


@settings(max_examples=40)
@given(agent=st.one_of(st.none(), st.just(AGENT), FILTER_TEXT), start=st.integers(-10**13, 10**13),
       span=st.integers(-10**10, 10**10))
def test_feedback_charts_refuse_bad_agents_and_read_without_writing(hard_store, tallies, agent, start, span):
    attempt(tallies("feedback.human_feedback"), hard_store,
            lambda: fb.human_feedback((hard_store.experiment_id,), start, start + span, agent=agent,
                                      settings=hard_store.settings),
            what=f"human_feedback({agent!r})", changes_when_accepted=False)


@settings(max_examples=30)
@given(case=one_bad_field(
    {"traces": st.just("reviewed"), "name": st.text(alphabet="abcdef", min_size=4, max_size=8).map(lambda n: f"cur-{n}"),
     "experiment": st.just("store")},
    # Unknown experiments are left to the xfail test below until curation checks them.
    {"traces": st.sampled_from(["none", "unreviewed", "missing"]),
     "name": st.one_of(st.sampled_from(["", "  ", DATASET]), NAMES), "experiment": st.sampled_from([""])},
))
def test_curation_refuses_bad_targets_and_keeps_datasets_as_they_were(hard_store, tallies, case):
    traces = {"reviewed": [hard_store.trace_ids[0]], "none": [], "unreviewed": [hard_store.trace_ids[3]],
              "missing": ["tr-" + "0" * 32]}[case["traces"]]
    if case["traces"] == "reviewed":
        fb.submit_review(hard_store.trace_ids[0], fb.Review(corrected_answer="Order 0 shipped on Monday."),
                         "curator@example.com", settings=hard_store.settings)
    experiment = hard_store.experiment_id if case["experiment"] == "store" else case["experiment"]
    attempt(tallies("feedback.curate_to_dataset"), hard_store,
            lambda: fb.curate_to_dataset(traces, case["name"], experiment, hard_store.settings),
            what=f"curate_to_dataset({case})")


# --- review queues ---------------------------------------------------------------------------

_SPEC = one_bad_field(
    {"name": st.sampled_from(["triage", "weekly review", "revue 🙂"]),
     "source": st.sampled_from(list(rq.QueueSource)),
     "agent": st.sampled_from([None, AGENT]),
     "window": st.just("day"), "size": st.integers(1, 5), "scorer": st.just("thumbs_up"),
     "threshold": st.just(0.5), "trace_ids": st.just("real"), "reviews_per_item": st.integers(1, 3)},
    {"name": st.one_of(st.sampled_from(["", "  ", "a\nb", "x" * 101]), st.text(max_size=5)),
     "source": st.one_of(st.text(max_size=8), st.sampled_from(["SAMPLE", "sample "])),
     "agent": st.one_of(FILTER_TEXT, NAMES),
     "window": st.sampled_from(["reversed", "empty", "none"]),
     "size": st.one_of(st.integers(-5, 0), st.integers(rq.MAX_ITEMS + 1, rq.MAX_ITEMS + 10)),
     "scorer": st.one_of(st.sampled_from(["", None, "x'y", "a`b"]), st.text(max_size=5)),
     "threshold": st.floats(), "trace_ids": st.sampled_from(["none", "missing", "spaces", "quotes", "mixed"]),
     "reviews_per_item": st.one_of(st.integers(-2, 0), st.integers(11, 20))},
)


@settings(max_examples=50)
@given(case=_SPEC)
def test_queue_specs_are_checked_before_a_queue_is_made(hard_store, tallies, case):
    import time

    now = int(time.time() * 1000)
    window = {"day": (now - 86_400_000, now + 60_000), "reversed": (now, now - 1), "empty": (now, now),
              "none": (None, None)}[case["window"]]
    real = list(hard_store.trace_ids)
    trace_ids = {"real": real, "none": [], "missing": ["tr-" + "0" * 32], "spaces": ["tr 1"], "quotes": ["tr-'1'"],
                 "mixed": [real[0], "tr-" + "0" * 32]}[case["trace_ids"]]
    spec = rq.QueueSpec(case["name"], case["source"], (hard_store.experiment_id,), agent=case["agent"],
                        start_ms=window[0], end_ms=window[1], size=case["size"], scorer=case["scorer"],
                        threshold=case["threshold"], trace_ids=tuple(trace_ids),
                        reviews_per_item=case["reviews_per_item"])
    queue, exc = attempt(tallies("review_queue.create_queue"), hard_store,
                         lambda: rq.create_queue(spec, hard_store.identity.user, hard_store.settings),
                         what=f"create_queue({case})")
    if exc is None:
        items = rq.queue_items(queue, hard_store.settings)
        assert 1 <= len(items) <= max(int(spec.size), len(trace_ids))
        if spec.source == rq.QueueSource.HAND_PICKED:
            assert {i.trace_id for i in items} == set(trace_ids)


@pytest.mark.parametrize("size", [float("nan"), float("inf"), 2.7, "ten"])
def test_a_queue_size_that_is_not_a_whole_number_is_refused(hard_store, size):
    import time

    now = int(time.time() * 1000)
    before = hard_store.snapshot()
    with pytest.raises(ValidationError):
        rq.create_queue(rq.QueueSpec("q", rq.QueueSource.SAMPLE, (hard_store.experiment_id,), start_ms=now - 10**8,
                                     end_ms=now, size=size), hard_store.identity.user, hard_store.settings)
    hard_store.assert_unchanged(before, "a fractional queue size")


def test_curation_into_an_experiment_that_does_not_exist_is_refused(hard_store):
    fb.submit_review(hard_store.trace_ids[2], fb.Review(corrected_answer="Order 2 shipped."), "curator@example.com",
                     settings=hard_store.settings)
    before = hard_store.snapshot()
    with pytest.raises(Exception) as caught:
        fb.curate_to_dataset([hard_store.trace_ids[2]], "cur-nowhere", "999999", hard_store.settings)
    assert type(caught.value).__name__ == "NotFoundError"
    hard_store.assert_unchanged(before, "curation into a missing experiment")


@settings(max_examples=40)
@given(reviewer=st.one_of(_REVIEWER, st.sampled_from(["a|b", "|", "rev@example.com|9999999999"]), st.text(max_size=8)),
       trace=_TRACE, action=st.sampled_from(["next", "complete", "release"]))
def test_queue_claims_refuse_bad_reviewers_and_foreign_items(hard_store, tallies, reviewer, trace, action):
    trace_id = {"first": hard_store.trace_ids[0], "second": hard_store.trace_ids[1]}.get(trace, trace)
    queue, s = hard_store.queue, hard_store.settings
    call = {"next": lambda: rq.next_item(queue, reviewer, settings=s),
            "complete": lambda: rq.complete(queue, trace_id, reviewer, s),
            "release": lambda: rq.release(queue, trace_id, reviewer, s)}[action]
    result, exc = attempt(tallies(f"review_queue.{'next_item' if action == 'next' else action}"), hard_store, call,
                          what=f"{action}({reviewer!r}, {trace_id!r})")
    if exc is None and action == "next" and result is not None:
        assert result.claimed_by == reviewer and "|" not in reviewer
        rq.release(queue, result.trace_id, reviewer, s)


# --- evaluation requests -----------------------------------------------------------------------

_REQUEST = one_bad_field(
    {"agent": st.just(AGENT), "version": st.sampled_from(["1", "2", "@champion", "v1"]),
     "scorers": st.just(("expected_facts",)), "dataset": st.just("named")},
    {"agent": st.one_of(st.sampled_from(["", "  "]), NAMES), "version": st.one_of(VERSIONS.map(str), ALIASES.map(lambda a: f"@{a}")),
     "scorers": st.one_of(st.just(()), st.lists(st.text(max_size=8), min_size=1, max_size=2).map(tuple),
                          st.just(("expected_facts", "no_such_scorer"))),
     "dataset": st.sampled_from(["none", "both", "missing", "bad-rows", "empty-rows"])},
)


def _request(case, store) -> evaluations.EvaluationRequest:
    named, rows = {"named": (DATASET, None), "none": (None, None),
                   "both": (DATASET, ({"inputs": {"question": "q"}},)), "missing": ("no-such-dataset", None),
                   "bad-rows": (None, ({"inputs": {}},)), "empty-rows": (None, ())}[case["dataset"]]
    return evaluations.EvaluationRequest(case["agent"], case["version"], case["scorers"], dataset_name=named, rows=rows)


@settings(max_examples=40)
@given(case=_REQUEST.filter(lambda c: c["agent"] != AGENT or c["version"] not in ("1", "2", "@champion", "v1")
                            or c["scorers"] != ("expected_facts",) or c["dataset"] != "named"))
def test_evaluation_requests_are_refused_before_a_run_starts(hard_store, tallies, case):
    """Fully valid requests are left out here: they run a real evaluation (tests/services cover that)."""
    request = _request(case, hard_store)
    attempt(tallies("evaluations.run_evaluation"), hard_store,
            lambda: evaluations.run_evaluation(request, hard_store.settings), what=f"run_evaluation({case})")


@settings(max_examples=40)
@given(case=_REQUEST)
def test_background_jobs_are_not_created_for_requests_that_cannot_start(hard_store, tallies, case):
    request = _request(case, hard_store)
    jobs_before = {j.job_id for j in eval_jobs.list_jobs()}
    structural = (not case["agent"].strip() or not case["version"].strip() or not case["scorers"]
                  or case["dataset"] in ("none", "both"))
    if not structural:
        return  # such a request starts a job whose failure the job reports (tests/services cover that)
    _, exc = attempt(tallies("eval_jobs.start_job"), hard_store,
                     lambda: eval_jobs.start_job(request, hard_store.settings, hard_store.identity),
                     what=f"start_job({case})")
    assert exc is not None
    assert {j.job_id for j in eval_jobs.list_jobs()} == jobs_before, "a job was created for a refused request"


@settings(max_examples=40)
@given(runs=st.lists(st.one_of(st.text(max_size=12), st.sampled_from(["queue", "eval-less", "0" * 32])), max_size=3),
       baseline=st.one_of(st.none(), st.text(max_size=6)))
def test_comparing_runs_refuses_ids_that_are_not_evaluation_runs(hard_store, tallies, runs, baseline):
    ids = [hard_store.queue.queue_id if r == "queue" else r for r in runs]
    attempt(tallies("evaluations.compare_runs"), hard_store,
            lambda: evaluations.compare_runs(ids, baseline, hard_store.settings), what=f"compare_runs({ids})",
            changes_when_accepted=False)


@settings(max_examples=40)
@given(agent=st.one_of(st.just(AGENT), NAMES),
       ref=st.one_of(st.sampled_from(["1", "v2", "@champion", "challenger"]), VERSIONS.map(str),
                     ALIASES.map(lambda a: f"@{a}"), ALIASES))
def test_resolving_a_version_reads_without_writing(hard_store, tallies, agent, ref):
    attempt(tallies("evaluations.resolve_version"), hard_store,
            lambda: evaluations.resolve_version(agent, ref, hard_store.settings), what=f"resolve_version({agent!r}, {ref!r})",
            changes_when_accepted=False)
