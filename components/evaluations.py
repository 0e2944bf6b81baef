"""Rendering helpers for the Evaluations page: run labels, tables and plotly charts."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from services.evaluations import Comparison, EvaluationSummary, RowChange
from services.statistics import format_p
from components.tables import readable

ROW_FILTERS = {
    "All rows": None,
    "Regressions": (RowChange.REGRESSION,),
    "Improvements": (RowChange.IMPROVEMENT,),
    "Unchanged": (RowChange.UNCHANGED,),
    "In one run only": (RowChange.ONLY_BASELINE, RowChange.ONLY_CANDIDATE),
}


def run_label(run: EvaluationSummary) -> str:
    """"support-agent v2 · support-agent-golden · 2026-11-23 01:20" for pickers."""
    who = f"{run.agent} v{run.version}" if run.agent and run.version else f"{run.run_name} (not attached)"
    when = f"{run.started_at:%Y-%m-%d %H:%M}" if run.started_at else "?"
    label = f"{who} · {run.dataset or 'unknown dataset'} · {when} · {run.run_id[:6]}"
    return f"{label} · {run.state}" if run.state != "finished" else label


RUN_STATES = {
    "finished": "finished",
    "interrupted": "interrupted",  # the backend (or the app) went away mid-run: not a result
    "running": "running",
    "failed": "failed",
    "killed": "stopped",
    "scheduled": "scheduled",
}


LINKS = {
    "app tags": "started here",
    "evaluated model": "evaluated LoggedModel",
    "model id on its traces": "model id on its traces",
}


def runs_frame(runs: list[EvaluationSummary]) -> pd.DataFrame:
    """Evaluation runs as listed on the Run tab: who, what, when, status and the request it served.

    A run of a bare ``predict_fn`` (no LoggedModel recorded) is listed under its experiment with
    its run name, and "not attached" as its version; it can still be compared.
    """
    return readable(pd.DataFrame(
        [
            {
                "Agent": run.agent or run.run_name,
                "Version": f"v{run.version}" if run.version else "not attached",
                "Dataset": run.dataset,
                "Started": run.started_at,
                "Status": RUN_STATES.get(run.state, run.state),
                "Request": (run.request_id or "")[:8],
                "Run": run.run_id,
                "Experiment": run.experiment_id,
                "Linked by": LINKS.get(run.linked_by or "", run.linked_by) if run.linked_by else "no model recorded",
            }
            for run in runs
        ],
        columns=["Agent", "Version", "Dataset", "Started", "Status", "Request", "Run", "Experiment", "Linked by"],
    ))


def summary_frame(comparison: Comparison) -> pd.DataFrame:
    """The per-metric summary as displayed: one row per candidate run and metric."""
    frame = comparison.summary.copy()
    if frame.empty:
        return frame
    frame["95% CI"] = [
        "—" if low is None or (isinstance(low, float) and math.isnan(low)) else f"[{low:+.3f}, {high:+.3f}]"
        for low, high in zip(frame["ci_low"], frame["ci_high"])
    ]
    frame["p"] = [format_p(p).removeprefix("p ").removeprefix("= ") for p in frame["p_value"]]
    frame = frame.rename(columns={
        "run": "Run", "metric": "Metric", "kind": "Kind", "n": "Shared rows", "baseline": "Baseline",
        "value": "Run value", "delta": "Δ", "test": "Test", "direction": "Verdict",
    })[["Run", "Metric", "Kind", "Shared rows", "Baseline", "Run value", "Δ", "95% CI", "p", "Test", "Verdict"]]
    # No shared scored rows leaves a figure out: a dash, not nan.
    return readable(frame, {"Baseline": ".3f", "Run value": ".3f", "Δ": "+.3f"}, keep=("Shared rows",))


def filter_rows(comparison: Comparison, choice: str) -> pd.DataFrame:
    """The per-row table narrowed to a filter of ``ROW_FILTERS``, without the internal key."""
    wanted = ROW_FILTERS.get(choice)
    frame = comparison.rows
    if wanted is not None and not frame.empty:
        frame = frame[frame["change"].isin([str(w) for w in wanted])]
    # A row a run does not have, or a scorer that failed, reads as a dash (its rationale says why).
    return readable(frame.drop(columns=["row_key"], errors="ignore"))


def delta_chart(comparison: Comparison) -> go.Figure:
    """Per-metric delta against the baseline, one bar per candidate run, with 95% intervals."""
    frame = comparison.summary.dropna(subset=["delta"])
    figure = go.Figure()
    for run, part in frame.groupby("run", sort=False):
        figure.add_bar(
            name=str(run),
            x=part["metric"],
            y=part["delta"],
            error_y={
                "type": "data", "symmetric": False,
                "array": (part["ci_high"] - part["delta"]).clip(lower=0).tolist(),
                "arrayminus": (part["delta"] - part["ci_low"]).clip(lower=0).tolist(),
            },
            hovertemplate="%{x}: Δ %{y:+.3f}<extra>" + str(run) + "</extra>",
        )
    figure.add_hline(y=0, line_color="#888", line_width=1)
    figure.update_layout(
        barmode="group", height=320, margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title=f"Δ vs baseline ({comparison.baseline.label}) with 95% CI", yaxis_title="Δ (run − baseline)",
        legend={"orientation": "h", "y": -0.2},
    )
    return figure


def delta_distribution(comparison: Comparison) -> go.Figure:
    """Distribution of per-row deltas (shared rows) by metric and run."""
    figure = go.Figure()
    for (run, metric), part in comparison.deltas.groupby(["run", "metric"], sort=False):
        figure.add_histogram(x=part["delta"], name=f"{metric} · {run}", opacity=0.7)
    figure.update_layout(
        barmode="overlay", height=320, margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title="Per-row Δ on shared rows", xaxis_title="Δ (run − baseline)", yaxis_title="rows",
        legend={"orientation": "h", "y": -0.2},
    )
    return figure
