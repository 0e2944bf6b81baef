"""A trace as reviewers read it: user turns, the agent's answer, folded tool calls."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from services._clients import mlflow_client
from services.feedback import get_trace_or_raise
from services.links import ModelIndex
from services.settings import Settings
from services.traces import AGENT_TAG, VERSION_TAG


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

