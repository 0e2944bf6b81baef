"""What a review queue is made of: its tags, its spec, the queue, its items and their progress.

* A queue is a run in the review experiment; its tags hold the name, how it was filled, the agent,
  the experiments of its traces and how many reviewers each item needs.
* Membership, claims and completion are trace tags, keyed by the queue id (the run id):
  ``agentops.review.queue.<id>`` = ``"1"``; one ``agentops.review.claim.<id>.<attempt>`` tag per
  claim attempt (JSON: user, ticket, expiry, held); one ``agentops.review.done.<id>.<reviewer hash>``
  tag per reviewer who finished the item.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import pandas as pd

REVIEW_EXPERIMENT = "agentops-review"  # the default of settings.review_experiment (AGENTOPS_REVIEW_EXPERIMENT)
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
# The Databricks Review App labeling session made for a queue (JSON), see ``review_app``.
LABELING_TAG = "agentops.review.labeling_session"


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
    labeling_session: LabelingSession | None = None  # its Databricks Review App session, once made


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


def labeling_session_from_tag(value: str | None) -> LabelingSession | None:
    """The session recorded in a queue run's ``LABELING_TAG``; None when there is none or it does not parse."""
    if not value:
        return None
    try:
        data = json.loads(value)
        return LabelingSession(str(data["name"]), data.get("url"), str(data.get("id", "")), str(data.get("experiment_id", "")),
                               tuple(data.get("assigned_users") or ()), int(data.get("traces", 0)),
                               str(data.get("created_by", "")))
    except (ValueError, KeyError, TypeError):
        return None

