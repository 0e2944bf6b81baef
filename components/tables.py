"""Tables for the overview: agents, endpoints and evaluations as DataFrames."""

from __future__ import annotations

import re
from typing import Any, Callable

import pandas as pd

from services.evaluations import EvaluationSummary
from services.overview import AgentActivity
from services.serving import Endpoint

MAIN_ALIASES = ("champion", "challenger")
# Markdown that can load, link, run or hide something: links and images ([]()!), raw HTML (<>&),
# code spans (`), emphasis (*), KaTeX ($), tables (|), strikethrough (~), headings (#) and escapes
# themselves. Punctuation that only formats harmlessly ('.', '-', ':', '_') is left as typed.
_MARKDOWN = set("\\`*[]()!<>&$|~#")


def plain(text: object) -> str:
    """``text`` with markdown's active characters escaped, so st.markdown/caption/info show it as typed.

    Registry fields, trace content, tags and error messages are untrusted: unescaped, a markdown
    image in them loads a URL of the writer's choosing and a link points anywhere.
    """
    escaped = "".join("\\" + ch if ch in _MARKDOWN else ch for ch in str(text)).replace("\n", " ")
    # GitHub-flavoured markdown also links bare URLs and e-mail addresses: an invisible word joiner
    # inside "://", "www." and after "@" keeps them text.
    escaped = escaped.replace("://", ":\u2060//").replace("@", "@\u2060")
    return re.sub(r"(?i)\b(www)\.", "\\1\u2060.", escaped)


def code(text: object) -> str:
    """``text`` as inline code: backticks (which would end the code span) and line breaks removed."""
    return "`" + str(text).replace("`", "'").replace("\n", " ").replace("\r", " ") + "`"


def _version_label(agent_name: str, version: str | None) -> str:
    return f"v{version}" if version else "—"


def agents_frame(activity: tuple[AgentActivity, ...]) -> pd.DataFrame:
    """One row per agent: versions, alias holders and last-24h traffic."""
    rows = []
    for item in activity:
        agent, window = item.agent, item.last_24h
        other = {k: v for k, v in agent.aliases.items() if k not in MAIN_ALIASES}
        rows.append(
            {
                "Agent": agent.name,
                "Versions": agent.version_count,
                "Champion": _version_label(agent.name, agent.aliases.get("champion")),
                "Challenger": _version_label(agent.name, agent.aliases.get("challenger")),
                "Other aliases": ", ".join(f"{k} → v{v}" for k, v in other.items()) or "—",
                "Traces (24h)": window.traces,
                "Error rate (24h)": window.error_rate,
                "p95 latency (ms)": window.p95_ms,
                "Cost (24h, $)": window.total_cost,
            }
        )
    # A missing figure (no traces) is a dash, never None or nan.
    return readable(pd.DataFrame(rows), {"Error rate (24h)": ".1%", "p95 latency (ms)": ",.0f",
                                         "Cost (24h, $)": lambda v: f"${v:,.4f}"}, keep=("Versions", "Traces (24h)"))


def endpoints_frame(endpoints: tuple[Endpoint, ...]) -> pd.DataFrame:
    """One row per endpoint with its traffic split written out."""
    rows = []
    for endpoint in endpoints:
        by_entity = {s.entity_name: s for s in endpoint.served}
        split = " · ".join(
            f"{by_entity[r.entity_name].label} {r.percentage}%"
            if r.entity_name in by_entity
            else f"{r.entity_name} {r.percentage}%"
            for r in endpoint.routes
        )
        rows.append(
            {
                "Endpoint": endpoint.name,
                "State": endpoint.state.value,
                "Traffic split": split or "—",
                "Updated by": endpoint.updated_by or "—",
                "Updated": endpoint.updated_at,
            }
        )
    return readable(pd.DataFrame(rows))


def evaluations_frame(runs: tuple[EvaluationSummary, ...]) -> pd.DataFrame:
    """Latest evaluation runs: agent, version, then each scorer's pass rate as a column."""
    rows = []
    for run in runs:
        row = {"Agent": run.agent or run.run_name, "Version": f"v{run.version}" if run.version else "—"}
        row.update({name.removesuffix("/mean"): value for name, value in sorted(run.metrics.items())})
        row["Dataset"] = run.dataset or "—"
        row["Started"] = run.started_at
        rows.append(row)
    frame = pd.DataFrame(rows)
    # Scorer pass rates as percentages; a scorer a run did not use is a dash.
    return readable(frame, {c: ".0%" for c in frame.columns if c not in ("Agent", "Version", "Dataset", "Started")})


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Scorer columns of an evaluations frame (everything that is not descriptive)."""
    return [c for c in frame.columns if c not in ("Agent", "Version", "Dataset", "Started")]


# --- Awkward values read well -----------------------------------------------------------------

DASH = "—"


def missing(value: object) -> bool:
    """None, NaN, NaT, pandas.NA or an empty string: shown as a dash, never as 'None' / 'nan' / 'NaT'."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    try:
        result = pd.isna(value)
    except (TypeError, ValueError):
        return False
    return bool(result) if isinstance(result, (bool,)) or getattr(result, "shape", None) == () else False


def cell(value: object, fmt: "str | Callable[[Any], str] | None" = None) -> str:
    """One table cell as text: a dash when missing, times in UTC, mappings as 'key: value · …'.

    ``fmt`` is a format spec (``".1%"``) or a function of the value, used for numbers.
    """
    import datetime as _dt

    if isinstance(value, (dict,)):
        return " · ".join(f"{k}: {cell(v)}" for k, v in value.items()) or DASH
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(cell(v) for v in value) or DASH
    if missing(value):
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (pd.Timestamp, _dt.datetime)):
        stamp = pd.Timestamp(value)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        return stamp.strftime("%Y-%m-%d %H:%M UTC")
    if callable(fmt) and isinstance(value, (int, float)):
        return fmt(value)
    if isinstance(value, float):
        return format(value, fmt) if fmt else (f"{value:,.0f}" if value.is_integer() and abs(value) >= 1000
                                               else f"{value:.4g}")
    if fmt and isinstance(value, int):
        return format(value, fmt)
    return str(value)


def readable(frame: pd.DataFrame, formats: "dict[str, Any] | None" = None, *, keep: tuple[str, ...] = ()) -> pd.DataFrame:
    """A copy of ``frame`` for display: every cell through ``cell`` (columns in ``keep`` left as they are).

    Numbers keep their meaning (``formats`` gives a format spec per column, e.g. ``".1%"``); a
    missing value is a dash rather than None, nan or NaT.
    """
    formats = formats or {}
    out = frame.copy()
    for column in out.columns:
        if column in keep:
            continue
        fmt = formats.get(column)
        out[column] = [cell(v, fmt) for v in out[column].tolist()]
    return out


# --- Monitoring and Serving tables ---------------------------------------------------------------

_USD5 = lambda v: f"${v:,.5f}"  # noqa: E731
_USD6 = lambda v: f"${v:,.6f}"  # noqa: E731
TOTALS_FORMATS: dict[str, Any] = {
    "error_rate": ".1%", "p50_ms": ",.0f", "p95_ms": ",.0f", "p99_ms": ",.0f",
    "input_tokens": ",.0f", "output_tokens": ",.0f", "cached_input_tokens": ",.0f",
    "recorded_cost": _USD5, "estimated_cost": _USD5, "cost": _USD5, "cost_per_request": _USD5,
}


def totals_frame(totals: pd.DataFrame, group_label: str) -> pd.DataFrame:
    """Monitoring's per-group totals for display: the group column named ``group_label``, figures formatted,
    a figure that does not exist (no latency without requests, no price) a dash. Counts stay numbers."""
    frame = totals.rename(columns={"group": group_label})
    return readable(frame, TOTALS_FORMATS, keep=("requests", "errors", "traces_with_tokens", "traces_without_tokens"))


def explorer_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """The trace explorer's page for display: no agent, version, tokens or cost on a trace is a dash
    (the ``link`` column says why). Time, status and latency stay typed, for sorting."""
    shown = rows.drop(columns=["has_token_usage"], errors="ignore")
    return readable(shown, {"input_tokens": ",.0f", "output_tokens": ",.0f", "cost": _USD6},
                    keep=("time", "status", "latency_ms"))
