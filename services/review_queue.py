"""Review queues stored in MLflow itself, so they work on every backend.

* A queue is a run in the ``agentops-review`` experiment; its tags hold the name, how it was
  filled, the agent, the experiments of its traces and how many reviewers each item needs.
* Membership, claims and completion are trace tags, keyed by the queue id (the run id):
  ``agentops.review.queue.<id>`` = ``"1"``, ``agentops.review.claim.<id>`` = ``"<user>|<expires>"``
  and ``agentops.review.done.<id>`` = a JSON list of reviewers who finished the item.
* A claim is taken under a process lock and re-read after writing, so two reviewers are never
  handed the same item at once; a claim expires (default 15 minutes) so an abandoned item returns.

On Databricks, ``databricks_labeling_session`` additionally creates a Review App labeling
session for the queue's traces; locally the app's own queue is the whole story.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Sequence

import pandas as pd

from services import _mlflow_internal as internal
from services._clients import configure_mlflow, get_or_create_experiment, mlflow_client, translate_errors
from services.errors import BackendUnavailableError, ConflictError, NotFoundError, ValidationError
from services.settings import Backend, Settings
from services.traces import AGENT_TAG, VERSION_TAG

REVIEW_EXPERIMENT = "agentops-review"
QUEUE_TAG = "agentops.review.queue."
CLAIM_TAG = "agentops.review.claim."
DONE_TAG = "agentops.review.done."
KIND_TAG = "agentops.review.kind"
NAME_TAG = "agentops.review.name"
SOURCE_TAG = "agentops.review.source"
AGENT_QUEUE_TAG = "agentops.review.agent"
EXPERIMENTS_TAG = "agentops.review.experiments"
REVIEWS_TAG = "agentops.review.reviews_per_item"
CREATOR_TAG = "agentops.review.created_by"
DESCRIPTION_TAG = "agentops.review.description"
MAX_ITEMS = 500
CLAIM_SECONDS = 15 * 60
_CLAIM_LOCK = threading.Lock()


class QueueSource(StrEnum):
    """How a queue is filled."""

    SAMPLE = "sample"  # a random sample of live traffic
    LOW_SCORES = "low_scores"  # traces whose scorer result is false / below a threshold
    NEGATIVE_FEEDBACK = "negative_feedback"  # end users gave thumbs down
    HAND_PICKED = "hand_picked"  # a list of trace ids


@dataclass(frozen=True)
class QueueSpec:
    """What to put in a new queue."""

    name: str
    source: QueueSource
    experiment_ids: tuple[str, ...]
    agent: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    size: int = 20
    scorer: str | None = None
    threshold: float = 0.5
    trace_ids: tuple[str, ...] = ()
    reviews_per_item: int = 1
    description: str = ""


@dataclass(frozen=True)
class ReviewQueue:
    queue_id: str
    name: str
    source: QueueSource
    agent: str | None
    experiment_ids: tuple[str, ...]
    reviews_per_item: int
    created_by: str
    created_at: datetime
    description: str = ""


@dataclass(frozen=True)
class QueueItem:
    """One trace of a queue and its review state for the asking reviewer."""

    queue_id: str
    trace_id: str
    agent: str | None
    version: str | None
    claimed_by: str | None
    claim_expires_at: float | None
    reviewed_by: tuple[str, ...]


@dataclass(frozen=True)
class QueueProgress:
    """``per_reviewer`` has columns ``reviewer``, ``reviewed``."""

    queue_id: str
    total: int
    completed: int
    in_progress: int
    remaining: int
    per_reviewer: pd.DataFrame
    mine: int = 0


def _validate_spec(spec: QueueSpec) -> None:
    name = (spec.name or "").strip()
    if not name or len(name) > 100 or any(c in name for c in "\n\r"):
        raise ValidationError("Give the queue a name (one line, at most 100 characters).")
    try:
        source = QueueSource(spec.source)
    except ValueError:
        raise ValidationError(f"A queue is filled from one of: {', '.join(QueueSource)}.") from None
    if not 1 <= int(spec.size) <= MAX_ITEMS:
        raise ValidationError(f"A queue holds between 1 and {MAX_ITEMS} traces (got {spec.size}).")
    if not 1 <= int(spec.reviews_per_item) <= 10:
        raise ValidationError("Each item needs between 1 and 10 reviewers.")
    if source is QueueSource.HAND_PICKED:
        ids = [t.strip() for t in spec.trace_ids if t.strip()]
        if not ids:
            raise ValidationError("The hand-picked list is empty; paste at least one trace id.")
        if len(ids) > MAX_ITEMS:
            raise ValidationError(f"A queue holds at most {MAX_ITEMS} traces (got {len(ids)}).")
        bad = [t for t in ids if any(c.isspace() or c in "'`" for c in t)]
        if bad:
            raise ValidationError(f"{bad[0]!r} is not a trace id.")
        return
    if not spec.experiment_ids:
        raise ValidationError("There are no trace experiments to draw the queue from; register an agent first.")
    if spec.start_ms is None or spec.end_ms is None or spec.start_ms >= spec.end_ms:
        raise ValidationError("Pick a time window whose start is before its end.")
    if spec.agent is not None and any(c in spec.agent for c in "'`\n"):
        raise ValidationError(f"{spec.agent!r} is not an agent name.")
    if source is QueueSource.LOW_SCORES:
        if not spec.scorer or any(c in spec.scorer for c in "'`\n"):
            raise ValidationError("Name the scorer whose low results should be reviewed.")


def _window_clauses(spec: QueueSpec) -> list[str]:
    return [f"trace.timestamp_ms >= {int(spec.start_ms or 0)}", f"trace.timestamp_ms < {int(spec.end_ms or 0)}"]


def _search(client: Any, experiment_ids: Sequence[str], filter_string: str, limit: int) -> list[Any]:
    found: list[Any] = []
    token = None
    while len(found) < limit:
        page = client.search_traces(locations=list(experiment_ids), filter_string=filter_string,
                                    max_results=min(500, limit - len(found)), page_token=token,
                                    include_spans=False, order_by=["timestamp_ms DESC"])
        found.extend(page)
        token = page.token
        if not token:
            break
    return found


def _is_low(value: Any, threshold: float) -> bool:
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return float(value) < threshold
    return str(value).strip().lower() in ("no", "false", "fail", "failed")


def _candidates(client: Any, spec: QueueSpec) -> list[Any]:
    """Trace infos for a new queue (no spans read)."""
    source = QueueSource(spec.source)
    if source is QueueSource.HAND_PICKED:
        infos = []
        for trace_id in dict.fromkeys(t.strip() for t in spec.trace_ids if t.strip()):
            try:
                with translate_errors(f"trace {trace_id}"):
                    infos.append(_trace_info(client, trace_id))
            except (NotFoundError, BackendUnavailableError, ValidationError):
                raise NotFoundError(f"Trace {trace_id} does not exist; check the id. No queue was created.") from None
        return infos
    clauses = _window_clauses(spec)
    if spec.agent and source is not QueueSource.LOW_SCORES:
        clauses.append(f"tag.`{AGENT_TAG}` = '{spec.agent}'")
    if source is QueueSource.NEGATIVE_FEEDBACK:
        return _search(client, spec.experiment_ids, " AND ".join(clauses + ["feedback.`thumbs_up` = 'false'"]), spec.size)
    if source is QueueSource.SAMPLE:
        pool = _search(client, spec.experiment_ids, " AND ".join(clauses), min(MAX_ITEMS * 4, spec.size * 10))
        return random.Random().sample(pool, min(spec.size, len(pool)))
    pool = _search(client, spec.experiment_ids, " AND ".join(clauses), 5000)
    low = []
    for info in (t.info for t in pool):
        results = [a for a in (info.assessments or []) if a.name == spec.scorer and a.valid is not False
                   and getattr(a, "feedback", None) is not None]
        if any(_is_low(a.feedback.value, spec.threshold) for a in results):
            low.append(info)
        if len(low) >= spec.size:
            break
    return low


def _trace_info(client: Any, trace_id: str) -> Any:
    return internal.trace_info(client, trace_id)


def _info(item: Any) -> Any:
    return getattr(item, "info", item)


def _experiment_of(info: Any) -> str | None:
    location = getattr(info, "trace_location", None)
    experiment = getattr(getattr(location, "mlflow_experiment", None), "experiment_id", None)
    return str(experiment) if experiment else getattr(info, "experiment_id", None)


def create_queue(spec: QueueSpec, created_by: str, settings: Settings | None = None) -> ReviewQueue:
    """Fill a queue from its source and store it; ``ValidationError`` when nothing matches."""
    _validate_spec(spec)
    settings = configure_mlflow(settings)
    client = mlflow_client(settings)
    with translate_errors("trace search"):
        infos = [_info(i) for i in _candidates(client, spec)]
    if not infos:
        raise ValidationError(
            "No traces match, so the queue would be empty and was not created. Widen the window, "
            "pick another source, or paste trace ids."
        )
    experiments = tuple(dict.fromkeys(e for e in (_experiment_of(i) for i in infos) if e)) or tuple(spec.experiment_ids)
    with translate_errors("the review experiment"):
        experiment_id = get_or_create_experiment(client, REVIEW_EXPERIMENT, settings)
        run = client.create_run(experiment_id, run_name=spec.name.strip(), tags={
            KIND_TAG: "queue", NAME_TAG: spec.name.strip(), SOURCE_TAG: str(QueueSource(spec.source)),
            AGENT_QUEUE_TAG: spec.agent or "", EXPERIMENTS_TAG: ",".join(experiments),
            REVIEWS_TAG: str(int(spec.reviews_per_item)), CREATOR_TAG: created_by,
            DESCRIPTION_TAG: spec.description.strip()[:500],
        })
        queue_id = run.info.run_id
        for info in infos:
            client.set_trace_tag(info.trace_id, QUEUE_TAG + queue_id, "1")
        client.set_terminated(queue_id, "FINISHED")
    return get_queue(queue_id, settings)


def _queue_from_run(run: Any) -> ReviewQueue:
    tags = run.data.tags
    return ReviewQueue(
        queue_id=run.info.run_id, name=tags.get(NAME_TAG, run.info.run_name or run.info.run_id),
        source=QueueSource(tags.get(SOURCE_TAG, QueueSource.HAND_PICKED)), agent=tags.get(AGENT_QUEUE_TAG) or None,
        experiment_ids=tuple(e for e in tags.get(EXPERIMENTS_TAG, "").split(",") if e),
        reviews_per_item=int(tags.get(REVIEWS_TAG, "1") or 1), created_by=tags.get(CREATOR_TAG, ""),
        created_at=datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc),
        description=tags.get(DESCRIPTION_TAG, ""),
    )


def list_queues(settings: Settings | None = None) -> list[ReviewQueue]:
    """All queues, newest first (none when the review experiment does not exist yet)."""
    client = mlflow_client(settings)
    with translate_errors("the review experiment"):
        experiment = client.get_experiment_by_name(REVIEW_EXPERIMENT)
        if experiment is None:
            return []
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'queue'",
                                  max_results=1000, order_by=["attributes.start_time DESC"])
    return [_queue_from_run(r) for r in runs]


def get_queue(queue_id: str, settings: Settings | None = None) -> ReviewQueue:
    """One queue by id."""
    if not queue_id or any(c.isspace() or c in "'`" for c in queue_id):
        raise ValidationError(f"{queue_id!r} is not a queue id.")
    client = mlflow_client(settings)
    try:
        with translate_errors(f"review queue {queue_id}"):
            run = client.get_run(queue_id)
    except (NotFoundError, ValidationError, BackendUnavailableError):
        raise NotFoundError(f"Review queue {queue_id} does not exist.") from None
    if run.data.tags.get(KIND_TAG) != "queue":
        raise NotFoundError(f"Review queue {queue_id} does not exist.")
    return _queue_from_run(run)


def _parse_claim(value: str | None) -> tuple[str | None, float | None]:
    if not value or "|" not in value:
        return None, None
    user, _, expires = value.rpartition("|")
    try:
        return user, float(expires)
    except ValueError:
        return None, None


def _done(value: str | None) -> tuple[str, ...]:
    try:
        parsed = json.loads(value or "[]")
    except json.JSONDecodeError:
        return ()
    return tuple(str(v) for v in parsed) if isinstance(parsed, list) else ()


def _item(queue_id: str, info: Any, now: float) -> QueueItem:
    tags = info.tags or {}
    user, expires = _parse_claim(tags.get(CLAIM_TAG + queue_id))
    if expires is not None and expires <= now:
        user, expires = None, None
    return QueueItem(queue_id, info.trace_id, tags.get(AGENT_TAG), tags.get(VERSION_TAG), user, expires,
                     _done(tags.get(DONE_TAG + queue_id)))


def queue_items(queue: ReviewQueue, settings: Settings | None = None) -> list[QueueItem]:
    """The queue's traces (oldest first) with claim and completion state."""
    client = mlflow_client(settings)
    if not queue.experiment_ids:
        return []
    with translate_errors(f"review queue {queue.name}"):
        found = _search(client, queue.experiment_ids, f"tag.`{QUEUE_TAG}{queue.queue_id}` = '1'", MAX_ITEMS)
    now = time.time()
    items = [_item(queue.queue_id, t.info, now) for t in found]
    return list(reversed(items))


def next_item(queue: ReviewQueue, reviewer: str, *, claim_seconds: int = CLAIM_SECONDS,
              settings: Settings | None = None) -> QueueItem | None:
    """Claim the next item for ``reviewer`` (their unexpired claim first); None when nothing is left for them."""
    _check_reviewer(reviewer)
    client = mlflow_client(settings)
    with _CLAIM_LOCK:
        items = queue_items(queue, settings)
        mine = [i for i in items if i.claimed_by == reviewer and reviewer not in i.reviewed_by]
        free = [i for i in items if i.claimed_by is None and reviewer not in i.reviewed_by
                and len(i.reviewed_by) < queue.reviews_per_item]
        for item in mine + free:
            expires = time.time() + claim_seconds
            value = f"{reviewer}|{expires:.3f}"
            try:
                with translate_errors(f"trace {item.trace_id}"):
                    client.set_trace_tag(item.trace_id, CLAIM_TAG + queue.queue_id, value)
                    # Re-read: another process may have written its claim at the same moment.
                    stored = (_trace_info(client, item.trace_id).tags or {}).get(CLAIM_TAG + queue.queue_id)
            except (NotFoundError, ValidationError, BackendUnavailableError):
                continue  # deleted meanwhile: skip it
            if stored == value:
                return QueueItem(queue.queue_id, item.trace_id, item.agent, item.version, reviewer, expires, item.reviewed_by)
    return None


def _check_reviewer(reviewer: str) -> None:
    if not isinstance(reviewer, str) or not reviewer.strip() or reviewer == "unknown" or "|" in reviewer:
        raise ValidationError("The reviewer is unknown; sign in through Databricks Apps to review.")


def release(queue: ReviewQueue, trace_id: str, reviewer: str, settings: Settings | None = None) -> None:
    """Give an item back (skip) without reviewing it; only the holder's claim is removed."""
    _check_reviewer(reviewer)
    client = mlflow_client(settings)
    with _CLAIM_LOCK:
        try:
            with translate_errors(f"trace {trace_id}"):
                tags = _trace_info(client, trace_id).tags or {}
                user, _ = _parse_claim(tags.get(CLAIM_TAG + queue.queue_id))
                if user == reviewer:
                    client.delete_trace_tag(trace_id, CLAIM_TAG + queue.queue_id)
        except NotFoundError:
            return


def complete(queue: ReviewQueue, trace_id: str, reviewer: str, settings: Settings | None = None) -> None:
    """Mark an item reviewed by ``reviewer`` and release their claim."""
    _check_reviewer(reviewer)
    client = mlflow_client(settings)
    with _CLAIM_LOCK:
        with translate_errors(f"trace {trace_id}"):
            try:
                tags = _trace_info(client, trace_id).tags or {}
            except NotFoundError:
                raise NotFoundError(f"Trace {trace_id} no longer exists (it was deleted meanwhile).") from None
            if tags.get(QUEUE_TAG + queue.queue_id) != "1":
                raise NotFoundError(f"Trace {trace_id} is not in the queue {queue.name!r}.")
            user, expires = _parse_claim(tags.get(CLAIM_TAG + queue.queue_id))
            if user and user != reviewer and expires and expires > time.time():
                raise ConflictError(f"{user} is reviewing this item right now; your review was not recorded in the queue.")
            done = list(_done(tags.get(DONE_TAG + queue.queue_id)))
            if reviewer not in done:
                done.append(reviewer)
                client.set_trace_tag(trace_id, DONE_TAG + queue.queue_id, json.dumps(done))
            if user == reviewer:
                client.delete_trace_tag(trace_id, CLAIM_TAG + queue.queue_id)


def check_can_review(queue: ReviewQueue, trace_id: str, reviewer: str, settings: Settings | None = None) -> None:
    """``ConflictError`` when someone else holds an unexpired claim on the item (before storing feedback)."""
    client = mlflow_client(settings)
    try:
        with translate_errors(f"trace {trace_id}"):
            tags = _trace_info(client, trace_id).tags or {}
    except (NotFoundError, ValidationError, BackendUnavailableError):
        raise NotFoundError(f"Trace {trace_id} no longer exists (it was deleted meanwhile); nothing was stored.") from None
    user, expires = _parse_claim(tags.get(CLAIM_TAG + queue.queue_id))
    if user and user != reviewer and expires and expires > time.time():
        raise ConflictError(f"{user} is reviewing this item right now; nothing was stored.")


def progress(queue: ReviewQueue, reviewer: str | None = None, settings: Settings | None = None) -> QueueProgress:
    """How far the queue is, overall and per reviewer."""
    items = queue_items(queue, settings)
    counts: dict[str, int] = {}
    for item in items:
        for user in item.reviewed_by:
            counts[user] = counts.get(user, 0) + 1
    completed = sum(1 for i in items if len(i.reviewed_by) >= queue.reviews_per_item)
    in_progress = sum(1 for i in items if i.claimed_by and len(i.reviewed_by) < queue.reviews_per_item)
    per_reviewer = pd.DataFrame(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])), columns=["reviewer", "reviewed"])
    return QueueProgress(queue.queue_id, len(items), completed, in_progress, len(items) - completed, per_reviewer,
                         counts.get(reviewer or "", 0))


def reviewed_trace_ids(queue: ReviewQueue, settings: Settings | None = None) -> list[str]:
    """Traces of the queue that at least one reviewer finished."""
    return [i.trace_id for i in queue_items(queue, settings) if i.reviewed_by]


# --- conversation view --------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    role: str
    text: str


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text
    output: str  # JSON text or plain text


@dataclass(frozen=True)
class Conversation:
    """A trace as reviewers read it: user turns, the agent's answer, folded tool calls."""

    trace_id: str
    time: datetime
    agent: str | None
    version: str | None
    turns: tuple[Turn, ...]
    answer: str
    tool_calls: tuple[ToolCall, ...]
    error: str = ""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=1, default=str)


def _turns(inputs: Any) -> list[Turn]:
    if isinstance(inputs, dict):
        messages = inputs.get("input") or inputs.get("messages")
        if isinstance(messages, list):
            turns = [Turn(str(m.get("role", "user")), _content(m.get("content"))) for m in messages if isinstance(m, dict)]
            return [t for t in turns if t.text]
        if isinstance(inputs.get("question"), str):
            return [Turn("user", inputs["question"])]
    if isinstance(inputs, str) and inputs.strip():
        return [Turn("user", inputs)]
    return [Turn("user", _text(inputs))] if inputs else []


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [c.get("text") for c in content if isinstance(c, dict) and isinstance(c.get("text"), str)]
        return "\n".join(parts) if parts else _text(content)
    return _text(content)


def _answer(outputs: Any) -> str:
    if isinstance(outputs, str):
        return outputs
    if isinstance(outputs, dict):
        items = outputs.get("output")
        if isinstance(items, list):
            texts = [_content(i.get("content")) for i in items if isinstance(i, dict) and i.get("type", "message") == "message"]
            if texts:
                return "\n".join(texts)
        for key in ("content", "answer", "text"):
            if isinstance(outputs.get(key), str):
                return outputs[key]
        choices = outputs.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            return _content((choices[0].get("message") or {}).get("content"))
    return _text(outputs)


def conversation(trace_id: str, settings: Settings | None = None) -> Conversation:
    """The trace as a readable conversation (``NotFoundError`` when it was deleted)."""
    from services.feedback import get_trace_or_raise

    client = mlflow_client(settings)
    trace = get_trace_or_raise(client, trace_id)
    spans = list(trace.data.spans)
    ids = {s.span_id for s in spans}
    root = next((s for s in spans if s.parent_id is None or s.parent_id not in ids), None)
    tools = sorted((s for s in spans if str(s.span_type) == "TOOL"), key=lambda s: s.start_time_ns)
    error = ""
    if root is not None:
        status = getattr(root, "status", None)
        if "ERROR" in str(getattr(status, "status_code", "")):
            error = getattr(status, "description", "") or "The agent failed on this request."
    tags = trace.info.tags or {}
    return Conversation(
        trace_id=trace.info.trace_id,
        time=datetime.fromtimestamp(trace.info.request_time / 1000, tz=timezone.utc),
        agent=tags.get(AGENT_TAG), version=tags.get(VERSION_TAG),
        turns=tuple(_turns(root.inputs if root else None)),
        answer=_answer(root.outputs if root else None),
        tool_calls=tuple(ToolCall(s.name, _text(s.inputs), _text(s.outputs)) for s in tools),
        error=error,
    )


# --- Databricks Review App -----------------------------------------------------------------------


@dataclass(frozen=True)
class LabelingSession:
    name: str
    url: str | None


def databricks_labeling_session(queue: ReviewQueue, trace_ids: Sequence[str], reviewers: Sequence[str],
                                settings: Settings | None = None) -> LabelingSession:
    """Create a Databricks Review App labeling session for the queue's traces (Databricks only)."""
    from services._clients import get_settings

    settings = settings or get_settings()
    if settings.backend is not Backend.DATABRICKS:
        raise BackendUnavailableError("Review App labeling sessions exist only on Databricks; locally this app's own queue is the whole story.")
    if not trace_ids:
        raise ValidationError("The queue has no traces to send to the Review App.")
    configure_mlflow(settings)
    with translate_errors("the Databricks Review App"):
        from mlflow.genai import labeling

        session = labeling.create_labeling_session(name=f"{queue.name} ({queue.queue_id[:8]})",
                                                   assigned_users=list(reviewers))
        session.add_traces(list(trace_ids))
    return LabelingSession(session.name, getattr(session, "url", None))


def submit_queue_review(queue: ReviewQueue, trace_id: str, review: Any, reviewer: str, *,
                        questions: Sequence[Any] = (), settings: Settings | None = None,
                        identity: Any = None) -> int:
    """Store a review of a queue item (as ``feedback.submit_review``) and mark it done for the reviewer.

    Refused with nothing stored when someone else holds the item or it was deleted meanwhile.
    """
    from services import feedback

    _check_reviewer(reviewer)
    feedback.validate_review(review, questions)
    check_can_review(queue, trace_id, reviewer, settings)
    written = feedback.submit_review(trace_id, review, reviewer, questions=questions, settings=settings,
                                     identity=identity)
    complete(queue, trace_id, reviewer, settings)
    return written
