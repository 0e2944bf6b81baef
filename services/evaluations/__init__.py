"""Evaluation runs made with ``mlflow.genai.evaluate``: one public API over five modules.

- ``runs``: how a run is tagged (request, owner, version) and when an unfinished run is interrupted;
- ``request``: what a request asks for, checked before any I/O, and the version it names;
- ``running``: evaluating a request exactly once (``run_evaluation``, ``evaluate_rows``);
- ``listing``: listing runs and which registered version each one evaluated;
- ``comparison``: per-row results and the paired comparison against a baseline.

Every run carries a request id (tag ``agentops.request_id``, one per click on Run). A run the
backend interrupted is never reported as a result: it is marked ``FAILED`` with the tag
``agentops.interrupted``, and a retry with the same request id returns the request's finished run
or evaluates again, so one request ends with exactly one ``FINISHED`` run.
"""

from services.evaluations.comparison import (RUN_ROW_COLUMNS, CandidateComparison, Comparison, RowChange, RunRef,
                                             compare_runs, evaluation_evidence, run_rows)
from services.evaluations.listing import (EvaluationSummary, LinkKind, RunLink, evaluation_runs, experiment_runs,
                                          latest_evaluations, run_link, summarise_runs)
from services.evaluations.request import (EvaluationRequest, ResolvedVersion, check_request, new_request_id,
                                          request_fingerprint, resolve_version, version_choices)
from services.evaluations.running import Progress, evaluate_rows, run_evaluation, skip_first_row_check
from services.evaluations.runs import (ABANDONED_REASON, AGENT_TAG, BACKEND_REASON, DATASET_TAG, EVAL_RUN_FILTER,
                                       INCOMPLETE_REASON, INTERRUPTED_TAG, OWNER_TAG, REQUEST_TAG, ROWS_TAG,
                                       SCORERS_TAG, STALE_AFTER, VERSION_TAG, dataset_input_name, is_abandoned,
                                       mark_interrupted)

__all__ = [
    "ABANDONED_REASON", "AGENT_TAG", "BACKEND_REASON", "DATASET_TAG", "EVAL_RUN_FILTER", "INCOMPLETE_REASON",
    "INTERRUPTED_TAG", "OWNER_TAG", "REQUEST_TAG", "ROWS_TAG", "RUN_ROW_COLUMNS", "SCORERS_TAG", "STALE_AFTER",
    "VERSION_TAG", "CandidateComparison", "Comparison", "EvaluationRequest", "EvaluationSummary", "LinkKind",
    "Progress", "ResolvedVersion", "RowChange", "RunLink", "RunRef", "check_request", "compare_runs",
    "dataset_input_name", "evaluate_rows", "evaluation_evidence", "evaluation_runs", "experiment_runs",
    "is_abandoned", "latest_evaluations", "mark_interrupted", "new_request_id", "request_fingerprint",
    "resolve_version", "run_evaluation", "run_link", "run_rows", "skip_first_row_check", "summarise_runs",
    "version_choices",
]
