"""Review queues stored in MLflow itself, so they work on every backend: one public API over six modules.

- ``entities``: the queue's tags and values (spec, queue, item, progress, labeling session);
- ``sources``: checking a spec and drawing its traces (sample, low scores, negative feedback, hand-picked);
- ``queues``: creating a queue exactly once per request, listing and reading queues;
- ``items``: claims (never two reviewers on one item), completion, progress, storing a queue review;
- ``conversation_view``: a trace as reviewers read it;
- ``review_app``: on Databricks, the queue's traces as a Review App labeling session.

Locally the app's own queue is the whole story; on Databricks ``databricks_labeling_session``
additionally creates (once) a Review App labeling session for the queue's traces.
"""

from services.review_queue.conversation_view import Conversation, ToolCall, Turn, conversation
from services.review_queue.entities import (AGENT_QUEUE_TAG, CHOOSING_REREADS, CLAIM_SECONDS, CLAIM_TAG,
                                            CONTEND_SECONDS, CREATOR_TAG, DESCRIPTION_TAG, DONE_TAG, EXPERIMENTS_TAG,
                                            FINGERPRINT_TAG, KIND_TAG, LABELING_TAG, MAX_ITEMS, NAME_TAG,
                                            PENDING_KIND, QUEUE_TAG, REQUEST_TAG, REVIEW_EXPERIMENT, REVIEWS_TAG,
                                            SOURCE_TAG, LabelingSession, QueueItem, QueueProgress, QueueSource,
                                            QueueSpec, ReviewQueue)
from services.review_queue.items import (check_can_review, claim_steps, complete, next_item, progress, queue_items,
                                         release, reviewed_trace_ids, submit_queue_review)
from services.review_queue.queues import create_queue, get_queue, list_queues, review_experiment_name
from services.review_queue.review_app import databricks_labeling_session

__all__ = [
    "AGENT_QUEUE_TAG", "CHOOSING_REREADS", "CLAIM_SECONDS", "CLAIM_TAG", "CONTEND_SECONDS", "CREATOR_TAG",
    "DESCRIPTION_TAG", "DONE_TAG", "EXPERIMENTS_TAG", "FINGERPRINT_TAG", "KIND_TAG", "LABELING_TAG", "MAX_ITEMS",
    "NAME_TAG", "PENDING_KIND", "QUEUE_TAG", "REQUEST_TAG", "REVIEW_EXPERIMENT", "REVIEWS_TAG", "SOURCE_TAG",
    "Conversation", "LabelingSession", "QueueItem", "QueueProgress", "QueueSource", "QueueSpec", "ReviewQueue",
    "ToolCall", "Turn", "check_can_review", "claim_steps", "complete", "conversation", "create_queue",
    "databricks_labeling_session", "get_queue", "list_queues", "next_item", "progress", "queue_items", "release",
    "review_experiment_name", "reviewed_trace_ids", "submit_queue_review",
]
