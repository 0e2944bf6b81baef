"""Deterministic "Acme Cloud" product-support agent, logged to MLflow as models-from-code.

This file is copied verbatim into the model artifact, so it must stay self-contained:
only stdlib, mlflow and pydantic imports, with the FAQ embedded as Python literals.
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

AGENT_NAME = "support_agent"
STRATEGIES: tuple[str, ...] = ("keyword", "hybrid", "terse")
TOOL_NAMES: tuple[str, ...] = ("search_faq",)
DEFAULT_CONFIG: dict[str, Any] = {"strategy": "keyword", "llm_model": "gpt-4o-mini"}
# Suggested model_config per registered version: v1 baseline, v2 improvement, v3 regression.
VERSION_CONFIGS: tuple[dict[str, Any], ...] = (
    {"strategy": "keyword", "llm_model": "gpt-4o-mini"},
    {"strategy": "hybrid", "llm_model": "gpt-4o-mini"},
    {"strategy": "terse", "llm_model": "gpt-4.1"},
)
LLM_PROVIDER = "openai"
ESCALATION_EMAIL = "support@acme.example"
SYSTEM_PROMPT_TOKENS = 260


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


FAQ: tuple[dict[str, Any], ...] = (
    {
        "id": "password_reset",
        "question": "How do I reset my password?",
        "answer": "You can reset your password from the sign-in page. Click Forgot password "
        "and we will email you a reset link that stays valid for 30 minutes.",
        "keywords": ["password", "reset", "forgot", "locked"],
    },
    {
        "id": "two_factor",
        "question": "How do I enable two-factor authentication?",
        "answer": "Two-factor authentication is managed under Settings > Security. You can use "
        "any authenticator app, and you receive 10 backup codes when you turn it on.",
        "keywords": ["2fa", "two-factor", "authentication", "authenticator"],
    },
    {
        "id": "billing_date",
        "question": "When will I be billed?",
        "answer": "Subscriptions are billed on the 1st of each month. Charges are prorated if "
        "you join partway through a billing cycle.",
        "keywords": ["billed", "billing", "date", "charged"],
    },
    {
        "id": "invoices",
        "question": "Where can I download my invoices?",
        "answer": "Invoices are available in the billing portal. Go to Billing > Invoices to "
        "download PDF copies for the last 24 months.",
        "keywords": ["invoice", "invoices"],
    },
    {
        "id": "refunds",
        "question": "What is your refund policy?",
        "answer": "We offer a full refund within 14 days of purchase. After 14 days, refunds "
        "are issued as account credit instead.",
        "keywords": ["refund", "refunds"],
    },
    {
        "id": "plan_upgrade",
        "question": "How do I upgrade my plan?",
        "answer": "You can upgrade at any time from Billing > Plans. Upgrades take effect "
        "immediately and you only pay the prorated difference.",
        "keywords": ["upgrade", "plan"],
    },
    {
        "id": "plan_downgrade",
        "question": "How do I downgrade my plan?",
        "answer": "Downgrades are also done from Billing > Plans. A downgrade takes effect at "
        "the start of your next billing cycle.",
        "keywords": ["downgrade", "plan"],
    },
    {
        "id": "cancel_subscription",
        "question": "How do I cancel my subscription?",
        "answer": "To cancel, go to Billing > Subscription and click Cancel plan. Your "
        "workspace stays active until the end of the current billing period.",
        "keywords": ["cancel", "subscription"],
    },
    {
        "id": "sso",
        "question": "Do you support single sign-on (SSO)?",
        "answer": "SSO with SAML 2.0 and OIDC is available on the Enterprise plan. You can "
        "connect Okta, Azure AD or Google Workspace from Settings > Security > SSO.",
        "keywords": ["sso", "saml", "single", "sign-on"],
    },
    {
        "id": "rate_limits",
        "question": "What are the API rate limits?",
        "answer": "The API allows 1,000 requests per minute per API key. Requests above the "
        "limit receive HTTP 429 and should be retried with exponential backoff.",
        "keywords": ["api", "rate", "limit", "limits"],
    },
    {
        "id": "data_export",
        "question": "How do I export my data?",
        "answer": "You can export all workspace data from Settings > Data. The export is a ZIP "
        "of CSV and JSON files, and the download link is emailed within 24 hours.",
        "keywords": ["export", "data"],
    },
    {
        "id": "account_deletion",
        "question": "How do I delete my account?",
        "answer": "Account deletion is permanent and is requested from Settings > Account. "
        "All of your data is erased within 30 days of the request.",
        "keywords": ["delete", "account", "deletion"],
    },
    {
        "id": "support_hours",
        "question": "What are your support hours?",
        "answer": "Our support team is available Monday to Friday, 8am to 8pm UTC. Enterprise "
        "customers also get 24/7 emergency support.",
        "keywords": ["support", "hours"],
    },
    {
        "id": "status",
        "question": "How can I check if there is an outage?",
        "answer": "Live service health is published on our status page. Visit "
        "status.acme.example to see incidents and subscribe to outage notifications.",
        "keywords": ["outage", "status", "incident"],
    },
    {
        "id": "data_regions",
        "question": "Where is my data stored?",
        "answer": "Customer data is stored in your chosen region: us-east-1 or eu-west-1. The "
        "region is picked when the workspace is created and cannot be changed later.",
        "keywords": ["stored", "region", "data"],
    },
    {
        "id": "team_seats",
        "question": "How do I add team members?",
        "answer": "Admins can invite teammates from Settings > Members. The Team plan includes "
        "10 seats, and extra seats cost $8 per user per month.",
        "keywords": ["team", "members", "seats", "add"],
    },
    {
        "id": "free_trial",
        "question": "How long is the free trial?",
        "answer": "The free trial lasts 21 days and includes every Team plan feature. No credit "
        "card is required to start.",
        "keywords": ["trial", "free"],
    },
)

# Multi-word paraphrases are rewritten to a canonical token before tokenizing.
_PHRASE_SYNONYMS: tuple[tuple[str, str], ...] = (
    ("two factor", "2fa"),
    ("two-factor", "2fa"),
    ("multi-factor", "2fa"),
    ("multi factor", "2fa"),
    ("single sign-on", "sso"),
    ("single sign on", "sso"),
    ("sign in", "login"),
    ("log in", "login"),
    ("money back", "refund"),
    ("too many requests", "ratelimit"),
    ("rate limit", "ratelimit"),
    ("per minute", "ratelimit"),
    ("bigger plan", "upgrade"),
    ("higher plan", "upgrade"),
    ("higher tier", "upgrade"),
    ("cheaper plan", "downgrade"),
    ("smaller plan", "downgrade"),
    ("lower tier", "downgrade"),
    ("close my account", "delete"),
    ("human agent", "support"),
    ("talk to someone", "support"),
    ("credit card", "payment"),
)

# Single-word synonyms applied after stemming.
_WORD_SYNONYMS: dict[str, str] = {
    "mfa": "2fa",
    "authenticator": "2fa",
    "authentication": "2fa",
    "signin": "login",
    "credential": "password",
    "bill": "billing",
    "charge": "billing",
    "receipt": "invoice",
    "reimburse": "refund",
    "reimbursement": "refund",
    "unsubscribe": "cancel",
    "saml": "sso",
    "okta": "sso",
    "throttle": "ratelimit",
    "429": "ratelimit",
    "limit": "ratelimit",
    "backup": "export",
    "erase": "delete",
    "remove": "delete",
    "deletion": "delete",
    "down": "outage",
    "incident": "outage",
    "europe": "region",
    "eu": "region",
    "host": "region",
    "store": "region",
    "located": "region",
    "seat": "team",
    "member": "team",
    "teammate": "team",
    "invite": "team",
    "user": "team",
}

_STOPWORDS = frozenset(
    "a an the i my me we our you your is are am be do does did can could how what when where "
    "which who why to of in on for with and or it its this that there at by from get "
    "please want need would like any all".split()
)

# Strategy-level knobs: (confidence threshold or None, LLM base latency ms, ms per output token).
_STRATEGY_PROFILE: dict[str, tuple[float | None, float, float]] = {
    "keyword": (None, 380.0, 9.0),
    "hybrid": (1.0, 420.0, 9.0),
    "terse": (1.0, 650.0, 14.0),
}
# Terse answers from "memory" for very short questions, which is where it regresses on tools.
_TERSE_SKIP_TOOL_MAX_WORDS = 5


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9][a-z0-9\-']*", text.lower())


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "e", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


# Keyed by stem too, so inflected forms ("charged", "receipts") hit the same synonym.
_STEMMED_SYNONYMS: dict[str, str] = {_stem(k): v for k, v in _WORD_SYNONYMS.items()}


def _canonical(word: str) -> str:
    return _stem(_WORD_SYNONYMS.get(word) or _STEMMED_SYNONYMS.get(_stem(word)) or word)


def _canonical_terms(text: str) -> set[str]:
    lowered = text.lower()
    for phrase, canonical in _PHRASE_SYNONYMS:
        lowered = lowered.replace(phrase, f" {canonical} ")
    return {_canonical(w) for w in _words(lowered) if w not in _STOPWORDS}


_ENTRY_TERMS: tuple[frozenset[str], ...] = tuple(
    frozenset(_canonical_terms(" ".join(entry["keywords"]))) for entry in FAQ
)
# Document frequency makes generic terms ("plan", "data") weak evidence on their own.
_TERM_DF: dict[str, int] = {}
for _terms in _ENTRY_TERMS:
    for _term in _terms:
        _TERM_DF[_term] = _TERM_DF.get(_term, 0) + 1


def _search_keyword(query: str) -> dict[str, Any] | None:
    tokens = set(_words(query))
    best, best_score = None, 0
    for entry in FAQ:
        score = len(tokens & set(entry["keywords"]))
        if score > best_score:
            best, best_score = entry, score
    return best


def _search_hybrid(query: str, threshold: float) -> dict[str, Any] | None:
    terms = _canonical_terms(query)
    best, best_score = None, 0.0
    for entry, entry_terms in zip(FAQ, _ENTRY_TERMS):
        score = sum(1.0 / _TERM_DF[t] for t in terms & entry_terms)
        if score > best_score:
            best, best_score = entry, score
    return best if best_score >= threshold else None


def search_faq(query: str, strategy: str = "hybrid") -> dict[str, Any] | None:
    """Return the best-matching FAQ entry for a query under a strategy, or None."""
    threshold = _STRATEGY_PROFILE[strategy][0]
    if threshold is None:
        return _search_keyword(query)
    return _search_hybrid(query, threshold)


def _tool_duration_ms(name: str, arguments: dict) -> float:
    seed = zlib.crc32(f"{name}:{json.dumps(arguments, sort_keys=True)}".encode())
    return 25.0 + (seed % 600) / 10.0


def _token_estimate(text: str) -> int:
    # ~1.3 tokens per English word is the usual rule of thumb for BPE tokenizers.
    return round(len(text.split()) * 1.3)


def resolve_config(config: dict | None) -> dict[str, Any]:
    """Merge a partial config over DEFAULT_CONFIG and validate the strategy."""
    merged = {**DEFAULT_CONFIG, **(config or {})}
    if merged["strategy"] not in STRATEGIES:
        raise ValueError(f"Unknown strategy {merged['strategy']!r}; expected one of {STRATEGIES}")
    return merged


def run_agent(question: str, config: dict) -> AgentRun:
    """Answer a question deterministically under the given config (no LLM, no I/O)."""
    cfg = resolve_config(config)
    strategy = cfg["strategy"]
    tool_calls: list[ToolCall] = []

    if strategy == "terse" and len(_words(question)) <= _TERSE_SKIP_TOOL_MAX_WORDS:
        entry = None
        answer = "Please check the Acme Cloud help center for details."
    else:
        arguments = {"query": question}
        entry = search_faq(question, strategy)
        output = (
            json.dumps({k: entry[k] for k in ("id", "question", "answer")})
            if entry
            else "NO_MATCH"
        )
        tool_calls.append(
            ToolCall("search_faq", arguments, output, _tool_duration_ms("search_faq", arguments))
        )
        if entry is None and strategy == "keyword":
            answer = "I'm sorry, I don't know the answer to that."
        elif entry is None:
            answer = (
                "I'm not confident I can answer that. Please contact our support team at "
                f"{ESCALATION_EMAIL} and a human agent will help you."
            )
        elif strategy == "terse":
            answer = entry["answer"].split(". ")[0].rstrip(".") + "."
        else:
            answer = entry["answer"]

    input_tokens = (
        SYSTEM_PROMPT_TOKENS
        + _token_estimate(question)
        + sum(_token_estimate(tc.output) for tc in tool_calls)
    )
    output_tokens = max(1, _token_estimate(answer))
    _, base_ms, per_token_ms = _STRATEGY_PROFILE[strategy]
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


class SupportAgent(ResponsesAgent):
    """ResponsesAgent wrapper that replays run_agent as MLflow spans."""

    def __init__(self, config: dict | None = None) -> None:
        self.config = resolve_config(config) if config is not None else _load_config()

    def predict(self, request: ResponsesAgentRequest) -> ResponsesAgentResponse:
        """Answer the last user message and trace tool + LLM spans."""
        question = _last_user_text(request)
        run = run_agent(question, self.config)
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


mlflow.models.set_model(SupportAgent())
