"""Monitoring and Serving tables: a figure that does not exist is a dash, never None, nan, NaT or <NA>."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd

from components.serving import arms_frame, comparisons_frame, gateway_models_frame
from components.tables import DASH, explorer_frame, totals_frame
from services import monitoring as mon
from services import trace_explorer
from services.ab import ArmComparison, ArmReport, ArmStats, Direction, Interval, MetricComparison

BAD = {"None", "nan", "NaN", "NaT", "<NA>", "none"}


def _cells(frame: pd.DataFrame) -> set[str]:
    return {str(v) for v in frame.to_numpy().ravel()}


def test_monitoring_totals_with_a_group_without_latency_or_price():
    row = dict.fromkeys(mon.TOTALS_COLUMNS, math.nan)
    busy = {**row, "group": "2", "requests": 7, "errors": 1, "error_rate": 1 / 7, "p50_ms": 12.0, "p95_ms": 1234.5,
            "p99_ms": 2000.0, "input_tokens": 291.0, "output_tokens": 158.0, "cached_input_tokens": 0.0,
            "traces_with_tokens": 6, "traces_without_tokens": 1, "recorded_cost": 0.0012, "estimated_cost": 0.0,
            "cost": 0.0012, "cost_per_request": 0.0012 / 7, "unpriced_models": ""}
    idle = {**row, "group": "3", "requests": 0, "errors": 0, "traces_with_tokens": 0, "traces_without_tokens": 0,
            "unpriced_models": None}
    shown = totals_frame(pd.DataFrame([busy, idle], columns=list(mon.TOTALS_COLUMNS)), "version")
    assert not _cells(shown) & BAD
    first, second = shown.iloc[0], shown.iloc[1]
    assert (first["version"], first["requests"], first["error_rate"], first["p95_ms"], first["cost"]) == (
        "2", 7, "14.3%", "1,234", "$0.00120")
    assert (second["requests"], second["error_rate"], second["p50_ms"], second["cost"], second["unpriced_models"]) == (
        0, DASH, DASH, DASH, DASH)


def test_explorer_rows_of_a_trace_with_no_model_id_and_no_tokens():
    rows = pd.DataFrame([
        {"trace_id": "tr-1", "time": pd.Timestamp("2026-12-06 10:00", tz="UTC"), "agent": None, "version": None,
         "alias": None, "arm": None, "endpoint": None, "status": "ERROR", "latency_ms": 31,
         "input_tokens": math.nan, "output_tokens": math.nan, "has_token_usage": False, "cost": math.nan,
         "request": "", "model_id": None, "link": "no model id on the trace"},
        {"trace_id": "tr-2", "time": pd.Timestamp("2026-12-06 10:01", tz="UTC"), "agent": "a", "version": "2",
         "alias": "champion", "arm": None, "endpoint": None, "status": "OK", "latency_ms": 12,
         "input_tokens": 1200.0, "output_tokens": 40.0, "has_token_usage": True, "cost": 0.000123,
         "request": "hi", "model_id": "m-1", "link": "model id"},
    ], columns=list(trace_explorer.EXPLORER_COLUMNS))
    shown = explorer_frame(rows)
    assert "has_token_usage" not in shown.columns
    assert not _cells(shown.drop(columns=["time"])) & BAD
    assert list(shown["version"]) == [DASH, "2"] and list(shown["input_tokens"]) == [DASH, "1,200"]
    assert list(shown["cost"]) == [DASH, "$0.000123"] and list(shown["latency_ms"]) == [31, 12]


def _arm(entity: str, requests: int, p50: float | None) -> ArmStats:
    none = Interval(None, None, None)
    return ArmStats(entity, "agent", entity[-1], requests, Interval(0.1, 0.05, 0.2) if requests else none, p50,
                    p50, p50, none, none, 120.0 if requests else None, 0, none, None, none, False)


def test_serving_arms_without_traffic_or_feedback():
    report = ArmReport("ep", pd.Timestamp("2026-12-01"), pd.Timestamp("2026-12-06"), "agent_1",
                       (_arm("agent_1", 40, 210.4), _arm("agent_2", 0, None)),
                       (ArmComparison("agent_2", "agent_1", (MetricComparison("p95 latency", 210.4, None, None, "—",
                                                                              Direction.NO_DIFFERENCE),),
                                      None, "not enough data"),), "not enough data")
    arms = arms_frame(report)
    assert not _cells(arms) & BAD
    assert list(arms["Requests"]) == [40, 0] and list(arms["p50 ms"]) == ["210", DASH]
    assert list(arms["Mean rating"]) == [DASH, DASH] and list(arms["Tokens / request"]) == ["120", DASH]
    comparisons = comparisons_frame(report)
    assert not _cells(comparisons) & BAD and comparisons.iloc[0]["p-value"] == DASH


def test_gateway_fallback_models_have_no_weight_and_read_as_a_dash():
    model = lambda name, weight=None, order=None: SimpleNamespace(name=name, label=f"openai/{name}", weight=weight,  # noqa: E731
                                                                  fallback_order=order)
    gateway = SimpleNamespace(endpoint=SimpleNamespace(routes=(SimpleNamespace(entity_name="a", percentage=100),)),
                              primaries=(model("a", 1),), fallbacks=(model("b", order=1),))
    frame = gateway_models_frame(gateway)
    assert not _cells(frame) & BAD and list(frame["Weight"]) == ["1", DASH]
