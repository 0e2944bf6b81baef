"""Evaluation links, feedback of any name, queues on it and linked prompts, read from the real-world workspace.

Every expected figure comes from the facts the builder returns (``tests/realworld/workspace.py``).
"""

from __future__ import annotations

import shutil

import pytest
from mlflow import MlflowClient

from services import app_experiments, prompts
from services import evaluations as ev
from services import feedback as fb
from services import review_queue as rq
from services import versions
from services.errors import NotFoundError, ValidationError
from tests.realworld.workspace import UNICODE_AGENT


def _value_label(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def test_evaluation_runs_are_tied_to_versions_through_what_mlflow_recorded(realworld, realworld_settings):
    support = realworld.agents[UNICODE_AGENT]
    with_model, bare = realworld.eval_runs["with_model"], realworld.eval_runs["bare"]
    runs = {r.run_id: r for r in ev.latest_evaluations([support.experiment_id], settings=realworld_settings)}
    assert set(runs) == {with_model.run_id, bare.run_id}
    version = next(v for v in support.versions.values() if v.model_id == with_model.model_id)
    linked = runs[with_model.run_id]
    assert (linked.agent, linked.version, linked.model_id) == (UNICODE_AGENT, version.version, with_model.model_id)
    assert linked.linked_by == ev.LinkKind.MODEL_INPUT
    assert not runs[bare.run_id].attached and runs[bare.run_id].linked_by is None
    # The version's own evaluations: the run of its LoggedModel, never the bare one.
    for number in support.versions:
        found = [r.run_id for r in versions.evaluations_for(UNICODE_AGENT, realworld_settings,
                                                            experiment_ids=[support.experiment_id], version=number)]
        assert found == ([with_model.run_id] if number == version.version else [])


def test_compare_pairs_shared_rows_of_a_run_with_and_without_a_model(realworld, realworld_settings):
    with_model, bare = realworld.eval_runs["with_model"], realworld.eval_runs["bare"]
    comparison = ev.compare_runs([bare.run_id, with_model.run_id], settings=realworld_settings)
    (candidate,) = comparison.candidates
    shared = set(with_model.questions) & set(bare.questions)
    assert candidate.shared_rows == len(shared)
    assert candidate.only_in_baseline == len(set(bare.questions) - shared)
    assert candidate.only_in_candidate == len(set(with_model.questions) - shared)
    assert len(comparison.rows) == len(set(with_model.questions) | set(bare.questions))
    assert comparison.baseline.version is None and candidate.candidate.agent == UNICODE_AGENT


@pytest.mark.parametrize("bad", ["999999999", "no such id", ""])
def test_an_unknown_experiment_is_reported_and_nothing_is_created(realworld, realworld_settings, bad):
    client = MlflowClient(realworld.tracking_uri, realworld.tracking_uri)
    before = sorted(e.experiment_id for e in client.search_experiments())
    with pytest.raises((NotFoundError, ValidationError), match="experiment|Experiment"):
        ev.experiment_runs(bad, realworld_settings)
    assert sorted(e.experiment_id for e in client.search_experiments()) == before


def test_a_run_that_is_not_an_evaluation_is_refused_by_compare(realworld, realworld_settings):
    version = next(v for v in realworld.agents[UNICODE_AGENT].versions.values() if v.run_id)
    with pytest.raises(NotFoundError, match="not an evaluation run"):
        ev.compare_runs([realworld.eval_runs["bare"].run_id, version.run_id], settings=realworld_settings)


def test_feedback_of_the_teams_own_names_is_counted_per_value_with_its_sources(realworld, realworld_settings):
    frame = fb.human_feedback(sorted(realworld.experiment_ids), 0, 10**13, settings=realworld_settings)
    names = fb.feedback_names(frame).set_index("name")
    assert set(names.index) == set(realworld.feedback)
    kinds = {"helpful": "boolean", "accuracy": "numeric", "tone": "categorical"}
    for name, counts in realworld.feedback.items():
        assert names.loc[name, "kind"] == kinds[name]
        assert names.loc[name, "values"] == {_value_label(v): n for v, n in counts.items()}
        assert names.loc[name, "sources"] == {"HUMAN": sum(counts.values())}
        assert names.loc[name, "reviewers"] == len(realworld.feedback_reviewers[name])
    # Attributed to versions through mlflow.modelId, with no app tag on the traces.
    versions_seen = set(frame["version"].dropna())
    assert versions_seen and versions_seen <= set(realworld.agents[UNICODE_AGENT].versions)
    trend = fb.name_trend(frame, "helpful", "version")
    assert trend["n"].sum() == sum(realworld.feedback["helpful"].values())


@pytest.fixture
def store_copy(realworld, tmp_path):
    """The workspace copied, for tests that write (queues): the shared one stays as the builder left it."""
    from services._clients import configure_mlflow, get_settings
    from services.settings import load_settings

    shutil.copytree(realworld.data_dir, tmp_path / "store")
    settings = configure_mlflow(load_settings({"AGENTOPS_DATA_DIR": str(tmp_path / "store")}))
    yield settings
    configure_mlflow(get_settings())


def test_negative_feedback_queues_work_with_any_feedback_name(realworld, store_copy):
    support = realworld.agents[UNICODE_AGENT]
    assert not any(e.exists for e in app_experiments.app_experiments(store_copy))  # nothing written by reads
    window = dict(experiment_ids=(support.experiment_id,), agent=UNICODE_AGENT, start_ms=0, end_ms=10**13, size=50)
    cases = [
        ("helpful", (), 0.5, realworld.feedback["helpful"][False]),
        ("tone", ("rude",), 0.5, realworld.feedback["tone"]["rude"]),
        ("accuracy", (), 0.5, sum(n for v, n in realworld.feedback["accuracy"].items() if v < 0.5)),
    ]
    for name, negative, threshold, expected in cases:
        queue = rq.create_queue(rq.QueueSpec(f"neg {name}", rq.QueueSource.NEGATIVE_FEEDBACK, feedback_name=name,
                                             negative_values=negative, threshold=threshold, **window),
                                "lead@example.com", store_copy)
        assert len(rq.queue_items(queue, store_copy)) == expected, name
    made = {e.variable: e for e in app_experiments.app_experiments(store_copy)}
    assert made["AGENTOPS_REVIEW_EXPERIMENT"].exists and not made["AGENTOPS_AUDIT_EXPERIMENT"].exists
    with pytest.raises(ValidationError, match="feedback"):
        rq.create_queue(rq.QueueSpec("bad", rq.QueueSource.NEGATIVE_FEEDBACK, feedback_name="x'y", **window),
                        "lead@example.com", store_copy)


def test_linked_prompts_and_their_diff(realworld, realworld_settings):
    support = realworld.agents[UNICODE_AGENT]
    for number, facts in support.versions.items():
        refs = prompts.linked_prompts(UNICODE_AGENT, number, realworld_settings)
        assert [f"{r.name}/{r.version}" for r in refs] == facts.prompt_versions
        assert all(r.template == realworld.prompt_texts[r.version] for r in refs)
    left, right = sorted(support.versions, key=int)[:2]
    (change,) = prompts.prompt_changes(UNICODE_AGENT, left, right, realworld_settings)
    old_text = realworld.prompt_texts[support.versions[left].prompt_versions[0].split("/")[1]]
    new_text = realworld.prompt_texts[support.versions[right].prompt_versions[0].split("/")[1]]
    assert change.status == "changed"
    removed = [line[1:] for line in change.diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in change.diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert removed == old_text.splitlines() and added == new_text.splitlines()


def test_a_version_that_cannot_be_loaded_is_refused_with_a_clear_message_and_nothing_stored(realworld, store_copy):
    support = realworld.agents[UNICODE_AGENT]
    client = MlflowClient(store_copy.tracking_uri, store_copy.tracking_uri)
    before = (sorted(e.experiment_id for e in client.search_experiments()),
              len(client.search_runs([e.experiment_id for e in client.search_experiments()])))
    request = ev.EvaluationRequest(UNICODE_AGENT, "2", ("expected_facts",), dataset_label="rows.jsonl",
                                   rows=({"inputs": {"question": "q"}, "expectations": {"expected_facts": ["a"]}},))
    with pytest.raises(ValidationError, match="cannot be loaded here, so nothing was evaluated or stored"):
        ev.run_evaluation(request, store_copy)
    after = (sorted(e.experiment_id for e in client.search_experiments()),
             len(client.search_runs([e.experiment_id for e in client.search_experiments()])))
    assert after == before
    assert support.experiment_id in before[0]


def test_an_evaluation_started_the_apps_way_appears_everywhere_at_once(realworld, store_copy):
    """The app's path after loading the model: evaluate_rows with the resolved version, into the agent's experiment."""
    from services import readiness, registry
    from services.overview import agent_experiment_ids
    from services.scorers import build_scorers

    support = realworld.agents[UNICODE_AGENT]
    resolved = ev.resolve_version(UNICODE_AGENT, "@champion", store_copy)
    assert resolved.experiment_id == support.experiment_id  # the agent's own experiment, none created
    assert resolved.model_id == support.versions[resolved.version].model_id
    run_id = ev.evaluate_rows(
        [{"inputs": {"question": "Where is my order?"}, "expectations": {"expected_facts": ["order"]}}],
        lambda question, **_: f"Your order {question}", build_scorers(["expected_facts"]),
        experiment_id=resolved.experiment_id, run_name="from the app",
        tags={ev.AGENT_TAG: UNICODE_AGENT, ev.VERSION_TAG: resolved.version, ev.DATASET_TAG: "rows.jsonl"},
        model_id=resolved.model_id, settings=store_copy,
    )
    ids = agent_experiment_ids(registry.list_agents(store_copy), store_copy)
    assert run_id in [r.run_id for r in ev.evaluation_runs(ids, store_copy)]  # run list and Compare
    assert run_id in [r.run_id for r in ev.latest_evaluations(ids, limit=8, settings=store_copy)]  # Overview
    detail = versions.version_detail(UNICODE_AGENT, resolved.version, store_copy)
    assert run_id in [r.run_id for r in detail.evaluations]
    report = readiness.assess(UNICODE_AGENT, resolved.version, store_copy)
    # The readiness checklist reads the new run as the version's latest evaluation.
    assert "latest evaluation (rows.jsonl) had only 1 row(s)" in report.check(readiness.Item.DATASETS).reason
