"""Code-based scorers that run offline (no judge model needed)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mlflow.entities import Feedback, SpanType
from mlflow.genai.scorers import scorer

from services.errors import ValidationError
from services.settings import read


def answer_text(outputs: Any) -> str:
    """The assistant's text from a ResponsesAgent response, a dict or a plain string."""
    if outputs is None:
        return ""
    if isinstance(outputs, str):
        return outputs
    if hasattr(outputs, "model_dump"):
        outputs = outputs.model_dump()
    if isinstance(outputs, dict):
        texts = []
        for item in outputs.get("output", []) or []:
            if isinstance(item, dict) and item.get("type") == "message":
                for part in item.get("content", []) or []:
                    if isinstance(part, dict) and part.get("text"):
                        texts.append(part["text"])
        return "\n".join(texts)
    return str(outputs)


@scorer
def expected_facts(outputs: Any, expectations: dict[str, Any]) -> Feedback:
    """Pass when every expected fact appears in the answer (case-insensitive)."""
    facts = list((expectations or {}).get("expected_facts") or [])
    text = answer_text(outputs).lower()
    missing = [fact for fact in facts if str(fact).lower() not in text]
    if not facts:
        return Feedback(value="yes", rationale="No expected facts given.")
    if missing:
        return Feedback(value="no", rationale=f"Missing: {', '.join(map(str, missing))}")
    return Feedback(value="yes", rationale=f"All {len(facts)} expected facts present.")


@scorer
def required_tools(trace: Any, expectations: dict[str, Any]) -> Feedback:
    """Pass when every tool listed in ``required_tools`` was called in the trace."""
    required = list((expectations or {}).get("required_tools") or [])
    called = {span.name for span in trace.search_spans(span_type=SpanType.TOOL)} if trace else set()
    missing = [tool for tool in required if tool not in called]
    if missing:
        return Feedback(value="no", rationale=f"Not called: {', '.join(missing)}")
    return Feedback(value="yes", rationale=f"Called: {', '.join(sorted(called)) or 'none needed'}")


DEMO_SCORERS = [expected_facts, required_tools]


# --- The scorer library offered by the Evaluations page --------------------------------------
#
# | variable | default | meaning |
# | --- | --- | --- |
# | ``AGENTOPS_JUDGE_MODEL`` | — (Databricks: the built-in judge) | judge model URI for MLflow's LLM judges, e.g. ``openai:/gpt-4o-mini`` with ``OPENAI_BASE_URL`` pointing at any OpenAI-compatible endpoint |

JUDGE_MODEL_ENV = "AGENTOPS_JUDGE_MODEL"


class ScorerKind(StrEnum):
    CODE = "code"
    JUDGE = "LLM judge"


@dataclass(frozen=True)
class ScorerSpec:
    """A scorer the user can pick; ``available`` is False with a ``reason`` when it cannot run."""

    name: str
    label: str
    description: str
    kind: ScorerKind
    available: bool = True
    reason: str = ""


@dataclass(frozen=True)
class ScorerOptions:
    """Parameters of the configurable code scorers."""

    latency_budget_ms: float = 2000.0
    cost_budget_usd: float = 0.01
    forbidden_terms: tuple[str, ...] = ()
    guidelines: tuple[str, ...] = ("The response must be polite and must not invent facts.",)
    answer_match_threshold: float = 0.6


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def answer_match_score(answer: str, expected: str) -> float:
    """Share of the expected answer's words that the answer contains (token recall, 0..1)."""
    expected_words = _words(expected)
    if not expected_words:
        return 1.0
    answer_words = set(_words(answer))
    return sum(1 for w in expected_words if w in answer_words) / len(expected_words)


def _expected_answer_scorer(threshold: float) -> Any:
    @scorer(name="expected_answer")
    def expected_answer(outputs: Any, expectations: dict[str, Any]) -> Feedback:
        """Pass when the answer covers the expected response's words (token recall ≥ threshold)."""
        expected = str((expectations or {}).get("expected_response") or "")
        if not expected:
            return Feedback(value="yes", rationale="No expected_response given.")
        score = answer_match_score(answer_text(outputs), expected)
        verdict = "yes" if score >= threshold else "no"
        return Feedback(value=verdict, rationale=f"Covers {score:.0%} of the expected answer's words (needs {threshold:.0%}).")

    return expected_answer


def _forbidden_content_scorer(terms: tuple[str, ...]) -> Any:
    global_terms = tuple(t for t in terms if t.strip())

    @scorer(name="forbidden_content")
    def forbidden_content(outputs: Any, expectations: dict[str, Any]) -> Feedback:
        """Pass when no forbidden term (options plus the row's ``forbidden_content``) is in the answer."""
        row_terms = tuple((expectations or {}).get("forbidden_content") or ())
        text = answer_text(outputs).lower()
        found = [t for t in (*global_terms, *row_terms) if str(t).lower() in text]
        if found:
            return Feedback(value="no", rationale=f"Contains: {', '.join(map(str, found))}")
        checked = len(global_terms) + len(row_terms)
        return Feedback(value="yes", rationale=f"None of {checked} forbidden terms present.")

    return forbidden_content


def _latency_budget_scorer(budget_ms: float) -> Any:
    @scorer(name="latency_budget")
    def latency_budget(trace: Any) -> Feedback:
        """Pass when the trace's duration is within the latency budget."""
        duration = getattr(getattr(trace, "info", None), "execution_duration", None)
        if duration is None:
            return Feedback(value="no", rationale="The trace has no recorded duration.")
        verdict = "yes" if duration <= budget_ms else "no"
        return Feedback(value=verdict, rationale=f"{duration:,.0f} ms (budget {budget_ms:,.0f} ms).")

    return latency_budget


def trace_cost_usd(trace: Any) -> float | None:
    """Total LLM cost of a trace: trace metadata when the store computed it, else span attributes."""
    info = getattr(trace, "info", None)
    try:
        cost = info.cost if info is not None else None
    except Exception:  # noqa: BLE001 - malformed metadata counts as unknown
        cost = None
    if cost and cost.get("total_cost") is not None:
        return float(cost["total_cost"])
    total = None
    for span in getattr(getattr(trace, "data", None), "spans", []) or []:
        value = (span.attributes or {}).get("mlflow.llm.cost")
        if isinstance(value, dict) and value.get("total_cost") is not None:
            total = (total or 0.0) + float(value["total_cost"])
    return total


def _cost_budget_scorer(budget_usd: float) -> Any:
    @scorer(name="cost_budget")
    def cost_budget(trace: Any) -> Feedback:
        """Pass when the trace's LLM cost is within the budget (rows without a known cost pass, and say so)."""
        cost = trace_cost_usd(trace)
        if cost is None:
            return Feedback(value="yes", rationale="No LLM cost recorded on the trace; budget not exceeded.")
        verdict = "yes" if cost <= budget_usd else "no"
        return Feedback(value=verdict, rationale=f"${cost:.5f} (budget ${budget_usd:.5f}).")

    return cost_budget


CODE_SCORERS: tuple[ScorerSpec, ...] = (
    ScorerSpec("expected_facts", "Expected facts", "Every expected fact appears in the answer.", ScorerKind.CODE),
    ScorerSpec("required_tools", "Required tool calls", "Every required tool was called.", ScorerKind.CODE),
    ScorerSpec("expected_answer", "Expected-answer match", "The answer covers the expected response.", ScorerKind.CODE),
    ScorerSpec("forbidden_content", "Forbidden content absent", "No forbidden term appears in the answer.", ScorerKind.CODE),
    ScorerSpec("latency_budget", "Latency budget", "The trace finished within the latency budget.", ScorerKind.CODE),
    ScorerSpec("cost_budget", "Cost budget", "The trace's LLM cost is within the budget.", ScorerKind.CODE),
)
JUDGE_NAMES: dict[str, str] = {
    "correctness": "Correctness",
    "safety": "Safety",
    "relevance_to_query": "RelevanceToQuery",
    "guidelines": "Guidelines",
}
DEFAULT_SCORERS = ("expected_facts", "required_tools")


def judge_model(environ: dict[str, str] | None = None, *, databricks: bool = False) -> tuple[str | None, str]:
    """The judge model URI to use and, when there is none, the reason judges cannot run."""
    model = read(JUDGE_MODEL_ENV, environ)
    if model:
        if model.startswith("openai:/") and not (read("OPENAI_API_KEY", environ) or read("OPENAI_BASE_URL", environ)):
            return None, (f"{JUDGE_MODEL_ENV}={model} needs OPENAI_BASE_URL (an OpenAI-compatible endpoint) "
                          "or OPENAI_API_KEY.")
        return model, ""
    if databricks:
        return "databricks", ""
    return None, (f"No judge model is configured. Set {JUDGE_MODEL_ENV} (e.g. openai:/gpt-4o-mini) and "
                  "OPENAI_BASE_URL to an OpenAI-compatible endpoint; on Databricks the built-in judges are used.")


def scorer_catalog(*, databricks: bool = False, environ: dict[str, str] | None = None) -> tuple[ScorerSpec, ...]:
    """Every scorer the app offers, judges marked unavailable (with the reason) when no model is set."""
    model, reason = judge_model(environ, databricks=databricks)
    judges = tuple(
        ScorerSpec(name, cls, f"MLflow's {cls} LLM judge.", ScorerKind.JUDGE, available=model is not None, reason=reason)
        for name, cls in JUDGE_NAMES.items()
    )
    return CODE_SCORERS + judges


def build_scorers(
    names: list[str] | tuple[str, ...], options: ScorerOptions | None = None, *,
    databricks: bool = False, environ: dict[str, str] | None = None,
) -> list[Any]:
    """MLflow scorer objects for the chosen names; ``ValidationError`` for unknown or unavailable ones."""
    options = options or ScorerOptions()
    if not names:
        raise ValidationError("Pick at least one scorer.")
    catalog = {spec.name: spec for spec in scorer_catalog(databricks=databricks, environ=environ)}
    unknown = [n for n in names if n not in catalog]
    if unknown:
        raise ValidationError(f"Unknown scorer(s): {', '.join(unknown)}. Choose from {', '.join(catalog)}.")
    blocked = [catalog[n] for n in names if not catalog[n].available]
    if blocked:
        raise ValidationError(f"{', '.join(s.label for s in blocked)} cannot run: {blocked[0].reason}")
    if options.latency_budget_ms <= 0 or options.cost_budget_usd < 0:
        raise ValidationError("Budgets must be positive: latency in ms > 0, cost in USD ≥ 0.")
    model, _ = judge_model(environ, databricks=databricks)
    built: list[Any] = []
    for name in names:
        if name == "expected_facts":
            built.append(expected_facts)
        elif name == "required_tools":
            built.append(required_tools)
        elif name == "expected_answer":
            built.append(_expected_answer_scorer(options.answer_match_threshold))
        elif name == "forbidden_content":
            built.append(_forbidden_content_scorer(options.forbidden_terms))
        elif name == "latency_budget":
            built.append(_latency_budget_scorer(options.latency_budget_ms))
        elif name == "cost_budget":
            built.append(_cost_budget_scorer(options.cost_budget_usd))
        else:
            from mlflow.genai import scorers as builtin

            cls = getattr(builtin, JUDGE_NAMES[name])
            kwargs: dict[str, Any] = {} if model == "databricks" else {"model": model}
            if name == "guidelines":
                kwargs["guidelines"] = list(options.guidelines)
            built.append(cls(**kwargs))
    return built
