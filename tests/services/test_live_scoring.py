"""Live scoring: configuration (validation, roles, audit), MLflow's processor on the embedded store,
quality over time with confidence intervals."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from services import live_quality, live_scoring, team_state
from services.errors import PermissionDeniedError, ValidationError
from services.identity import Identity, IdentitySource
from services.live_scoring import LiveScoringConfig
from tests.services.live_scoring_world import AGENT, build_world, log_traces

OPS = Identity("ops@example.com", "ops", IdentitySource.OS_USER)
VIEWER = Identity("v@example.com", "v", IdentitySource.OS_USER)
GOOD = LiveScoringConfig(scorers=("latency_budget", "forbidden_content"), sample_rate=1.0,
                         forbidden_terms=("refund",))


@pytest.fixture
def world(isolated_settings, monkeypatch):
    monkeypatch.setenv("MLFLOW_ONLINE_SCORING_DEFAULT_TRACE_COMPLETION_BUFFER_SECONDS", "0")
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS", "true")
    (isolated_settings.data_dir / "roles.json").write_text(json.dumps({"users": {"ops@example.com": "operator"},
                                                                        "default": "viewer"}))
    return build_world(isolated_settings, traces=6)


@pytest.mark.parametrize("config, message", [
    (LiveScoringConfig(scorers=("latency_budget",), sample_rate=1.5), "outside 0–1"),
    (LiveScoringConfig(scorers=("latency_budget",), sample_rate=-0.1), "outside 0–1"),
    (LiveScoringConfig(scorers=("latency_budget",), sample_rate=float("nan")), "outside 0–1"),
    (LiveScoringConfig(scorers=("latency_budget",), sample_rate=0.5, filter_string="tag.x === 'y' oops"),
     "MLflow cannot parse the trace filter"),
    (LiveScoringConfig(scorers=("no_such_scorer",), sample_rate=0.5), "Unknown scorer 'no_such_scorer'"),
    (LiveScoringConfig(scorers=("expected_facts",), sample_rate=0.5), "expectations"),
    (LiveScoringConfig(scorers=("safety",), sample_rate=0.5), "No judge model is configured"),
    (LiveScoringConfig(scorers=(), sample_rate=0.5), "at least one scorer"),
])
def test_bad_input_is_refused_and_nothing_is_stored(isolated_settings, monkeypatch, config, message):
    monkeypatch.delenv("AGENTOPS_JUDGE_MODEL", raising=False)
    with pytest.raises(ValidationError, match=message):
        live_scoring.save_config(AGENT, config, identity=OPS, settings=isolated_settings)
    assert team_state.read_all(isolated_settings, live_scoring.KEY_PREFIX) == {}
    assert team_state.history(isolated_settings, f"{live_scoring.KEY_PREFIX}{AGENT}") == []


def test_an_operator_configures_a_viewer_may_not(world, isolated_settings):
    # Its own action, not "run evaluations": the refusal names what the viewer tried.
    with pytest.raises(PermissionDeniedError, match="may not create, change or delete live scorers: that needs "
                                                    "the operator role"):
        live_scoring.save_config(AGENT, GOOD, identity=VIEWER, settings=isolated_settings)
    assert not live_scoring.configured(AGENT, isolated_settings)
    assert team_state.history(isolated_settings, f"{live_scoring.KEY_PREFIX}{AGENT}") == []
    live_scoring.save_config(AGENT, GOOD, identity=OPS, settings=isolated_settings)
    assert live_scoring.configured(AGENT, isolated_settings)
    config, version = live_scoring.load_config(AGENT, isolated_settings)
    assert (config, version) == (GOOD, 1)
    changes = team_state.history(isolated_settings, f"{live_scoring.KEY_PREFIX}{AGENT}")
    assert [(c["user"], c["version"]) for c in changes] == [("ops@example.com", 1)]
    assert "latency_budget, forbidden_content at 1" in changes[0]["note"]
    with pytest.raises(PermissionDeniedError, match="live scorers"):
        live_scoring.delete_config(AGENT, identity=VIEWER, settings=isolated_settings)
    assert live_scoring.configured(AGENT, isolated_settings)
    live_scoring.delete_config(AGENT, identity=OPS, settings=isolated_settings)
    assert not live_scoring.configured(AGENT, isolated_settings)
    changes = team_state.history(isolated_settings, f"{live_scoring.KEY_PREFIX}{AGENT}")
    assert max((c["version"], c["user"]) for c in changes) == (2, "ops@example.com")


def test_mlflow_processor_scores_new_traces_once_and_quality_has_intervals(world, isolated_settings):
    live_scoring.save_config(AGENT, GOOD, identity=OPS, settings=isolated_settings)
    first = live_scoring.run_pass(isolated_settings, batch_size=4)
    assert first.path == "mlflow-processor" and first.errors == []
    assert first.traces_scored_last == 4 and first.lag_seconds is not None
    second = live_scoring.run_pass(isolated_settings, batch_size=4)
    assert second.traces_scored_last == 2 and second.traces_scored_total == 6
    assert live_scoring.run_pass(isolated_settings, batch_size=4).traces_scored_last == 0
    assert live_scoring.read_status(isolated_settings).traces_scored_total == 6

    client = world["client"]
    for trace_id in world["trace_ids"]:
        assessments = client.get_trace(trace_id).info.assessments
        assert sorted(a.name for a in assessments) == ["live_forbidden_content", "live_latency_budget"]
        assert {a.source.source_id for a in assessments} == {"live_forbidden_content", "live_latency_budget"}
        forbidden = next(a for a in assessments if a.name == "live_forbidden_content")
        assert forbidden.feedback.value == "no" and "refund" in forbidden.rationale.lower()

    now = datetime.now(tz=timezone.utc)
    results = live_quality.live_results(AGENT, isolated_settings, start=now - timedelta(hours=1), end=now)
    assert len(results) == 12 and set(results["version"]) == {"1"}
    quality = live_quality.quality_over_time(results, by="version", freq="1D")
    latency = quality[quality["scorer"] == "latency_budget"].iloc[0]
    assert (latency["n"], latency["passed"], latency["rate"]) == (6, 6, 1.0)
    assert 0.5 < latency["low"] < 1.0 and latency["high"] == pytest.approx(1.0)
    forbidden = quality[quality["scorer"] == "forbidden_content"].iloc[0]
    assert forbidden["rate"] == 0.0 and forbidden["low"] == pytest.approx(0.0) and 0 < forbidden["high"] < 0.5


def test_mlflows_own_checkpoint_neither_skips_nor_is_moved_by_the_worker(world, isolated_settings):
    """A server job scoring the team's registered judges keeps MLflow's checkpoint tag; the worker keeps its own."""
    from services._mlflow_internal.online_scoring import APP_CHECKPOINT_TAG, CHECKPOINT_TAG

    client, experiment_id = world["client"], world["experiment_id"]
    ahead = json.dumps({"timestamp_ms": int(datetime.now(tz=timezone.utc).timestamp() * 1000), "trace_id": "tr-z"})
    client.set_experiment_tag(experiment_id, CHECKPOINT_TAG, ahead)
    live_scoring.save_config(AGENT, GOOD, identity=OPS, settings=isolated_settings)
    assert live_scoring.run_pass(isolated_settings, batch_size=10).traces_scored_last == 6
    tags = client.get_experiment(experiment_id).tags
    assert tags[CHECKPOINT_TAG] == ahead and APP_CHECKPOINT_TAG in tags


def test_wilson_interval_matches_the_textbook_value():
    low, high = live_quality.wilson(8, 10)
    assert round(low, 4) == 0.4902 and round(high, 4) == 0.9433


def test_public_fallback_scores_the_same_traces(world, isolated_settings, monkeypatch):
    from services._mlflow_internal import online_scoring

    live_scoring.save_config(AGENT, GOOD, identity=OPS, settings=isolated_settings)
    monkeypatch.setattr(online_scoring, "supports_processor", lambda: False)
    status = live_scoring.run_pass(isolated_settings, batch_size=10)
    assert status.path == "public-fallback" and status.traces_scored_last == 6, status.errors
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_ONLINE_SCORING_DEFAULT_TRACE_COMPLETION_BUFFER_SECONDS", "0")
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS", "true")
    # MLflow's processor continues from the fallback's checkpoint: nothing is scored twice.
    assert live_scoring.run_pass(isolated_settings, batch_size=10).traces_scored_last == 0
    for trace_id in world["trace_ids"]:
        names = [a.name for a in world["client"].get_trace(trace_id).info.assessments]
        assert sorted(names) == ["live_forbidden_content", "live_latency_budget"]


def test_outcomes_per_arm_for_the_ab_judge():
    import pandas as pd

    stamp = pd.Timestamp("2026-12-01T10:00:00Z")
    rows = [["t1", stamp, "m1", "1", "a", "latency_budget", "yes", True, 1.0],
            ["t2", stamp, "m1", "1", "a", "latency_budget", "no", False, 0.0],
            ["t3", stamp, "m2", "2", "b", "latency_budget", "yes", True, 1.0],
            ["t3", stamp, "m2", "2", "b", "relevance", "bad", None, None]]
    results = pd.DataFrame(rows, columns=live_quality.RESULT_COLUMNS)
    assert live_quality.outcomes_by(results, "arm") == {"a": {"latency_budget": [1.0, 0.0]},
                                                        "b": {"latency_budget": [1.0]}}
    quality = live_quality.quality_over_time(results, by="arm")
    assert list(quality["n"]) == [2, 1, 1]
