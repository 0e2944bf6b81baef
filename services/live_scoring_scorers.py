"""The app's code scorers in the serialized form MLflow's online scoring runs.

MLflow's online processor (``mlflow/genai/scorers/online/``) loads every scorer from its
serialized JSON (``Scorer.model_validate_json``). A custom ``@scorer`` serializes as its function
*body*, re-created with ``exec`` in a namespace holding only MLflow names: the app's scorers, built
as closures over their options (budgets, terms) and helpers of ``services.scorers``, would not
survive that. So a live code scorer is serialized as a two-line body that imports
:func:`run_live` and passes the scorer's name and its validated options as literals; the scoring
itself is the same code the Evaluations page runs (``services.scorers.build_scorers``).

LLM judges (MLflow's built-in ``Safety``, ``RelevanceToQuery``, ``Guidelines``) serialize as
themselves.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import mlflow

LIVE_PREFIX = "live_"


def live_name(scorer_name: str) -> str:
    """The name of a live scorer, and of the assessments it writes (``live_<scorer>``).

    A prefix of its own keeps live results apart from offline evaluation assessments of the same
    scorer on the same trace (re-scored traces carry both).
    """
    return f"{LIVE_PREFIX}{scorer_name}"


def scorer_of(name: str) -> str:
    """The live scorer a name stands for: its own name, or its assessment name (``live_<scorer>``) read back."""
    return name.removeprefix(LIVE_PREFIX)


@lru_cache(maxsize=64)
def _built(name: str, options_json: str) -> Any:
    from services.scorers import ScorerOptions, build_scorers

    options = json.loads(options_json)
    for key in ("forbidden_terms", "guidelines"):
        if key in options:
            options[key] = tuple(options[key])
    return build_scorers([name], ScorerOptions(**options))[0]


def run_live(name: str, options_json: str, *, trace: Any = None, outputs: Any = None) -> Any:
    """Score one live trace with the app's code scorer ``name`` (called by the serialized body)."""
    from mlflow.entities import AssessmentSource, AssessmentSourceType, Feedback

    if outputs is None and trace is not None:
        # MLflow's online processor passes only the trace (EvalItem.from_trace): the answer is the
        # root span's outputs, as the Evaluations page's predict function returns it.
        roots = [s for s in (getattr(trace.data, "spans", None) or []) if s.parent_id is None]
        outputs = roots[0].outputs if roots else None
    result = _built(name, options_json).run(outputs=outputs, trace=trace)
    value, rationale = (result.value, result.rationale) if isinstance(result, Feedback) else (result, None)
    # A fresh Feedback: MLflow names it after the live scorer; the source names the scorer too.
    return Feedback(value=value, rationale=rationale,
                    source=AssessmentSource(AssessmentSourceType.CODE, source_id=live_name(name)))


def serialized_code_scorer(name: str, options: dict[str, Any]) -> str:
    """The JSON MLflow stores for the live code scorer ``name`` with ``options`` baked in as a literal."""
    options_json = json.dumps(options, sort_keys=True)
    function = live_name(name)
    body = ("from services.live_scoring_scorers import run_live\n"
            f"return run_live({name!r}, {options_json!r}, trace=trace, outputs=outputs)")
    return json.dumps({
        "name": function,
        "description": f"Agent Ops Console live scorer {name}",
        "aggregations": None,
        "is_session_level_scorer": False,
        "mlflow_version": mlflow.__version__,
        "serialization_version": 1,
        "call_source": body,
        "call_signature": "(trace, outputs)",
        "original_func_name": function,
    })


def serialized_judge(name: str, scorer: Any) -> str:
    """The JSON of a built-in judge renamed to its live name."""
    copy = scorer.model_copy(deep=True) if hasattr(scorer, "model_copy") else scorer
    copy.name = live_name(name)
    return json.dumps(copy.model_dump())
