"""Storing a reviewer's judgement of a trace as MLflow assessments, and reading it back.

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
is completed by submitting the same review again, each value stored once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pandas as pd

from services import roles
from services._clients import configure_mlflow, mlflow_client, tracing_client, translate_errors
from services.errors import AgentOpsError, BackendUnavailableError, NotFoundError, ValidationError
from services.feedback.labels import (COMMENT, EXPECTED_RESPONSE, MAX_ANSWER, MAX_COMMENT, RATING, RESERVED_NAMES,
                                      THUMBS, LabelKind, LabelQuestion)
from services.settings import Settings


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


def short_cause(exc: BaseException, limit: int = 240) -> str:
    """An error's message on one line, cut to ``limit`` characters: the cause named in a retry hint."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _interrupted(stored: int, total: int, exc: BackendUnavailableError) -> ReviewPartlySavedError:
    if stored:
        message = (f"The review was only partly saved: {stored} of the {total} judgement(s) it changes were stored "
                   f"before the tracking store stopped answering ({short_cause(exc)}). Your answers are kept: submit the "
                   "review again once the store is back. Retrying is safe: judgements already stored are skipped, "
                   "none is written twice.")
    else:
        message = (f"The review may not have been saved: the tracking store stopped answering "
                   f"({short_cause(exc)}). Your answers are kept: submit the review again once the store is back. "
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

