"""Reviewer feedback as MLflow assessments: label questions, reviews, history, charts, curation.

A review is stored on the trace itself, with the reviewer as a HUMAN assessment source:

| assessment | kind | value |
| --- | --- | --- |
| ``thumbs_up`` | feedback | bool |
| ``rating`` | feedback | int 1–5 |
| ``comment`` | feedback | free text |
| ``expected_response`` | expectation | the corrected answer |
| ``<question name>`` | feedback | the answer to an agent's custom label question |

Editing a judgement overrides the reviewer's earlier assessment the MLflow way
(``override_feedback``; the old value stays, with ``valid=False``). A value equal to the reviewer's
current one is not written again, so a submission interrupted part-way (``ReviewPartlySavedError``)
is completed by submitting the same review again, each value stored once. Custom label questions
are a JSON list in the agent's registered-model tag ``agentops.review.labels``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Mapping, Sequence

import pandas as pd

from services._clients import configure_mlflow, mlflow_client, tracing_client, translate_errors
from services.errors import AgentOpsError, BackendUnavailableError, NotFoundError, ValidationError
from services.settings import Settings
from services.traces import AGENT_TAG, ARM_TAG, VERSION_TAG

LABELS_TAG = "agentops.review.labels"
THUMBS = "thumbs_up"
RATING = "rating"
COMMENT = "comment"
EXPECTED_RESPONSE = "expected_response"
RESERVED_NAMES = (THUMBS, RATING, COMMENT, EXPECTED_RESPONSE, "expected_facts")
MAX_COMMENT = 5000
MAX_ANSWER = 20000
MAX_QUESTIONS = 20
MAX_QUESTIONS_JSON = 100_000  # characters of the JSON form; far above 20 questions
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,49}$")


class LabelKind(StrEnum):
    """How a custom label question is answered."""

    CHOICE = "choice"  # one of ``options``
    TEXT = "text"  # free text


@dataclass(frozen=True)
class LabelQuestion:
    """A custom label question the agent's owner defines; its answer is feedback named ``name``."""

    name: str
    prompt: str
    kind: LabelKind = LabelKind.CHOICE
    options: tuple[str, ...] = ()


def validate_questions(questions: Sequence[LabelQuestion]) -> tuple[LabelQuestion, ...]:
    """Check names, prompts and options; raise ``ValidationError`` naming the bad question."""
    if len(questions) > MAX_QUESTIONS:
        raise ValidationError(f"An agent can have at most {MAX_QUESTIONS} label questions (got {len(questions)}).")
    seen: set[str] = set()
    for number, q in enumerate(questions, start=1):
        if not isinstance(q.name, str) or not _NAME.match(q.name):
            raise ValidationError(
                f"Question {number}: the name {q.name!r} must be lowercase letters, digits and underscores, "
                "starting with a letter (at most 50 characters)."
            )
        if q.name in RESERVED_NAMES:
            raise ValidationError(f"Question {number}: {q.name!r} is a built-in review field; pick another name.")
        if q.name in seen:
            raise ValidationError(f"Question {number}: the name {q.name!r} is used twice.")
        seen.add(q.name)
        if not isinstance(q.prompt, str) or not q.prompt.strip():
            raise ValidationError(f"Question {number} ({q.name}): write the question reviewers will see.")
        try:
            kind = LabelKind(q.kind)
        except ValueError:
            raise ValidationError(f"Question {number} ({q.name}): kind must be one of {', '.join(LabelKind)}.") from None
        if kind is LabelKind.CHOICE:
            options = [o for o in q.options if isinstance(o, str) and o.strip()]
            if len(options) < 2 or len(options) != len(q.options) or len(set(options)) != len(options):
                raise ValidationError(
                    f"Question {number} ({q.name}): a choice question needs at least two distinct, non-empty options."
                )
    return tuple(questions)


def parse_questions(text: str) -> tuple[LabelQuestion, ...]:
    """Label questions from their JSON form (a list of objects); validated."""
    if text is not None and not isinstance(text, str):
        raise ValidationError(f"Label questions are JSON text (got {type(text).__name__}).")
    if text and len(text) > MAX_QUESTIONS_JSON:
        raise ValidationError(f"The label questions are longer than {MAX_QUESTIONS_JSON:,} characters; shorten them.")
    try:
        raw = json.loads(text or "[]")
    except json.JSONDecodeError as exc:
        raise ValidationError(f"The label questions are not valid JSON: {exc.msg} (line {exc.lineno}).") from None
    except RecursionError:
        raise ValidationError("The label questions nest lists or objects too deeply; "
                              'write a flat list such as [{"name": "tone", "prompt": "..."}].') from None
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ValidationError('Label questions must be a JSON list such as [{"name": "tone", "prompt": "...", "options": ["ok", "rude"]}].')
    questions = []
    for number, item in enumerate(raw, start=1):
        unknown = set(item) - {"name", "prompt", "kind", "options"}
        if unknown:
            raise ValidationError(f"Question {number}: unknown field(s) {', '.join(sorted(unknown))}.")
        options = item.get("options") or []
        if not isinstance(options, list):
            raise ValidationError(f"Question {number}: options must be a list of strings.")
        questions.append(LabelQuestion(
            name=str(item.get("name", "")), prompt=str(item.get("prompt", "")),
            kind=item.get("kind", LabelKind.CHOICE if options else LabelKind.TEXT),
            options=tuple(str(o) for o in options),
        ))
    return validate_questions(questions)


def questions_json(questions: Sequence[LabelQuestion]) -> str:
    """The JSON form stored in the registered-model tag."""
    return json.dumps(
        [{"name": q.name, "prompt": q.prompt, "kind": str(q.kind), "options": list(q.options)} for q in questions],
        indent=1,
    )


def label_questions(agent: str, settings: Settings | None = None) -> tuple[LabelQuestion, ...]:
    """The agent's custom label questions (none when it has not defined any, or is not a registered model).

    A trace's agent tag is written by whoever traced it, so it may name no registered model; the
    trace can still be reviewed, with the built-in questions only.
    """
    if not agent or not isinstance(agent, str):
        return ()
    client = mlflow_client(settings)
    try:
        with translate_errors(f"registered model {agent!r}"):
            model = client.get_registered_model(agent)
    except (NotFoundError, ValidationError):
        return ()
    text = (getattr(model, "tags", None) or {}).get(LABELS_TAG)
    if not text:
        return ()
    try:
        return parse_questions(text)
    except ValidationError:
        return ()  # a hand-edited tag that no longer parses must not block reviewing


def set_label_questions(agent: str, questions: Sequence[LabelQuestion], settings: Settings | None = None,
                        identity: Any = None) -> None:
    """Validate and store the agent's custom label questions.

    With ``identity`` (pages pass it), editing label questions needs the admin role.
    """
    questions = validate_questions(list(questions))
    if not agent or not isinstance(agent, str):
        raise ValidationError("Pick the agent whose label questions these are.")
    settings = configure_mlflow(settings)
    if identity is not None:
        from services import roles

        roles.enforce(identity, roles.Action.EDIT_RULES, settings)
    client = mlflow_client(settings)
    with translate_errors(f"registered model {agent!r}"):
        client.get_registered_model(agent)
        client.set_registered_model_tag(agent, LABELS_TAG, questions_json(questions))


# --- reviews ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Review:
    """One reviewer's judgement of a trace; ``None`` / empty fields are not stored."""

    thumbs_up: bool | None = None
    rating: int | None = None
    comment: str = ""
    corrected_answer: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return (self.thumbs_up is None and self.rating is None and not self.comment.strip()
                and not self.corrected_answer.strip() and not any(str(v).strip() for v in self.labels.values()))


def validate_review(review: Review, questions: Sequence[LabelQuestion] = ()) -> None:
    """Raise ``ValidationError`` for a review that cannot be stored; called before any I/O."""
    if review.is_empty:
        raise ValidationError("The review is empty: give a thumbs up/down, a rating, a comment, a corrected answer or a label.")
    if review.thumbs_up is not None and not isinstance(review.thumbs_up, bool):
        raise ValidationError("Thumbs up/down must be yes or no.")
    if review.rating is not None and (isinstance(review.rating, bool) or not isinstance(review.rating, int)
                                      or not 1 <= review.rating <= 5):
        raise ValidationError(f"The rating must be a whole number from 1 to 5 (got {review.rating!r}).")
    if len(review.comment) > MAX_COMMENT:
        raise ValidationError(f"The comment is longer than {MAX_COMMENT:,} characters; shorten it.")
    if len(review.corrected_answer) > MAX_ANSWER:
        raise ValidationError(f"The corrected answer is longer than {MAX_ANSWER:,} characters; shorten it.")
    by_name = {q.name: q for q in questions}
    for name, value in review.labels.items():
        question = by_name.get(name)
        if question is None:
            raise ValidationError(f"{name!r} is not one of this agent's label questions.")
        if not isinstance(value, str):
            raise ValidationError(f"The answer to {question.prompt!r} must be text.")
        if question.kind == LabelKind.CHOICE and value and value not in question.options:
            raise ValidationError(
                f"{value!r} is not an allowed answer to {question.prompt!r}; pick one of {', '.join(question.options)}."
            )
        if len(value) > MAX_COMMENT:
            raise ValidationError(f"The answer to {question.prompt!r} is too long.")


def _source(reviewer: str) -> Any:
    from mlflow.entities import AssessmentSource, AssessmentSourceType

    return AssessmentSource(source_type=AssessmentSourceType.HUMAN, source_id=reviewer)


def _current_by_reviewer(trace: Any, reviewer: str) -> dict[str, Any]:
    """The reviewer's currently valid assessment per name."""
    found: dict[str, Any] = {}
    for a in getattr(trace.info, "assessments", None) or []:
        source = getattr(a, "source", None)
        if getattr(source, "source_id", None) == reviewer and str(getattr(source, "source_type", "")).endswith("HUMAN") and a.valid is not False:
            previous = found.get(a.name)
            if previous is None or (a.create_time_ms or 0) >= (previous.create_time_ms or 0):
                found[a.name] = a
    return found


def _review_values(review: Review) -> tuple[dict[str, Any], dict[str, Any]]:
    feedback: dict[str, Any] = {}
    if review.thumbs_up is not None:
        feedback[THUMBS] = bool(review.thumbs_up)
    if review.rating is not None:
        feedback[RATING] = int(review.rating)
    if review.comment.strip():
        feedback[COMMENT] = review.comment.strip()
    for name, value in review.labels.items():
        if str(value).strip():
            feedback[name] = str(value).strip()
    expectations = {EXPECTED_RESPONSE: review.corrected_answer.strip()} if review.corrected_answer.strip() else {}
    return feedback, expectations


def get_trace_or_raise(client: Any, trace_id: str) -> Any:
    """The trace, or ``NotFoundError`` when it was deleted meanwhile."""
    if not isinstance(trace_id, str) or not trace_id.strip() or any(c.isspace() for c in trace_id.strip()):
        raise ValidationError(f"{trace_id!r} is not a trace id.")
    try:
        with translate_errors(f"trace {trace_id}"):
            trace = client.get_trace(trace_id.strip())
    except NotFoundError:
        trace = None
    if trace is None:
        raise NotFoundError(f"Trace {trace_id} no longer exists (it was deleted meanwhile); nothing was stored.")
    return trace


class ReviewPartlySavedError(BackendUnavailableError):
    """The store stopped answering part-way through storing a review; submitting it again completes it.

    ``stored`` of ``total`` judgements the submission writes were confirmed stored before the
    interruption. A retry of the same review by the same reviewer writes only what is missing.
    """

    def __init__(self, message: str, *, stored: int, total: int) -> None:
        super().__init__(message)
        self.stored = stored
        self.total = total


def _cause(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _interrupted(stored: int, total: int, exc: BackendUnavailableError) -> ReviewPartlySavedError:
    if stored:
        message = (f"The review was only partly saved: {stored} of the {total} judgement(s) it changes were stored "
                   f"before the tracking store stopped answering ({_cause(exc)}). Your answers are kept: submit the "
                   "review again once the store is back. Retrying is safe: judgements already stored are skipped, "
                   "none is written twice.")
    else:
        message = (f"The review may not have been saved: the tracking store stopped answering "
                   f"({_cause(exc)}). Your answers are kept: submit the review again once the store is back. "
                   "Retrying is safe: nothing is written twice.")
    return ReviewPartlySavedError(message, stored=stored, total=total)


def submit_review(
    trace_id: str,
    review: Review,
    reviewer: str,
    *,
    questions: Sequence[LabelQuestion] = (),
    settings: Settings | None = None,
    identity: Any = None,
) -> int:
    """Store a review as assessments from ``reviewer``; earlier judgements are overridden. Returns the count written.

    Values equal to the reviewer's current ones are skipped, so submitting the same review again
    writes nothing, and a retry after an interruption writes only what is still missing. When the
    store stops answering part-way, ``ReviewPartlySavedError`` says how much was stored.
    With ``identity`` (the page passes it), giving feedback needs the reviewer role.
    """
    if not isinstance(reviewer, str) or not reviewer.strip() or reviewer == "unknown":
        raise ValidationError("The reviewer is unknown; sign in through Databricks Apps to review.")
    validate_review(review, questions)
    settings = configure_mlflow(settings)
    if identity is not None:
        from services import roles

        roles.enforce(identity, roles.Action.REVIEW, settings)
    client = mlflow_client(settings)
    trace = get_trace_or_raise(client, trace_id)
    from mlflow.entities import Expectation, Feedback

    # Not mlflow.log_feedback & co.: those use the process-wide client (on Databricks Apps, the app's
    # service principal); this one carries the signed-in user's token.
    tracing = tracing_client(settings)
    source = _source(reviewer)
    current = _current_by_reviewer(trace, reviewer)
    feedback, expectations = _review_values(review)
    # Everything to write is decided from one read before the first write, so what an interrupted
    # attempt stored is found (and skipped) by the next attempt's read.
    pending: list[Any] = []
    for name, value in feedback.items():
        old = current.get(name)
        if old is not None and getattr(old, "feedback", None) is not None:
            if _same(old.feedback.value, value):
                continue
            # What mlflow.override_feedback logs: a new feedback pointing at the one it replaces.
            pending.append(Feedback(name=old.name, span_id=old.span_id, value=value, source=source,
                                    overrides=old.assessment_id))
        else:
            pending.append(Feedback(name=name, value=value, source=source))
    for name, value in expectations.items():
        old = current.get(name)
        if old is not None and getattr(old, "expectation", None) is not None:
            if _same(old.expectation.value, value):
                continue
            # There is no override_expectation; the store keeps history for any ``overrides`` link.
            replacement = Expectation(name=name, value=value, source=source, trace_id=trace_id)
            replacement.overrides = old.assessment_id
            pending.append(replacement)
        else:
            pending.append(Expectation(name=name, value=value, source=source))
    written = 0
    for assessment in pending:
        try:
            with translate_errors(f"assessments of trace {trace_id}"):
                tracing.log_assessment(trace_id, assessment)
        except BackendUnavailableError as exc:
            raise _interrupted(written, len(pending), exc) from exc
        except AgentOpsError as exc:
            if not written:
                raise
            raise type(exc)(f"The review was only partly saved ({written} of {len(pending)} judgement(s) stored): "
                            f"{exc}") from exc
        written += 1
    return written


def _same(stored: Any, value: Any) -> bool:
    """Whether a stored value equals the one submitted (a bool is never equal to a number here)."""
    if isinstance(stored, bool) or isinstance(value, bool):
        return isinstance(stored, bool) and isinstance(value, bool) and stored == value
    return stored == value


ASSESSMENT_HISTORY_COLUMNS = ("assessment_id", "name", "kind", "value", "reviewer", "source_type", "valid",
                              "overrides", "time")


def _value(a: Any) -> Any:
    if getattr(a, "feedback", None) is not None:
        return a.feedback.value
    expectation = getattr(a, "expectation", None)
    return getattr(expectation, "value", None)


def assessment_history(trace_id: str, settings: Settings | None = None) -> pd.DataFrame:
    """Every assessment of a trace, overridden ones included (``ASSESSMENT_HISTORY_COLUMNS``), oldest first."""
    client = mlflow_client(settings)
    trace = get_trace_or_raise(client, trace_id)
    rows = []
    for a in getattr(trace.info, "assessments", None) or []:
        source = getattr(a, "source", None)
        rows.append({
            "assessment_id": a.assessment_id, "name": a.name,
            "kind": "feedback" if getattr(a, "feedback", None) is not None else "expectation",
            "value": _value(a), "reviewer": getattr(source, "source_id", None),
            "source_type": str(getattr(getattr(source, "source_type", None), "value", getattr(source, "source_type", ""))),
            "valid": a.valid is not False, "overrides": a.overrides,
            "time": pd.Timestamp(a.create_time_ms, unit="ms", tz="UTC") if a.create_time_ms else None,
        })
    frame = pd.DataFrame(rows, columns=list(ASSESSMENT_HISTORY_COLUMNS))
    return frame.sort_values("time", kind="stable").reset_index(drop=True) if len(frame) else frame


def current_review(trace_id: str, reviewer: str, settings: Settings | None = None) -> Review | None:
    """The reviewer's current judgement of a trace (to prefill an edit), or None."""
    client = mlflow_client(settings)
    current = _current_by_reviewer(get_trace_or_raise(client, trace_id), reviewer)
    if not current:
        return None
    values = {name: _value(a) for name, a in current.items()}
    rating = values.get(RATING)
    return Review(
        thumbs_up=values.get(THUMBS) if isinstance(values.get(THUMBS), bool) else None,
        rating=int(rating) if isinstance(rating, (int, float)) and not isinstance(rating, bool) else None,
        comment=str(values.get(COMMENT) or ""),
        corrected_answer=str(values.get(EXPECTED_RESPONSE) or ""),
        labels={k: str(v) for k, v in values.items() if k not in RESERVED_NAMES and isinstance(v, str)},
    )


# --- charts ----------------------------------------------------------------------------------

# ``source_type`` is HUMAN, LLM_JUDGE or CODE; ``model_id`` is the trace's ``mlflow.modelId``.
# ``agent`` / ``version`` come from the app's trace tags when present, else from the model id
# (LoggedModel → registered version), so feedback on traces written by other code is attributed too.
FEEDBACK_COLUMNS = ("trace_id", "time", "agent", "version", "arm", "reviewer", "name", "value", "source_type",
                    "model_id")
MODEL_ID_METADATA = "mlflow.modelId"
# Metadata evaluate() puts on the traces of an evaluation run: their scores are not live feedback.
SOURCE_RUN_METADATA = "mlflow.sourceRun"


def human_feedback(experiment_ids: Sequence[str], start_ms: int, end_ms: int, *, agent: str | None = None,
                   max_traces: int = 5000, settings: Settings | None = None,
                   human_only: bool = True) -> pd.DataFrame:
    """Valid feedback of any name on live traces of a window (``FEEDBACK_COLUMNS``), one row per assessment.

    Every feedback name present is read (not only ``thumbs_up`` / ``rating``); with
    ``human_only`` (the default) only HUMAN sources count. Traces of evaluation runs are left out.
    With ``agent``, traces attributed to another agent are left out.
    """
    if not experiment_ids:
        return pd.DataFrame(columns=list(FEEDBACK_COLUMNS))
    if agent is not None and any(c in agent for c in "'`\n"):
        raise ValidationError(f"{agent!r} is not an agent name.")
    client = mlflow_client(settings)
    clauses = [f"trace.timestamp_ms >= {int(start_ms)}", f"trace.timestamp_ms < {int(end_ms)}"]
    rows: list[dict[str, Any]] = []
    from services.links import ModelIndex

    index = ModelIndex(client)
    token = None
    seen = 0
    with translate_errors("trace search"):
        while True:
            page = client.search_traces(
                locations=list(experiment_ids), filter_string=" AND ".join(clauses),
                max_results=500, page_token=token, include_spans=False,
            )
            for trace in page:
                seen += 1
                if (trace.info.trace_metadata or {}).get(SOURCE_RUN_METADATA):
                    continue
                found = _feedback_rows(trace.info, index, human_only=human_only)
                if agent:
                    found = [r for r in found if r["agent"] in (agent, None)]
                rows.extend(found)
            token = page.token
            if not token or seen >= max_traces:
                break
    return pd.DataFrame(rows, columns=list(FEEDBACK_COLUMNS))


def _feedback_rows(info: Any, index: Any = None, *, human_only: bool = True) -> list[dict[str, Any]]:
    tags = info.tags or {}
    model_id = (getattr(info, "trace_metadata", None) or {}).get(MODEL_ID_METADATA)
    agent, version = tags.get(AGENT_TAG), tags.get(VERSION_TAG)
    out = []
    for a in getattr(info, "assessments", None) or []:
        source = getattr(a, "source", None)
        if getattr(a, "feedback", None) is None or a.valid is False:
            continue
        if getattr(a.feedback, "error", None) is not None and a.feedback.value is None:
            continue  # a scorer that failed gave no judgement
        source_type = str(getattr(getattr(source, "source_type", None), "value", getattr(source, "source_type", "")))
        if human_only and not source_type.endswith("HUMAN"):
            continue
        if (agent is None or version is None) and model_id and index is not None:
            found = index.version_of(model_id)
            if found and agent in (None, found[0]):
                agent, version = found
        out.append({
            "trace_id": info.trace_id, "time": pd.Timestamp(info.request_time, unit="ms", tz="UTC"),
            "agent": agent, "version": version, "arm": tags.get(ARM_TAG),
            "reviewer": getattr(source, "source_id", None), "name": a.name, "value": a.feedback.value,
            "source_type": source_type.rsplit(".", 1)[-1], "model_id": model_id,
        })
    return out


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


# --- curation --------------------------------------------------------------------------------


def _question_of(inputs: Any) -> str | None:
    if isinstance(inputs, str):
        try:
            inputs = json.loads(inputs)
        except json.JSONDecodeError:
            return inputs.strip() or None
    if isinstance(inputs, dict):
        if isinstance(inputs.get("question"), str):
            return inputs["question"]
        messages = inputs.get("input") or inputs.get("messages")
        if isinstance(messages, list):
            users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            users = [u for u in users if isinstance(u, str) and u.strip()]
            if users:
                return users[-1]
    return None


@dataclass(frozen=True)
class CurationResult:
    """What curation stored: the dataset, the rows added and the traces skipped with the reason."""

    dataset_name: str
    dataset_id: str
    added: int
    skipped: tuple[tuple[str, str], ...]


def curation_rows(trace_ids: Sequence[str], settings: Settings | None = None) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Evaluation rows from reviewed traces: the question plus corrected answers as expectations."""
    client = mlflow_client(settings)
    rows, skipped = [], []
    for trace_id in trace_ids:
        try:
            trace = get_trace_or_raise(client, trace_id)
        except NotFoundError:
            skipped.append((trace_id, "deleted"))
            continue
        root = next((s for s in trace.data.spans if s.parent_id is None), None)
        question = _question_of(root.inputs if root is not None else None)
        if not question:
            skipped.append((trace_id, "no user question found"))
            continue
        valid = [a for a in (trace.info.assessments or []) if a.valid is not False
                 and getattr(a, "expectation", None) is not None]
        valid.sort(key=lambda a: a.create_time_ms or 0)
        expectations: dict[str, Any] = {}
        for a in valid:
            if a.name == EXPECTED_RESPONSE and isinstance(a.expectation.value, str):
                expectations["expected_response"] = a.expectation.value
            elif a.name == "expected_facts" and isinstance(a.expectation.value, list):
                expectations["expected_facts"] = [str(v) for v in a.expectation.value]
        if not expectations:
            skipped.append((trace_id, "no corrected answer"))
            continue
        rows.append({"inputs": {"question": question}, "expectations": expectations})
    return rows, skipped


def _require_experiment(client: Any, experiment_id: str) -> None:
    """``NotFoundError`` unless the experiment exists and is not deleted (checked before anything is stored)."""
    missing = NotFoundError(f"Experiment {experiment_id!r} does not exist (or was deleted); nothing was added. "
                            "Pick the experiment of the queue's agent.")
    try:
        with translate_errors(f"experiment {experiment_id!r}"):
            experiment = client.get_experiment(experiment_id.strip())
    except (NotFoundError, ValidationError):
        raise missing from None
    if experiment is None or str(getattr(experiment, "lifecycle_stage", "active")) == "deleted":
        raise missing


def curate_to_dataset(trace_ids: Sequence[str], dataset_name: str, experiment_id: str,
                      settings: Settings | None = None) -> CurationResult:
    """Add reviewed traces (with corrected answers) to an evaluation dataset, creating it if needed."""
    from services import datasets

    dataset_name = (dataset_name or "").strip()
    if not dataset_name:
        raise ValidationError("Give the evaluation dataset a name.")
    if not trace_ids:
        raise ValidationError("There are no reviewed traces to add.")
    if not experiment_id or not isinstance(experiment_id, str):
        raise ValidationError("Pick the experiment the dataset belongs to.")
    settings = configure_mlflow(settings)
    _require_experiment(mlflow_client(settings), experiment_id)
    rows, skipped = curation_rows(list(dict.fromkeys(trace_ids)), settings)
    if not rows:
        raise ValidationError("None of the traces has a corrected answer yet, so nothing was added. "
                              "Reviewers add one in the 'Corrected answer' field.")
    datasets.validate_rows(rows)
    # Created when missing, reused when present (also when an interrupted attempt created it); rows are
    # keyed by their inputs, so adding the same traces again adds no duplicate rows.
    dataset_id = datasets.add_rows(dataset_name, rows, experiment_id, settings)
    return CurationResult(dataset_name, dataset_id, len(rows), tuple(skipped))
