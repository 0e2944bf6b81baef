"""The trace explorer (a page of traces matching a query, through ``search_traces`` without spans)
and the one trace opened in detail, read with its spans and assessments."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import pandas as pd

from services import _mlflow_internal as internal
from services._clients import mlflow_client, translate_errors
from services.errors import NotFoundError, ValidationError
from services.monitoring import (
    ALIAS_TAG,
    MAX_PAGE_SIZE,
    FeedbackFilter,
    Split,
    TraceQuery,
    attribution,
    choose_interval,
    filter_links,
    linked_window,
    needs_attribution,
    validate_query,
)
from services.settings import Settings
from services.traces import AGENT_TAG, ARM_TAG, ENDPOINT_TAG, VERSION_TAG
from services.filter_strings import escape

_logger = logging.getLogger(__name__)


EXPLORER_COLUMNS = (
    "trace_id", "time", "agent", "version", "alias", "arm", "endpoint", "status", "latency_ms",
    "input_tokens", "output_tokens",  # NaN when the trace recorded no token usage
    "has_token_usage", "cost",  # MLflow's recorded cost (NaN when none)
    "request",  # request preview
    "model_id",  # the trace's mlflow.modelId (None: the trace records no LoggedModel)
    "link",  # how agent/version were found: "model id", "tags" (older app traces) or why they are missing
)


@dataclass(frozen=True)
class ExplorerQuery:
    """The explorer's filters: a ``TraceQuery`` plus latency range and feedback."""

    traces: TraceQuery
    min_latency_ms: int | None = None
    max_latency_ms: int | None = None
    feedback: FeedbackFilter = FeedbackFilter.ANY
    feedback_name: str = "thumbs_up"


@dataclass(frozen=True)
class TracePage:
    """One page of matching traces (``EXPLORER_COLUMNS``) and the token of the next page."""

    rows: pd.DataFrame
    next_token: str | None


def search_filter(explorer: ExplorerQuery) -> str:
    """The explorer query as a ``search_traces`` filter string."""
    q = explorer.traces
    clauses = [f"trace.timestamp_ms >= {q.start_ms}", f"trace.timestamp_ms < {q.end_ms}"]
    clauses += [f"tag.`{k}` = '{escape(v)}'" for k, v in q.tag_equalities().items()]
    if q.status:
        clauses.append(f"trace.status = '{q.status.value}'")
    if explorer.min_latency_ms is not None:
        clauses.append(f"trace.execution_time_ms >= {int(explorer.min_latency_ms)}")
    if explorer.max_latency_ms is not None:
        clauses.append(f"trace.execution_time_ms <= {int(explorer.max_latency_ms)}")
    if explorer.feedback is not FeedbackFilter.ANY:
        value = "false" if explorer.feedback is FeedbackFilter.NEGATIVE else "true"
        clauses.append(f"feedback.`{explorer.feedback_name}` = '{value}'")
    return " AND ".join(clauses)


def validate_explorer(explorer: ExplorerQuery, page_size: int) -> None:
    validate_query(explorer.traces)
    lo, hi = explorer.min_latency_ms, explorer.max_latency_ms
    for name, value in (("minimum latency", lo), ("maximum latency", hi)):
        if value is not None and value < 0:
            raise ValidationError(f"The {name} must be zero or more milliseconds (got {value}).")
    if lo is not None and hi is not None and lo > hi:
        raise ValidationError(f"The latency range {lo}–{hi} ms is empty; the minimum must not exceed the maximum.")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValidationError(f"Page size must be between 1 and {MAX_PAGE_SIZE} (got {page_size}).")
    if FeedbackFilter(explorer.feedback) is not FeedbackFilter.ANY and any(c in explorer.feedback_name for c in "`'\n"):
        raise ValidationError(f"Feedback name {explorer.feedback_name!r} is not a valid assessment name.")


def _status(info: Any) -> str:
    state = getattr(info, "state", None)
    return str(getattr(state, "value", state) or "")


def _explorer_row(info: Any, by_model: Mapping[str, Any] | None = None) -> dict[str, Any]:
    tags = info.tags or {}
    usage = info.token_usage or {}
    cost = (info.cost or {}).get("total_cost") if getattr(info, "cost", None) else None
    model_id = (getattr(info, "trace_metadata", None) or {}).get(internal.MODEL_ID_KEY)
    version_link = (by_model or {}).get(model_id or "")
    if version_link is not None:
        agent, version = version_link.agent, version_link.version
        alias, link = ",".join(version_link.aliases) or None, "model id"
    else:
        agent, version, alias = tags.get(AGENT_TAG), tags.get(VERSION_TAG), tags.get(ALIAS_TAG)
        if agent or version:
            link = "tags"
        elif model_id:
            link = "model id of no registered version"
        else:
            link = "no model id on the trace"
    return {
        "trace_id": info.trace_id,
        "time": pd.Timestamp(info.request_time, unit="ms", tz="UTC"),
        "agent": agent, "version": version, "alias": alias,
        "arm": tags.get(ARM_TAG), "endpoint": tags.get(ENDPOINT_TAG),
        "status": _status(info),
        "latency_ms": info.execution_duration,
        "input_tokens": usage.get("input_tokens", math.nan) if usage else math.nan,
        "output_tokens": usage.get("output_tokens", math.nan) if usage else math.nan,
        "has_token_usage": bool(usage),
        "cost": cost if cost is not None else math.nan,
        "request": (info.request_preview or "")[:200],
        "model_id": model_id,
        "link": link,
    }


# Pages of the store read at most per explorer page when matching several model ids client-side.
_MAX_SCAN_PAGES = 20


def _matches_link(info: Any, links: Sequence[internal.TraceLink]) -> bool:
    metadata = getattr(info, "trace_metadata", None) or {}
    model_id = metadata.get(internal.MODEL_ID_KEY)
    if model_id and metadata.get(internal.SOURCE_RUN_KEY):
        return False  # an evaluation row of that model, not live traffic (as in the aggregates)
    tags = info.tags or {}
    return all(model_id in link.model_ids or any(tags.get(k) == v for k, v in link.tags) for link in links)


def search_page(explorer: ExplorerQuery, *, page_size: int = 50, page_token: str | None = None,
                settings: Settings | None = None) -> TracePage:
    """One page of matching traces, newest first, paged in the store (no spans are read).

    Agent, version and alias filters follow the ``mlflow.modelId`` link: one linked model is a
    store-side filter; several (an agent's versions) are matched on each page read, a bounded
    number of store pages per explorer page.
    """
    validate_explorer(explorer, page_size)
    if not explorer.traces.experiment_ids:
        return TracePage(pd.DataFrame(columns=list(EXPLORER_COLUMNS)), None)
    client = mlflow_client(settings)
    q = explorer.traces
    attribution_ = attribution(None, settings)
    by_model = attribution_.by_model()
    links = filter_links(q, attribution_) if needs_attribution(q) else []
    filter_string = search_filter(explorer)
    post: list[internal.TraceLink] = []
    wanted = set.intersection(*(set(link.model_ids) for link in links)) if links else set()
    if links and wanted:
        plain = ExplorerQuery(TraceQuery(**{**q.__dict__, "agent": None, "version": None, "alias": None}),
                              explorer.min_latency_ms, explorer.max_latency_ms, explorer.feedback,
                              explorer.feedback_name)
        filter_string = search_filter(plain)
        if len(wanted) > 1:
            with translate_errors("trace search"):
                active = set(internal.trace_model_ids(client, list(q.experiment_ids), start_ms=q.start_ms,
                                                      end_ms=q.end_ms))
            wanted = (wanted & active) or wanted
        if len(wanted) == 1:
            filter_string += f" AND metadata.`{internal.MODEL_ID_KEY}` = '{escape(next(iter(wanted)))}'"
        post = links
    rows: list[dict[str, Any]] = []
    token = page_token
    with translate_errors("trace search"):
        for _ in range(_MAX_SCAN_PAGES if post else 1):
            page = client.search_traces(
                locations=list(q.experiment_ids), filter_string=filter_string,
                max_results=page_size, page_token=token, include_spans=False,
                order_by=["timestamp_ms DESC"],
            )
            rows += [_explorer_row(t.info, by_model) for t in page if not post or _matches_link(t.info, post)]
            token = page.token or None
            if not token or len(rows) >= page_size:
                break
    return TracePage(pd.DataFrame(rows, columns=list(EXPLORER_COLUMNS)), token)


def count_matching(query: TraceQuery, settings: Settings | None = None) -> int:
    """How many traces match the agent/version/alias links, tag, status and window filters (counted in the store)."""
    validate_query(query)
    if not query.experiment_ids:
        return 0
    client = mlflow_client(settings)
    window = dict(start_ms=query.start_ms, end_ms=query.end_ms, interval_seconds=choose_interval(query.start, query.end),
                  tag_equals=query.tag_equalities(), status=query.status.value if query.status else None)
    with translate_errors("trace metrics"):
        result = internal.aggregate_traces(client, list(query.experiment_ids), with_models=False,
                                           **linked_window(query, Split.NONE, [], window, settings))
    total = next((r for r in result.rows if r.bucket_ms is None), None)
    return total.requests if total else 0


# --- trace detail --------------------------------------------------------------------------

SPAN_COLUMNS = (
    "span_id", "parent_id", "depth", "name", "span_type", "start_offset_ms", "duration_ms", "status",
    "error",  # the error message of a failed span
    "model", "input_tokens", "output_tokens", "cost",  # LLM spans only
    "inputs", "outputs",  # JSON text
)
ASSESSMENT_COLUMNS = ("name", "value", "source", "source_type", "rationale", "time")


@dataclass(frozen=True)
class TraceDetail:
    """One trace with its span tree (``SPAN_COLUMNS``, depth-first order) and assessments."""

    trace_id: str
    time: datetime
    status: str
    latency_ms: int | None
    tags: dict[str, str]
    token_usage: dict[str, int]
    cost: float | None
    spans: pd.DataFrame
    assessments: pd.DataFrame
    errors: tuple[str, ...] = field(default_factory=tuple)


def _json(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str, ensure_ascii=False, indent=1)


def _span_error(span: Any) -> str:
    status = getattr(span, "status", None)
    code = str(getattr(getattr(status, "status_code", None), "value", getattr(status, "status_code", "")))
    message = getattr(status, "description", "") or ""
    for event in getattr(span, "events", None) or []:
        if event.name == "exception":
            message = message or str((event.attributes or {}).get("exception.message", ""))
    return message if "ERROR" in code or message else ""


def trace_detail(trace_id: str, settings: Settings | None = None) -> TraceDetail:
    """A trace's spans (timings, inputs, outputs, tokens, cost, errors) and its assessments."""
    if not trace_id or not trace_id.strip() or any(c.isspace() for c in trace_id.strip()):
        raise ValidationError(f"{trace_id!r} is not a trace id; pick a trace from the list.")
    client = mlflow_client(settings)
    with translate_errors(f"trace {trace_id}"):
        trace = client.get_trace(trace_id.strip())
    if trace is None:
        raise NotFoundError(f"Trace {trace_id} does not exist.")
    info, spans = trace.info, list(trace.data.spans)
    by_parent: dict[str | None, list[Any]] = {}
    for span in spans:
        by_parent.setdefault(span.parent_id, []).append(span)
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id is None or s.parent_id not in ids]
    origin = min((s.start_time_ns for s in spans), default=0)
    rows: list[dict[str, Any]] = []

    def walk(span: Any, depth: int) -> None:
        attrs = span.attributes or {}
        usage = attrs.get("mlflow.chat.tokenUsage") or {}
        cost = attrs.get("mlflow.llm.cost")
        cost_total = cost.get("total_cost") if isinstance(cost, dict) else cost
        status = getattr(span.status, "status_code", "")
        rows.append({
            "span_id": span.span_id, "parent_id": span.parent_id, "depth": depth, "name": span.name,
            "span_type": span.span_type, "start_offset_ms": (span.start_time_ns - origin) / 1e6,
            "duration_ms": ((span.end_time_ns or span.start_time_ns) - span.start_time_ns) / 1e6,
            "status": str(getattr(status, "value", status)), "error": _span_error(span),
            "model": attrs.get("mlflow.llm.model"),
            "input_tokens": usage.get("input_tokens") if isinstance(usage, dict) else None,
            "output_tokens": usage.get("output_tokens") if isinstance(usage, dict) else None,
            "cost": cost_total, "inputs": _json(span.inputs), "outputs": _json(span.outputs),
        })
        for child in sorted(by_parent.get(span.span_id, []), key=lambda s: s.start_time_ns):
            walk(child, depth + 1)

    for root in sorted(roots, key=lambda s: s.start_time_ns):
        walk(root, 0)
    span_frame = pd.DataFrame(rows, columns=list(SPAN_COLUMNS))
    assessments = []
    for a in getattr(info, "assessments", None) or []:
        value = a.feedback.value if getattr(a, "feedback", None) is not None else getattr(getattr(a, "expectation", None), "value", None)
        source = getattr(a, "source", None)
        assessments.append({
            "name": a.name, "value": value, "source": getattr(source, "source_id", None),
            "source_type": str(getattr(source, "source_type", "")), "rationale": a.rationale,
            "time": pd.Timestamp(a.create_time_ms, unit="ms", tz="UTC") if a.create_time_ms else None,
        })
    cost = (info.cost or {}).get("total_cost") if getattr(info, "cost", None) else None
    return TraceDetail(
        trace_id=info.trace_id,
        time=datetime.fromtimestamp(info.request_time / 1000, tz=timezone.utc),
        status=_status(info),
        latency_ms=info.execution_duration,
        tags={k: v for k, v in (info.tags or {}).items() if not k.startswith("mlflow.")},
        token_usage=dict(info.token_usage or {}),
        cost=cost,
        spans=span_frame,
        assessments=pd.DataFrame(assessments, columns=list(ASSESSMENT_COLUMNS)),
        errors=tuple(f"{r['name']}: {r['error']}" for r in rows if r["error"]),
    )
