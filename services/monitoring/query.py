"""What a monitoring question asks: the window, the scope (agent, version, alias, endpoint, arm), the split
and the filters, validated before any read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from services.errors import ValidationError
from services.traces import AGENT_TAG, ARM_TAG, ENDPOINT_TAG, VERSION_TAG, tag_filter

ALIAS_TAG = "agentops.alias"
MAX_WINDOW = timedelta(days=90)
MAX_PAGE_SIZE = 500
# Bucket sizes the charts choose from: the smallest giving at most ~72 points.
BUCKET_CHOICES_S = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)


class Split(StrEnum):
    """How charts are split into series."""

    NONE = "none"
    VERSION = "version"
    ALIAS = "alias"
    ARM = "arm"


# Tags that earlier versions of the app (demo seeder, gateway) wrote on traces. Versions and aliases
# are now attributed through the ``mlflow.modelId`` trace metadata (``_links``); these tags still
# count for traces that carry no model id. The arm split stays a tag (the gateway's own notion).
SPLIT_TAGS = {Split.VERSION: VERSION_TAG, Split.ALIAS: ALIAS_TAG, Split.ARM: ARM_TAG}
ALL = "all traffic"


class Status(StrEnum):
    OK = "OK"
    ERROR = "ERROR"


class FeedbackFilter(StrEnum):
    """Assessment filter of the explorer."""

    ANY = "any"
    NEGATIVE = "negative"  # thumbs_up is false
    POSITIVE = "positive"  # thumbs_up is true


# --- query ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceQuery:
    """Which traces: experiments, the window ``[start, end)`` and equality filters on trace tags."""

    experiment_ids: tuple[str, ...]
    start: datetime
    end: datetime
    agent: str | None = None
    version: str | None = None
    alias: str | None = None
    endpoint: str | None = None
    arm: str | None = None
    status: Status | None = None

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return int(self.end.timestamp() * 1000)

    def tag_equalities(self) -> dict[str, str]:
        pairs = {AGENT_TAG: self.agent, VERSION_TAG: self.version, ALIAS_TAG: self.alias,
                 ENDPOINT_TAG: self.endpoint, ARM_TAG: self.arm}
        return {k: v for k, v in pairs.items() if v}


def validate_query(query: TraceQuery) -> None:
    """Raise ``ValidationError`` naming the problem; called before any I/O."""
    for name, moment in (("start", query.start), ("end", query.end)):
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            raise ValidationError(f"The window {name} must be a timezone-aware datetime (got {moment!r}).")
    if query.start >= query.end:
        raise ValidationError(
            f"The window starts ({query.start:%Y-%m-%d %H:%M}) after it ends ({query.end:%Y-%m-%d %H:%M}); "
            "pick a start before the end."
        )
    if query.end - query.start > MAX_WINDOW:
        raise ValidationError(f"The window is longer than {MAX_WINDOW.days} days; pick a shorter one.")
    if query.status is not None and query.status not in tuple(Status):
        raise ValidationError(f"Status {query.status!r} is not one of {', '.join(Status)}.")
    for key, value in query.tag_equalities().items():
        if any(ch in value for ch in "\n\r`") or len(value) > 250:
            raise ValidationError(f"The filter value {value!r} for {key} is not a valid tag value.")
        if "\\" in value:
            # MLflow's filter parser reads an escaped backslash before the closing quote as an
            # escaped quote, so such a value cannot be searched for: refuse it instead of failing later.
            raise ValidationError(f"The filter value {value!r} for {key} contains a backslash, which MLflow's "
                                  "trace search cannot match; filter on a value without one.")


def metric_filters(query: TraceQuery) -> list[str]:
    """The query as ``query_trace_metrics`` filters (the window is passed separately)."""
    filters = [tag_filter(k, v) for k, v in query.tag_equalities().items()]
    if query.status:
        filters.append(f'trace.status = "{query.status.value}"')
    return filters


# --- attribution: trace -> LoggedModel -> registered version -------------------------------------
