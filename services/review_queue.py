"""Review queues stored in MLflow itself, so they work on every backend.

* A queue is a run in the ``agentops-review`` experiment; its tags hold the name, how it was
  filled, the agent, the experiments of its traces and how many reviewers each item needs.
* Membership, claims and completion are trace tags, keyed by the queue id (the run id):
  ``agentops.review.queue.<id>`` = ``"1"``; one ``agentops.review.claim.<id>.<attempt>`` tag per
  claim attempt (JSON: user, ticket, expiry, held); one ``agentops.review.done.<id>.<reviewer hash>``
  tag per reviewer who finished the item.
* Claims hold across threads and processes sharing one store (several app replicas): attempts
  never overwrite each other and settle the winner by ticket (see "claims" below), so two
  reviewers are never handed the same item at once. A claim expires (default 15 minutes) so an
  abandoned item returns.

On Databricks, ``databricks_labeling_session`` additionally creates (once) a Review App labeling
session for the queue's traces and records it on the queue; locally the app's own queue is the
whole story.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import secrets
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Callable, Generator, Sequence

import pandas as pd

from services import _mlflow_internal as internal
from services._clients import (configure_mlflow, get_experiment_by_name, get_or_create_experiment, mlflow_client,
                              translate_errors)
from services.errors import BackendUnavailableError, ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from services.settings import Backend, Settings
from services.traces import AGENT_TAG, VERSION_TAG

REVIEW_EXPERIMENT = "agentops-review"  # the default of settings.review_experiment (AGENTOPS_REVIEW_EXPERIMENT)


def review_experiment_name(settings: Settings | None = None) -> str:
    """The experiment holding the queues: created with the first queue, never by a read."""
    from services._clients import get_settings

    return (settings or get_settings()).review_experiment
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
# A queue run is created as PENDING_KIND and becomes "queue" (KIND_TAG) only once all its traces are tagged.
PENDING_KIND = "queue-unfinished"
FINGERPRINT_TAG = "agentops.review.spec"  # hash of the spec and creator: a retry finds an unfinished queue by it
REQUEST_TAG = "agentops.review.request"  # the confirmation that made the queue (when the caller gave one)
MAX_ITEMS = 500
CLAIM_SECONDS = 15 * 60
# How long an unfinished claim attempt keeps counting (an attempt takes milliseconds; a dead one must not
# block the item for good).
CONTEND_SECONDS = 60
CHOOSING_REREADS = 3


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
    # NEGATIVE_FEEDBACK: the feedback name to read (default ``thumbs_up``) and, for a categorical
    # name, the values that count as negative (a boolean is negative when false, a number when
    # below ``threshold``).
    feedback_name: str | None = None
    negative_values: tuple[str, ...] = ()


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
    labeling_session: "LabelingSession | None" = None  # its Databricks Review App session, once made


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


def _whole(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (3 or 3.0), else ``None`` (2.7, NaN, inf, text, bools)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _validate_spec(spec: QueueSpec) -> None:
    name = (spec.name or "").strip()
    if not name or len(name) > 100 or any(c in name for c in "\n\r"):
        raise ValidationError("Give the queue a name (one line, at most 100 characters).")
    try:
        source = QueueSource(spec.source)
    except ValueError:
        raise ValidationError(f"A queue is filled from one of: {', '.join(QueueSource)}.") from None
    size = _whole(spec.size)
    if size is None or not 1 <= size <= MAX_ITEMS:
        raise ValidationError(f"A queue holds a whole number of traces between 1 and {MAX_ITEMS} (got {spec.size!r}).")
    reviews = _whole(spec.reviews_per_item)
    if reviews is None or not 1 <= reviews <= 10:
        raise ValidationError(f"Each item needs a whole number of reviewers between 1 and 10 "
                              f"(got {spec.reviews_per_item!r}).")
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
    if source is QueueSource.NEGATIVE_FEEDBACK and spec.feedback_name is not None:
        if not isinstance(spec.feedback_name, str) or not spec.feedback_name.strip() or len(spec.feedback_name) > 200 \
                or any(c in spec.feedback_name for c in "'`\n"):
            raise ValidationError("Name the feedback whose negative values should be reviewed (e.g. thumbs_up).")
    if not isinstance(spec.threshold, (int, float)) or isinstance(spec.threshold, bool) or not math.isfinite(spec.threshold):
        raise ValidationError(f"The threshold must be a number (got {spec.threshold!r}).")


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


def _is_low(value: Any, threshold: float, negative: set[str] | None = None) -> bool:
    """Whether a feedback value is negative: false, below the threshold, or one of the ``negative`` values."""
    if negative and not isinstance(value, (int, float)):
        return str(value).strip().lower() in negative
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
    # The agent is not a search clause: traces written by other code carry no app tag. Traces of the
    # agent's experiments count, except those linked (tag or mlflow.modelId) to another agent.
    mine = _agent_filter(client, spec.agent if source is not QueueSource.LOW_SCORES else None)
    feedback_name = (spec.feedback_name or "").strip() or "thumbs_up"
    if source is QueueSource.NEGATIVE_FEEDBACK and feedback_name == "thumbs_up" and not spec.negative_values:
        # The fast path MLflow's search answers itself.
        found = _search(client, spec.experiment_ids, " AND ".join(clauses + ["feedback.`thumbs_up` = 'false'"]),
                        MAX_ITEMS * 4 if spec.agent else spec.size)
        return [t for t in found if mine(_info(t))][:spec.size]
    if source is QueueSource.SAMPLE:
        pool = [t for t in _search(client, spec.experiment_ids, " AND ".join(clauses), min(MAX_ITEMS * 4, spec.size * 10))
                if mine(_info(t))]
        return random.Random().sample(pool, min(spec.size, len(pool)))
    name = spec.scorer if source is QueueSource.LOW_SCORES else feedback_name
    negative = {v.strip().lower() for v in spec.negative_values if v.strip()}
    pool = _search(client, spec.experiment_ids, " AND ".join(clauses), 5000)
    low = []
    for info in (t.info for t in pool):
        if not mine(info):
            continue
        results = [a for a in (info.assessments or []) if a.name == name and a.valid is not False
                   and getattr(a, "feedback", None) is not None]
        if any(_is_low(a.feedback.value, spec.threshold, negative) for a in results):
            low.append(info)
        if len(low) >= spec.size:
            break
    return low


def _agent_filter(client: Any, agent: str | None) -> Callable[[Any], bool]:
    """Whether a trace info may belong to ``agent``: no link to another agent (app tag or model id)."""
    if not agent:
        return lambda info: True
    from services.links import ModelIndex

    index = ModelIndex(client)

    def keep(info: Any) -> bool:
        tagged = (getattr(info, "tags", None) or {}).get(AGENT_TAG)
        if tagged:
            return tagged == agent
        model_id = (getattr(info, "trace_metadata", None) or {}).get("mlflow.modelId")
        found = index.version_of(model_id) if model_id else None
        return found is None or found[0] == agent

    return keep


def _trace_info(client: Any, trace_id: str) -> Any:
    return internal.trace_info(client, trace_id)


def _info(item: Any) -> Any:
    return getattr(item, "info", item)


def _experiment_of(info: Any) -> str | None:
    location = getattr(info, "trace_location", None)
    experiment = getattr(getattr(location, "mlflow_experiment", None), "experiment_id", None)
    return str(experiment) if experiment else getattr(info, "experiment_id", None)


def _spec_fingerprint(spec: QueueSpec, created_by: str) -> str:
    """What makes two create_queue calls the same request (the time window aside: a retry is a little later)."""
    data = {
        "name": spec.name.strip(), "source": str(QueueSource(spec.source)), "agent": spec.agent or "",
        "experiments": sorted(str(e) for e in spec.experiment_ids), "size": spec.size, "scorer": spec.scorer or "",
        "threshold": repr(spec.threshold), "reviews": spec.reviews_per_item,
        **({"feedback": spec.feedback_name, "negative": sorted(spec.negative_values)}
           if spec.feedback_name or spec.negative_values else {}), "description": spec.description.strip()[:500],
        "trace_ids": sorted({t.strip() for t in spec.trace_ids if t.strip()}), "by": created_by,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]


def _earlier_attempts(client: Any, experiment_id: str, fingerprint: str) -> list[Any]:
    """Queue runs made for the same spec and creator, oldest first."""
    return list(client.search_runs([experiment_id], filter_string=f"tags.`{FINGERPRINT_TAG}` = '{fingerprint}'",
                                   max_results=100, order_by=["attributes.start_time ASC"]))


def _cause(exc: Exception, limit: int = 240) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _interrupted(name: str, added: int, total: int, exc: Exception) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"The queue {name!r} was only partly created ({added} of {total} trace(s) added) before the tracking store "
        f"stopped answering ({_cause(exc)}). It is not listed until it is complete: press Create queue again with the "
        "same settings once the store is back; that finishes this queue, and nothing is added twice."
    )


def create_queue(spec: QueueSpec, created_by: str, settings: Settings | None = None, *,
                 request_id: str | None = None) -> ReviewQueue:
    """Fill a queue from its source and store it; ``ValidationError`` when nothing matches.

    The queue's run is marked usable (``KIND_TAG`` = ``queue``) only after all its traces are
    tagged, so an interrupted creation is never listed. Creating the same spec as the same user
    again finishes such an unfinished queue instead of starting a second one; with the same
    ``request_id`` (the page passes one per confirmation) a finished one is returned as it is.
    """
    _validate_spec(spec)
    # From here on the counts are ints (a whole float such as 20.0 would break slicing and sampling).
    spec = replace(spec, size=_whole(spec.size), reviews_per_item=_whole(spec.reviews_per_item))
    if request_id is not None and (not isinstance(request_id, str) or not request_id.strip()
                                   or any(c.isspace() or c in "'`" for c in request_id)):
        raise ValidationError(f"{request_id!r} is not a request id.")
    settings = configure_mlflow(settings)
    client = mlflow_client(settings)
    with translate_errors("trace search"):
        infos = [_info(i) for i in _candidates(client, spec)]
    if not infos:
        raise ValidationError(
            "No traces match, so the queue would be empty and was not created. Widen the window, "
            "pick another source, or paste trace ids."
        )
    name = spec.name.strip()
    fingerprint = _spec_fingerprint(spec, created_by)
    with translate_errors("the review experiment"):
        experiment_id = get_or_create_experiment(client, review_experiment_name(settings), settings)
        earlier = _earlier_attempts(client, experiment_id, fingerprint)
    if request_id is not None:
        done = [r for r in earlier if r.data.tags.get(REQUEST_TAG) == request_id and r.data.tags.get(KIND_TAG) == "queue"]
        if done:
            return _queue_from_run(done[0])  # this confirmation already made its queue
    unfinished = [r for r in earlier if r.data.tags.get(KIND_TAG) == PENDING_KIND]
    added = 0
    total = len(infos)
    run = None
    try:
        with translate_errors("the review experiment"):
            if unfinished:
                run = unfinished[0]
                queue_id = run.info.run_id
                # Keep what the interrupted attempt added (a sample is drawn afresh), then top up to the size.
                kept = {t.info.trace_id: t.info for t in _search(
                    client, tuple(e for e in run.data.tags.get(EXPERIMENTS_TAG, "").split(",") if e) or spec.experiment_ids,
                    f"tag.`{QUEUE_TAG}{queue_id}` = '1'", MAX_ITEMS)}
                fresh = [i for i in infos if i.trace_id not in kept]
                if QueueSource(spec.source) is not QueueSource.HAND_PICKED:
                    fresh = fresh[:max(0, spec.size - len(kept))]
                infos = [*kept.values(), *fresh]
                total = len(infos)
            experiments = tuple(dict.fromkeys(e for e in (_experiment_of(i) for i in infos) if e)) or tuple(spec.experiment_ids)
            tags = {
                NAME_TAG: name, SOURCE_TAG: str(QueueSource(spec.source)),
                AGENT_QUEUE_TAG: spec.agent or "", EXPERIMENTS_TAG: ",".join(experiments),
                REVIEWS_TAG: str(int(spec.reviews_per_item)), CREATOR_TAG: created_by,
                DESCRIPTION_TAG: spec.description.strip()[:500], FINGERPRINT_TAG: fingerprint,
                REQUEST_TAG: request_id or "",
            }
            if run is None:
                run = client.create_run(experiment_id, run_name=name, tags={KIND_TAG: PENDING_KIND, **tags})
                queue_id = run.info.run_id
            else:
                changed = {k: v for k, v in tags.items() if run.data.tags.get(k) != v}
                for key, value in changed.items():
                    client.set_tag(queue_id, key, value)
            for info in infos:
                if (getattr(info, "tags", None) or {}).get(QUEUE_TAG + queue_id) != "1":
                    client.set_trace_tag(info.trace_id, QUEUE_TAG + queue_id, "1")
                added += 1
            client.set_terminated(queue_id, "FINISHED")
            # The marker, written last: from here on the queue is listed and can be reviewed.
            client.set_tag(queue_id, KIND_TAG, "queue")
    except BackendUnavailableError as exc:
        if run is None:
            raise BackendUnavailableError(
                f"The queue {name!r} was not created: the tracking store stopped answering ({_cause(exc)}). Press Create "
                "queue again with the same settings once the store is back; nothing is added twice.") from exc
        raise _interrupted(name, added, total, exc) from exc
    return ReviewQueue(
        queue_id=queue_id, name=name, source=QueueSource(spec.source), agent=spec.agent or None,
        experiment_ids=experiments, reviews_per_item=int(spec.reviews_per_item), created_by=created_by,
        created_at=datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc),
        description=spec.description.strip()[:500], labeling_session=_labeling_session_from_tag(run.data.tags.get(LABELING_TAG)),
    )


def _queue_from_run(run: Any) -> ReviewQueue:
    tags = run.data.tags
    return ReviewQueue(
        queue_id=run.info.run_id, name=tags.get(NAME_TAG, run.info.run_name or run.info.run_id),
        source=QueueSource(tags.get(SOURCE_TAG, QueueSource.HAND_PICKED)), agent=tags.get(AGENT_QUEUE_TAG) or None,
        experiment_ids=tuple(e for e in tags.get(EXPERIMENTS_TAG, "").split(",") if e),
        reviews_per_item=int(tags.get(REVIEWS_TAG, "1") or 1), created_by=tags.get(CREATOR_TAG, ""),
        created_at=datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc),
        description=tags.get(DESCRIPTION_TAG, ""),
        labeling_session=_labeling_session_from_tag(tags.get(LABELING_TAG)),
    )


def list_queues(settings: Settings | None = None) -> list[ReviewQueue]:
    """All queues, newest first (none when the review experiment does not exist yet)."""
    client = mlflow_client(settings)
    with translate_errors("the review experiment"):
        experiment = get_experiment_by_name(client, review_experiment_name(settings), settings)
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
    if run.data.tags.get(KIND_TAG) == PENDING_KIND:
        raise NotFoundError(f"Review queue {queue_id} was not finished being created; create it again with the "
                            "same settings to finish it.")
    if run.data.tags.get(KIND_TAG) != "queue":
        raise NotFoundError(f"Review queue {queue_id} does not exist.")
    return _queue_from_run(run)


# --- claims ----------------------------------------------------------------------------------------
#
# MLflow tags are last-writer-wins with no compare-and-set, so a claim cannot be "set if unset".
# Instead every claim attempt writes its own tag (a fresh key per attempt, so no attempt ever
# overwrites another) and the attempts on one item settle who holds it with Lamport's bakery rule:
#
#   1. announce: write the attempt's tag with no ticket ("choosing");
#   2. read all attempts on the item; give up if someone holds it; otherwise take the ticket
#      1 + the highest ticket seen and write it;
#   3. read again: if any other live attempt is still choosing (after a short re-read) or has a
#      lower (ticket, key), withdraw (delete the tag); otherwise the item is ours;
#   4. hold: rewrite the tag as held, expiring after ``claim_seconds``.
#
# Two attempts can never both pass step 3: whichever read the other's announcement after it was
# written either saw a lower ticket or took a higher one (the bakery argument). This needs only
# that a read sees every write completed before it, which one tracking store (SQLite, a database
# behind ``mlflow server`` or Databricks) gives. An attempt that dies midway stops counting after
# CONTEND_SECONDS; a held claim after ``claim_seconds``, so an abandoned item returns to the queue.


@dataclass(frozen=True)
class _Claim:
    key: str
    user: str
    ticket: int | None  # None while the attempt is still choosing its ticket
    expires: float
    held: bool

    def live(self, now: float) -> bool:
        return self.expires > now

    def order(self) -> tuple[int, str]:
        return (self.ticket or 0, self.key)


def _claim_prefix(queue_id: str) -> str:
    return f"{CLAIM_TAG}{queue_id}."


def _encode_claim(user: str, ticket: int | None, expires: float, held: bool) -> str:
    return json.dumps({"user": user, "ticket": ticket, "expires": round(expires, 3), "held": held})


def _claims(tags: dict[str, str], queue_id: str) -> list[_Claim]:
    """All claim attempts of a queue on one trace (including the single-tag format of earlier versions)."""
    found = []
    prefix = _claim_prefix(queue_id)
    for key, value in tags.items():
        if key.startswith(prefix):
            try:
                data = json.loads(value)
                ticket = data.get("ticket")
                found.append(_Claim(key, str(data["user"]), int(ticket) if ticket is not None else None,
                                    float(data["expires"]), bool(data.get("held"))))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # not ours to interpret; it never counts as a claim
        elif key == CLAIM_TAG + queue_id:
            user, expires = _parse_legacy_claim(value)
            if user is not None and expires is not None:
                found.append(_Claim(key, user, 0, expires, True))
    return found


def _parse_legacy_claim(value: str | None) -> tuple[str | None, float | None]:
    if not value or "|" not in value:
        return None, None
    user, _, expires = value.rpartition("|")
    try:
        return user, float(expires)
    except ValueError:
        return None, None


def _holder(claims: Sequence[_Claim], now: float) -> _Claim | None:
    """The live held claim with the lowest ticket (there is at most one unless a holder outlived its claim)."""
    held = [c for c in claims if c.held and c.live(now)]
    return min(held, key=_Claim.order) if held else None


def _done_key(queue_id: str, reviewer: str) -> str:
    return f"{DONE_TAG}{queue_id}.{hashlib.sha256(reviewer.encode()).hexdigest()[:16]}"


def _done(tags: dict[str, str], queue_id: str) -> tuple[str, ...]:
    """Reviewers who finished the item: one tag per reviewer (and the JSON list of earlier versions)."""
    reviewers: list[str] = []
    try:
        legacy = json.loads(tags.get(DONE_TAG + queue_id) or "[]")
        reviewers.extend(str(v) for v in legacy if isinstance(legacy, list))
    except (json.JSONDecodeError, TypeError):
        pass
    prefix = f"{DONE_TAG}{queue_id}."
    marks = []
    for key, value in tags.items():
        if key.startswith(prefix):
            try:
                data = json.loads(value)
                marks.append((float(data.get("at", 0)), str(data["user"])))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
    reviewers.extend(user for _, user in sorted(marks))
    return tuple(dict.fromkeys(reviewers))


def _item(queue_id: str, info: Any, now: float) -> QueueItem:
    tags = info.tags or {}
    holder = _holder(_claims(tags, queue_id), now)
    return QueueItem(queue_id, info.trace_id, tags.get(AGENT_TAG), tags.get(VERSION_TAG),
                     holder.user if holder else None, holder.expires if holder else None, _done(tags, queue_id))


def queue_items(queue: ReviewQueue, settings: Settings | None = None) -> list[QueueItem]:
    """The queue's traces (oldest first) with claim and completion state."""
    now = time.time()
    return [_item(queue.queue_id, info, now) for info in _queue_infos(queue, settings)]


def _queue_infos(queue: ReviewQueue, settings: Settings | None) -> list[Any]:
    client = mlflow_client(settings)
    if not queue.experiment_ids:
        return []
    with translate_errors(f"review queue {queue.name}"):
        found = _search(client, queue.experiment_ids, f"tag.`{QUEUE_TAG}{queue.queue_id}` = '1'", MAX_ITEMS)
    return [t.info for t in reversed(found)]


def _tags(client: Any, trace_id: str) -> dict[str, str]:
    return dict(_trace_info(client, trace_id).tags or {})


def claim_steps(client: Any, queue_id: str, trace_id: str, reviewer: str, *,
                claim_seconds: float = CLAIM_SECONDS, reviews_needed: int | None = None) -> Generator[str, None, float | None]:
    """One claim attempt, pausing after each store operation (tests interleave attempts step by step).

    Returns (as the generator's value) the claim's expiry when the item is now held by
    ``reviewer``, or None when another attempt won or holds it, or (with ``reviews_needed``) the
    item no longer needs this reviewer: someone finished it while this attempt started from an
    older read. Completion is written before a claim is dropped, so the read that finds no
    holder also sees it.
    """
    key = _claim_prefix(queue_id) + secrets.token_hex(8)
    contend_until = time.time() + CONTEND_SECONDS

    def unwanted(tags: dict[str, str]) -> bool:
        done = _done(tags, queue_id)
        return reviews_needed is not None and (reviewer in done or len(done) >= reviews_needed)

    client.set_trace_tag(trace_id, key, _encode_claim(reviewer, None, contend_until, False))
    yield "announced"
    tags = _tags(client, trace_id)
    yield "read"
    claims = _claims(tags, queue_id)
    now = time.time()
    if _holder([c for c in claims if c.key != key], now) is not None or unwanted(tags):
        client.delete_trace_tag(trace_id, key)
        yield "withdrawn"
        return None
    ticket = 1 + max((c.ticket or 0 for c in claims), default=0)
    client.set_trace_tag(trace_id, key, _encode_claim(reviewer, ticket, contend_until, False))
    yield "ticket"
    mine = _Claim(key, reviewer, ticket, contend_until, False)
    for attempt in range(CHOOSING_REREADS + 1):
        tags = _tags(client, trace_id)
        yield "read"
        now = time.time()
        others = [c for c in _claims(tags, queue_id) if c.key != key and c.live(now)]
        if not any(c.ticket is None for c in others) or attempt == CHOOSING_REREADS:
            break
        time.sleep(0.02 * (attempt + 1))  # let an announced attempt take its ticket (bakery's "wait while choosing")
    if any(c.ticket is None or c.order() < mine.order() for c in others) or unwanted(tags):
        client.delete_trace_tag(trace_id, key)
        yield "withdrawn"
        return None
    expires = time.time() + claim_seconds
    client.set_trace_tag(trace_id, key, _encode_claim(reviewer, ticket, expires, True))
    yield "held"
    return expires


def _run_claim(client: Any, queue_id: str, trace_id: str, reviewer: str, claim_seconds: float,
               reviews_needed: int) -> float | None:
    steps = claim_steps(client, queue_id, trace_id, reviewer, claim_seconds=claim_seconds, reviews_needed=reviews_needed)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def next_item(queue: ReviewQueue, reviewer: str, *, claim_seconds: int = CLAIM_SECONDS,
              settings: Settings | None = None) -> QueueItem | None:
    """Claim the next item for ``reviewer`` (their unexpired claim first); None when nothing is left for them.

    Safe across threads and processes sharing one store: an item is never held by two reviewers at once.
    """
    _check_reviewer(reviewer)
    client = mlflow_client(settings)
    now = time.time()
    infos = _queue_infos(queue, settings)
    items = [(_item(queue.queue_id, info, now), info) for info in infos]
    for item, info in items:
        if item.claimed_by == reviewer and reviewer not in item.reviewed_by:
            holder = _holder(_claims(info.tags or {}, queue.queue_id), now)
            expires = time.time() + claim_seconds
            try:
                with translate_errors(f"trace {item.trace_id}"):
                    # Extending one's own claim keeps its ticket, so it cannot displace anyone.
                    client.set_trace_tag(item.trace_id, holder.key, _encode_claim(reviewer, holder.ticket, expires, True))
            except (NotFoundError, ValidationError, BackendUnavailableError):
                continue  # deleted meanwhile
            return QueueItem(queue.queue_id, item.trace_id, item.agent, item.version, reviewer, expires, item.reviewed_by)
    for item, _ in items:
        if item.claimed_by is not None or reviewer in item.reviewed_by or len(item.reviewed_by) >= queue.reviews_per_item:
            continue
        try:
            with translate_errors(f"trace {item.trace_id}"):
                expires = _run_claim(client, queue.queue_id, item.trace_id, reviewer, claim_seconds,
                                     queue.reviews_per_item)
        except (NotFoundError, ValidationError, BackendUnavailableError):
            continue  # deleted meanwhile: skip it
        if expires is not None:
            return QueueItem(queue.queue_id, item.trace_id, item.agent, item.version, reviewer, expires, item.reviewed_by)
    return None


def _check_reviewer(reviewer: str) -> None:
    if not isinstance(reviewer, str) or not reviewer.strip() or reviewer == "unknown" or "|" in reviewer:
        raise ValidationError("The reviewer is unknown; sign in through Databricks Apps to review.")


def _drop_claims_of(client: Any, trace_id: str, claims: Sequence[_Claim], reviewer: str) -> None:
    for claim in claims:
        if claim.user == reviewer:
            client.delete_trace_tag(trace_id, claim.key)


def release(queue: ReviewQueue, trace_id: str, reviewer: str, settings: Settings | None = None) -> None:
    """Give an item back (skip) without reviewing it; only the reviewer's own claims are removed."""
    _check_reviewer(reviewer)
    client = mlflow_client(settings)
    try:
        with translate_errors(f"trace {trace_id}"):
            _drop_claims_of(client, trace_id, _claims(_tags(client, trace_id), queue.queue_id), reviewer)
    except NotFoundError:
        return


def complete(queue: ReviewQueue, trace_id: str, reviewer: str, settings: Settings | None = None) -> None:
    """Mark an item reviewed by ``reviewer`` and release their claim."""
    _check_reviewer(reviewer)
    client = mlflow_client(settings)
    with translate_errors(f"trace {trace_id}"):
        try:
            tags = _tags(client, trace_id)
        except NotFoundError:
            raise NotFoundError(f"Trace {trace_id} no longer exists (it was deleted meanwhile).") from None
        if tags.get(QUEUE_TAG + queue.queue_id) != "1":
            raise NotFoundError(f"Trace {trace_id} is not in the queue {queue.name!r}.")
        claims = _claims(tags, queue.queue_id)
        holder = _holder(claims, time.time())
        if holder is not None and holder.user != reviewer:
            raise ConflictError(f"{holder.user} is reviewing this item right now; your review was not recorded in the queue.")
        if reviewer not in _done(tags, queue.queue_id):
            # One tag per reviewer: two reviewers finishing at once never overwrite each other.
            client.set_trace_tag(trace_id, _done_key(queue.queue_id, reviewer),
                                 json.dumps({"user": reviewer, "at": round(time.time(), 3)}))
        _drop_claims_of(client, trace_id, claims, reviewer)


def check_can_review(queue: ReviewQueue, trace_id: str, reviewer: str, settings: Settings | None = None) -> None:
    """``ConflictError`` when someone else holds an unexpired claim on the item (before storing feedback)."""
    client = mlflow_client(settings)
    try:
        with translate_errors(f"trace {trace_id}"):
            tags = _tags(client, trace_id)
    except (NotFoundError, ValidationError, BackendUnavailableError):
        raise NotFoundError(f"Trace {trace_id} no longer exists (it was deleted meanwhile); nothing was stored.") from None
    holder = _holder(_claims(tags, queue.queue_id), time.time())
    if holder is not None and holder.user != reviewer:
        raise ConflictError(f"{holder.user} is reviewing this item right now; nothing was stored.")


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
    raw_output: str = ""  # the root span's outputs as JSON, for an expander behind the text


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
    """The text of an agent's output: ResponsesAgent, ChatAgent, chat completions or a plain dict/string."""
    if isinstance(outputs, str):
        return outputs
    if isinstance(outputs, dict):
        items = outputs.get("output")
        if isinstance(items, list):
            texts = [_content(i.get("content")) for i in items if isinstance(i, dict) and i.get("type", "message") == "message"]
            if texts:
                return "\n".join(texts)
        messages = outputs.get("messages")  # ChatAgent: the assistant's last message
        if isinstance(messages, list):
            said = [_content(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
            said = [t for t in said if t]
            if said:
                return said[-1]
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
    agent, version = tags.get(AGENT_TAG), tags.get(VERSION_TAG)
    model_id = (getattr(trace.info, "trace_metadata", None) or {}).get("mlflow.modelId")
    if (agent is None or version is None) and model_id:
        from services.links import ModelIndex

        found = ModelIndex(client).version_of(model_id)
        if found and agent in (None, found[0]):
            agent, version = found
    return Conversation(
        trace_id=trace.info.trace_id,
        time=datetime.fromtimestamp(trace.info.request_time / 1000, tz=timezone.utc),
        agent=agent, version=version,
        turns=tuple(_turns(root.inputs if root else None)),
        answer=_answer(root.outputs if root else None),
        tool_calls=tuple(ToolCall(s.name, _text(s.inputs), _text(s.outputs)) for s in tools),
        error=error,
        raw_output=_raw(root.outputs if root else None),
    )


def _raw(outputs: Any) -> str:
    if outputs is None:
        return ""
    try:
        return json.dumps(outputs, indent=1, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(outputs)


# --- Databricks Review App -----------------------------------------------------------------------
#
# On Databricks a queue can also live in the Review App as a labeling session over the same traces,
# so teams already using the Review App are not split. databricks-agents builds its own clients from
# the environment, so the calls run in a child process as the signed-in user (see
# ``services.serving.run_agents_call``). The session is recorded on the queue's run, so the queue
# links to it from then on instead of creating a second one.

LABELING_TAG = "agentops.review.labeling_session"


@dataclass(frozen=True)
class LabelingSession:
    """A Review App labeling session made for a queue (``url`` opens it in the workspace)."""

    name: str
    url: str | None
    labeling_session_id: str = ""
    experiment_id: str = ""
    assigned_users: tuple[str, ...] = ()
    traces: int = 0
    created_by: str = ""


def _labeling_session_from_tag(value: str | None) -> LabelingSession | None:
    if not value:
        return None
    try:
        data = json.loads(value)
        return LabelingSession(str(data["name"]), data.get("url"), str(data.get("id", "")), str(data.get("experiment_id", "")),
                               tuple(data.get("assigned_users") or ()), int(data.get("traces", 0)),
                               str(data.get("created_by", "")))
    except (ValueError, KeyError, TypeError):
        return None


def databricks_labeling_session(queue: ReviewQueue, trace_ids: Sequence[str], reviewers: Sequence[str],
                                settings: Settings | None = None, *, created_by: str | None = None,
                                identity: Any = None, user_token: str | None = None,
                                progress: Callable[[str], None] | None = None) -> LabelingSession:
    """The queue's Databricks Review App labeling session: the one already made for it, else a new one.

    A new session gets the queue's ``trace_ids`` and is assigned to ``reviewers`` (who get edit
    access to the traces' experiment, as the Review App requires). Databricks only. Validation
    (traces in the queue, one experiment, reviewers named) happens before anything is sent.
    """
    from services import roles
    from services._clients import get_settings
    from services.serving import run_agents_call

    settings = settings or get_settings()
    say = progress or (lambda _message: None)
    if settings.backend is not Backend.DATABRICKS:
        raise BackendUnavailableError("Review App labeling sessions exist only on Databricks; locally this app's own queue is the whole story.")
    existing = get_queue(queue.queue_id, settings).labeling_session  # fresh: someone may have made it meanwhile
    if existing is not None:
        return existing
    ids = list(dict.fromkeys(t.strip() for t in trace_ids if t and t.strip()))
    if not ids:
        raise ValidationError("The queue has no traces to send to the Review App.")
    users = list(dict.fromkeys(r.strip() for r in reviewers if r and r.strip()))
    if not users or any("@" not in u or any(c.isspace() for c in u) for u in users):
        raise ValidationError("Assign the session to workspace users by e-mail (e.g. ana@example.com).")
    if identity is not None:
        roles.enforce(identity, roles.Action.REVIEW, settings)
        user_token = user_token or getattr(identity, "access_token", None)
    if roles.user_authorization_required() and not user_token:
        raise PermissionDeniedError("User authorization is on, but this request carries no user token; the app will "
                                    "not create a labeling session as its service principal.")
    client = mlflow_client(settings)
    infos = []
    for trace_id in ids:
        try:
            with translate_errors(f"trace {trace_id}"):
                info = _trace_info(client, trace_id)
        except (NotFoundError, BackendUnavailableError, ValidationError):
            raise NotFoundError(f"Trace {trace_id} no longer exists; nothing was sent to the Review App.") from None
        if (info.tags or {}).get(QUEUE_TAG + queue.queue_id) != "1":
            raise ValidationError(f"Trace {trace_id} is not in the queue {queue.name!r}; nothing was sent.")
        infos.append(info)
    experiments = sorted({e for e in (_experiment_of(i) for i in infos) if e})
    if len(experiments) != 1:
        raise ValidationError(
            "A labeling session belongs to one experiment's Review App, but this queue's traces come from "
            f"{len(experiments) or 'no'} experiments ({', '.join(experiments)}). Make one queue per agent to send it."
        )
    name = f"{queue.name} ({queue.queue_id[:8]})"
    say(f"Creating the labeling session '{name}' with {len(infos)} trace(s)…")
    result = run_agents_call("labeling_session", {
        "name": name, "experiment_id": experiments[0], "assigned_users": users,
        "trace_infos": [i.to_dict() for i in infos],
    }, settings)  # the Review App API is outside every Databricks Apps user scope: run as the app
    session = LabelingSession(result["name"], result.get("url"), result.get("labeling_session_id", ""), experiments[0],
                              tuple(users), len(infos), created_by or getattr(identity, "user", "") or "")
    with translate_errors(f"review queue {queue.name}"):
        client.set_tag(queue.queue_id, LABELING_TAG, json.dumps({
            "name": session.name, "url": session.url, "id": session.labeling_session_id,
            "experiment_id": session.experiment_id, "assigned_users": list(session.assigned_users),
            "traces": session.traces, "created_by": session.created_by, "at": round(time.time(), 3),
        }))
    return session


def _child_labeling_session(args: dict[str, Any]) -> dict[str, Any]:
    """Child side of ``databricks_labeling_session``: MLflow 3's labeling API in the traces' experiment."""
    import os

    from mlflow.entities import Trace, TraceData, TraceInfo
    from mlflow.genai import labeling

    # The Review App of the active experiment holds the session; in this child that is only ours.
    os.environ["MLFLOW_EXPERIMENT_ID"] = str(args["experiment_id"])
    session = labeling.create_labeling_session(name=args["name"], assigned_users=list(args["assigned_users"]))
    # The traces are already in that experiment, so the session needs their info only (no spans).
    traces = [Trace(info=TraceInfo.from_dict(info), data=TraceData(spans=[])) for info in args["trace_infos"]]
    session = session.add_traces(traces)
    return {"name": session.name, "url": session.url, "labeling_session_id": session.labeling_session_id,
            "mlflow_run_id": session.mlflow_run_id}


def submit_queue_review(queue: ReviewQueue, trace_id: str, review: Any, reviewer: str, *,
                        questions: Sequence[Any] = (), settings: Settings | None = None,
                        identity: Any = None) -> int:
    """Store a review of a queue item (as ``feedback.submit_review``) and mark it done for the reviewer.

    Refused with nothing stored when someone else holds the item or it was deleted meanwhile.
    When the store stops answering part-way, ``feedback.ReviewPartlySavedError`` says so; submitting
    the same review again writes only what is missing and then marks the item done.
    """
    from services import feedback

    _check_reviewer(reviewer)
    feedback.validate_review(review, questions)
    check_can_review(queue, trace_id, reviewer, settings)
    written = feedback.submit_review(trace_id, review, reviewer, questions=questions, settings=settings,
                                     identity=identity)
    try:
        complete(queue, trace_id, reviewer, settings)
    except BackendUnavailableError as exc:
        raise feedback.ReviewPartlySavedError(
            f"The review was saved, but the queue could not mark the item done: the tracking store stopped "
            f"answering ({_cause(exc)}). Your answers are kept: submit the review again once the store is back. Retrying "
            "is safe: the review is not written twice, and the item is then marked done.",
            stored=written, total=written) from exc
    return written
