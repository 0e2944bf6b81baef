"""The items of a queue: claiming the next one, completing or releasing it, progress, storing a review.

MLflow tags are last-writer-wins, so claims hold across threads and processes sharing one store
(several app replicas) by writing one tag per attempt and settling the winner by ticket (see
"claims" below): two reviewers are never handed the same item at once. A claim expires (default
15 minutes) so an abandoned item returns.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Generator, Sequence

import pandas as pd

from services import feedback
from services._clients import mlflow_client, translate_errors
from services.errors import BackendUnavailableError, ConflictError, NotFoundError, ValidationError
from services.feedback.reviews import short_cause
from services.review_queue.entities import (CHOOSING_REREADS, CLAIM_SECONDS, CLAIM_TAG, CONTEND_SECONDS, DONE_TAG,
                                            MAX_ITEMS, QUEUE_TAG, QueueItem, QueueProgress, ReviewQueue)
from services.review_queue.sources import search, trace_info
from services.settings import Settings
from services.traces import AGENT_TAG, VERSION_TAG


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
        found = search(client, queue.experiment_ids, f"tag.`{QUEUE_TAG}{queue.queue_id}` = '1'", MAX_ITEMS)
    return [t.info for t in reversed(found)]


def _tags(client: Any, trace_id: str) -> dict[str, str]:
    return dict(trace_info(client, trace_id).tags or {})


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


def submit_queue_review(queue: ReviewQueue, trace_id: str, review: Any, reviewer: str, *,
                        questions: Sequence[Any] = (), settings: Settings | None = None,
                        identity: Any = None) -> int:
    """Store a review of a queue item (as ``feedback.submit_review``) and mark it done for the reviewer.

    Refused with nothing stored when someone else holds the item or it was deleted meanwhile.
    When the store stops answering part-way, ``feedback.ReviewPartlySavedError`` says so; submitting
    the same review again writes only what is missing and then marks the item done.
    """
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
            f"answering ({short_cause(exc)}). Your answers are kept: submit the review again once the store is back. Retrying "
            "is safe: the review is not written twice, and the item is then marked done.",
            stored=written, total=written) from exc
    return written
