"""Release readiness over a real MLflow store, with versions built to pass and to fail each item."""

from __future__ import annotations

import copy
import os
from datetime import datetime, timezone

import mlflow
import pytest

from services import alerts, gates, readiness, registry, releases, serving, versions
from services._clients import get_or_create_experiment, mlflow_client
from services.errors import NotFoundError, ValidationError
from services.gates import GateRule, RuleKind
from services.identity import Identity, IdentitySource
from services.promotion import PromotionRequest
from services.readiness import Item, Verdict
from services.readiness.context import AgentContext
from services.readiness.items import uc_check

AGENT = "ready-agent"
LEAD = Identity("lead@example.com", "lead", IdentitySource.OS_USER)
EXAMPLE = {"question": "What is MLflow?"}
PINNED = [f"mlflow=={mlflow.__version__}"]
ALLOW_LOAD = "AGENTOPS_TEST_ALLOW_BROKEN_LOAD"
GATE = [GateRule(RuleKind.MIN_VALUE, 0.5, "quality/mean")]
BIG = [{"inputs": {"question": f"Question number {i}?"}, "expectations": {"expected_facts": [f"fact {i}"]}}
       for i in range(25)]
TINY = BIG[:3]
DUPES = [{"inputs": {"question": f"Same question {i % 2}?"}} for i in range(25)]


def _echo_model():
    # Defined in a function so cloudpickle stores it by value: the check process can load it.
    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    return Echo()


def _broken_model():
    class Broken(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            import os as _os

            if _os.environ.get("AGENTOPS_TEST_ALLOW_BROKEN_LOAD") != "1":
                raise RuntimeError("cannot reach the vector index")

        def predict(self, context, model_input, params=None):
            return model_input

    return Broken()


def _evaluate(experiment_id: str, version: int, dataset: str, quality: float, name: str = AGENT) -> None:
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"eval {name} v{version}",
        tags={"mlflow.runType": "genai_evaluate", "agentops.agent": name,
              "agentops.version": str(version), "agentops.dataset": dataset},
    ):
        mlflow.log_metric("quality/mean", quality)


def build_ready_agent(settings, name: str = AGENT, *, with_datasets: bool = True) -> str:
    """v1 passes every item; v2 has no signature/example, unpinned requirements, no traces, a tiny
    dataset and fails the gate; v3 raises on load and was evaluated on a dataset of duplicates."""
    from services import datasets

    client = mlflow_client(settings)
    experiment_id = get_or_create_experiment(client, f"agentops-{name}", settings)
    # v1: signature + input example + pinned requirements; one traced prediction linked to it.
    with mlflow.start_run(experiment_id=experiment_id, run_name="v1-build"):
        info = mlflow.pyfunc.log_model(name="agent", python_model=_echo_model(), registered_model_name=name,
                                       pip_requirements=PINNED, input_example=EXAMPLE)
        mlflow.set_active_model(model_id=info.model_id)
        try:
            with mlflow.start_span("predict") as span:
                span.set_inputs(EXAMPLE)
                span.set_outputs(EXAMPLE)
        finally:
            mlflow.clear_active_model()
    mlflow.flush_trace_async_logging()
    # v2: no input example (so no signature), requirement not pinned.
    with mlflow.start_run(experiment_id=experiment_id, run_name="v2-build"):
        mlflow.pyfunc.log_model(name="agent", python_model=_echo_model(), registered_model_name=name,
                                pip_requirements=["mlflow"])
    # v3: loads only while logging; anywhere else load_context raises.
    os.environ[ALLOW_LOAD] = "1"
    try:
        with mlflow.start_run(experiment_id=experiment_id, run_name="v3-build"):
            mlflow.pyfunc.log_model(name="agent", python_model=_broken_model(), registered_model_name=name,
                                    pip_requirements=PINNED, input_example=EXAMPLE)
    finally:
        os.environ.pop(ALLOW_LOAD, None)
    client.set_registered_model_tag(name, registry.EXPERIMENT_TAG, experiment_id)
    client.set_registered_model_alias(name, "champion", "1")
    if with_datasets:
        # merge_records adds keys to the rows it is given: pass copies.
        for suffix, rows in (("big", BIG), ("tiny", TINY), ("dupes", DUPES)):
            datasets.save_dataset(f"{name}-{suffix}", copy.deepcopy(rows), experiment_id, settings)
    _evaluate(experiment_id, 1, f"{name}-big", 0.9, name)
    _evaluate(experiment_id, 2, f"{name}-tiny", 0.2, name)
    _evaluate(experiment_id, 3, f"{name}-dupes", 0.9, name)
    gates.set_gate_rules(name, GATE, LEAD, settings)
    serving.save_local_endpoint(
        serving.Endpoint(
            name=f"{name}-staging", served=(serving.ServedVersion(f"{name}-1", name, "1"),),
            routes=(serving.TrafficRoute(f"{name}-1", 100),), state=serving.EndpointState.READY,
            updated_at=datetime.now(tz=timezone.utc), updated_by="test",
        ),
        settings,
    )
    alerts.save_thresholds(settings, name, alerts.AlertThresholds(p95_latency_ms=3000.0))
    return info.model_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One isolated store for the module (building it takes a few seconds)."""
    from services._clients import configure_mlflow, get_settings
    from services.settings import load_settings

    settings = configure_mlflow(load_settings({"AGENTOPS_DATA_DIR": str(tmp_path_factory.mktemp("ready") / "store")}))
    build_ready_agent(settings)
    configure_mlflow(get_settings())
    return settings


@pytest.fixture
def ready(store):
    from services._clients import configure_mlflow, get_settings

    configure_mlflow(store)
    yield store
    configure_mlflow(get_settings())


@pytest.fixture(scope="module")
def reports(store):
    """The checklist of v1, v2 and v3 without the load check."""
    from services._clients import configure_mlflow, get_settings

    configure_mlflow(store)
    try:
        return {v: readiness.assess(AGENT, v, store) for v in ("1", "2", "3")}
    finally:
        configure_mlflow(get_settings())


EXPECTED = {
    # item: (v1, v2, v3)
    Item.SIGNATURE: (Verdict.PASS, Verdict.FAIL, Verdict.PASS),
    Item.INPUT_EXAMPLE: (Verdict.PASS, Verdict.FAIL, Verdict.PASS),
    Item.REQUIREMENTS: (Verdict.PASS, Verdict.FAIL, Verdict.PASS),
    Item.TRACES: (Verdict.PASS, Verdict.FAIL, Verdict.FAIL),
    Item.DATASETS: (Verdict.PASS, Verdict.FAIL, Verdict.FAIL),
    Item.GATE: (Verdict.PASS, Verdict.FAIL, Verdict.PASS),
    Item.LOADS: (Verdict.UNKNOWN, Verdict.UNKNOWN, Verdict.UNKNOWN),  # not run in this fixture
    Item.UNITY_CATALOG: (Verdict.UNKNOWN, Verdict.UNKNOWN, Verdict.UNKNOWN),  # local backend
    Item.SERVED: (Verdict.PASS, Verdict.FAIL, Verdict.FAIL),
    Item.ALERTS: (Verdict.PASS, Verdict.PASS, Verdict.PASS),
    Item.LIVE_SCORERS: (Verdict.FAIL, Verdict.FAIL, Verdict.FAIL),  # none configured in this fixture
}


@pytest.mark.parametrize("item", list(EXPECTED))
def test_each_item_has_the_expected_verdict_per_version(reports, item):
    got = tuple(reports[v].check(item).verdict for v in ("1", "2", "3"))
    assert got == EXPECTED[item], [reports[v].check(item).reason for v in ("1", "2", "3")]


def test_every_non_passing_item_says_why_and_how_to_fix(reports):
    for report in reports.values():
        assert len(report.checks) == len(Item)
        for check in report.checks:
            assert check.reason
            assert bool(check.fix) == (check.verdict is not Verdict.PASS), check


def test_reasons_name_the_problem(reports):
    v2 = reports["2"]
    assert "mlflow" in v2.check(Item.REQUIREMENTS).reason
    assert "3 row" in v2.check(Item.DATASETS).reason
    assert "quality/mean" in v2.check(Item.GATE).reason
    assert "distinct" in reports["3"].check(Item.DATASETS).reason
    assert "100%" in reports["1"].check(Item.SERVED).reason


def test_required_items_block_and_others_do_not(reports):
    # Defaults: the gate and the load check are required.
    assert not reports["1"].blocked
    assert [c.item for c in reports["2"].failures] == [Item.GATE]
    assert reports["2"].blocked
    assert not reports["3"].blocked  # its load check has not run: unknown never blocks


def test_load_check_passes_for_a_working_model(ready):
    stages = []
    result = readiness.check_load(AGENT, "1", ready, progress=stages.append)
    assert result.ok, result.error
    assert "question" in result.output_preview
    assert any("Loading" in s for s in stages) and stages[-1] == "Done"


def test_model_that_raises_on_load_fails_with_its_error_and_blocks(ready):
    report = readiness.assess(AGENT, "3", ready, run_load=True)
    check = report.check(Item.LOADS)
    assert check.verdict is Verdict.FAIL
    assert "cannot reach the vector index" in check.reason
    assert report.load.stage == "load"
    assert report.blocked and [c.item for c in report.failures] == [Item.LOADS]


def test_model_without_input_example_fails_the_load_check(ready):
    result = readiness.check_load(AGENT, "2", ready)
    assert not result.ok and result.stage == "input_example"


def test_load_check_timeout_stops_the_process(ready):
    result = readiness.check_load(AGENT, "1", ready, timeout=0.5)
    assert not result.ok and result.stage == "timeout"


def test_required_items_travel_as_a_tag(ready):
    readiness.set_required_items(AGENT, ["gate", "signature", "requirements_pinned"], LEAD, ready)
    try:
        report = readiness.assess(AGENT, "2", ready)
        assert {c.item for c in report.failures} == {Item.GATE, Item.SIGNATURE, Item.REQUIREMENTS}
        assert not readiness.assess(AGENT, "1", ready).blocked
    finally:
        mlflow_client(ready).delete_registered_model_tag(AGENT, readiness.REQUIRED_TAG)


def test_list_mode_matches_single_mode_without_the_load_check(ready, reports):
    many = readiness.assess_versions(AGENT, ["1", "2", "3"], ready)
    for number, report in many.items():
        assert [(c.item, c.verdict) for c in report.checks] == [(c.item, c.verdict) for c in reports[number].checks]
    assert many["1"].summary().startswith("8/11 pass")  # 11 items since "live scorers configured"


def test_promotion_blocked_by_a_required_item_needs_an_override_and_is_audited(isolated_settings):
    build_ready_agent(isolated_settings, with_datasets=False)
    broken = readiness.check_load(AGENT, "3", isolated_settings)
    with pytest.raises(gates.GateBlockedError, match="Loads and answers"):
        releases.promote(PromotionRequest(AGENT, "champion", "3", load=broken), LEAD, settings=isolated_settings)
    assert releases.alias_history(AGENT, settings=isolated_settings) == []

    request = PromotionRequest(AGENT, "champion", "3", load=broken, override=True, reason="known issue, fixed by config")
    result = releases.promote(request, LEAD, settings=isolated_settings)
    change = result.change
    assert change.override and change.to_version == "3"
    assert change.evidence["readiness"]["failing_required"] == ["loads_and_predicts"]


def test_challenger_traces_count_as_served(isolated_settings):
    build_ready_agent(isolated_settings, with_datasets=False)
    client = mlflow_client(isolated_settings)
    v3 = client.get_model_version(AGENT, "3")
    assert readiness.assess(AGENT, "3", isolated_settings).check(Item.SERVED).verdict is Verdict.FAIL
    experiment_id = client.get_registered_model(AGENT).tags[registry.EXPERIMENT_TAG]
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.set_active_model(model_id=versions.model_id_of(v3.source))
        try:
            with mlflow.start_span("served") as span:
                trace_id = span.trace_id
        finally:
            mlflow.clear_active_model()
    mlflow.flush_trace_async_logging()
    client.set_trace_tag(trace_id, readiness.ALIAS_TRACE_TAG, "champion,challenger")

    report = readiness.assess(AGENT, "3", isolated_settings)
    assert report.check(Item.SERVED).verdict is Verdict.PASS
    assert "challenger" in report.check(Item.SERVED).reason
    assert report.check(Item.TRACES).verdict is Verdict.PASS


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: readiness.assess("", "1", s), ValidationError),
        (lambda s: readiness.assess(AGENT, "x", s), ValidationError),
        (lambda s: readiness.assess(AGENT, "1", s, against="latest"), ValidationError),
        (lambda s: readiness.assess(AGENT, "1", s, required=["nope"]), ValidationError),
        (lambda s: readiness.check_load(AGENT, "1", s, timeout=0), ValidationError),
        (lambda s: readiness.assess(AGENT, "42", s), NotFoundError),
        (lambda s: readiness.check_load(AGENT, "42", s), NotFoundError),
    ],
)
def test_bad_input_is_a_typed_error(ready, call, error):
    with pytest.raises(error):
        call(ready)


def test_unpinned_requirement_parsing():
    assert readiness.unpinned_requirements(
        ["mlflow==3.17.2", "# comment", "", "pandas>=2", "numpy", "-r other.txt", "pkg @ https://x/y.whl",
         "torch==2.1; python_version>'3.9'"]
    ) == ["pandas>=2", "numpy"]


@pytest.mark.parametrize("raw", ['{"a": 1}', "[\"nope\"]", "not json"])
def test_malformed_required_tag_is_a_validation_error(raw):
    with pytest.raises(ValidationError):
        readiness.parse_required(raw)


@pytest.mark.parametrize(
    ("backend", "name", "verdict"),
    [("databricks", "main.agents.support", Verdict.PASS), ("databricks", "support", Verdict.FAIL),
     ("databricks", "main..support", Verdict.FAIL), ("local", "main.agents.support", Verdict.UNKNOWN)],
)
def test_unity_catalog_name_item(backend, name, verdict):
    from services.settings import load_settings

    settings = load_settings({"AGENTOPS_BACKEND": backend, "DATABRICKS_HOST": "https://example.cloud.databricks.com"})
    ctx = AgentContext(name, settings, None, None, [], [], {}, frozenset(), [], "", {}, "")
    item, got, reason, fix = uc_check(ctx)
    assert (item, got) == (Item.UNITY_CATALOG, verdict)
    assert reason and (fix or got is Verdict.PASS)


def test_live_scorers_and_alert_rules_make_their_items_pass(isolated_settings, tmp_path, monkeypatch):
    from services import alerting, live_scoring
    from services.live_scoring import LiveScoringConfig

    monkeypatch.setenv("AGENTOPS_ALERT_CHANNELS_FILE", str(tmp_path / "private" / "channels.json"))
    build_ready_agent(isolated_settings, "watched-agent")
    before = readiness.assess("watched-agent", "1", isolated_settings)
    assert before.check(Item.LIVE_SCORERS).verdict is Verdict.FAIL
    assert "Live scoring" in before.check(Item.LIVE_SCORERS).fix
    live_scoring.save_config("watched-agent", LiveScoringConfig(scorers=("latency_budget",), sample_rate=0.25),
                             identity=LEAD, settings=isolated_settings)
    alerting.save_channel(isolated_settings, "oncall", "json://127.0.0.1:9/hooks/x", LEAD)
    alerting.save_rule(isolated_settings, dict(name="errors", measure="error_rate", threshold=0.3, window_minutes=60,
                                               min_sample=20, agent="watched-agent", channels=["oncall"]), LEAD)
    after = readiness.assess("watched-agent", "1", isolated_settings)
    live = after.check(Item.LIVE_SCORERS)
    assert live.verdict is Verdict.PASS and "latency_budget on 25% of traces" in live.reason
    assert "1 alert rule(s)" in after.check(Item.ALERTS).reason
    live_scoring.save_config("watched-agent", LiveScoringConfig(scorers=("latency_budget",), sample_rate=0.25,
                                                                enabled=False),
                             identity=LEAD, settings=isolated_settings)
    off = readiness.assess("watched-agent", "1", isolated_settings).check(Item.LIVE_SCORERS)
    assert off.verdict is Verdict.FAIL and "switched off" in off.reason
