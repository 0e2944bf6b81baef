"""Promote, block, override, roll back and audit alias changes over a real MLflow store."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

from services import audit, gates, registry, releases
from services._clients import get_or_create_experiment, mlflow_client
from services.audit import AliasAction, GateOutcome
from services.errors import BackendUnavailableError, ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from services.gates import CheckStatus, GateRule, RuleKind
from services.identity import Identity, IdentitySource
from services.promotion import PromotionRequest, RollbackRequest, Seen
from services.releases import Drift

AGENT = "release-agent"
DATASET = "release-golden"
ALICE = Identity("alice@example.com", "alice", IdentitySource.DATABRICKS_APPS)
BOB = Identity("bob@example.com", "bob", IdentitySource.DATABRICKS_APPS)
# Version -> evaluation metrics on DATASET: v3 drops expected_facts sharply.
METRICS = {
    1: {"expected_facts/mean": 0.60, "required_tools/mean": 1.0},
    2: {"expected_facts/mean": 0.90, "required_tools/mean": 1.0},
    3: {"expected_facts/mean": 0.40, "required_tools/mean": 0.95},
}
GATE = [
    GateRule(RuleKind.MAX_DROP, 0.05, "expected_facts/mean"),
    GateRule(RuleKind.MIN_VALUE, 0.5, "expected_facts/mean"),
]


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def build_agent(settings, name: str = AGENT, metrics: dict[int, dict[str, float]] = METRICS,
                dataset: str = DATASET, champion: int | None = 1) -> str:
    """Register ``len(metrics)`` versions with params, a git tag and one evaluation run each."""
    client = mlflow_client(settings)
    experiment_id = get_or_create_experiment(client, f"agentops-{name}", settings)
    for number, values in sorted(metrics.items()):
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"{name}-v{number}-build"):
            mlflow.pyfunc.log_model(
                name="agent", python_model=_Echo(), registered_model_name=name, pip_requirements=["mlflow"],
                params={"temperature": f"0.{number}", "llm_model": "gpt-4o-mini"},
            )
        client.set_model_version_tag(name, str(number), registry.GIT_COMMIT_TAG, f"{number:040d}")
        with mlflow.start_run(
            experiment_id=experiment_id, run_name=f"eval {name} v{number}",
            tags={"mlflow.runType": "genai_evaluate", "agentops.agent": name,
                  "agentops.version": str(number), "agentops.dataset": dataset},
        ):
            for key, value in values.items():
                mlflow.log_metric(key, value)
    client.set_registered_model_tag(name, registry.EXPERIMENT_TAG, experiment_id)
    if champion is not None:
        client.set_registered_model_alias(name, "champion", str(champion))
    return experiment_id


def _registry_alias(settings, alias: str, name: str = AGENT) -> str | None:
    # The registry returns versions as ints in the aliases dict; the services use text.
    held = MlflowClient(settings.tracking_uri, settings.tracking_uri).get_registered_model(name).aliases.get(alias)
    return None if held is None else str(held)


def _assert_trail_agrees(settings, alias: str = "champion") -> None:
    """The newest record's to-version is what the registry holds."""
    history = releases.alias_history(AGENT, alias, settings)
    assert history, "no record"
    assert history[0].to_version == _registry_alias(settings, alias)
    assert releases.alias_state(AGENT, alias, settings).drift is Drift.RECORDED


@pytest.fixture
def store(isolated_settings):
    build_agent(isolated_settings)
    gates.set_gate_rules(AGENT, GATE, ALICE, isolated_settings)
    return isolated_settings


def test_plan_shows_before_after_and_same_dataset_evidence(store):
    plan = releases.plan_promotion(AGENT, "champion", "2", store)

    assert (plan.current_version, plan.target_version) == ("1", "2")
    assert plan.evidence.dataset == DATASET
    assert plan.evidence.candidate_eval.version == "2" and plan.evidence.current_eval.version == "1"
    deltas = {d.metric: d.delta for d in plan.evidence.deltas}
    assert deltas["expected_facts/mean"] == pytest.approx(0.30)
    assert deltas["required_tools/mean"] == pytest.approx(0.0)
    assert [c.status for c in plan.checks] == [CheckStatus.PASS, CheckStatus.PASS]
    assert not plan.blocked
    assert _registry_alias(store, "champion") == "1"  # planning changes nothing
    assert releases.alias_history(AGENT, settings=store) == []


def test_promote_moves_the_alias_and_records_who_when_and_evidence(store):
    before = datetime.now(tz=timezone.utc)
    result = releases.promote(PromotionRequest(AGENT, "champion", 2, reason="better facts"), ALICE, settings=store)

    assert _registry_alias(store, "champion") == "2"
    change = result.change
    assert (change.from_version, change.to_version, change.requested_version) == ("1", "2", "2")
    assert change.user == ALICE.user and change.reason == "better facts"
    assert change.gate is GateOutcome.PASSED and not change.override
    assert change.action is AliasAction.PROMOTE
    assert change.at >= before - timedelta(seconds=1)
    assert change.evidence["dataset"] == DATASET
    assert change.evidence["metrics"]["expected_facts/mean"]["delta"] == pytest.approx(0.30)
    stored = releases.alias_history(AGENT, "champion", store)
    assert [c.run_id for c in stored] == [change.run_id]
    assert stored[0] == change
    _assert_trail_agrees(store)


def test_blocked_promotion_changes_nothing(store):
    plan = releases.plan_promotion(AGENT, "champion", "3", store)
    assert plan.blocked
    assert {c.status for c in plan.checks} == {CheckStatus.FAIL}

    with pytest.raises(gates.GateBlockedError, match="Nothing changed"):
        releases.promote(PromotionRequest(AGENT, "champion", "3"), ALICE, settings=store)

    assert _registry_alias(store, "champion") == "1"
    assert releases.alias_history(AGENT, settings=store) == []


def test_override_needs_a_written_reason_and_is_recorded_as_such(store):
    with pytest.raises(ValidationError, match="reason"):
        releases.promote(PromotionRequest(AGENT, "champion", "3", override=True, reason="  "), ALICE, settings=store)
    assert _registry_alias(store, "champion") == "1"

    result = releases.promote(PromotionRequest(AGENT, "champion", "3", override=True, reason="hotfix for incident 42"),
                              ALICE, settings=store)

    assert _registry_alias(store, "champion") == "3"
    assert result.change.gate is GateOutcome.OVERRIDDEN and result.change.override
    assert result.change.reason == "hotfix for incident 42"
    assert any(c["status"] == "fail" for c in result.change.evidence["checks"])
    _assert_trail_agrees(store)


def test_rollback_restores_the_previous_holder(store):
    releases.promote(PromotionRequest(AGENT, "champion", "2"), ALICE, settings=store)
    state = releases.alias_state(AGENT, "champion", store)
    assert (state.version, state.previous_version) == ("2", "1")

    result = releases.rollback(RollbackRequest(AGENT, "champion", reason="latency regression"), BOB, settings=store)

    assert _registry_alias(store, "champion") == "1"
    assert result.change.action is AliasAction.ROLLBACK
    assert (result.change.from_version, result.change.to_version) == ("2", "1")
    assert result.change.user == BOB.user
    _assert_trail_agrees(store)


def test_rollback_without_history_is_refused(store):
    with pytest.raises(NotFoundError, match="No previous holder"):
        releases.rollback(RollbackRequest(AGENT, "champion"), ALICE, settings=store)
    assert _registry_alias(store, "champion") == "1"


def test_holder_at_time_t(store):
    start = datetime.now(tz=timezone.utc)
    time.sleep(0.02)
    releases.promote(PromotionRequest(AGENT, "champion", "2"), ALICE, settings=store)
    time.sleep(0.02)
    middle = datetime.now(tz=timezone.utc)
    time.sleep(0.02)
    releases.promote(PromotionRequest(AGENT, "champion", "3", override=True, reason="test"), ALICE, settings=store)

    assert releases.holder_at(AGENT, "champion", start, store) == "1"
    assert releases.holder_at(AGENT, "champion", middle, store) == "2"
    assert releases.holder_at(AGENT, "champion", datetime.now(tz=timezone.utc), store) == "3"
    assert releases.holder_at(AGENT, "challenger", middle, store) is None


def test_alias_moved_outside_the_app_is_detected(store):
    releases.promote(PromotionRequest(AGENT, "champion", "2"), ALICE, settings=store)
    MlflowClient(store.tracking_uri, store.tracking_uri).set_registered_model_alias(AGENT, "champion", "3")

    state = releases.alias_state(AGENT, "champion", store)
    assert state.drift is Drift.EXTERNAL
    assert (state.version, state.last_change.to_version, state.previous_version) == ("3", "2", "2")
    states = {s.alias: s for s in releases.alias_states(AGENT, store)}
    assert states["champion"].drift is Drift.EXTERNAL

    # A one-click rollback records the real before-state (v3), not the stale record (v2).
    result = releases.rollback(RollbackRequest(AGENT, "champion"), ALICE, settings=store)
    assert (result.change.from_version, result.change.to_version) == ("3", "2")
    _assert_trail_agrees(store)


def test_alias_removed_outside_the_app_is_detected(store):
    releases.promote(PromotionRequest(AGENT, "champion", "2"), ALICE, settings=store)
    MlflowClient(store.tracking_uri, store.tracking_uri).delete_registered_model_alias(AGENT, "champion")
    assert releases.alias_state(AGENT, "champion", store).drift is Drift.REMOVED


def test_unrecorded_alias_is_reported(store):
    assert releases.alias_state(AGENT, "champion", store).drift is Drift.UNRECORDED


@pytest.mark.parametrize(
    ("alias", "version", "error", "match"),
    [
        ("champion", "9", NotFoundError, "no version 9"),
        ("champion", "abc", ValidationError, "not a version number"),
        ("latest", "2", ValidationError, "reserved"),
        ("v2", "2", ValidationError, "reserved"),
        ("has space", "2", ValidationError, "not a valid alias"),
        ("", "2", ValidationError, "empty"),
    ],
)
def test_bad_input_is_a_typed_error_and_changes_nothing(store, alias, version, error, match):
    with pytest.raises(error, match=match):
        releases.promote(PromotionRequest(AGENT, alias, version), ALICE, settings=store)
    assert _registry_alias(store, "champion") == "1"
    assert releases.alias_history(AGENT, settings=store) == []


def test_missing_agent_is_not_found(store):
    with pytest.raises(NotFoundError):
        releases.promote(PromotionRequest("no-such-agent", "champion", "1"), ALICE, settings=store)


def test_permission_refused_is_typed_and_leaves_alias_and_trail_unchanged(store, monkeypatch):
    def refuse(self, name, alias, version):
        raise MlflowException("User lacks MANAGE on the model", error_code=PERMISSION_DENIED)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refuse)
    with pytest.raises(PermissionDeniedError, match="refused"):
        releases.promote(PromotionRequest(AGENT, "champion", "2"), ALICE, settings=store)
    monkeypatch.undo()
    assert _registry_alias(store, "champion") == "1"
    assert releases.alias_history(AGENT, settings=store) == []
    # The intent written before the refused call is closed and leaves no trace in the trail.
    assert releases.alias_history(AGENT, settings=store, include_interrupted=True) == []
    assert releases.alias_state(AGENT, "champion", store).drift is Drift.UNRECORDED


def test_stale_confirmation_is_a_conflict(store):
    releases.promote(PromotionRequest(AGENT, "champion", "2"), ALICE, settings=store)
    with pytest.raises(ConflictError, match="now points to v2"):
        releases.promote(PromotionRequest(AGENT, "champion", "2", seen=Seen("1")), BOB, settings=store)
    assert len(releases.alias_history(AGENT, settings=store)) == 1


def test_concurrent_promotions_leave_a_trail_that_agrees_with_the_registry(store):
    gates.set_gate_rules(AGENT, [], ALICE, store)
    targets = ["2", "3", "2", "3", "1", "2"]
    errors: list[Exception] = []
    barrier = threading.Barrier(len(targets))

    def run(version: str, who: Identity) -> None:
        barrier.wait()
        try:
            releases.promote(PromotionRequest(AGENT, "champion", version), who, settings=store)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v, ALICE if i % 2 else BOB)) for i, v in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    history = list(reversed(releases.alias_history(AGENT, "champion", store)))
    assert len(history) == len(targets)
    # Each record's before-state is the previous record's after-state: a consistent chain.
    assert history[0].from_version == "1"
    for earlier, later in zip(history, history[1:]):
        assert later.from_version == earlier.to_version
    _assert_trail_agrees(store)


def _backend_down(monkeypatch, method: str = "set_registered_model_alias") -> None:
    def down(self, *args, **kwargs):
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(MlflowClient, method, down)


def test_a_retry_with_the_same_request_id_changes_and_records_once(store):
    first = releases.promote(PromotionRequest(AGENT, "champion", "2", seen=Seen("1"), request_id="req-1"), ALICE, settings=store)
    again = releases.promote(PromotionRequest(AGENT, "champion", "2", seen=Seen("1"), request_id="req-1"), ALICE, settings=store)
    assert again.change == first.change and first.change.request_id == "req-1"
    assert "already carried out" in again.messages[0]
    assert [c.run_id for c in releases.alias_history(AGENT, settings=store)] == [first.change.run_id]
    with pytest.raises(ValidationError, match="not v3"):
        releases.promote(PromotionRequest(AGENT, "champion", "3", override=True, reason="x", request_id="req-1"), ALICE, settings=store)
    with pytest.raises(ValidationError, match="request id"):
        releases.promote(PromotionRequest(AGENT, "champion", "2", request_id="bad id'"), ALICE, settings=store)
    assert _registry_alias(store, "champion") == "2"


@pytest.mark.parametrize("method", ["set_registered_model_alias", "log_batch"])
def test_an_interrupted_promotion_reads_as_interrupted_and_its_retry_completes_once(store, monkeypatch, method):
    _backend_down(monkeypatch, method)
    with pytest.raises(BackendUnavailableError, match="recorded as interrupted .request req-9"):
        releases.promote(PromotionRequest(AGENT, "champion", "2", seen=Seen("1"), request_id="req-9"), ALICE, settings=store)
    monkeypatch.undo()
    moved = method == "log_batch"  # the backend failed after the alias call went through
    assert _registry_alias(store, "champion") == ("2" if moved else "1")
    assert releases.alias_history(AGENT, settings=store) == []  # not a completed change
    [intent] = releases.alias_history(AGENT, settings=store, include_interrupted=True)
    assert intent.status is audit.ChangeStatus.INTERRUPTED and intent.to_version is None
    state = releases.alias_state(AGENT, "champion", store)
    assert state.drift is Drift.INTERRUPTED and state.interrupted == intent and state.previous_version is None
    assert releases.holder_at(AGENT, "champion", datetime.now(timezone.utc), store) is None

    result = releases.promote(PromotionRequest(AGENT, "champion", "2", seen=Seen("1"), request_id="req-9"), ALICE, settings=store)
    assert result.change.run_id == intent.run_id and result.change.completed
    assert (result.change.from_version, result.change.to_version) == ("1", "2")
    assert [c.run_id for c in releases.alias_history(AGENT, settings=store, include_interrupted=True)] == [intent.run_id]
    _assert_trail_agrees(store)


def test_an_interrupted_promotion_overtaken_by_another_change_is_closed_as_a_conflict(store, monkeypatch):
    _backend_down(monkeypatch)
    with pytest.raises(BackendUnavailableError):
        releases.promote(PromotionRequest(AGENT, "champion", "2", request_id="req-5"), ALICE, settings=store)
    monkeypatch.undo()
    releases.promote(PromotionRequest(AGENT, "champion", "3", override=True, reason="hotfix"), BOB, settings=store)
    with pytest.raises(ConflictError, match="another change happened"):
        releases.promote(PromotionRequest(AGENT, "champion", "2", request_id="req-5"), ALICE, settings=store)
    assert _registry_alias(store, "champion") == "3"
    assert [c.to_version for c in releases.alias_history(AGENT, settings=store, include_interrupted=True)] == ["3"]
    _assert_trail_agrees(store)


def test_gate_rules_travel_as_a_registered_model_tag(store):
    tag = MlflowClient(store.tracking_uri, store.tracking_uri).get_registered_model(AGENT).tags[gates.GATE_TAG]
    assert gates.parse_rules(tag) == GATE
    assert gates.gate_rules(AGENT, store) == GATE
    gates.set_gate_rules(AGENT, [], ALICE, store)
    assert gates.gate_rules(AGENT, store) == []


@pytest.mark.parametrize(
    "rule",
    [GateRule(RuleKind.MIN_VALUE, 0.5, None), GateRule(RuleKind.MAX_DROP, -1, "expected_facts/mean")],
)
def test_invalid_gate_rules_are_refused_before_io(store, rule):
    with pytest.raises(ValidationError):
        gates.set_gate_rules(AGENT, [rule], ALICE, store)
    assert gates.gate_rules(AGENT, store) == GATE


def test_latency_and_cost_rules_without_traces_do_not_block(store):
    gates.set_gate_rules(AGENT, [GateRule(RuleKind.MAX_P95_MS, 100), GateRule(RuleKind.MAX_COST, 0.001)],
                            ALICE, store)
    plan = releases.plan_promotion(AGENT, "champion", "3", store)
    assert [c.status for c in plan.checks] == [CheckStatus.NO_DATA, CheckStatus.NO_DATA]
    assert not plan.blocked


def test_audit_records_live_in_the_audit_experiment(store):
    releases.promote(PromotionRequest(AGENT, "challenger", "2"), ALICE, settings=store)
    client = MlflowClient(store.tracking_uri, store.tracking_uri)
    experiment = client.get_experiment_by_name(store.audit_experiment)
    # The fixture's gate-rule edit is in the same trail, as its own kind of change.
    kinds = [r.data.tags[audit.KIND_TAG] for r in client.search_runs([experiment.experiment_id])]
    assert sorted(kinds) == ["alias_change", "gate_rules"]
    runs = client.search_runs([experiment.experiment_id], f"tags.`{audit.KIND_TAG}` = 'alias_change'")
    assert len(runs) == 1
    assert runs[0].data.tags[audit.USER_TAG] == ALICE.user
    assert runs[0].data.tags[audit.ALIAS_TAG] == "challenger"
    assert runs[0].data.tags[audit.FROM_TAG] == ""  # the alias did not exist before
    assert releases.alias_state(AGENT, "challenger", store).previous_version is None


@pytest.fixture(scope="module")
def server_settings(tmp_path_factory):
    """Settings of a real ``mlflow server`` process on a free port (stopped by its PID after)."""
    from tests.harness.mlflow_server import running_mlflow_server

    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as settings:
        yield settings


@pytest.mark.slow
def test_promote_block_rollback_and_drift_against_a_real_mlflow_server(server_settings):
    from services._clients import configure_mlflow, get_settings

    settings = configure_mlflow(server_settings)
    try:
        build_agent(settings)
        gates.set_gate_rules(AGENT, GATE, ALICE, settings)
        with pytest.raises(gates.GateBlockedError):
            releases.promote(PromotionRequest(AGENT, "champion", "3"), ALICE, settings=settings)
        assert _registry_alias(settings, "champion") == "1"
        assert releases.alias_history(AGENT, settings=settings) == []

        releases.promote(PromotionRequest(AGENT, "champion", "2"), ALICE, settings=settings)
        _assert_trail_agrees(settings)
        releases.rollback(RollbackRequest(AGENT, "champion", reason="server rollback"), BOB, settings=settings)
        assert _registry_alias(settings, "champion") == "1"
        _assert_trail_agrees(settings)

        MlflowClient(settings.tracking_uri, settings.tracking_uri).set_registered_model_alias(AGENT, "champion", "3")
        assert releases.alias_state(AGENT, "champion", settings).drift is Drift.EXTERNAL
        with pytest.raises(ValidationError, match="reserved"):
            releases.promote(PromotionRequest(AGENT, "latest", "2"), ALICE, settings=settings)
        with pytest.raises(NotFoundError):
            releases.promote(PromotionRequest(AGENT, "champion", "42"), ALICE, settings=settings)
    finally:
        configure_mlflow(get_settings())
