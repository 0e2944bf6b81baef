"""Feedback as MLflow assessments: reviewer identity, overrides with history, charts, curation."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from services import _mlflow_internal as internal
from services import feedback as fb
from services.errors import NotFoundError, ValidationError
from services.identity import resolve_identity

NOW_NS = time.time_ns()
QUESTIONS = (fb.LabelQuestion("tone", "Is the tone right?", fb.LabelKind.CHOICE, ("ok", "rude")),
             fb.LabelQuestion("note", "Anything else?", fb.LabelKind.TEXT))


def make_traces(settings, count: int = 3, *, agent: str = "agent-a", name: str = "fb"):
    """An experiment with ``count`` agent traces shaped like the demo's; returns (client, experiment, ids)."""
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment_id = client.create_experiment(name, artifact_location=(settings.artifact_root / name).as_uri())
    specs = []
    for index in range(count):
        start = NOW_NS - (index + 1) * 60_000_000_000
        tool = internal.SpanSpec("lookup", "TOOL", start + 1_000_000, start + 2_000_000, inputs={"q": f"q{index}"}, outputs="hit")
        root = internal.SpanSpec(
            "predict", "AGENT", start, start + 10_000_000,
            inputs={"input": [{"role": "user", "content": f"What is {index}?"}]},
            outputs={"output": [{"type": "message", "content": [{"type": "output_text", "text": f"It is {index}."}]}]},
            children=(tool,),
        )
        specs.append(internal.TraceSpec(experiment_id, root, tags={"agentops.agent": agent, "agentops.version": str(1 + index % 2),
                                                                   "agentops.arm": f"{agent}-{1 + index % 2}"}))
    return client, experiment_id, internal.log_traces(client, specs)


def test_feedback_round_trips_with_forwarded_reviewer(isolated_settings):
    client, _, (trace_id, *_) = make_traces(isolated_settings)
    reviewer = resolve_identity(isolated_settings, {"X-Forwarded-Email": "rev@example.com"}).user
    review = fb.Review(thumbs_up=False, rating=2, comment="Missed the point", corrected_answer="It is zero.",
                       labels={"tone": "ok", "note": "fine"})
    assert fb.submit_review(trace_id, review, reviewer, questions=QUESTIONS, settings=isolated_settings) == 6
    history = fb.assessment_history(trace_id, isolated_settings)
    assert set(history["reviewer"]) == {"rev@example.com"}
    assert set(history["source_type"]) == {"HUMAN"}
    values = dict(zip(history["name"], history["value"]))
    assert values == {"thumbs_up": False, "rating": 2, "comment": "Missed the point", "expected_response": "It is zero.",
                      "tone": "ok", "note": "fine"}
    assert fb.current_review(trace_id, "rev@example.com", isolated_settings) == review
    assert fb.current_review(trace_id, "someone-else", isolated_settings) is None


def test_editing_overrides_and_keeps_history(isolated_settings):
    _, _, (trace_id, *_) = make_traces(isolated_settings)
    fb.submit_review(trace_id, fb.Review(thumbs_up=True, rating=5, corrected_answer="A"), "rev@example.com", settings=isolated_settings)
    written = fb.submit_review(trace_id, fb.Review(thumbs_up=False, rating=5, corrected_answer="B"), "rev@example.com",
                               settings=isolated_settings)
    assert written == 2  # the unchanged rating is not rewritten
    history = fb.assessment_history(trace_id, isolated_settings)
    thumbs = history[history["name"] == "thumbs_up"]
    assert list(thumbs["value"]) == [True, False]
    assert list(thumbs["valid"]) == [False, True]
    assert thumbs.iloc[1]["overrides"] == thumbs.iloc[0]["assessment_id"]
    answers = history[history["name"] == "expected_response"]
    assert list(answers["value"]) == ["A", "B"] and list(answers["valid"]) == [False, True]
    assert fb.current_review(trace_id, "rev@example.com", isolated_settings).corrected_answer == "B"
    # Another reviewer's judgement is separate, not an override.
    fb.submit_review(trace_id, fb.Review(thumbs_up=True), "other@example.com", settings=isolated_settings)
    history = fb.assessment_history(trace_id, isolated_settings)
    assert history[(history["name"] == "thumbs_up") & history["valid"]]["reviewer"].tolist() == ["rev@example.com", "other@example.com"]


@pytest.mark.parametrize("review, message", [
    (fb.Review(), "empty"),
    (fb.Review(rating=7), "1 to 5"),
    (fb.Review(thumbs_up=True, labels={"tone": "sarcastic"}), "not an allowed answer"),
    (fb.Review(thumbs_up=True, labels={"unknown": "x"}), "not one of"),
])
def test_bad_reviews_store_nothing(isolated_settings, review, message):
    _, _, (trace_id, *_) = make_traces(isolated_settings)
    with pytest.raises(ValidationError, match=message):
        fb.submit_review(trace_id, review, "rev@example.com", questions=QUESTIONS, settings=isolated_settings)
    assert fb.assessment_history(trace_id, isolated_settings).empty


def test_review_of_a_deleted_trace_is_refused(isolated_settings):
    client, experiment_id, (trace_id, *_) = make_traces(isolated_settings)
    client.delete_traces(experiment_id, trace_ids=[trace_id])
    with pytest.raises(NotFoundError, match="deleted meanwhile"):
        fb.submit_review(trace_id, fb.Review(thumbs_up=True), "rev@example.com", settings=isolated_settings)


def test_label_questions_round_trip_and_validate(isolated_settings):
    client = MlflowClient(tracking_uri=isolated_settings.tracking_uri, registry_uri=isolated_settings.registry_uri)
    client.create_registered_model("agent-a")
    assert fb.label_questions("agent-a", isolated_settings) == ()
    fb.set_label_questions("agent-a", QUESTIONS, isolated_settings)
    assert fb.label_questions("agent-a", isolated_settings) == QUESTIONS
    for bad in ('[{"name": "Tone", "prompt": "x", "options": ["a", "b"]}]', '[{"name": "tone", "prompt": "x", "options": ["a"]}]',
                '[{"name": "rating", "prompt": "x"}]', "not json"):
        with pytest.raises(ValidationError):
            fb.parse_questions(bad)
    with pytest.raises(ValidationError, match="too deeply"):
        fb.parse_questions("[" * 3000)  # json.loads would raise RecursionError
    with pytest.raises(ValidationError, match="longer than"):
        fb.parse_questions("[" + " " * fb.MAX_QUESTIONS_JSON + "]")


def test_a_trace_agent_that_is_not_a_registered_model_has_no_questions(isolated_settings):
    # The agent tag is whatever the traced code wrote; reviewing must not depend on it naming a model.
    assert fb.label_questions("![pix](pix.png)", isolated_settings) == ()
    assert fb.label_questions("no-such-agent", isolated_settings) == ()


def test_editing_label_questions_needs_the_admin_role(isolated_settings):
    import json

    from services.errors import PermissionDeniedError
    from services.identity import Identity, IdentitySource

    client = MlflowClient(tracking_uri=isolated_settings.tracking_uri, registry_uri=isolated_settings.registry_uri)
    client.create_registered_model("agent-a")
    (isolated_settings.data_dir / "roles.json").write_text(json.dumps(
        {"users": {"admin@example.com": "admin", "rev@example.com": "reviewer"}, "default": "viewer"}))
    admin = Identity("admin@example.com", "admin", IdentitySource.OS_USER)
    reviewer = Identity("rev@example.com", "rev", IdentitySource.OS_USER)
    with pytest.raises(PermissionDeniedError, match="admin"):
        fb.set_label_questions("agent-a", QUESTIONS, isolated_settings, identity=reviewer)
    assert fb.label_questions("agent-a", isolated_settings) == ()
    fb.set_label_questions("agent-a", QUESTIONS, isolated_settings, identity=admin)
    assert fb.label_questions("agent-a", isolated_settings) == QUESTIONS


def test_charts_and_agreement(isolated_settings):
    _, experiment_id, ids = make_traces(isolated_settings, 3)
    fb.submit_review(ids[0], fb.Review(thumbs_up=True, rating=5), "a@x", settings=isolated_settings)
    fb.submit_review(ids[0], fb.Review(thumbs_up=True, rating=4), "b@x", settings=isolated_settings)
    fb.submit_review(ids[1], fb.Review(thumbs_up=True, rating=5), "a@x", settings=isolated_settings)
    fb.submit_review(ids[1], fb.Review(thumbs_up=False, rating=1), "b@x", settings=isolated_settings)
    fb.submit_review(ids[2], fb.Review(thumbs_up=False, rating=2), "a@x", settings=isolated_settings)
    frame = fb.human_feedback([experiment_id], 0, time.time_ns() // 1_000_000 + 1000, settings=isolated_settings)
    assert len(frame) == 10
    trend = fb.feedback_trend(frame, "version")
    totals = trend.groupby("group")["reviews"].sum().to_dict()
    assert totals == {"agent-a v1": 3, "agent-a v2": 2}  # thumbs per version; traces 0 and 2 are version 1
    agreement = fb.reviewer_agreement(frame).set_index("name")
    assert agreement.loc["thumbs_up", "traces"] == 2 and agreement.loc["thumbs_up", "agreement"] == 0.5
    assert agreement.loc["rating", "agreement"] == 0.5


def test_curation_produces_a_dataset_the_evaluations_service_runs(isolated_settings):
    from services import datasets
    from services.evaluations import evaluate_rows
    from services.scorers import build_scorers

    _, experiment_id, ids = make_traces(isolated_settings, 3)
    fb.submit_review(ids[0], fb.Review(thumbs_up=False, corrected_answer="It is zero."), "a@x", settings=isolated_settings)
    fb.submit_review(ids[1], fb.Review(thumbs_up=True), "a@x", settings=isolated_settings)  # no correction: skipped
    result = fb.curate_to_dataset(ids[:2], "reviewed-set", experiment_id, isolated_settings)
    assert result.added == 1 and result.skipped == ((ids[1], "no corrected answer"),)
    rows = datasets.load_dataset_rows("reviewed-set", isolated_settings)
    assert rows == [{"inputs": {"question": "What is 0?"}, "expectations": {"expected_response": "It is zero."}}]
    datasets.validate_rows(rows)
    run_id = evaluate_rows(rows, lambda question, **_: "It is zero.", build_scorers(["expected_answer"]),
                           experiment_id=experiment_id, run_name="curated", tags={})
    run = MlflowClient(tracking_uri=isolated_settings.tracking_uri).get_run(run_id)
    assert run.data.metrics["expected_answer/mean"] == 1.0
    with pytest.raises(ValidationError, match="nothing was added"):
        fb.curate_to_dataset([ids[2]], "reviewed-set", experiment_id, isolated_settings)


@pytest.mark.parametrize("experiment", ["999999", "deleted"])
def test_curation_into_a_missing_experiment_stores_nothing(isolated_settings, experiment):
    from mlflow.genai.datasets import search_datasets

    client, experiment_id, ids = make_traces(isolated_settings, 1)
    fb.submit_review(ids[0], fb.Review(corrected_answer="It is zero."), "a@x", settings=isolated_settings)
    if experiment == "deleted":
        experiment = client.create_experiment("gone")
        client.delete_experiment(experiment)
    with pytest.raises(NotFoundError, match="does not exist"):
        fb.curate_to_dataset(ids, "nowhere-set", experiment, isolated_settings)
    assert [d.name for d in search_datasets() if d.name == "nowhere-set"] == []
    fb.curate_to_dataset(ids, "nowhere-set", experiment_id, isolated_settings)  # the search does see datasets
    assert [d.name for d in search_datasets() if d.name == "nowhere-set"] == ["nowhere-set"]


# --- interruptions -------------------------------------------------------------------------------

REVIEW = fb.Review(thumbs_up=False, rating=2, comment="Missed the point", corrected_answer="It is zero.",
                   labels={"tone": "rude", "note": "fine"})
REVIEW_VALUES = {"thumbs_up": False, "rating": 2, "comment": "Missed the point", "tone": "rude", "note": "fine",
                 "expected_response": "It is zero."}


def _failing_on(monkeypatch, call: int):
    """Make the ``call``-th assessment write fail as a dead server does (the others go through)."""
    from mlflow.tracing.client import TracingClient

    original = TracingClient.log_assessment
    calls: list[str] = []

    def log_assessment(self, trace_id, assessment):
        calls.append(assessment.name)
        if len(calls) == call:
            raise ConnectionError("Connection refused")
        return original(self, trace_id, assessment)

    monkeypatch.setattr(TracingClient, "log_assessment", log_assessment)
    return calls


def _current(settings, trace_id, reviewer):
    history = fb.assessment_history(trace_id, settings)
    return history[history["valid"] & (history["reviewer"] == reviewer)]


# The write order is the feedback (thumbs, rating, comment, labels), then the corrected answer.
@pytest.mark.parametrize("fail_at", [1, 3, 6])
@pytest.mark.parametrize("earlier", [False, True], ids=["new", "overriding"])
def test_an_interrupted_review_says_so_and_a_retry_completes_it_exactly_once(isolated_settings, monkeypatch,
                                                                             fail_at, earlier):
    from services.errors import BackendUnavailableError

    _, _, (trace_id, *_) = make_traces(isolated_settings)
    reviewer = "rev@example.com"
    if earlier:  # an earlier judgement of every field, so each write is an override
        fb.submit_review(trace_id, fb.Review(thumbs_up=True, rating=5, comment="ok", corrected_answer="It is one.",
                                             labels={"tone": "ok", "note": "n"}), reviewer, questions=QUESTIONS,
                         settings=isolated_settings)
    with monkeypatch.context() as patch:
        calls = _failing_on(patch, fail_at)
        with pytest.raises(fb.ReviewPartlySavedError) as failed:
            fb.submit_review(trace_id, REVIEW, reviewer, questions=QUESTIONS, settings=isolated_settings)
    assert len(calls) == fail_at
    error = failed.value
    assert isinstance(error, BackendUnavailableError) and (error.stored, error.total) == (fail_at - 1, 6)
    message = str(error)
    assert "Traceback" not in message and "Retrying is safe" in message and "submit the review again" in message
    if fail_at > 1:
        assert "only partly saved" in message and f"{fail_at - 1} of the 6" in message
    else:
        assert "may not have been saved" in message
    stored = _current(isolated_settings, trace_id, reviewer)
    assert sorted(n for n, v in zip(stored["name"], stored["value"]) if REVIEW_VALUES[n] == v) == sorted(calls[:-1])

    # The retry writes only what is missing; one current assessment per field, none duplicated.
    assert fb.submit_review(trace_id, REVIEW, reviewer, questions=QUESTIONS, settings=isolated_settings) == 7 - fail_at
    current = _current(isolated_settings, trace_id, reviewer)
    assert sorted(current["name"]) == sorted(REVIEW_VALUES)
    assert dict(zip(current["name"], current["value"])) == REVIEW_VALUES
    assert fb.current_review(trace_id, reviewer, isolated_settings) == REVIEW
    history = fb.assessment_history(trace_id, isolated_settings)
    assert len(history) == (12 if earlier else 6)  # every value written once (plus the overridden earlier ones)
    # A second retry writes nothing.
    assert fb.submit_review(trace_id, REVIEW, reviewer, questions=QUESTIONS, settings=isolated_settings) == 0
    assert len(fb.assessment_history(trace_id, isolated_settings)) == len(history)


def test_resubmitting_an_unchanged_review_writes_nothing(isolated_settings):
    _, _, (trace_id, *_) = make_traces(isolated_settings)
    assert fb.submit_review(trace_id, REVIEW, "rev@example.com", questions=QUESTIONS, settings=isolated_settings) == 6
    assert fb.submit_review(trace_id, REVIEW, "rev@example.com", questions=QUESTIONS, settings=isolated_settings) == 0
    # Only the changed comment and corrected answer are rewritten.
    edited = fb.Review(thumbs_up=False, rating=2, comment="Now clear", corrected_answer="It is 0.",
                       labels={"tone": "rude", "note": "fine"})
    assert fb.submit_review(trace_id, edited, "rev@example.com", questions=QUESTIONS, settings=isolated_settings) == 2
    assert len(fb.assessment_history(trace_id, isolated_settings)) == 8


def test_an_interrupted_curation_reuses_its_dataset_on_retry(isolated_settings, monkeypatch):
    from mlflow.genai.datasets import search_datasets
    from mlflow.genai.datasets.evaluation_dataset import EvaluationDataset

    from services import datasets
    from services.errors import BackendUnavailableError

    _, experiment_id, ids = make_traces(isolated_settings, 2)
    for trace_id, answer in zip(ids, ("It is zero.", "It is one.")):
        fb.submit_review(trace_id, fb.Review(corrected_answer=answer), "a@x", settings=isolated_settings)

    def down(self, records):
        raise ConnectionError("Connection refused")

    with monkeypatch.context() as patch:
        patch.setattr(EvaluationDataset, "merge_records", down)
        with pytest.raises(BackendUnavailableError) as failed:
            fb.curate_to_dataset(ids, "curated", experiment_id, isolated_settings)
    assert "was created" in str(failed.value) and "again" in str(failed.value)
    assert datasets.list_datasets([experiment_id], isolated_settings).datasets == ()  # unfinished: not offered
    first = fb.curate_to_dataset(ids, "curated", experiment_id, isolated_settings)
    again = fb.curate_to_dataset(ids, "curated", experiment_id, isolated_settings)
    assert first.dataset_id == again.dataset_id and first.added == 2
    assert [d.dataset_id for d in search_datasets(filter_string="name = 'curated'")] == [first.dataset_id]
    assert [d.name for d in datasets.list_datasets([experiment_id], isolated_settings).datasets] == ["curated"]
    rows = datasets.load_dataset_rows("curated", isolated_settings)
    assert sorted(r["expectations"]["expected_response"] for r in rows) == ["It is one.", "It is zero."]
