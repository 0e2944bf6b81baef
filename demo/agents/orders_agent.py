"""Deterministic "Acme Shop" order-status agent, logged to MLflow as models-from-code.

This file is copied verbatim into the model artifact, so it must stay self-contained:
only stdlib, mlflow and pydantic imports, with the orders table embedded as Python literals.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.entities import SpanType
from mlflow.pyfunc import ResponsesAgent
from mlflow.tracing.constant import SpanAttributeKey
from mlflow.types.responses import ResponsesAgentRequest, ResponsesAgentResponse

AGENT_NAME = "orders_agent"
STRATEGIES: tuple[str, ...] = ("basic", "robust", "hasty")
TOOL_NAMES: tuple[str, ...] = ("lookup_order", "shipping_policy")
DEFAULT_CONFIG: dict[str, Any] = {"strategy": "basic", "llm_model": "gpt-4o-mini"}
# Suggested model_config per registered version: v1 baseline, v2 improvement, v3 regression.
VERSION_CONFIGS: tuple[dict[str, Any], ...] = (
    {"strategy": "basic", "llm_model": "gpt-4o-mini"},
    {"strategy": "robust", "llm_model": "gpt-4o-mini"},
    {"strategy": "hasty", "llm_model": "gpt-4.1"},
)
LLM_PROVIDER = "openai"
ESCALATION_EMAIL = "help@acme-shop.example"
SYSTEM_PROMPT_TOKENS = 220


@dataclass(frozen=True)
class ToolCall:
    """One simulated tool invocation."""

    name: str
    arguments: dict
    output: str
    duration_ms: float


@dataclass(frozen=True)
class AgentRun:
    """Full deterministic outcome of answering one question."""

    answer: str
    tool_calls: tuple[ToolCall, ...]
    llm_model: str
    llm_provider: str
    input_tokens: int
    output_tokens: int
    llm_duration_ms: float


class OrderNotFoundError(LookupError):
    """Raised by the `basic` strategy when lookup_order gets an unknown id."""

    def __init__(self, order_id: str, tool_call: ToolCall) -> None:
        super().__init__(f"lookup_order: no order with id {order_id!r}")
        self.order_id = order_id
        # The failed call (output holds the error text) so tracing can show the broken tool.
        self.tool_call = tool_call


# (id, status, carrier, eta, order_date, total_usd, item). For delivered orders eta is the
# actual delivery date; cancelled orders have no eta.
_ORDER_ROWS: tuple[tuple[str, str, str, str, str, float, str], ...] = (
    ("A1001", "shipped", "UPS", "2025-06-14", "2025-06-09", 129.00, "Trail running shoes"),
    ("A1002", "processing", "", "2025-06-20", "2025-06-12", 45.50, "Stainless water bottle"),
    ("A1003", "delivered", "FedEx", "2025-06-02", "2025-05-28", 89.99, "Rain jacket"),
    ("A1004", "cancelled", "", "", "2025-06-01", 15.00, "Gift wrap"),
    ("A1005", "shipped", "USPS", "2025-06-16", "2025-06-10", 249.00, "Camping tent"),
    ("A1006", "processing", "", "2025-06-22", "2025-06-13", 32.00, "Headlamp"),
    ("A1007", "shipped", "DHL", "2025-06-18", "2025-06-11", 74.25, "Hiking socks (3-pack)"),
    ("A1008", "delivered", "UPS", "2025-06-05", "2025-05-30", 19.99, "Carabiner set"),
    ("A1009", "shipped", "FedEx", "2025-06-15", "2025-06-10", 159.00, "Sleeping bag"),
    ("A1010", "cancelled", "", "", "2025-06-03", 64.00, "Trekking poles"),
    ("A1011", "processing", "", "2025-06-24", "2025-06-14", 210.00, "Backpack 45L"),
    ("A1012", "delivered", "USPS", "2025-06-07", "2025-06-01", 12.49, "Lip balm trio"),
    ("A1013", "shipped", "UPS", "2025-06-17", "2025-06-12", 38.00, "Fleece beanie"),
    ("A1014", "processing", "", "2025-06-21", "2025-06-13", 99.00, "Camp stove"),
    ("A1015", "delivered", "DHL", "2025-06-04", "2025-05-29", 56.75, "Insulated mug"),
    ("A1016", "shipped", "USPS", "2025-06-19", "2025-06-12", 27.30, "First-aid kit"),
    ("A1017", "cancelled", "", "", "2025-06-06", 310.00, "GPS watch"),
    ("A1018", "processing", "", "2025-06-25", "2025-06-15", 18.00, "Water filter straw"),
    ("A1019", "shipped", "FedEx", "2025-06-16", "2025-06-11", 142.60, "Hammock"),
    ("A1020", "delivered", "UPS", "2025-06-08", "2025-06-02", 75.00, "Trail map bundle"),
)
ORDERS: dict[str, dict[str, Any]] = {
    row[0]: dict(
        zip(("id", "status", "carrier", "eta", "order_date", "total", "item"), row, strict=True)
    )
    for row in _ORDER_ROWS
}

SHIPPING_POLICIES: dict[str, str] = {
    "returns": "Unused items can be returned within 30 days of delivery for a full refund. "
    "Start a return from your account page and we will email you a prepaid label.",
    "shipping_times": "Standard shipping takes 3-5 business days and express shipping takes "
    "1-2 business days. Orders placed before 2pm ET ship the same day.",
    "international": "We ship to 40 countries. International delivery takes 7-14 business "
    "days, and customs duties are paid by the recipient.",
    "free_shipping": "Standard shipping is free on orders over $50. Below that, standard "
    "shipping costs a flat $5.99.",
    "cancellation": "Orders can be cancelled free of charge while they are still processing. "
    "Once an order has shipped, please start a return instead.",
}

# Strategy-level knobs: (LLM base latency ms, ms per output token).
_STRATEGY_PROFILE: dict[str, tuple[float, float]] = {
    "basic": (400.0, 9.0),
    "robust": (440.0, 9.0),
    "hasty": (700.0, 15.0),
}

# basic only knows single exact words, so "send it back" or "free shipping" slip past it.
_BASIC_TOPIC_WORDS: dict[str, str] = {
    "return": "returns",
    "returns": "returns",
    "international": "international",
    "shipping": "shipping_times",
    "cancel": "cancellation",
}
# Checked in order: the more specific topics must win over generic "shipping" phrasing.
_ROBUST_TOPIC_PATTERNS: tuple[tuple[str, str], ...] = (
    ("cancellation", r"\bcancel"),
    ("free_shipping", r"free shipping|shipping (?:cost|fee|price)|cost of shipping|"
     r"how much (?:is|does) shipping|pay for shipping"),
    ("international", r"international|abroad|overseas|countr(?:y|ies)|outside the us|"
     r"\bcanada\b|\bgermany\b|\buk\b"),
    ("returns", r"\breturn|send (?:it|them|\w+ \w+) back|\bexchange\b|refund policy"),
    ("shipping_times", r"how long|shipping (?:time|take)|delivery (?:time|take)|"
     r"business days|express|how fast|\bshipping\b"),
)
_ORDERISH = re.compile(r"\b(order|package|parcel|shipment|delivery|purchase)s?\b", re.I)
_WHERE_PHRASING = re.compile(r"\bwhere(?:'s| is| are)\b", re.I)


def _tool_duration_ms(name: str, arguments: dict) -> float:
    seed = zlib.crc32(f"{name}:{json.dumps(arguments, sort_keys=True)}".encode())
    base = 45.0 if name == "lookup_order" else 15.0  # the order DB is slower than static text
    return base + (seed % 900) / 10.0


def _token_estimate(text: str) -> int:
    # ~1.3 tokens per English word is the usual rule of thumb for BPE tokenizers.
    return round(len(text.split()) * 1.3)


def lookup_order(order_id: str) -> dict[str, Any] | None:
    """Return the order row for an exact (already normalised) id, or None."""
    return ORDERS.get(order_id)


def shipping_policy(topic: str) -> str:
    """Return the shipping/returns policy text for a topic key."""
    return SHIPPING_POLICIES[topic]


def resolve_config(config: dict | None) -> dict[str, Any]:
    """Merge a partial config over DEFAULT_CONFIG and validate the strategy."""
    merged = {**DEFAULT_CONFIG, **(config or {})}
    if merged["strategy"] not in STRATEGIES:
        raise ValueError(f"Unknown strategy {merged['strategy']!r}; expected one of {STRATEGIES}")
    return merged


def _find_order_id(question: str, strategy: str) -> str | None:
    if strategy == "basic":
        match = re.search(r"\bA\d{4}\b", question)
        return match.group(0) if match else None
    match = re.search(r"\b[Aa]\d{4}\b", question)
    return match.group(0).upper() if match else None


def _find_topic(question: str, strategy: str) -> str | None:
    if strategy == "basic":
        for word in re.findall(r"[a-z]+", question.lower()):
            if word in _BASIC_TOPIC_WORDS:
                return _BASIC_TOPIC_WORDS[word]
        return None
    lowered = question.lower()
    for topic, pattern in _ROBUST_TOPIC_PATTERNS:
        if re.search(pattern, lowered):
            return topic
    return None


def _status_answer(order: dict[str, Any], strategy: str) -> str:
    oid, status, eta = order["id"], order["status"], order["eta"]
    if strategy == "basic":
        if status == "cancelled":
            return f"Order {oid} is cancelled. Any payment has been refunded."
        return f"Order {oid} is {status}. Estimated delivery: {eta}."
    if strategy == "hasty" and status != "cancelled":
        # The regression: it paraphrases the wrong columns and loses the ETA.
        return (
            f"Order {oid} was placed on {order['order_date']} (total ${order['total']:.2f}) "
            f"and is currently {status}."
        )
    if status == "shipped":
        return (
            f"Order {oid} has shipped with {order['carrier']} and is expected to arrive on {eta}."
        )
    if status == "processing":
        return (
            f"Order {oid} is still processing at our warehouse and is expected to arrive by {eta}."
        )
    if status == "delivered":
        return f"Order {oid} was delivered by {order['carrier']} on {eta}."
    return (
        f"Order {oid} was cancelled, and a refund of ${order['total']:.2f} was issued to your "
        "original payment method."
    )


def run_agent(question: str, config: dict) -> AgentRun:
    """Answer a question deterministically under the given config (no LLM, no I/O)."""
    cfg = resolve_config(config)
    strategy = cfg["strategy"]
    tool_calls: list[ToolCall] = []
    order_id = _find_order_id(question, strategy)
    topic = None if order_id else _find_topic(question, strategy)

    if strategy == "hasty" and _WHERE_PHRASING.search(question):
        # The regression: it "knows" the answer and skips the lookup entirely.
        answer = "Your order is on its way and should arrive within 3-5 business days."
    elif order_id:
        arguments = {"order_id": order_id}
        order = lookup_order(order_id)
        output = json.dumps(order) if order else f"ERROR: order {order_id} not found"
        call = ToolCall(
            "lookup_order", arguments, output, _tool_duration_ms("lookup_order", arguments)
        )
        if order is None and strategy == "basic":
            raise OrderNotFoundError(order_id, call)
        tool_calls.append(call)
        if order is None:
            answer = (
                f"I couldn't find order {order_id}. Please double-check the order number or "
                f"contact {ESCALATION_EMAIL}."
            )
        else:
            answer = _status_answer(order, strategy)
    elif topic:
        arguments = {"topic": topic}
        policy = shipping_policy(topic)
        duration = _tool_duration_ms("shipping_policy", arguments)
        tool_calls.append(ToolCall("shipping_policy", arguments, policy, duration))
        answer = policy
    elif strategy == "basic" or _ORDERISH.search(question):
        answer = "I can help with that! Please share your order number (it looks like A1234)."
    else:
        answer = (
            "I can only help with orders, shipping and returns. For anything else, please "
            f"contact {ESCALATION_EMAIL}."
        )

    input_tokens = (
        SYSTEM_PROMPT_TOKENS
        + _token_estimate(question)
        + sum(_token_estimate(tc.output) for tc in tool_calls)
    )
    output_tokens = max(1, _token_estimate(answer))
    base_ms, per_token_ms = _STRATEGY_PROFILE[strategy]
    return AgentRun(
        answer=answer,
        tool_calls=tuple(tool_calls),
        llm_model=str(cfg["llm_model"]),
        llm_provider=str(cfg.get("llm_provider", LLM_PROVIDER)),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        llm_duration_ms=base_ms + per_token_ms * output_tokens,
    )


def _last_user_text(request: ResponsesAgentRequest) -> str:
    for item in reversed(request.input):
        if getattr(item, "role", None) != "user":
            continue
        content = item.content
        if isinstance(content, str):
            return content
        parts = []
        for part in content:
            data = part if isinstance(part, dict) else part.model_dump()
            if data.get("text"):
                parts.append(data["text"])
        return " ".join(parts)
    raise ValueError("Request contains no user message")


def _load_config() -> dict[str, Any]:
    # ModelConfig only sees the logged model_config while MLflow executes this file, so it
    # must be read at construction time (set_model below), never lazily inside predict.
    try:
        return resolve_config(
            mlflow.models.ModelConfig(development_config=DEFAULT_CONFIG).to_dict()
        )
    except FileNotFoundError:
        # Logged without model_config: MLflow sets the config to "" and ModelConfig raises.
        return dict(DEFAULT_CONFIG)


class OrdersAgent(ResponsesAgent):
    """ResponsesAgent wrapper that replays run_agent as MLflow spans."""

    def __init__(self, config: dict | None = None) -> None:
        self.config = resolve_config(config) if config is not None else _load_config()

    def predict(self, request: ResponsesAgentRequest) -> ResponsesAgentResponse:
        """Answer the last user message and trace tool + LLM spans."""
        question = _last_user_text(request)
        try:
            run = run_agent(question, self.config)
        except OrderNotFoundError as exc:
            # Surface the failure on a TOOL span so error traces point at the broken tool.
            with mlflow.start_span(name=exc.tool_call.name, span_type=SpanType.TOOL) as span:
                span.set_inputs(exc.tool_call.arguments)
                span.set_attribute("demo.simulated_duration_ms", exc.tool_call.duration_ms)
                raise
        digest = hashlib.sha1(question.encode()).hexdigest()[:12]
        output: list[dict[str, Any]] = []
        for i, tc in enumerate(run.tool_calls):
            with mlflow.start_span(name=tc.name, span_type=SpanType.TOOL) as span:
                span.set_inputs(tc.arguments)
                span.set_outputs(tc.output)
                span.set_attribute("demo.simulated_duration_ms", tc.duration_ms)
            call_id = f"call_{digest}_{i}"
            output.append(
                self.create_function_call_item(
                    id=f"fc_{digest}_{i}",
                    call_id=call_id,
                    name=tc.name,
                    arguments=json.dumps(tc.arguments),
                )
            )
            output.append(self.create_function_call_output_item(call_id=call_id, output=tc.output))
        with mlflow.start_span(name="llm", span_type=SpanType.CHAT_MODEL) as span:
            span.set_inputs(
                {
                    "model": run.llm_model,
                    "messages": [{"role": "user", "content": question}]
                    + [{"role": "tool", "content": tc.output} for tc in run.tool_calls],
                }
            )
            span.set_outputs({"role": "assistant", "content": run.answer})
            span.set_attributes(
                {
                    SpanAttributeKey.CHAT_USAGE: {
                        "input_tokens": run.input_tokens,
                        "output_tokens": run.output_tokens,
                        "total_tokens": run.input_tokens + run.output_tokens,
                    },
                    SpanAttributeKey.MODEL: run.llm_model,
                    SpanAttributeKey.MODEL_PROVIDER: run.llm_provider,
                    "demo.simulated_duration_ms": run.llm_duration_ms,
                }
            )
        output.append(self.create_text_output_item(text=run.answer, id=f"msg_{digest}"))
        return ResponsesAgentResponse(output=output)


mlflow.models.set_model(OrdersAgent())
