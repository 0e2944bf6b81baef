"""Evaluation runs and their comparison over real MLflow stores (the demo agents)."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from services import eval_jobs, evaluations, scorers
from services.errors import BackendUnavailableError, ConflictError, NotFoundError, ValidationError
from services.evaluations import EvaluationRequest, RowChange
from services.evaluations import running as evaluations_running
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
    # The seeded runs differ from one seeding to the next; near p = 0.04 the percentile bootstrap of a
    # discrete paired difference can end exactly at 0.0 (seen once: 9 improved, 21 regressed).
    assert facts.direction is Direction.WORSE and facts.p_value < 0.05 and facts.ci_high <= 0
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


# --- Request ids and interrupted runs -----------------------------------------------------------

TOY_ROWS = [{"inputs": {"question": f"q{i}"}, "expectations": {"expected_facts": [f"answer q{i}"]}} for i in range(3)]
TOY_TAGS = {"agentops.agent": "toy", "agentops.version": "1", "agentops.dataset": "toy-set"}


def _toy_experiment(settings, name: str = "toy") -> str:
    from services._clients import get_or_create_experiment, mlflow_client

    return get_or_create_experiment(mlflow_client(settings), name, settings)


def _toy_run(experiment_id: str, request_id: str, predict_fn=lambda question: f"answer {question}", **kwargs) -> str:
    return evaluations.evaluate_rows(
        TOY_ROWS, predict_fn, scorers.build_scorers(["expected_facts"]), experiment_id=experiment_id,
        run_name="toy", tags=kwargs.pop("tags", TOY_TAGS), request_id=request_id, **kwargs,
    )


def _request_runs(settings, experiment_id: str, request_id: str) -> list:
    return MlflowClient(tracking_uri=settings.tracking_uri).search_runs(
        [experiment_id], filter_string=f"tags.`{evaluations.REQUEST_TAG}` = '{request_id}'")


def _down(self, *args, **kwargs):
    raise ConnectionError("Connection refused")


@pytest.mark.parametrize("request_id", ["", "has space", "a/b", "x" * 129, "quote'"])
def test_bad_request_ids_are_refused_before_any_io(request_id):
    with pytest.raises(ValidationError, match="request id"):
        evaluations.check_request(EvaluationRequest(SUPPORT, "1", ("expected_facts",), dataset_name=GOLDEN,
                                                     request_id=request_id))


def test_fingerprint_follows_the_choices_not_the_id():
    base = EvaluationRequest(SUPPORT, "2", ("expected_facts",), dataset_name=GOLDEN)
    fingerprint = evaluations.request_fingerprint
    assert fingerprint(base) == fingerprint(EvaluationRequest(SUPPORT, "2", ("expected_facts",), dataset_name=GOLDEN,
                                                              request_id="r1"))
    assert fingerprint(base) != fingerprint(EvaluationRequest(SUPPORT, "3", ("expected_facts",), dataset_name=GOLDEN))
    assert fingerprint(base) != fingerprint(EvaluationRequest(SUPPORT, "2", ("expected_facts",), rows=tuple(TOY_ROWS)))


def test_a_retry_of_a_finished_request_returns_its_run(isolated_settings):
    experiment_id = _toy_experiment(isolated_settings)
    first = _toy_run(experiment_id, "req-done")
    calls = []
    again = _toy_run(experiment_id, "req-done", predict_fn=lambda question: calls.append(question) or "x")
    assert again == first and calls == []
    (run,) = _request_runs(isolated_settings, experiment_id, "req-done")
    assert run.info.status == "FINISHED" and run.data.tags[evaluations.REQUEST_TAG] == "req-done"
    with pytest.raises(ValidationError, match="start a new request"):
        _toy_run(experiment_id, "req-done", tags={**TOY_TAGS, "agentops.version": "2"})


def test_a_backend_failure_mid_run_marks_it_interrupted_and_the_retry_completes_once(isolated_settings, monkeypatch):
    experiment_id = _toy_experiment(isolated_settings)
    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "log_batch", _down)  # evaluate's metrics never reach the store
        with pytest.raises(BackendUnavailableError) as failed:
            _toy_run(experiment_id, "req-mid")
    message = str(failed.value)
    assert "was interrupted" in message and "req-mid" in message and "Retrying is safe" in message
    assert "Traceback" not in message and "\n" not in message
    assert mlflow.active_run() is None
    (run,) = _request_runs(isolated_settings, experiment_id, "req-mid")
    assert run.info.run_id in message
    # The store answered the clean-up, so the run is already failed and labelled.
    assert run.info.status == "FAILED" and run.data.tags[evaluations.INTERRUPTED_TAG].startswith("interrupted")
    (summary,) = evaluations.latest_evaluations([experiment_id], settings=isolated_settings)
    assert (summary.state, summary.request_id) == ("interrupted", "req-mid")

    run_id = _toy_run(experiment_id, "req-mid")
    statuses = {r.info.run_id: r.info.status for r in _request_runs(isolated_settings, experiment_id, "req-mid")}
    assert statuses == {run.info.run_id: "FAILED", run_id: "FINISHED"}
    assert _toy_run(experiment_id, "req-mid") == run_id


def test_a_run_left_running_is_marked_when_listed_or_retried(isolated_settings, monkeypatch):
    experiment_id = _toy_experiment(isolated_settings)
    # The backend fails mid-run and stays down for the clean-up too: the run is left RUNNING.
    for request_id in ("req-list", "req-retry"):
        with monkeypatch.context() as patch:
            for method in ("log_batch", "set_tag", "set_terminated"):
                patch.setattr(MlflowClient, method, _down)
            with pytest.raises(BackendUnavailableError):
                _toy_run(experiment_id, request_id)
        (run,) = _request_runs(isolated_settings, experiment_id, request_id)
        assert run.info.status == "RUNNING" and evaluations.is_abandoned(run)

    listed = {s.request_id: s for s in evaluations.latest_evaluations([experiment_id], settings=isolated_settings)}
    assert listed["req-list"].status == "FAILED" and listed["req-list"].state == "interrupted"
    assert {r.info.status for r in _request_runs(isolated_settings, experiment_id, "req-list")} == {"FAILED"}

    run_id = _toy_run(experiment_id, "req-retry")  # the retry marks its own leftover before running
    statuses = sorted(r.info.status for r in _request_runs(isolated_settings, experiment_id, "req-retry"))
    assert statuses == ["FAILED", "FINISHED"]
    assert MlflowClient(tracking_uri=isolated_settings.tracking_uri).get_run(run_id).info.status == "FINISHED"


def test_a_live_run_is_not_marked_and_its_request_cannot_start_twice(isolated_settings):
    import threading

    experiment_id = _toy_experiment(isolated_settings)
    release, predicting = threading.Event(), threading.Event()

    def slow(question: str) -> str:
        predicting.set()
        release.wait(60)
        return f"answer {question}"

    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("run", _toy_run(experiment_id, "req-live", slow)))
    worker.start()
    try:
        assert predicting.wait(60)
        (summary,) = evaluations.latest_evaluations([experiment_id], settings=isolated_settings)
        assert (summary.status, summary.interrupted) == ("RUNNING", None)
        (run,) = _request_runs(isolated_settings, experiment_id, "req-live")
        assert run.info.status == "RUNNING" and not evaluations.is_abandoned(run)
        with pytest.raises(ConflictError, match="still being evaluated"):
            evaluations_running._settle_request(MlflowClient(tracking_uri=isolated_settings.tracking_uri), experiment_id,
                                        "req-live", TOY_TAGS)
    finally:
        release.set()
        worker.join(60)
    (run,) = _request_runs(isolated_settings, experiment_id, "req-live")
    assert run.info.status == "FINISHED" and result["run"] == run.info.run_id


@pytest.mark.parametrize(("owner", "age_hours", "abandoned"), [
    ({"host": "elsewhere", "pid": 1, "process": "other", "attempt": "a"}, 1, False),  # may be running there
    ({"host": "elsewhere", "pid": 1, "process": "other", "attempt": "a"}, 13, True),  # stale
    (None, 1, False),  # a run some other tool is making right now
    (None, 13, True),
    ("this host, exited process", 1, True),
    ("this host, our pid, an earlier process", 1, True),  # the app restarted with the same pid
])
def test_runs_started_elsewhere_are_only_failed_when_surely_dead(isolated_settings, owner, age_hours, abandoned):
    import json
    import os
    import socket
    import subprocess
    import sys
    import time

    experiment_id = _toy_experiment(isolated_settings)
    client = MlflowClient(tracking_uri=isolated_settings.tracking_uri)
    if owner == "this host, exited process":
        exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        owner = {"host": socket.gethostname(), "pid": int(exited.stdout), "process": "gone", "attempt": "a"}
    elif owner == "this host, our pid, an earlier process":
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "process": "before-restart", "attempt": "a"}
    tags = {"mlflow.runType": "genai_evaluate", evaluations.REQUEST_TAG: "req-x"}
    if owner is not None:
        tags[evaluations.OWNER_TAG] = json.dumps(owner)
    started = int((time.time() - age_hours * 3600) * 1000)
    run = client.create_run(experiment_id, start_time=started, tags=tags)
    assert evaluations.is_abandoned(client.get_run(run.info.run_id)) is abandoned
    (summary,) = evaluations.latest_evaluations([experiment_id], settings=isolated_settings)
    assert summary.state == ("interrupted" if abandoned else "running")
    assert client.get_run(run.info.run_id).info.status == ("FAILED" if abandoned else "RUNNING")


def test_a_job_for_a_request_still_going_is_not_started_twice(seeded_settings):
    from services import datasets

    rows = tuple(datasets.load_dataset_rows("orders-agent-golden", seeded_settings)[:3])
    request = EvaluationRequest(ORDERS, "1", ("expected_facts",), rows=rows, dataset_label="three.jsonl",
                                request_id=evaluations.new_request_id())
    first = eval_jobs.start_job(request, seeded_settings)
    assert eval_jobs.start_job(request, seeded_settings) == first
    job = eval_jobs.wait(first, timeout=120)
    assert job.status is eval_jobs.JobStatus.SUCCEEDED and job.request_id == request.request_id, job.error
    again = eval_jobs.start_job(request, seeded_settings)
    assert again != first
    repeat = eval_jobs.wait(again, timeout=120)
    assert repeat.status is eval_jobs.JobStatus.SUCCEEDED and repeat.run_id == job.run_id


def test_the_versions_view_shows_a_run_left_running_as_interrupted(isolated_settings, monkeypatch):
    from services import versions

    experiment_id = _toy_experiment(isolated_settings)
    with monkeypatch.context() as patch:
        for method in ("log_batch", "set_tag", "set_terminated"):
            patch.setattr(MlflowClient, method, _down)
        with pytest.raises(BackendUnavailableError):
            _toy_run(experiment_id, "req-versions")
    (run,) = _request_runs(isolated_settings, experiment_id, "req-versions")
    assert run.info.status == "RUNNING"
    (summary,) = [s for s in versions.evaluations_for(TOY_TAGS[evaluations.AGENT_TAG], isolated_settings,
                                                      experiment_ids=[experiment_id])
                  if s.request_id == "req-versions"]
    assert summary.status == "FAILED" and summary.state == "interrupted"
    assert {r.info.status for r in _request_runs(isolated_settings, experiment_id, "req-versions")} == {"FAILED"}
