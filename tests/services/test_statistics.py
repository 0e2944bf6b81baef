"""Paired statistics checked against hand-computed cases."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from services import statistics
from services.statistics import Direction, MetricKind


def _pairs(both: int, base_only: int, cand_only: int, neither: int) -> tuple[list[float], list[float]]:
    """Per-row pass(1)/fail(0) values that produce the given 2×2 paired table."""
    base = [1.0] * both + [1.0] * base_only + [0.0] * cand_only + [0.0] * neither
    cand = [1.0] * both + [0.0] * base_only + [1.0] * cand_only + [0.0] * neither
    return base, cand


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        # Discordant 1 vs 9: 2 * P(X <= 1 | n=10, p=1/2) = 2 * 11/1024.
        ([[20, 1], [9, 18]], 22 / 1024),
        # Discordant 2 vs 8: 2 * (1 + 10 + 45)/1024.
        ([[30, 2], [8, 8]], 112 / 1024),
        # Discordant 5 vs 5: no evidence at all.
        ([[10, 5], [5, 10]], 1.0),
        # No discordant pairs.
        ([[40, 0], [0, 8]], 1.0),
    ],
)
def test_mcnemar_exact_matches_hand_computed_binomial(table, expected):
    assert statistics.mcnemar_p_value(table) == pytest.approx(expected, rel=1e-9)
    b, c = table[0][1], table[1][0]
    if b + c:
        assert statistics.mcnemar_p_value(table) == pytest.approx(scipy_stats.binomtest(b, b + c, 0.5).pvalue)


def test_pass_fail_better_candidate_is_significant():
    base, cand = _pairs(both=20, base_only=1, cand_only=9, neither=18)
    test = statistics.paired_pass_fail("correctness", base, cand)
    assert test.kind is MetricKind.PASS_FAIL and test.n == 48
    assert (test.improved, test.regressed, test.unchanged) == (9, 1, 38)
    assert test.baseline_mean == pytest.approx(21 / 48)
    assert test.candidate_mean == pytest.approx(29 / 48)
    assert test.delta == pytest.approx(8 / 48)
    assert test.p_value == pytest.approx(22 / 1024)
    assert test.ci_low <= test.delta <= test.ci_high
    assert test.direction is Direction.BETTER


def test_pass_fail_worse_and_unchanged_directions():
    base, cand = _pairs(both=20, base_only=9, cand_only=1, neither=18)
    assert statistics.paired_pass_fail("m", base, cand).direction is Direction.WORSE
    base, cand = _pairs(both=30, base_only=2, cand_only=8, neither=8)
    assert statistics.paired_pass_fail("m", base, cand).direction is Direction.NO_CHANGE


def test_identical_values_give_no_change_and_a_point_interval():
    values = [1.0, 0.0, 1.0, 1.0] * 12
    test = statistics.paired_pass_fail("safety", values, list(values))
    assert (test.delta, test.ci_low, test.ci_high, test.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert test.direction is Direction.NO_CHANGE


def test_missing_values_leave_the_pair_out():
    test = statistics.paired_pass_fail("m", [1.0, None, 0.0, float("nan")], [1.0, 1.0, 1.0, 0.0])
    assert test.n == 2


def test_no_pairs_are_not_testable():
    test = statistics.paired_numeric("m", [None], [1.0])
    assert test.n == 0 and test.p_value is None and test.direction is Direction.NOT_TESTABLE


def test_wilcoxon_matches_the_exact_distribution():
    base = [0.0] * 8
    cand = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    test = statistics.paired_numeric("score", base, cand)
    # All 8 signed ranks positive: the most extreme of 2^8 sign patterns, two-sided.
    assert test.p_value == pytest.approx(2 / 2**8)
    assert test.delta == pytest.approx(4.5)
    assert test.ci_low <= 4.5 <= test.ci_high
    assert test.direction is Direction.BETTER


def test_wilcoxon_known_sample():
    base = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30]
    cand = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29]
    test = statistics.paired_numeric("depression", base, cand)
    # Hollander & Wolfe's example (also scipy's docs): W+ = 5 of 45, exact two-sided p = 0.0390625.
    assert test.p_value == pytest.approx(0.0390625)
    assert test.direction is Direction.WORSE


def test_bootstrap_interval_brackets_the_mean():
    diffs = [1, 0, 0, 1, -1, 1, 0, 1, 1, 0] * 5
    low, high = statistics.bootstrap_ci(diffs)
    assert low < sum(diffs) / len(diffs) < high
    assert statistics.bootstrap_ci(diffs) == (low, high)  # seeded: reproducible


def test_verdict_in_plain_language():
    better = statistics.paired_pass_fail("correctness", *_pairs(20, 1, 9, 18))
    same = statistics.paired_pass_fail("safety", *_pairs(40, 0, 0, 8))
    text = statistics.verdict("B", [better, same], 48)
    assert text == "B is better on correctness, p = 0.021; no significant change in safety (p = 1.00); n = 48 shared rows"
    assert "shares no rows" in statistics.verdict("B", [], 0)


@pytest.mark.parametrize(("p", "text"), [(0.0001, "p < 0.001"), (0.0123, "p = 0.012"), (0.5, "p = 0.50"), (None, "p = n/a")])
def test_format_p(p, text):
    assert statistics.format_p(p) == text


def test_paired_inputs_must_align():
    with pytest.raises(ValueError):
        statistics.paired_numeric("m", [1.0, 2.0], [1.0])
    assert not math.isnan(statistics.paired_numeric("m", [1.0, 2.0], [1.5, 2.5]).delta)
