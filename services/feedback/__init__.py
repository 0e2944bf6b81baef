"""Reviewer feedback as MLflow assessments: one public API over five modules.

- ``labels``: the built-in review fields and an agent's custom label questions;
- ``reviews``: storing a reviewer's judgement (overriding the earlier one), its history, the current one;
- ``reading``: feedback of any name and source type on live traces of a window, as a frame;
- ``charts``: what the feedback frame is charted as (kinds, names, trends, reviewer agreement);
- ``curation``: reviewed traces with corrected answers as evaluation-dataset rows.
"""

from services.feedback.charts import (AGREEMENT_COLUMNS, MAX_CATEGORIES, NAME_COLUMNS, NAME_TREND_COLUMNS,
                                      TREND_COLUMNS, FeedbackKind, GroupBy, feedback_kind, feedback_names,
                                      feedback_trend, name_trend, reviewer_agreement)
from services.feedback.curation import CurationResult, curate_to_dataset, curation_rows
from services.feedback.labels import (COMMENT, EXPECTED_RESPONSE, LABELS_TAG, MAX_ANSWER, MAX_COMMENT, MAX_QUESTIONS,
                                      MAX_QUESTIONS_JSON, RATING, RESERVED_NAMES, THUMBS, LabelKind, LabelQuestion,
                                      label_questions, parse_questions, questions_json, set_label_questions,
                                      validate_questions)
from services.feedback.reading import FEEDBACK_COLUMNS, MODEL_ID_METADATA, SOURCE_RUN_METADATA, human_feedback
from services.feedback.reviews import (ASSESSMENT_HISTORY_COLUMNS, Review, ReviewPartlySavedError,
                                       assessment_history, current_review, get_trace_or_raise, submit_review,
                                       validate_review)

__all__ = [
    "AGREEMENT_COLUMNS", "ASSESSMENT_HISTORY_COLUMNS", "COMMENT", "EXPECTED_RESPONSE", "FEEDBACK_COLUMNS",
    "LABELS_TAG", "MAX_ANSWER", "MAX_CATEGORIES", "MAX_COMMENT", "MAX_QUESTIONS", "MAX_QUESTIONS_JSON",
    "MODEL_ID_METADATA", "NAME_COLUMNS", "NAME_TREND_COLUMNS", "RATING", "RESERVED_NAMES", "SOURCE_RUN_METADATA",
    "THUMBS", "TREND_COLUMNS", "CurationResult", "FeedbackKind", "GroupBy", "LabelKind", "LabelQuestion", "Review",
    "ReviewPartlySavedError", "assessment_history", "curate_to_dataset", "curation_rows", "current_review",
    "feedback_kind", "feedback_names", "feedback_trend", "get_trace_or_raise", "human_feedback", "label_questions",
    "name_trend", "parse_questions", "questions_json", "reviewer_agreement", "set_label_questions", "submit_review",
    "validate_questions", "validate_review",
]
