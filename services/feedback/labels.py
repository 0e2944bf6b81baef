"""The built-in review fields and an agent's custom label questions.

Custom label questions are a JSON list in the agent's registered-model tag ``agentops.review.labels``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Sequence

from services import roles
from services._clients import configure_mlflow, mlflow_client, translate_errors
from services.errors import NotFoundError, ValidationError
from services.settings import Settings

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
        roles.enforce(identity, roles.Action.EDIT_RULES, settings)
    client = mlflow_client(settings)
    with translate_errors(f"registered model {agent!r}"):
        client.get_registered_model(agent)
        client.set_registered_model_tag(agent, LABELS_TAG, questions_json(questions))

