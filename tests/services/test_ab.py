"""Arm statistics on constructed data with known answers, and promote-winner consistency."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from mlflow import MlflowClient

from services import ab, audit, serving
from services.errors import ConflictError, ValidationError
from services.identity import Identity, IdentitySource

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
    client = MlflowClient(tracking_uri=isolated_settings.tracking_uri)
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source="file:///tmp/none")
    client.set_registered_model_alias("m", "champion", "1")
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
