"""Evaluation rows are not live traffic: readiness and promotion evidence over workspaces written with
MLflow's public APIs only (no ``agentops.*`` tag or helper in the builders).

``mlflow.genai.evaluate`` writes one trace per row, linked to the evaluated LoggedModel
(``mlflow.modelId``) and to its run (``mlflow.sourceRun``). A version evaluated but never called
has no live traffic; a version with both counts only its live traces.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services import gates, promotion, readiness
from services.gates import CheckStatus, GateRule, RuleKind
from services.identity import Identity, IdentitySource
from services.readiness import Item, Verdict
from tests.realworld.workspace import TRACE_PLAN, UNICODE_AGENT, mlflow_store_at

AGENT = "evaluated-not-served"
LIVE_V1 = 3  # v1: two traces outside any run, one inside a plain (non-evaluation) run
EVAL_ROWS_V2 = 4  # v2: only the rows of one mlflow.genai.evaluate run
LEAD = Identity("lead@example.com", "lead", IdentitySource.OS_USER)


def _build(data_dir: Path) -> dict[str, str]:
    """Two versions registered from LoggedModels; v1 answered live calls, v2 was only evaluated."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.genai.scorers import scorer

    os.environ.setdefault("MLFLOW_GENAI_EVAL_MAX_WORKERS", "2")
    with mlflow_store_at(data_dir) as uri:
        client = MlflowClient(uri, uri)
        experiment_id = client.create_experiment("team bot", artifact_location=(data_dir / "artifacts").as_uri())
        mlflow.set_experiment(experiment_id=experiment_id)
        model_ids = {}
        for number in ("1", "2"):
            model = mlflow.create_external_model(name=f"bot-{number}", experiment_id=experiment_id)
            mv = mlflow.register_model(f"models:/{model.model_id}", AGENT)
            assert str(mv.version) == number
            model_ids[number] = model.model_id
        client.set_registered_model_alias(AGENT, "champion", "1")

        def call(question: str) -> str:
            with mlflow.start_span("agent") as span:
                span.set_inputs({"question": question})
                answer = f"About your order: {question}"
                span.set_outputs({"answer": answer})
            return answer

        mlflow.set_active_model(model_id=model_ids["1"])
        call("live one")
        call("live two")
        with mlflow.start_run(run_name="notebook session"):
            call("live from a notebook run")
        mlflow.clear_active_model()

        @scorer
        def mentions_order(outputs) -> bool:
            return "order" in str(outputs)

        with mlflow.start_run(run_name="evaluate v2"):
            mlflow.genai.evaluate(
                data=[{"inputs": {"question": f"question {i}"}} for i in range(EVAL_ROWS_V2)],
                predict_fn=lambda question: f"About your order: {question}",
                scorers=[mentions_order], model_id=model_ids["2"],
            )
        mlflow.clear_active_model()
        mlflow.flush_trace_async_logging()
    return {"uri": uri, "experiment_id": experiment_id, **model_ids}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from services._clients import configure_mlflow, get_settings
    from services.settings import load_settings

    data_dir = tmp_path_factory.mktemp("eval-only") / "store"
    facts = _build(data_dir)
    settings = configure_mlflow(load_settings({"AGENTOPS_DATA_DIR": str(data_dir)}))
    yield facts, settings
    configure_mlflow(get_settings())


def test_the_builder_wrote_evaluation_rows_linked_to_v2(workspace):
    """The store really links the evaluation rows to v2's LoggedModel (so counting them would show)."""
    from mlflow import MlflowClient

    facts, _ = workspace
    client = MlflowClient(facts["uri"], facts["uri"])
    for number, expected in (("1", LIVE_V1), ("2", EVAL_ROWS_V2)):
        traces = client.search_traces(locations=[facts["experiment_id"]],
                                      filter_string=f"metadata.`mlflow.modelId` = '{facts[number]}'")
        assert len(traces) == expected
    v2_rows = client.search_traces(locations=[facts["experiment_id"]],
                                   filter_string=f"metadata.`mlflow.modelId` = '{facts['2']}'")
    assert all(t.info.trace_metadata.get("mlflow.sourceRun") for t in v2_rows)


def test_a_version_with_only_evaluation_rows_has_no_live_traffic(workspace):
    _, settings = workspace
    report = readiness.assess(AGENT, "2", settings)
    traces = report.check(Item.TRACES)
    assert traces.verdict is Verdict.FAIL
    assert f"only evaluation rows ({EVAL_ROWS_V2})" in traces.reason and "no live trace" in traces.reason
    assert report.gate.evidence.candidate_traffic.traces == 0


def test_live_traces_count_including_those_of_a_plain_run(workspace):
    _, settings = workspace
    traces = readiness.assess(AGENT, "1", settings).check(Item.TRACES)
    assert traces.verdict is Verdict.PASS
    assert traces.reason.startswith(f"{LIVE_V1} live trace(s)")
    # The versions list shares the agent-level reads: the same verdicts.
    many = readiness.assess_versions(AGENT, ["1", "2"], settings)
    assert many["1"].check(Item.TRACES).verdict is Verdict.PASS
    assert many["2"].check(Item.TRACES).verdict is Verdict.FAIL


def test_promotion_evidence_counts_live_requests_only(workspace):
    _, settings = workspace
    gates.set_gate_rules(AGENT, [GateRule(RuleKind.MAX_P95_MS, 60_000)], LEAD, settings)
    try:
        plan = promotion.plan_promotion(AGENT, "champion", "2", settings)
        assert (plan.current_version, plan.target_version) == ("1", "2")
        assert plan.evidence.candidate_traffic.traces == 0
        assert plan.evidence.current_traffic.traces == LIVE_V1
        # The latency rule has no live data for v2, rather than passing on evaluation rows' latency.
        (check,) = plan.checks
        assert check.status is CheckStatus.NO_DATA and "no live traces" in check.detail
        assert plan.evidence.summary()["candidate_live_traces"] == 0
        assert plan.readiness.check(Item.TRACES).verdict is Verdict.FAIL
    finally:
        gates.set_gate_rules(AGENT, [], LEAD, settings)


def test_a_version_evaluated_and_served_counts_only_its_live_traces(realworld, realworld_settings):
    """The shared real-world workspace: v2 answered live calls and was evaluated with its LoggedModel."""
    support = realworld.agents[UNICODE_AGENT]
    with_model = realworld.eval_runs["with_model"]
    evaluated = next(v for v in support.versions.values() if v.model_id == with_model.model_id)
    live = TRACE_PLAN[evaluated.version][0]
    assert evaluated.traces == live  # the builder's live traces, evaluation rows apart
    others = [n for n in support.versions if n != evaluated.version]
    plan = promotion.plan_promotion(UNICODE_AGENT, "champion", others[0], realworld_settings)
    assert plan.current_version == evaluated.version
    assert plan.evidence.current_traffic.traces == live
    report = readiness.assess(UNICODE_AGENT, evaluated.version, realworld_settings)
    assert report.check(Item.TRACES).reason.startswith(f"{live} live trace(s)")
    assert report.gate.evidence.candidate_traffic.traces == live
