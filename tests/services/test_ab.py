"""Arm statistics on constructed data with known answers, and promote-winner consistency."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from mlflow import MlflowClient

from services import ab, audit, serving
from services.errors import ConflictError, ValidationError
from services.identity import Identity, IdentitySource
from services.rollout_controller import evidence_from_arms
from services.rollouts import Baseline, Final, Guardrail, Measure, RolloutPlan
from tests.services.live_scoring_world import log_traces
from tests.services.registry_world import register_versions

OPERATOR = Identity("ops@example.com", "ops", IdentitySource.OS_USER)


def _arm(name: str, version: str, n: int, errors: int, latency_ms: float, *, feedback: tuple[bool, ...] = (), seed: int = 0) -> ab.ArmSample:
    rng = np.random.default_rng(seed)
    latencies = tuple(float(x) for x in rng.normal(latency_ms, 20, n))
    return ab.ArmSample(name, "m", version, latencies, errors, tuple([0.001] * n), tuple([100] * n), feedback, (), ())


def test_wilson_interval_matches_the_formula():
    interval = ab.proportion_interval(10, 100)
    z = 1.959963984540054
    p, n = 0.1, 100
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert interval.value == 0.1
    assert interval.low == pytest.approx(centre - half)
    assert interval.high == pytest.approx(centre + half)


def test_two_proportion_test_known_table():
    # 100/1000 vs 50/1000: z = 4.27 by hand (pooled p = 0.075), two-sided p ~ 1.9e-5.
    p, test = ab.two_proportion_test(100, 1000, 50, 1000)
    pooled = 150 / 2000
    z = (0.1 - 0.05) / math.sqrt(pooled * (1 - pooled) * (2 / 1000))
    assert test == "two-proportion z-test"
    assert p == pytest.approx(math.erfc(z / math.sqrt(2)))
    p_small, small_test = ab.two_proportion_test(1, 10, 0, 10)
    assert small_test == "Fisher's exact test" and p_small == pytest.approx(1.0)


def test_required_sample_size_matches_cohens_h():
    h = 2 * math.asin(math.sqrt(0.12)) - 2 * math.asin(math.sqrt(0.10))
    # Per group for two independent proportions: n = 2 * ((z_{1-a/2} + z_{1-b}) / h)^2 (Cohen).
    by_hand = 2 * ((1.959963984540054 + 0.8416212335729143) / h) ** 2
    assert ab.required_sample_size(0.10, 0.02) == math.ceil(by_hand)


def test_clearly_better_arm_wins():
    baseline = _arm("m_1", "1", 1000, 100, 300, seed=1)
    candidate = _arm("m_2", "2", 1000, 30, 300, seed=2)
    comparison = ab.compare_arms(baseline, candidate)
    error = next(m for m in comparison.metrics if m.metric == "error rate")
    assert error.direction is ab.Direction.BETTER and error.p_value < 1e-6
    assert comparison.is_winner
    assert "v2 is better on error rate" in comparison.verdict


def test_slower_arm_is_worse_and_not_a_winner():
    baseline = _arm("m_1", "1", 400, 20, 300, seed=1)
    candidate = _arm("m_2", "2", 400, 20, 360, seed=2)
    comparison = ab.compare_arms(baseline, candidate)
    latency = next(m for m in comparison.metrics if m.metric.startswith("median latency"))
    assert latency.direction is ab.Direction.WORSE
    assert not comparison.is_winner


def test_identical_arms_show_no_difference():
    baseline = _arm("m_1", "1", 500, 25, 300, seed=3)
    candidate = _arm("m_2", "2", 500, 25, 300, seed=3)
    comparison = ab.compare_arms(baseline, candidate)
    assert all(m.direction is ab.Direction.NO_DIFFERENCE for m in comparison.metrics)
    assert not comparison.is_winner


def test_small_samples_say_there_is_not_enough_data():
    comparison = ab.compare_arms(_arm("m_1", "1", 30, 2, 300), _arm("m_2", "2", 10, 0, 300))
    assert "not enough data yet" in comparison.verdict
    assert comparison.required_per_arm and comparison.required_per_arm > 30


def test_numeric_live_scorer_is_compared_with_mann_whitney_and_mean_interval():
    from scipy.stats import mannwhitneyu

    low = tuple(float(x) for x in np.random.default_rng(1).uniform(0.0, 0.6, 60))
    high = tuple(float(x) for x in np.random.default_rng(2).uniform(0.4, 1.0, 60))
    baseline = replace(_arm("m_1", "1", 60, 3, 300, seed=1), live=(ab.LiveScorerSample("helpfulness", False, low),))
    candidate = replace(_arm("m_2", "2", 60, 3, 300, seed=1), live=(ab.LiveScorerSample("helpfulness", False, high),))
    metric = next(m for m in ab.compare_arms(baseline, candidate).metrics if m.metric == "live helpfulness mean score")
    assert metric.p_value == pytest.approx(mannwhitneyu(low, high, alternative="two-sided").pvalue)
    assert (metric.baseline, metric.candidate) == (pytest.approx(np.mean(low)), pytest.approx(np.mean(high)))
    assert metric.direction is ab.Direction.BETTER
    (row,) = ab.arm_stats(candidate).live_scorers
    assert (row.n, row.pass_fail) == (60, False) and row.value.low < np.mean(high) < row.value.high
    assert candidate.scorer_passes_by_name == {}  # numeric scores are not pass/fail outcomes


@pytest.mark.slow
def test_report_counts_equal_the_store(seeded_settings):
    client = MlflowClient(tracking_uri=seeded_settings.tracking_uri)
    experiment = client.get_registered_model("support-agent").tags["agentops.experiment_id"]
    end = datetime.now(tz=timezone.utc)
    start = end - timedelta(days=8)
    report = ab.judge_endpoint("support-prod", [experiment], start, end, settings=seeded_settings)
    assert report.baseline == "support-agent-1"
    for arm in report.arms:
        found = client.search_traces(
            locations=[experiment], include_spans=False, max_results=5000,
            filter_string=f"tag.`agentops.arm` = '{arm.entity_name}' AND trace.timestamp_ms >= {int(start.timestamp() * 1000)}",
        )
        assert arm.requests == len(found)
        errors = sum(1 for t in found if str(t.info.state).endswith("ERROR"))
        assert arm.error_rate.value == pytest.approx(errors / len(found))
        assert arm.feedback_count > 0
    assert report.verdict


def test_window_must_be_ordered(seeded_settings):
    now = datetime.now(tz=timezone.utc)
    with pytest.raises(ValidationError, match="before its end"):
        ab.judge_endpoint("support-prod", ["1"], now, now - timedelta(hours=1), settings=seeded_settings)


@pytest.fixture
def two_version_endpoint(isolated_settings):
    client = register_versions(isolated_settings, "m", 2, champion="1")
    served = (serving.ServedVersion("m_1", "m", "1"), serving.ServedVersion("m_2", "m", "2"))
    serving.save_local_endpoint(serving.Endpoint(
        "ep", served, (serving.TrafficRoute("m_1", 80), serving.TrafficRoute("m_2", 20)), serving.EndpointState.READY),
        isolated_settings)
    return client


def test_promote_winner_moves_traffic_and_champion_together(isolated_settings, two_version_endpoint):
    outcome = ab.promote_arm("ep", "m_2", OPERATOR, reason="v2 wins on errors", settings=isolated_settings)
    assert outcome.traffic_moved and outcome.alias_moved
    endpoint = serving.get_endpoint("ep", isolated_settings)
    assert {r.entity_name: r.percentage for r in endpoint.routes} == {"m_1": 0, "m_2": 100}
    assert str(two_version_endpoint.get_registered_model("m").aliases["champion"]) == "2"
    (change,) = audit.traffic_changes("ep", settings=isolated_settings)
    assert (change.user, change.action) == ("ops@example.com", "promote winner")

    ab.promote_arm("ep", "m_1", OPERATOR, reason="roll back", action="rollback", settings=isolated_settings)
    assert str(two_version_endpoint.get_registered_model("m").aliases["champion"]) == "1"
    assert serving.get_endpoint("ep", isolated_settings).percentage_for("m_1") == 100


def test_alias_failure_after_traffic_says_exactly_where_things_stand(isolated_settings, two_version_endpoint, monkeypatch):
    def refuse(*args, **kwargs):
        raise ConflictError("champion moved meanwhile.")

    monkeypatch.setattr("services.releases.promote", refuse)
    with pytest.raises(ab.PartialPromotionError, match=r"now goes 100% to m v2, but m@champion was NOT moved"):
        ab.promote_arm("ep", "m_2", OPERATOR, reason="v2 wins", settings=isolated_settings)
    assert serving.get_endpoint("ep", isolated_settings).percentage_for("m_2") == 100
    assert str(two_version_endpoint.get_registered_model("m").aliases["champion"]) == "1"


def test_promote_refuses_unknown_arm_and_changes_nothing(isolated_settings, two_version_endpoint):
    before = serving.get_endpoint("ep", isolated_settings)
    with pytest.raises(ValidationError, match="not an arm"):
        ab.promote_arm("ep", "m_9", OPERATOR, reason="x", settings=isolated_settings)
    with pytest.raises(ValidationError, match="reason"):
        ab.promote_arm("ep", "m_2", OPERATOR, reason="", settings=isolated_settings)
    assert serving.get_endpoint("ep", isolated_settings) == before
    assert audit.traffic_changes("ep", settings=isolated_settings) == []


# --- live scorers per arm, on a workspace written with MLflow's public API ------------------------

LIVE_AGENT = "triage-bot"
FORBIDDEN = "live_forbidden_content"  # pass/fail, on both arms
HELPFUL = "live_helpfulness"  # numeric, only on v2 (v1 has only a failed judge call)
# The one tag of the app's here: the serving gateway writes it on every trace it serves, and arms are
# read from the endpoint's traces. Everything else is MLflow's own (mlflow.modelId, assessments).
GATEWAY_ENDPOINT_TAG = "agentops.endpoint"


def _served_traces(experiment_id: str, model_id: str, count: int, *, endpoint: str | None) -> list[str]:
    """Traces linked to a version by ``set_active_model``; ``endpoint`` is the tag a serving gateway writes."""
    return log_traces(experiment_id, model_id, count, tags={GATEWAY_ENDPOINT_TAG: endpoint} if endpoint else None)


@pytest.fixture
def live_world(isolated_settings):
    import mlflow
    from mlflow.entities import AssessmentSource

    client = MlflowClient(tracking_uri=isolated_settings.tracking_uri, registry_uri=isolated_settings.registry_uri)
    experiment_id = client.create_experiment("triage-traces", artifact_location=str(isolated_settings.data_dir / "art"))
    client.create_registered_model(LIVE_AGENT)
    model_ids = []
    for _ in range(2):
        model = mlflow.create_external_model(name=LIVE_AGENT, experiment_id=experiment_id)
        client.create_model_version(LIVE_AGENT, source=f"models:/{model.model_id}", model_id=model.model_id)
        model_ids.append(model.model_id)
    served = (serving.ServedVersion(f"{LIVE_AGENT}_1", LIVE_AGENT, "1"), serving.ServedVersion(f"{LIVE_AGENT}_2", LIVE_AGENT, "2"))
    serving.save_local_endpoint(serving.Endpoint(
        "triage", served, (serving.TrafficRoute(served[0].entity_name, 60), serving.TrafficRoute(served[1].entity_name, 40)),
        serving.EndpointState.READY), isolated_settings)
    arm1 = _served_traces(experiment_id, model_ids[0], 12, endpoint="triage")
    arm2 = _served_traces(experiment_id, model_ids[1], 10, endpoint="triage")
    offline = _served_traces(experiment_id, model_ids[1], 4, endpoint=None)  # same version, not via the endpoint

    def feedback(trace_id: str, name: str, **kwargs) -> None:
        mlflow.log_feedback(trace_id=trace_id, name=name, source=AssessmentSource("CODE", name), **kwargs)

    for i, trace_id in enumerate(arm1):
        feedback(trace_id, FORBIDDEN, value="no" if i == 0 else "yes")
    feedback(arm1[1], HELPFUL, error=Exception("judge timed out"))  # an error is no result
    for i, trace_id in enumerate(arm2):
        if i < 8:  # two traces not scored (sampled out)
            feedback(trace_id, FORBIDDEN, value="yes" if i < 3 else "no")
        feedback(trace_id, HELPFUL, value=[0.2, 0.9, 0.5, 0.7, 1.0][i % 5])
    for trace_id in offline:
        feedback(trace_id, FORBIDDEN, value="no")
        feedback(trace_id, HELPFUL, value=0.0)
    return {"client": client, "experiment_id": experiment_id, "arms": {served[0].entity_name: arm1, served[1].entity_name: arm2}}


def _hand_count(client, trace_ids: list[str], name: str) -> list:
    """The values of one live scorer on these traces, read back trace by trace from the store."""
    values = []
    for trace_id in trace_ids:
        for a in client.get_trace(trace_id).info.assessments:
            if a.name == name and a.feedback.error is None:
                values.append(a.feedback.value)
    return values


def test_each_live_scorer_gets_its_own_row_and_test_per_arm(isolated_settings, live_world):
    from scipy.stats import fisher_exact

    from components.serving import arms_frame, comparisons_frame

    client, arms = live_world["client"], live_world["arms"]
    now = datetime.now(tz=timezone.utc)
    report = ab.judge_endpoint("triage", [live_world["experiment_id"]], now - timedelta(hours=1), now + timedelta(minutes=1),
                               settings=isolated_settings)
    assert report.baseline == "triage-bot_1"
    stats = {a.entity_name: {s.scorer: s for s in a.live_scorers} for a in report.arms}
    for entity, trace_ids in arms.items():
        assert set(stats[entity]) == {"forbidden_content", "helpfulness"}
        forbidden = _hand_count(client, trace_ids, FORBIDDEN)
        row = stats[entity]["forbidden_content"]
        assert row.pass_fail and row.n == len(forbidden)
        assert row.value.value == pytest.approx(forbidden.count("yes") / len(forbidden))
        assert row.value.low < row.value.value < row.value.high
    # Helpfulness: a mean with a bootstrap interval on v2; on v1 only a failed call, so missing (not 0).
    helpful = _hand_count(client, arms["triage-bot_2"], HELPFUL)
    v2 = stats["triage-bot_2"]["helpfulness"]
    assert not v2.pass_fail and v2.n == len(helpful) == 10
    assert v2.value.value == pytest.approx(sum(helpful) / len(helpful))
    assert v2.value.low < v2.value.value < v2.value.high
    v1 = stats["triage-bot_1"]["helpfulness"]
    assert (v1.n, v1.value) == (0, ab.Interval(None, None, None))

    (comparison,) = report.comparisons
    metrics = {m.metric: m for m in comparison.metrics}
    forbidden_1 = _hand_count(client, arms["triage-bot_1"], FORBIDDEN)
    forbidden_2 = _hand_count(client, arms["triage-bot_2"], FORBIDDEN)
    passes_1, passes_2 = forbidden_1.count("yes"), forbidden_2.count("yes")
    _, p = fisher_exact([[passes_1, len(forbidden_1) - passes_1], [passes_2, len(forbidden_2) - passes_2]])
    rate = metrics["live forbidden_content pass rate"]
    assert (rate.baseline, rate.candidate) == (pytest.approx(passes_1 / 12), pytest.approx(passes_2 / 8))
    assert rate.test == "Fisher's exact test" and rate.p_value == pytest.approx(p)
    assert rate.direction is ab.Direction.WORSE and not comparison.is_winner
    missing = metrics["live helpfulness mean score"]
    assert missing.baseline is None and missing.direction is ab.Direction.NOT_ENOUGH_DATA
    assert "scorer pass rate" not in metrics  # the live scorers are no longer pooled into one measure

    table = arms_frame(report).set_index("Arm")
    assert table.loc["triage-bot v1 (baseline)", "live helpfulness mean score (95% CI)"] == "—"
    assert table.loc["triage-bot v2", "live forbidden_content pass rate (95% CI)"].startswith(f"{passes_2 / 8:.0%} (")
    assert "live helpfulness mean score" in set(comparisons_frame(report)["Metric"])
    # Pass/fail outcomes, one entry per live scorer (by its name); numeric scorers have none.
    samples = {s.entity_name: s for s in ab.arm_samples(serving.get_endpoint("triage", isolated_settings),
                                                         [live_world["experiment_id"]], now - timedelta(hours=1),
                                                         now + timedelta(minutes=1), settings=isolated_settings)}
    by_name = samples["triage-bot_2"].scorer_passes_by_name
    assert list(by_name) == ["forbidden_content"]
    assert sorted(by_name["forbidden_content"]) == sorted(v == "yes" for v in forbidden_2)
    # A guarded rollout's guardrail finds them by the scorer's name or its assessment name (older plans).
    rails = tuple(Guardrail(Measure.LIVE_PASS_RATE, 0.05, name) for name in ("forbidden_content", FORBIDDEN))
    plan = RolloutPlan("triage", "triage-bot_1", "triage-bot_2", (10, 100), 5, 0, rails, Final.PROMOTE)
    evidence = evidence_from_arms(plan, Baseline(), samples["triage-bot_2"], samples["triage-bot_1"])
    for rail in rails:
        assert evidence.challenger[rail.label].n == 8
        assert evidence.challenger[rail.label].total == passes_2
