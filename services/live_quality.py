"""Quality on live traffic: the live scorers' results on an agent's traces, per arm or version, over time.

Reads the assessments live scoring attached (named ``live_<scorer>``, see ``services.live_scoring``);
the A/B judge tests them per arm (``outcomes_by``), Monitoring charts them per bucket with
confidence intervals (``quality_over_time``: Wilson intervals from statsmodels for pass/fail
scorers, Student-t from scipy for numeric ones).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import pandas as pd

from services import registry
from services._clients import mlflow_client, translate_errors
from services.live_scoring_scorers import LIVE_PREFIX, scorer_of
from services.settings import Settings
from services.traces import ARM_TAG

PASS_VALUES = {"yes", "true", "pass", "passed", "1"}

RESULT_COLUMNS = ["trace_id", "timestamp", "model_id", "version", "arm", "scorer", "value", "passed", "score"]


def _score(value: Any) -> tuple[bool | None, float | None]:
    if isinstance(value, bool):
        return value, float(value)
    if isinstance(value, (int, float)) and not math.isnan(value):
        return None, float(value)
    text = str(value).strip().lower()
    if text in PASS_VALUES or text in ("no", "false", "fail", "failed", "0"):
        return text in PASS_VALUES, float(text in PASS_VALUES)
    return None, None


def live_results(agent: str, settings: Settings, *, start: datetime, end: datetime,
                 max_traces: int = 5000) -> pd.DataFrame:
    """Every live assessment on the agent's traces in a window (columns: ``RESULT_COLUMNS``).

    ``passed`` is True/False for pass/fail scorers, ``score`` the numeric value (1/0 for pass/fail).
    The A/B judge groups these by ``arm`` (or ``version``) to compare arms on live scorers.
    """
    links, experiments = registry.agent_links(agent, settings)
    version_of = {link.model_id: link.version for link in links if link.model_id}
    rows: list[dict[str, Any]] = []
    if not experiments:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    clause = (f"trace.timestamp_ms >= {int(start.timestamp() * 1000)} AND "
              f"trace.timestamp_ms <= {int(end.timestamp() * 1000)}")
    client = mlflow_client(settings)
    token = None
    seen = 0
    with translate_errors(f"the traces of {agent}"):
        while seen < max_traces:
            page = client.search_traces(locations=list(experiments), filter_string=clause, include_spans=False,
                                        max_results=min(500, max_traces - seen), page_token=token)
            for trace in page:
                rows.extend(result_rows(trace.info, version_of))
            seen += len(page)
            token = page.token
            if not token:
                break
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def result_rows(info: Any, version_of: dict[str, str]) -> list[dict[str, Any]]:
    """The live assessments on one trace as ``RESULT_COLUMNS`` rows; none when the trace is not linked to one
    of the versions in ``version_of`` (LoggedModel id -> version) or has no valid, error-free live result."""
    model_id = (info.trace_metadata or {}).get("mlflow.modelId")
    if model_id not in version_of:
        return []
    rows = []
    for a in info.assessments or []:
        if not a.name.startswith(LIVE_PREFIX) or getattr(a, "feedback", None) is None or not a.valid:
            continue
        if a.feedback.error is not None:
            continue
        passed, score = _score(a.feedback.value)
        rows.append({"trace_id": info.trace_id, "timestamp": pd.Timestamp(info.timestamp_ms, unit="ms", tz="UTC"),
                     "model_id": model_id, "version": version_of[model_id],
                     "arm": (info.tags or {}).get(ARM_TAG), "scorer": scorer_of(a.name),
                     "value": a.feedback.value, "passed": passed, "score": score})
    return rows


def outcomes_by(results: pd.DataFrame, by: str = "arm") -> dict[str, dict[str, list[float]]]:
    """Per group (``arm`` or ``version``) and scorer, the per-trace scores (1.0/0.0 for pass/fail).

    For the A/B judge: the live scorers' results of each arm, to test like its other measures.
    """
    out: dict[str, dict[str, list[float]]] = {}
    for (group, scorer), part in results.dropna(subset=["score"]).groupby([by, "scorer"], sort=True):
        out.setdefault(str(group), {})[str(scorer)] = [float(v) for v in part["score"]]
    return out


def wilson(passed: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a pass rate (statsmodels)."""
    from statsmodels.stats.proportion import proportion_confint  # heavy: loaded on first use, not with the pages

    if total == 0:
        return math.nan, math.nan
    low, high = proportion_confint(passed, total, alpha=1 - confidence, method="wilson")
    return max(0.0, round(float(low), 12)), min(1.0, round(float(high), 12))


QUALITY_COLUMNS = ["bucket", "group", "scorer", "n", "passed", "rate", "low", "high"]


def quality_over_time(results: pd.DataFrame, *, by: str = "version", freq: str = "1h",
                      confidence: float = 0.95) -> pd.DataFrame:
    """Pass rate (or mean score) per time bucket, group (``version`` or ``arm``) and scorer, with a CI.

    Pass/fail scorers get a Wilson interval; numeric scorers the mean with a Student-t interval.
    """
    if results.empty:
        return pd.DataFrame(columns=QUALITY_COLUMNS)
    from scipy import stats  # heavy: loaded on first use, not with the pages

    frame = results.assign(bucket=results["timestamp"].dt.floor(freq), group=results[by].fillna("(none)"))
    rows = []
    for (bucket, group, scorer), part in frame.groupby(["bucket", "group", "scorer"], sort=True):
        n = len(part)
        if part["passed"].notna().all():
            passed = int(part["passed"].astype(bool).sum())
            low, high = wilson(passed, n, confidence)
            rows.append([bucket, group, scorer, n, passed, passed / n, low, high])
            continue
        scores = part["score"].dropna().astype(float)
        mean = float(scores.mean()) if len(scores) else math.nan
        if len(scores) > 1 and scores.std() > 0:
            low, high = stats.t.interval(confidence, len(scores) - 1, loc=mean, scale=stats.sem(scores))
        else:
            low = high = mean
        rows.append([bucket, group, scorer, n, None, mean, float(low), float(high)])
    return pd.DataFrame(rows, columns=QUALITY_COLUMNS)
