"""Alert rules, incidents and delivery: a loopback webhook receiver records what apprise sends.

The traffic is written with MLflow's public APIs only (a registered model, its LoggedModel set
active, traced calls, ``log_feedback``), as another team's agent would.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime, timedelta

import mlflow
import pytest
from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st
from mlflow.entities import AssessmentSource, AssessmentSourceType

from services import alerting, notify, roles, team_state
from services._clients import mlflow_client
from services.alerting import State
from services.errors import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from services.identity import Identity, IdentitySource
from tests.harness.webhook_receiver import running_webhook_receiver

AGENT = "shop-assistant"
SECRET = "s3cr3t-hook-token-9f2c"
ADMIN = Identity("admin@example.com", "Admin", IdentitySource.OS_USER)
OPERATOR = Identity("ops@example.com", "Ops", IdentitySource.OS_USER)
VIEWER = Identity("viewer@example.com", "Viewer", IdentitySource.OS_USER)


@pytest.fixture(scope="module")
def receiver():
    with running_webhook_receiver() as server:
        yield server


@pytest.fixture
def hook(receiver):
    receiver.reset()
    return f"json://127.0.0.1:{receiver.server_port}/hooks/{SECRET}"


@pytest.fixture
def settings(isolated_settings, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTOPS_ALERT_CHANNELS_FILE", str(tmp_path / "private" / "alert-channels.json"))
    return isolated_settings


def _agent(settings, name: str = AGENT) -> str:
    """A registered agent whose LoggedModel is active: traces link to it through mlflow.modelId."""
    client = mlflow_client(settings)
    experiment_id = client.create_experiment(f"{name}-traffic",
                                             artifact_location=(settings.artifact_root / name).as_uri())
    model = mlflow.initialize_logged_model(name=name, experiment_id=experiment_id)
    mlflow.register_model(f"models:/{model.model_id}", name)
    return experiment_id, model.model_id


def _traffic(experiment_id: str, model_id: str, ok: int, failed: int) -> list[str]:
    mlflow.set_experiment(experiment_id=experiment_id)
    mlflow.set_active_model(model_id=model_id)

    @mlflow.trace(name="answer")
    def answer(question: str, fail: bool) -> str:
        if fail:
            raise RuntimeError("upstream timed out")
        return "fine"

    ids = []
    try:
        for i in range(ok + failed):
            try:
                answer(f"q{i}", i < failed)
            except RuntimeError:
                pass
            ids.append(mlflow.get_last_active_trace_id())
    finally:
        mlflow.clear_active_model()
    mlflow.flush_trace_async_logging()
    return ids


def _errors_rule(settings, hook: str) -> None:
    """An "oncall" channel on ``hook`` and a rule firing on this agent's error rate above 30% (5 requests)."""
    alerting.save_channel(settings, "oncall", hook, ADMIN)
    alerting.save_rule(settings, dict(name="errors", measure="error_rate", threshold=0.3, min_sample=5,
                                      agent=AGENT, channels=["oncall"]), ADMIN)


def _messages(receiver) -> list[tuple[str, str]]:
    with receiver.lock:
        return [(body["type"], body["title"]) for body in receiver.received]


def test_one_firing_and_one_resolved_per_incident_and_none_below_the_minimum_sample(settings, hook, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    experiment_id, model_id = _agent(settings)
    alerting.save_channel(settings, "oncall", hook, ADMIN)
    alerting.save_rule(settings, dict(name="errors", measure="error_rate", threshold=0.3, window_minutes=60,
                                      min_sample=5, agent=AGENT, channels=["oncall"]), ADMIN)
    alerting.save_rule(settings, dict(name="errors-big-sample", measure="error_rate", threshold=0.3,
                                      window_minutes=60, min_sample=50, agent=AGENT, channels=["oncall"]), ADMIN)

    _traffic(experiment_id, model_id, ok=3, failed=3)  # 50 % errors over 6 requests
    first = alerting.evaluate_and_notify(settings, attempts=1)
    outcome = {o.rule: o for o in first.outcomes}
    assert outcome["errors"].state is State.FIRING and outcome["errors"].sample == 6
    assert outcome["errors"].value == pytest.approx(0.5)
    assert outcome["errors-big-sample"].state is State.NO_DATA  # 6 < 50: not judged
    assert _messages(receiver) == [("failure", "[FIRING] errors: error rate 50.0% (agent shop-assistant)")]

    again = alerting.evaluate_and_notify(settings, attempts=1)  # a restart or a second worker: nothing new
    assert again.sent == 0 and len(_messages(receiver)) == 1

    _traffic(experiment_id, model_id, ok=14, failed=0)  # 3 / 20 = 15 %
    resolved = alerting.evaluate_and_notify(settings, attempts=1)
    assert {o.rule: o.state for o in resolved.outcomes}["errors"] is State.OK
    alerting.evaluate_and_notify(settings, attempts=1)
    assert _messages(receiver) == [("failure", "[FIRING] errors: error rate 50.0% (agent shop-assistant)"),
                                   ("success", "[RESOLVED] errors: error rate 15.0% (agent shop-assistant)")]
    assert set(receiver.paths) == {f"/hooks/{SECRET}"}

    history = alerting.delivery_history(settings)
    assert [(h["rule"], h["kind"], h["channel"], h["ok"]) for h in history] == [
        ("errors", "resolved", "oncall", True), ("errors", "firing", "oncall", True)]
    # The URL is a secret: not in logs, history, reports, channel records or any team-state tag or run.
    state = mlflow_client(settings).get_experiment_by_name(team_state.state_experiment(settings))
    runs = mlflow_client(settings).search_runs([state.experiment_id], max_results=500)
    stored = json.dumps(dict(state.tags)) + json.dumps([r.data.tags for r in runs])
    shown = (json.dumps(history) + repr(first) + repr(resolved) + repr(alerting.list_channels(settings))
             + "\n".join(r.getMessage() for r in caplog.records))
    assert "apprise" in {r.name.split(".")[0] for r in caplog.records}  # apprise did log, at debug level
    for text in (stored, shown):
        assert SECRET not in text and hook not in text


def test_three_requests_never_page_anyone(settings, hook, receiver):
    experiment_id, model_id = _agent(settings)
    alerting.save_channel(settings, "oncall", hook, ADMIN)
    with pytest.raises(ValidationError, match="minimum sample"):
        alerting.save_rule(settings, dict(name="tiny", measure="error_rate", threshold=0.1, min_sample=3,
                                          agent=AGENT, channels=["oncall"]), ADMIN)
    alerting.save_rule(settings, dict(name="errors", measure="error_rate", threshold=0.1, min_sample=5,
                                      agent=AGENT, channels=["oncall"]), ADMIN)
    _traffic(experiment_id, model_id, ok=0, failed=3)  # every request failed, but only three
    report = alerting.evaluate_and_notify(settings, attempts=1)
    assert [(o.state, o.sample) for o in report.outcomes] == [(State.NO_DATA, 3)]
    assert "below the minimum sample of 5" in report.outcomes[0].message
    assert _messages(receiver) == [] and alerting.delivery_history(settings) == []


def test_delivery_retries_with_backoff(hook, receiver):
    receiver.fail_next = 2
    waits = []
    result = notify.deliver(hook, "t", "b", notify.Kind.TEST, attempts=3, backoff_s=0.5, sleep=waits.append)
    assert result.ok and result.attempts == 3 and waits == [0.5, 1.0]
    assert len(receiver.attempts) == 3 and len(receiver.received) == 1

    receiver.fail_next = 5
    failed = notify.deliver(hook, "t", "b", notify.Kind.TEST, attempts=2, backoff_s=0.0, sleep=waits.append)
    assert not failed.ok and failed.attempts == 2 and SECRET not in failed.error


def test_a_failed_firing_is_sent_once_by_a_later_evaluation(settings, hook, receiver):
    experiment_id, model_id = _agent(settings)
    _errors_rule(settings, hook)
    _traffic(experiment_id, model_id, ok=2, failed=4)
    receiver.fail_next = 2
    now = datetime.now(tz=UTC)
    first = alerting.evaluate_and_notify(settings, now, attempts=2, backoff_s=0.0)
    assert first.sent == 0 and first.failed == 1 and len(receiver.attempts) == 2
    assert alerting.incidents(settings)[0]["owed"] == "firing"
    soon = alerting.evaluate_and_notify(settings, now + timedelta(seconds=10), attempts=2, backoff_s=0.0)
    assert soon.sent == 0 and len(receiver.attempts) == 2  # backing off: not retried yet
    later = alerting.evaluate_and_notify(settings, now + timedelta(minutes=2), attempts=2, backoff_s=0.0)
    assert later.sent == 1 and [kind for kind, _ in _messages(receiver)] == ["failure"]
    alerting.evaluate_and_notify(settings, now + timedelta(minutes=3), attempts=2, backoff_s=0.0)
    assert len(_messages(receiver)) == 1
    assert [h["ok"] for h in alerting.delivery_history(settings)] == [True, False]


def test_scorer_pass_rate_and_thumbs_down_rate_read_assessments(settings):
    experiment_id, model_id = _agent(settings)
    ids = _traffic(experiment_id, model_id, ok=6, failed=0)
    judge = AssessmentSource(AssessmentSourceType.LLM_JUDGE, "relevance")
    human = AssessmentSource(AssessmentSourceType.HUMAN, "ana@example.com")
    for i, trace_id in enumerate(ids):
        mlflow.log_feedback(trace_id=trace_id, name="relevance", value="yes" if i < 4 else "no", source=judge)
        mlflow.log_feedback(trace_id=trace_id, name="score", value=0.2 * i, source=judge)
        if i < 5:
            mlflow.log_feedback(trace_id=trace_id, name="thumbs_up", value=i != 0, source=human)
    rule = alerting.validate_rule(dict(name="rel", measure="scorer_pass_rate", threshold=0.8, min_sample=5,
                                       agent=AGENT, assessment="relevance"))
    m = alerting.measure(rule, settings)
    assert (m.value, m.sample) == (pytest.approx(4 / 6), 6) and alerting.breached(rule, m.value)
    numeric = alerting.validate_rule({**rule.to_record(), "assessment": "score", "pass_criterion": ">= 0.5"})
    assert alerting.measure(numeric, settings).value == pytest.approx(3 / 6)  # 0.6, 0.8, 1.0
    down = alerting.validate_rule(dict(name="down", measure="thumbs_down_rate", threshold=0.1, min_sample=5,
                                       agent=AGENT, assessment="thumbs_up"))
    m = alerting.measure(down, settings)
    assert (m.value, m.sample) == (pytest.approx(1 / 5), 5) and alerting.breached(down, m.value)


@pytest.mark.parametrize("change, message", [
    ({"measure": "latency"}, "Unknown measure"),
    ({"window_minutes": 2}, "window"),
    ({"window_minutes": 100_000}, "window"),
    ({"min_sample": 0}, "minimum sample"),
    ({"threshold": 1.5}, "share between 0 and 1"),
    ({"threshold": "high"}, "must be a number"),
    ({"measure": "scorer_pass_rate"}, "needs the scorer name"),
    ({"measure": "scorer_pass_rate", "assessment": "rel", "pass_criterion": "maybe"}, "not understood"),
    ({"name": "bad name!"}, "not a rule name"),
    ({"version": "2"}, "pick the agent too"),
])
def test_bad_rules_are_refused(change, message):
    base = dict(name="r", measure="error_rate", threshold=0.2)
    with pytest.raises(ValidationError, match=message):
        alerting.validate_rule({**base, **change})


def test_roles_bad_input_and_audit(settings, hook, receiver):
    roles.init_roles(ADMIN.user, settings, by="test")
    roles.grant(OPERATOR.user, roles.Role.OPERATOR, identity=ADMIN, settings=settings)
    path = notify.secret_store(settings).path

    with pytest.raises(ValidationError, match="apprise does not recognise") as refused:
        alerting.save_channel(settings, "oncall", "nosuchservice://tok/" + SECRET, OPERATOR)
    assert SECRET not in str(refused.value)
    with pytest.raises(ValidationError, match="not a channel name"):
        alerting.save_channel(settings, "on call", hook, OPERATOR)
    with pytest.raises(PermissionDeniedError, match="operator"):
        alerting.save_channel(settings, "oncall", hook, VIEWER)
    assert not path.exists() and alerting.list_channels(settings) == []  # nothing stored

    channel = alerting.save_channel(settings, "oncall", hook, OPERATOR)
    assert channel.service == "JSON" and SECRET not in channel.masked
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ConflictError):
        alerting.save_channel(settings, "oncall", hook, OPERATOR)

    rule = dict(name="errors", measure="error_rate", threshold=0.2, agent=AGENT, channels=["oncall"])
    with pytest.raises(PermissionDeniedError):
        alerting.save_rule(settings, rule, VIEWER)
    with pytest.raises(ValidationError, match="No channel named 'pager'"):
        alerting.save_rule(settings, {**rule, "channels": ["pager"]}, OPERATOR)
    assert alerting.list_rules(settings) == []
    alerting.save_rule(settings, rule, OPERATOR)
    with pytest.raises(ValidationError, match="used by rule"):
        alerting.delete_channel(settings, "oncall", OPERATOR)
    with pytest.raises(PermissionDeniedError):
        alerting.delete_rule(settings, "errors", VIEWER)
    with pytest.raises(PermissionDeniedError):
        alerting.send_test_alert(settings, "oncall", VIEWER)

    result = alerting.send_test_alert(settings, "oncall", OPERATOR, attempts=1)
    assert result.ok and _messages(receiver)[0][0] == "info"
    assert alerting.delivery_history(settings)[0]["by"] == OPERATOR.user

    alerting.delete_rule(settings, "errors", OPERATOR)
    alerting.delete_channel(settings, "oncall", OPERATOR)
    assert alerting.list_rules(settings) == [] and alerting.list_channels(settings) == []
    assert json.loads(path.read_text()) == {}
    changes = alerting.change_history(settings)
    assert [(c["key"], c["user"]) for c in changes[:4]] == [
        ("alert-channel:oncall", OPERATOR.user), ("alert-rule:errors", OPERATOR.user),
        ("alert-rule:errors", OPERATOR.user), ("alert-channel:oncall", OPERATOR.user)]
    with pytest.raises(NotFoundError):
        alerting.send_test_alert(settings, "oncall", OPERATOR)


def test_the_channels_file_must_be_private_and_outside_the_repository(tmp_path):
    from services.settings import PROJECT_ROOT

    with pytest.raises(ConfigurationError, match="inside the repository"):
        notify.LocalSecretFile(PROJECT_ROOT / "alert-channels.json")
    store = notify.LocalSecretFile(tmp_path / "channels.json")
    store.put("oncall", "json://127.0.0.1/x")
    assert store.get("oncall") == "json://127.0.0.1/x"
    os.chmod(store.path, 0o644)
    with pytest.raises(ConfigurationError, match=f"chmod 600 {store.path}"):
        store.get("oncall")
    with pytest.raises(ConfigurationError, match="group or others"):
        store.put("other", "json://127.0.0.1/y")
    os.chmod(store.path, 0o600)
    assert store.get("oncall") == "json://127.0.0.1/x"


def test_two_workers_evaluating_the_same_breach_send_one_firing(settings, hook, receiver):
    experiment_id, model_id = _agent(settings)
    _errors_rule(settings, hook)
    _traffic(experiment_id, model_id, ok=1, failed=5)
    barrier, reports = threading.Barrier(2), []

    def worker():
        barrier.wait()
        reports.append(alerting.evaluate_and_notify(settings, attempts=1))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(reports) == 2 and sorted(r.sent for r in reports) == [0, 1]
    assert [kind for kind, _ in _messages(receiver)] == ["failure"]
    assert [h["kind"] for h in alerting.delivery_history(settings)] == ["firing"]


def test_a_notice_is_sent_once_per_key(settings, hook, receiver):
    alerting.save_channel(settings, "oncall", hook, ADMIN)
    first = alerting.notify_channels(settings, "Rollout on prod: step 2", "25 % to v3", key="rollout-prod-2", attempts=1)
    again = alerting.notify_channels(settings, "Rollout on prod: step 2", "25 % to v3", key="rollout-prod-2", attempts=1)
    assert [r.ok for r in first] == [True] and again == []
    assert _messages(receiver) == [("info", "Rollout on prod: step 2")]
    assert [(h["kind"], h["incident"]) for h in alerting.delivery_history(settings)] == [("notice", "rollout-prod-2")]


def test_a_worker_killed_after_claiming_leaves_the_firing_to_the_next_one(settings, hook, receiver, monkeypatch):
    experiment_id, model_id = _agent(settings)
    _errors_rule(settings, hook)
    _traffic(experiment_id, model_id, ok=1, failed=5)
    now = datetime.now(tz=UTC)

    def killed(*args, **kwargs):
        raise SystemExit("worker killed mid-delivery")

    with monkeypatch.context() as patch:
        patch.setattr(alerting.evaluation, "_deliver_owed", killed)  # the evaluation module calls it
        with pytest.raises(SystemExit):
            alerting.evaluate_and_notify(settings, now, attempts=1)
    assert alerting.incidents(settings)[0]["owed"] == "firing" and _messages(receiver) == []
    held = alerting.evaluate_and_notify(settings, now + timedelta(minutes=1), attempts=1)
    assert held.sent == 0 and _messages(receiver) == []  # the dead worker's lease still holds
    taken = alerting.evaluate_and_notify(settings, now + alerting.LEASE + timedelta(seconds=1), attempts=1)
    assert taken.sent == 1 and [kind for kind, _ in _messages(receiver)] == ["failure"]
    alerting.evaluate_and_notify(settings, now + alerting.LEASE + timedelta(minutes=1), attempts=1)
    assert len(_messages(receiver)) == 1


def test_rules_for_an_agent_are_its_own_and_all_traffic_rules_that_notify(settings, hook):
    alerting.save_channel(settings, "oncall", hook, ADMIN)
    for name, agent, channels, enabled in (("mine", AGENT, ["oncall"], True), ("all", None, ["oncall"], True),
                                           ("other", "other-agent", ["oncall"], True), ("silent", AGENT, [], True),
                                           ("off", AGENT, ["oncall"], False)):
        alerting.save_rule(settings, dict(name=name, measure="error_rate", threshold=0.2, agent=agent,
                                          channels=channels, enabled=enabled), ADMIN)
    assert [r.name for r in alerting.rules_for(settings, AGENT)] == ["all", "mine"]


@pytest.mark.parametrize("url, service", [
    ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#alerts", "Slack"),
    ("workflows://prod-01.westus.logic.azure.com:443/abc123/sig0123", "Power Automate / Workflows (for MSTeams)"),
    ("mailtos://user:pass@example.com?to=oncall@example.com", "E-Mail"),
    ("json://hooks.example.com/alert", "JSON"),
    ("jsons://hooks.example.com/alert", "JSON"),
])
def test_apprise_channels_are_recognised_and_masked(url, service):
    info = notify.describe_url(url)
    assert info.service == service and url.split("://")[1][:6] not in info.masked


@pytest.mark.parametrize("url", ["https://hooks.example.com/alert", "msteams://retired/by/apprise/2", "hello",
                                 "json://a b", ""])
def test_urls_apprise_does_not_recognise_are_refused_without_being_quoted(url):
    with pytest.raises(ValidationError) as refused:
        notify.describe_url(url)
    assert (url.split("://")[-1] or "\0") not in str(refused.value)


_ANY = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9), st.floats(allow_nan=True),
                 st.text(max_size=30), st.lists(st.text(max_size=10), max_size=3))


@settings_(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["name", "measure", "threshold", "window_minutes", "min_sample", "agent",
                                        "version", "endpoint", "arm", "assessment", "pass_criterion", "channels",
                                        "enabled", "surprise"]), _ANY, max_size=8),
       st.sampled_from([m.value for m in alerting.Measure]))
def test_any_rule_input_is_either_a_valid_rule_or_a_validation_error(raw, measure):
    raw = {"name": "r", "measure": measure, "threshold": 0.5, **raw}
    try:
        rule = alerting.validate_rule(raw)
    except ValidationError as exc:
        assert str(exc)
    else:
        assert alerting.validate_rule(rule.to_record()) == rule  # what is stored reads back the same
        assert alerting.MIN_SAMPLE[0] <= rule.min_sample and alerting.WINDOW_MINUTES[0] <= rule.window_minutes


def test_a_measured_figure_and_its_threshold_never_read_the_same():
    from services.alerting.rules import AlertRule, Measure

    rule = AlertRule("close", Measure.ERROR_RATE, 0.6)
    assert rule.condition.startswith("error rate above 60.0% over")  # alone: the usual precision
    assert Measure.ERROR_RATE.format(0.6004, 0.6) == "60.04%"
    assert rule.condition_against(0.6004).startswith("error rate above 60.00% over")
    assert Measure.P95_LATENCY.format(2000.4, 2000) == "2,000.4 ms"
    assert Measure.COST_PER_REQUEST.format(0.01234, 0.0123) == "$0.01234"
    assert Measure.ERROR_RATE.format(0.9, 0.6) == "90.0%"  # far apart: unchanged
    assert Measure.ERROR_RATE.format(None, 0.6) == "n/a"
