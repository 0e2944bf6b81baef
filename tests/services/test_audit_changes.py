"""The one audited change record across kinds: gate-rule edits, settling an interrupted alias change, and
records written in the trail's older tag format reading back unchanged."""

from __future__ import annotations

import json
import time

import pytest
from mlflow import MlflowClient

from services import audit, gates, releases
from services._clients import get_or_create_experiment
from services.errors import BackendUnavailableError, ValidationError
from services.gates import GateRule, RuleKind
from services.identity import Identity, IdentitySource
from services.promotion import PromotionRequest, Seen
from tests.services.test_releases import build_agent

AGENT = "audited-agent"
LEAD = Identity("lead@example.com", "Lead", IdentitySource.DATABRICKS_APPS)
RULES = [GateRule(RuleKind.MIN_VALUE, 0.5, "expected_facts/mean"), GateRule(RuleKind.MAX_P95_MS, 900)]
RULES_JSON = [{"kind": "min_value", "threshold": 0.5, "metric": "expected_facts/mean"},
              {"kind": "max_p95_ms", "threshold": 900.0, "metric": None}]


def _client(settings) -> MlflowClient:
    return MlflowClient(settings.tracking_uri, settings.tracking_uri)


@pytest.fixture
def model(isolated_settings):
    _client(isolated_settings).create_registered_model(AGENT)
    return isolated_settings


def test_gate_rule_edits_are_recorded_with_who_changed_which_rules_from_what_to_what(model):
    gates.set_gate_rules(AGENT, RULES, LEAD, model, reason="hold the line on facts")
    gates.set_gate_rules(AGENT, [], LEAD, model)
    cleared, edited = audit.changes(audit.ChangeKind.GATE_RULES, {"model": AGENT}, settings=model)
    assert (edited.user, edited.action, edited.reason, edited.outcome) == (
        LEAD.user, "edit gate rules", "hold the line on facts", "applied")
    assert (edited.before, edited.requested, edited.after) == ([], RULES_JSON, RULES_JSON)
    assert (cleared.action, cleared.before, cleared.after, cleared.completed) == ("clear gate rules", RULES_JSON, [],
                                                                                  True)
    assert gates.gate_rules(AGENT, model) == []
    # Rule edits are their own kind: an agent's alias history does not show them.
    assert audit.alias_changes(AGENT, settings=model) == []


def test_refused_rules_leave_no_record(model):
    with pytest.raises(ValidationError):
        gates.set_gate_rules(AGENT, [GateRule(RuleKind.MIN_VALUE, 0.5, None)], LEAD, model)
    with pytest.raises(ValidationError, match="request id"):
        gates.set_gate_rules(AGENT, RULES, LEAD, model, request_id="not an id")
    assert audit.changes(audit.ChangeKind.GATE_RULES, {"model": AGENT}, settings=model) == []
    assert gates.gate_rules(AGENT, model) == []


def test_an_interrupted_rule_edit_completes_once_on_retry(model, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "log_batch", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("refused")))
        with pytest.raises(BackendUnavailableError, match="recorded as interrupted .request rules-1"):
            gates.set_gate_rules(AGENT, RULES, LEAD, model, request_id="rules-1")
    (intent,) = audit.changes(audit.ChangeKind.GATE_RULES, {"model": AGENT}, settings=model)
    assert not intent.completed and gates.gate_rules(AGENT, model) == RULES  # the tag was set, the record not done
    gates.set_gate_rules(AGENT, RULES, LEAD, model, request_id="rules-1")
    (done,) = audit.changes(audit.ChangeKind.GATE_RULES, {"model": AGENT}, settings=model)
    assert (done.run_id, done.completed, done.after) == (intent.run_id, True, RULES_JSON)


@pytest.mark.parametrize("moved", [False, True], ids=["alias-not-moved", "alias-moved"])
def test_an_interrupted_promotion_whose_confirmation_is_gone_is_settled_without_moving_again(isolated_settings,
                                                                                           monkeypatch, moved):
    build_agent(isolated_settings, AGENT)
    failing = "log_batch" if moved else "set_registered_model_alias"
    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, failing, lambda *a, **k: (_ for _ in ()).throw(ConnectionError("refused")))
        with pytest.raises(BackendUnavailableError):
            releases.promote(PromotionRequest(AGENT, "champion", "2", seen=Seen("1"), request_id="lost-1"), LEAD,
                             settings=isolated_settings)
    held = "2" if moved else "1"
    message = releases.settle_interrupted(AGENT, "champion", LEAD, isolated_settings)
    assert ("recorded as applied" in message) if moved else ("was not applied" in message), message
    history = releases.alias_history(AGENT, "champion", isolated_settings, include_interrupted=True)
    if moved:
        assert [(c.completed, c.to_version, c.outcome) for c in history] == [(True, "2", f"applied (settled by {LEAD.user})")]
    else:
        assert history == []
    assert releases.alias_state(AGENT, "champion", isolated_settings).version == held  # settling never moves it
    assert "no interrupted change" in releases.settle_interrupted(AGENT, "champion", LEAD, isolated_settings)


def test_records_in_the_older_tag_format_read_back(isolated_settings):
    """Runs written as the trail wrote them before it had one record type (another process's writes)."""
    client = _client(isolated_settings)
    experiment_id = get_or_create_experiment(client, isolated_settings.audit_experiment, isolated_settings)
    at = time.time_ns()
    p = "agentops.audit."
    client.create_run(experiment_id, tags={  # an alias change from before intents existed: no state, no outcome
        p + "kind": "alias_change", p + "model": AGENT, p + "alias": "champion", p + "action": "rollback",
        p + "from_version": "3", p + "to_version": "2", p + "requested_version": "2", p + "user": "old@example.com",
        p + "reason": "r", p + "gate": "overridden", p + "override": "true", p + "evidence": json.dumps({"a": 1}),
        p + "at_ns": str(at)})
    client.create_run(experiment_id, tags={  # an open traffic intent: what it asked for is in the after tag
        p + "kind": "traffic_change", p + "endpoint": "ep", p + "action": "edit split", p + "user": "old@example.com",
        p + "reason": "r", p + "before": json.dumps({"a v1": 100}), p + "after": json.dumps({"a v1": 50, "a v2": 50}),
        p + "outcome": "interrupted", p + "state": "intent", p + "request_id": "old-1", p + "at_ns": str(at + 1)})
    (alias,) = audit.alias_changes(AGENT, settings=isolated_settings)
    assert (alias.action, alias.from_version, alias.to_version, alias.requested_version) == (
        audit.AliasAction.ROLLBACK, "3", "2", "2")
    assert (alias.gate, alias.override, alias.evidence, alias.completed) == (audit.GateOutcome.OVERRIDDEN, True,
                                                                             {"a": 1}, True)
    (split,) = audit.traffic_changes("ep", settings=isolated_settings)
    assert (split.kind, split.completed, split.outcome, split.request_id) == (
        audit.ChangeKind.TRAFFIC, False, audit.INTERRUPTED, "old-1")
    assert (split.before, split.requested, split.after) == ({"a v1": 100}, {"a v1": 50, "a v2": 50},
                                                            {"a v1": 50, "a v2": 50})
    assert audit.find_change(audit.ChangeKind.TRAFFIC, {"endpoint": "ep"}, "old-1", settings=isolated_settings) == split


def test_deploys_recorded_before_they_had_their_own_kind_read_back_as_deploys(isolated_settings):
    """Deploys were once written as traffic changes (action ``deploy v<N>``); they read back as deploys."""
    client = _client(isolated_settings)
    experiment_id = get_or_create_experiment(client, isolated_settings.audit_experiment, isolated_settings)
    at = time.time_ns()
    p = "agentops.audit."
    for offset, action in enumerate(("deploy v3", "edit split")):
        client.create_run(experiment_id, tags={
            p + "kind": "traffic_change", p + "endpoint": "agents_m", p + "action": action, p + "user": "old@example.com",
            p + "reason": "r", p + "before": json.dumps({"m_2": 100}), p + "after": json.dumps({"m_3": 100}),
            p + "outcome": "applied", p + "state": "done", p + "request_id": f"old-{offset}", p + "at_ns": str(at + offset)})
    split, deploy = audit.traffic_changes("agents_m", settings=isolated_settings)
    assert (deploy.kind, deploy.action, split.kind, split.action) == (
        audit.ChangeKind.DEPLOY, "deploy v3", audit.ChangeKind.TRAFFIC, "edit split")
    # A search for one kind finds the old deploy under its kind, and the split change without it.
    assert audit.changes(audit.ChangeKind.DEPLOY, {"endpoint": "agents_m"}, settings=isolated_settings) == [deploy]
    assert audit.changes(audit.ChangeKind.DEPLOY, settings=isolated_settings) == [deploy]
    assert audit.changes(audit.ChangeKind.TRAFFIC, {"endpoint": "agents_m"}, settings=isolated_settings) == [split]
    assert audit.find_change(audit.ChangeKind.DEPLOY, {"endpoint": "agents_m"}, "old-0",
                             settings=isolated_settings) == deploy
