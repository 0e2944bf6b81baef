"""Evaluation runs and their comparison over real MLflow stores (the demo agents)."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from services import eval_jobs, evaluations, scorers
from services.errors import NotFoundError, ValidationError
from services.evaluations import EvaluationRequest, RowChange
from services.statistics import Direction

SUPPORT = "support-agent"
ORDERS = "orders-agent"
GOLDEN = "support-agent-golden"


def _seed_run(settings, agent: str, version: str) -> str:
    """The demo seed's own evaluation run of a version."""
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`mlflow.runType` = 'genai_evaluate' AND tags.`agentops.agent` = '{agent}' "
        f"AND tags.`agentops.version` = '{version}'",
        order_by=["attributes.start_time ASC"],
    )
    return runs[0].info.run_id


@pytest.fixture(scope="module")
def support_runs(seeded_settings):
    """New evaluation runs of support-agent v1 (through its alias), v2 and v3 on the golden set."""
    from services import _clients

    _clients.configure_mlflow(seeded_settings)
    runs = {}
    for ref, number in (("@champion", "1"), ("2", "2"), ("v3", "3")):
        request = EvaluationRequest(SUPPORT, ref, scorers.DEFAULT_SCORERS, dataset_name=GOLDEN)
        runs[number] = evaluations.run_evaluation(request, seeded_settings)
    return runs


def test_run_is_stored_linked_and_listed(seeded_settings, support_runs):
    client = MlflowClient(tracking_uri=seeded_settings.tracking_uri)
    run = client.get_run(support_runs["1"])
    assert run.data.tags["mlflow.runType"] == "genai_evaluate"
    assert (run.data.tags["agentops.agent"], run.data.tags["agentops.version"]) == (SUPPORT, "1")
    assert run.data.tags["agentops.dataset"] == GOLDEN
    assert set(run.data.metrics) >= {"expected_facts/mean", "required_tools/mean"}
    # On SQLite the version's model_id field is empty; its source is models:/m-<id>.
    model_id = client.get_model_version(SUPPORT, "1").source.removeprefix("models:/")
    traces = mlflow.search_traces(locations=[run.info.experiment_id], run_id=run.info.run_id,
                                  include_spans=False, return_type="list")
    assert len(traces) == 51
    assert {t.info.trace_metadata.get("mlflow.modelId") for t in traces} == {model_id}
    listed = evaluations.evaluation_runs([run.info.experiment_id], seeded_settings)
    assert support_runs["1"] in {r.run_id for r in listed}


def test_better_and_worse_versions_give_significant_verdicts(seeded_settings, support_runs):
    comparison = evaluations.compare_runs(
        [support_runs["1"], support_runs["2"], support_runs["3"]], support_runs["1"], seeded_settings
    )
    better, worse = comparison.candidates
    assert better.shared_rows == worse.shared_rows == 51
    facts = {t.metric: t for t in better.tests}["expected_facts"]
    assert facts.direction is Direction.BETTER and facts.p_value < 0.01 and facts.ci_low > 0
    assert better.verdict.startswith("B: support-agent v2 is better on expected_facts, p < 0.001")
    assert "n = 51 shared rows" in better.verdict
    facts = {t.metric: t for t in worse.tests}["expected_facts"]
    assert facts.direction is Direction.WORSE and facts.p_value < 0.05 and facts.ci_high < 0
    # The per-row table and the summary agree with the tests.
    assert len(comparison.rows) == 51
    assert (comparison.rows["change"] == str(RowChange.REGRESSION)).sum() >= worse.tests[0].regressed
    assert set(comparison.summary["run"]) == {better.candidate.label, worse.candidate.label}
    assert not comparison.deltas.empty


def test_identical_versions_show_no_significant_difference(seeded_settings, support_runs):
    evidence = evaluations.evaluation_evidence(support_runs["2"], _seed_run(seeded_settings, SUPPORT, "2"), seeded_settings)
    assert evidence.shared_rows == 51 and evidence.only_in_baseline == evidence.only_in_candidate == 0
    assert all(t.direction is Direction.NO_CHANGE and t.delta == 0 for t in evidence.tests)
    assert "is better" not in evidence.verdict and "is worse" not in evidence.verdict


def test_disjoint_datasets_are_reported(seeded_settings):
    comparison = evaluations.compare_runs(
        [_seed_run(seeded_settings, SUPPORT, "1"), _seed_run(seeded_settings, ORDERS, "1")], settings=seeded_settings
    )
    (candidate,) = comparison.candidates
    assert candidate.disjoint
    assert (candidate.only_in_baseline, candidate.only_in_candidate) == (51, 48)
    assert "shares no rows" in candidate.verdict
    counts = comparison.rows["change"].value_counts().to_dict()
    assert counts == {str(RowChange.ONLY_BASELINE): 51, str(RowChange.ONLY_CANDIDATE): 48}
    only = comparison.rows[comparison.rows["change"] == str(RowChange.ONLY_CANDIDATE)].iloc[0]
    assert only[f"{comparison.baseline.label} · output"] == "(not in this run)"


def test_hundred_row_run_stores_every_row_including_failures(isolated_settings):
    from services._clients import get_or_create_experiment, mlflow_client

    experiment_id = get_or_create_experiment(mlflow_client(isolated_settings), "hundred", isolated_settings)
    rows = [{"inputs": {"question": f"q{i}"}, "expectations": {"expected_facts": [f"answer q{i}"]}} for i in range(100)]

    def predict_fn(question: str) -> str:
        if int(question[1:]) % 10 == 0:  # the first row fails too
            raise RuntimeError(f"agent crashed on {question}")
        return f"answer {question}"

    seen = []
    run_id = evaluations.evaluate_rows(
        rows, predict_fn, scorers.build_scorers(["expected_facts"]), experiment_id=experiment_id,
        run_name="hundred", tags={"agentops.agent": "toy"}, progress=lambda done, total, _: seen.append((done, total)),
    )
    frame, kinds = evaluations.run_rows(run_id, isolated_settings)
    assert len(frame) == 100 and frame["question"].nunique() == 100
    assert (frame["state"] == "ERROR").sum() == 10
    assert set(frame.loc[frame["state"] == "ERROR", "question"]) == {f"q{i}" for i in range(0, 100, 10)}
    assert frame["expected_facts"].sum() == 90 and kinds == {"expected_facts": True}
    assert seen[-1] == (100, 100)
    assert mlflow_client(isolated_settings).get_run(run_id).data.metrics["expected_facts/mean"] == pytest.approx(0.9)


def test_background_job_reports_progress_and_lands_in_the_list(seeded_settings):
    from services import datasets

    rows = tuple(datasets.load_dataset_rows("orders-agent-golden", seeded_settings)[:5])
    job_id = eval_jobs.start_job(EvaluationRequest(ORDERS, "@champion", ("expected_facts",), rows=rows,
                                                   dataset_label="five.jsonl"), seeded_settings)
    job = eval_jobs.wait(job_id, timeout=120)
    assert job.status is eval_jobs.JobStatus.SUCCEEDED, job.error
    assert (job.done, job.total, job.fraction) == (5, 5, 1.0)
    run = MlflowClient(tracking_uri=seeded_settings.tracking_uri).get_run(job.run_id)
    assert run.data.tags["agentops.dataset"] == "five.jsonl" and run.data.tags["agentops.version"] == "2"

    failing = eval_jobs.start_job(EvaluationRequest(ORDERS, "99", ("expected_facts",), rows=rows), seeded_settings)
    job = eval_jobs.wait(failing, timeout=60)
    assert job.status is eval_jobs.JobStatus.FAILED and "99" in job.error


def test_requests_are_validated_before_any_io(seeded_settings):
    client = MlflowClient(tracking_uri=seeded_settings.tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    before = len(client.search_runs(ids, max_results=1000))
    with pytest.raises(ValidationError, match="scorer"):
        evaluations.run_evaluation(EvaluationRequest(SUPPORT, "1", (), dataset_name=GOLDEN), seeded_settings)
    with pytest.raises(ValidationError, match="Row 2, column 'inputs.question'"):
        evaluations.run_evaluation(
            EvaluationRequest(SUPPORT, "1", ("expected_facts",), rows=({"inputs": {"question": "q"}}, {"inputs": {}})),
            seeded_settings,
        )
    with pytest.raises(ValidationError, match="Correctness cannot run"):
        evaluations.run_evaluation(EvaluationRequest(SUPPORT, "1", ("correctness",), dataset_name=GOLDEN), seeded_settings)
    with pytest.raises(NotFoundError):
        evaluations.resolve_version(SUPPORT, "@nope", seeded_settings)
    assert len(client.search_runs(ids, max_results=1000)) == before


def test_judges_say_why_they_cannot_run():
    catalog = {s.name: s for s in scorers.scorer_catalog(environ={})}
    assert all(catalog[n].available for n in ("expected_facts", "required_tools", "forbidden_content", "latency_budget"))
    for name in scorers.JUDGE_NAMES:
        assert not catalog[name].available and "AGENTOPS_JUDGE_MODEL" in catalog[name].reason
    env = {"AGENTOPS_JUDGE_MODEL": "openai:/gpt-4o-mini"}
    assert "OPENAI_BASE_URL" in scorers.judge_model(env)[1]
    env["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"
    built = scorers.build_scorers(["correctness", "guidelines"], environ=env)
    assert [type(s).__name__ for s in built] == ["Correctness", "Guidelines"]
    assert built[0].model == "openai:/gpt-4o-mini"
    assert all(s.available for s in scorers.scorer_catalog(databricks=True, environ={}))


def _response(text: str) -> dict:
    return {"output": [{"type": "message", "content": [{"type": "output_text", "text": text}]}]}


def test_code_scorers_offline():
    options = scorers.ScorerOptions(forbidden_terms=("password is",), latency_budget_ms=100, cost_budget_usd=0.001)
    answer, forbidden, latency, cost = scorers.build_scorers(
        ["expected_answer", "forbidden_content", "latency_budget", "cost_budget"], options)
    expectations = {"expected_response": "Click Forgot password on the sign-in page", "forbidden_content": ["hunter2"]}
    assert answer(outputs=_response("Click Forgot password on the sign-in page."), expectations=expectations).value == "yes"
    assert answer(outputs="No idea.", expectations=expectations).value == "no"
    assert forbidden(outputs="your password is hunter2", expectations=expectations).value == "no"
    assert forbidden(outputs="Use the reset link.", expectations=expectations).value == "yes"

    class Info:
        def __init__(self, duration, cost):
            self.execution_duration, self.cost = duration, cost

    class Trace:
        def __init__(self, duration, cost=None):
            self.info, self.data = Info(duration, cost), None

    assert latency(trace=Trace(50)).value == "yes" and latency(trace=Trace(150)).value == "no"
    assert cost(trace=Trace(1, {"total_cost": 0.002})).value == "no"
    assert cost(trace=Trace(1, {"total_cost": 0.0005})).value == "yes"
    assert "No LLM cost" in cost(trace=Trace(1)).rationale


def test_background_job_acts_for_the_user_who_started_it(seeded_settings, monkeypatch):
    """On Databricks Apps the job's MLflow calls must carry the starter's token, not the app's."""
    from services import datasets
    from services._clients import acting_as, acting_identity
    from services.identity import Identity, IdentitySource

    seen = []

    def run_evaluation(request, settings, progress=None):
        seen.append(acting_identity())
        return "run-id"

    monkeypatch.setattr(evaluations, "run_evaluation", run_evaluation)
    rows = tuple(datasets.load_dataset_rows("orders-agent-golden", seeded_settings)[:2])
    olivia = Identity(user="olivia@example.com", display_name="Olivia", source=IdentitySource.DATABRICKS_APPS,
                      access_token="olivia-token")
    with acting_as(olivia):
        job_id = eval_jobs.start_job(EvaluationRequest(ORDERS, "@champion", ("expected_facts",), rows=rows),
                                     seeded_settings)
    assert acting_identity() is None
    job = eval_jobs.wait(job_id, timeout=60)
    assert job.status is eval_jobs.JobStatus.SUCCEEDED, job.error
    assert seen == [olivia]
