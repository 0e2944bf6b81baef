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
