"""Widgets for the serving page: split editor state, arm tables and the change preview."""

from __future__ import annotations

import pandas as pd

from services.ab import ArmReport, ArmStats, Interval
from services.serving import Endpoint, SplitPlan
from services.traffic_audit import TrafficChange


def _ci(interval: Interval, fmt: str) -> str:
    if interval.value is None:
        return "—"
    if interval.low is None or interval.high is None:
        return format(interval.value, fmt)
    return f"{format(interval.value, fmt)} ({format(interval.low, fmt)}–{format(interval.high, fmt)})"


def arms_frame(report: ArmReport) -> pd.DataFrame:
    """One row per arm with 95% intervals written out."""
    rows = []
    for arm in report.arms:
        rows.append({
            "Arm": f"{arm.model_name} v{arm.version}" + (" (baseline)" if arm.entity_name == report.baseline else ""),
            "Requests": arm.requests,
            "Error rate (95% CI)": _ci(arm.error_rate, ".1%"),
            "p50 ms": arm.p50_ms, "p95 ms": arm.p95_ms, "p99 ms": arm.p99_ms,
            "Median latency (95% CI)": _ci(arm.median_latency, ",.0f"),
            "Tokens / request": arm.tokens_per_request,
            "Cost / request (95% CI)": _ci(arm.cost_per_request, ".5f"),
            "Feedback": arm.feedback_count,
            "Positive (95% CI)": _ci(arm.positive_rate, ".0%"),
            "Mean rating": arm.mean_rating,
            "Scorer pass rate": _ci(arm.scorer_pass_rate, ".0%"),
        })
    return pd.DataFrame(rows)


def comparisons_frame(report: ArmReport) -> pd.DataFrame:
    rows = []
    for comparison in report.comparisons:
        for metric in comparison.metrics:
            rows.append({
                "Candidate": comparison.candidate, "Metric": metric.metric,
                "Baseline": metric.baseline, "Candidate value": metric.candidate,
                "p-value": metric.p_value, "Test": metric.test, "Result": metric.direction.value,
            })
    return pd.DataFrame(rows)


def plan_frame(plan: SplitPlan) -> pd.DataFrame:
    """Current → proposed share per served version."""
    before, after = plan.percentages()
    names = list(dict.fromkeys([*before, *after]))
    return pd.DataFrame([
        {"Served version": n, "Current %": before.get(n, 0), "Proposed %": after.get(n, 0),
         "Change": after.get(n, 0) - before.get(n, 0)}
        for n in names
    ])


def history_frame(changes: list[TrafficChange]) -> pd.DataFrame:
    fmt = lambda split: " · ".join(f"{k} {v}%" for k, v in split.items()) or "—"  # noqa: E731
    return pd.DataFrame([
        {"When": c.at, "Who": c.user, "Action": c.action, "Before": fmt(c.before), "After": fmt(c.after), "Reason": c.reason}
        for c in changes
    ])


def arm_label(endpoint: Endpoint, entity_name: str) -> str:
    served = next((s for s in endpoint.served if s.entity_name == entity_name), None)
    return f"{served.model_name} v{served.model_version}" if served else entity_name


def best_arm_by(arms: tuple[ArmStats, ...]) -> dict[str, str]:
    return {a.entity_name: f"{a.model_name} v{a.version}" for a in arms}


def gateway_models_frame(gateway) -> pd.DataFrame:
    """Models of an MLflow AI Gateway endpoint: arms with their share, then fallbacks in order."""
    share = {r.entity_name: r.percentage for r in gateway.endpoint.routes}
    rows = [{"Model definition": m.name, "Provider / model": m.label, "Role": "arm",
             "Weight": m.weight, "Share %": share.get(m.name, 0)} for m in gateway.primaries]
    rows += [{"Model definition": m.name, "Provider / model": m.label, "Role": f"fallback #{m.fallback_order or '—'}",
              "Weight": None, "Share %": None} for m in gateway.fallbacks]
    return pd.DataFrame(rows)


def budgets_frame(gateway) -> pd.DataFrame:
    return pd.DataFrame([{"Limit": f"{b.amount:,.2f} {b.unit}", "Window": b.window, "Scope": b.scope,
                          "When exceeded": b.action} for b in gateway.budgets])
