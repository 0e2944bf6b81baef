"""Chart data from feedback frames (``reading.FEEDBACK_COLUMNS``): kinds, names, trends, agreement."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Sequence

import pandas as pd

from services.feedback.labels import COMMENT, RATING, THUMBS


class FeedbackKind(StrEnum):
    """How a feedback name is answered, read from the values present."""

    BOOLEAN = "boolean"
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    TEXT = "text"  # free text: too many distinct or long values to chart


MAX_CATEGORIES = 12


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in ("true", "false"))


def _as_bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() == "true"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def feedback_kind(values: Sequence[Any]) -> FeedbackKind:
    """Boolean, numeric, categorical or free text, from the values a feedback name holds."""
    present = [v for v in values if v is not None]
    if present and all(_is_bool(v) for v in present):
        return FeedbackKind.BOOLEAN
    if present and all(_is_number(v) for v in present):
        return FeedbackKind.NUMERIC
    texts = {str(v) for v in present}
    if len(texts) <= MAX_CATEGORIES and all(len(t) <= 40 for t in texts):
        return FeedbackKind.CATEGORICAL
    return FeedbackKind.TEXT


def _value_label(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


NAME_COLUMNS = ("name", "kind", "count", "traces", "values", "sources", "reviewers")


def feedback_names(frame: pd.DataFrame) -> pd.DataFrame:
    """Every feedback name present with its kind, counts per value and sources (``NAME_COLUMNS``).

    ``values`` is ``{value label: count}`` (for numeric names too; for free text it is empty);
    ``sources`` is ``{source type: count}``.
    """
    out = []
    if frame.empty:
        return pd.DataFrame(columns=list(NAME_COLUMNS))
    for name, part in frame.groupby("name", sort=True):
        kind = feedback_kind(part["value"].tolist())
        values: dict[str, int] = {}
        if kind is not FeedbackKind.TEXT:
            labels = [_value_label(_as_bool(v) if kind is FeedbackKind.BOOLEAN else v) for v in part["value"]]
            for label in sorted(set(labels), key=lambda x: (-labels.count(x), x)):
                values[label] = labels.count(label)
        out.append({
            "name": name, "kind": str(kind), "count": int(len(part)), "traces": int(part["trace_id"].nunique()),
            "values": values, "sources": part["source_type"].fillna("?").value_counts().sort_index().to_dict(),
            "reviewers": int(part["reviewer"].dropna().nunique()),
        })
    return pd.DataFrame(out, columns=list(NAME_COLUMNS))


NAME_TREND_COLUMNS = ("bucket", "group", "n", "value")


def _group_column(data: pd.DataFrame, by: "GroupBy") -> pd.Series:
    if by is GroupBy.VERSION:
        # Versions are numbered per agent: "orders-agent v2", never a bare "2" mixing agents.
        return pd.Series([f"{a or '(no agent)'} v{v}" if v else f"{a or '(no agent)'} (no version)"
                          for a, v in zip(data["agent"], data["version"])], index=data.index)
    return data[by.value].fillna("(no arm)").astype(str)


def name_trend(frame: pd.DataFrame, name: str, by: "GroupBy | str" = "version", freq: str = "D") -> pd.DataFrame:
    """One feedback name over time per group (``NAME_TREND_COLUMNS``).

    ``value`` is the share of true (boolean), the mean (numeric) or, for a categorical name, the
    count of each value, with the value named in ``group`` ("agent v1 · helpful").
    """
    by = GroupBy(by)
    part = frame[frame["name"] == name].copy() if not frame.empty else frame
    if part.empty:
        return pd.DataFrame(columns=list(NAME_TREND_COLUMNS))
    kind = feedback_kind(part["value"].tolist())
    part["group"] = _group_column(part, by)
    part["bucket"] = part["time"].dt.floor(freq)
    out = []
    if kind is FeedbackKind.CATEGORICAL or kind is FeedbackKind.TEXT:
        part["label"] = part["value"].map(_value_label)
        for (bucket, group, label), rows in part.groupby(["bucket", "group", "label"], sort=True):
            out.append({"bucket": bucket, "group": f"{group} · {label}", "n": int(len(rows)), "value": float(len(rows))})
    else:
        for (bucket, group), rows in part.groupby(["bucket", "group"], sort=True):
            values = (rows["value"].map(_as_bool).astype(float) if kind is FeedbackKind.BOOLEAN
                      else pd.to_numeric(rows["value"], errors="coerce").dropna())
            out.append({"bucket": bucket, "group": group, "n": int(len(values)),
                        "value": float(values.mean()) if len(values) else math.nan})
    return pd.DataFrame(out, columns=list(NAME_TREND_COLUMNS))


class GroupBy(StrEnum):
    VERSION = "version"
    ARM = "arm"


TREND_COLUMNS = ("bucket", "group", "reviews", "share_positive", "mean_rating", "ratings")


def feedback_trend(frame: pd.DataFrame, by: GroupBy | str = GroupBy.VERSION, freq: str = "D") -> pd.DataFrame:
    """Share of thumbs up and mean rating per group and time bucket (``TREND_COLUMNS``)."""
    by = GroupBy(by)
    if frame.empty:
        return pd.DataFrame(columns=list(TREND_COLUMNS))
    data = frame.copy()
    if by is GroupBy.VERSION:
        # Versions are numbered per agent: "orders-agent v2", never a bare "2" mixing agents.
        data["group"] = [f"{a or '(no agent)'} v{v}" if v else f"{a or '(no agent)'} (untagged)"
                         for a, v in zip(data["agent"], data["version"])]
    else:
        data["group"] = data[by.value].fillna("(untagged)").astype(str)
    data["bucket"] = data["time"].dt.floor(freq)
    out = []
    for (bucket, group), part in data.groupby(["bucket", "group"], sort=True):
        thumbs = part[part["name"] == THUMBS]["value"].map(lambda v: bool(v) if isinstance(v, bool) else str(v).lower() == "true")
        ratings = pd.to_numeric(part[part["name"] == RATING]["value"], errors="coerce").dropna()
        out.append({
            "bucket": bucket, "group": group, "reviews": int(len(thumbs)),
            "share_positive": float(thumbs.mean()) if len(thumbs) else math.nan,
            "mean_rating": float(ratings.mean()) if len(ratings) else math.nan, "ratings": int(len(ratings)),
        })
    return pd.DataFrame(out, columns=list(TREND_COLUMNS))


AGREEMENT_COLUMNS = ("name", "traces", "pairs", "agreement")


def reviewer_agreement(frame: pd.DataFrame) -> pd.DataFrame:
    """Pairwise agreement among reviewers of the same trace (``AGREEMENT_COLUMNS``).

    ``agreement`` is the share of reviewer pairs on a trace giving the same value (a ``rating``
    within one point), over traces reviewed by two or more people; NaN when there are none. One
    row for ``thumbs_up`` and ``rating`` always, and one per other chartable name present.
    """
    out = []
    present = sorted(set(frame["name"]) - {THUMBS, RATING, COMMENT}) if not frame.empty else []
    for name in (THUMBS, RATING, *present):
        part = frame[frame["name"] == name] if not frame.empty else frame
        if name not in (THUMBS, RATING) and feedback_kind(part["value"].tolist()) is FeedbackKind.TEXT:
            continue
        traces = pairs = agreeing = 0
        for _, per_trace in (part.groupby("trace_id") if len(part) else []):
            latest = per_trace.drop_duplicates("reviewer", keep="last")["value"].tolist()
            if len(latest) < 2:
                continue
            traces += 1
            for i in range(len(latest)):
                for j in range(i + 1, len(latest)):
                    pairs += 1
                    a, b = latest[i], latest[j]
                    same = abs(float(a) - float(b)) <= 1 if name == RATING else _value_label(a) == _value_label(b)
                    agreeing += int(same)
        out.append({"name": name, "traces": traces, "pairs": pairs,
                    "agreement": agreeing / pairs if pairs else math.nan})
    return pd.DataFrame(out, columns=list(AGREEMENT_COLUMNS))

