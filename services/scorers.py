"""Code-based scorers that run offline (no judge model needed)."""

from __future__ import annotations

from typing import Any

from mlflow.entities import Feedback, SpanType
from mlflow.genai.scorers import scorer


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
