"""Span stamping for the direct bulk load: each distinct span shape is translated once with MLflow's
own ``translate_span_when_storing`` and each span's own values are stamped into a copy."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any, Iterator

from mlflow.entities import Span
from mlflow.tracing.constant import SpanAttributeKey

# Attribute values that vary from trace to trace and that translate_span_when_storing only passes
# through (after sanitize_attributes): a shape's template is translated with a marker in their place
# and each trace's values go into a copy. Token usage also feeds the cost, recomputed per span with
# MLflow's calculate_cost_by_model_and_token_usage exactly as the translation does.
_STAMPED_KEYS = (SpanAttributeKey.REQUEST_ID, SpanAttributeKey.INPUTS, SpanAttributeKey.OUTPUTS,
                 SpanAttributeKey.CHAT_USAGE)
_MARK = "@@agentops-stamp-7c1e@@"


@dataclass(frozen=True)
class StampedSpan:
    """What ``_trace_rows`` reads of a ``Span``, taken from the shape's template ``Span``."""

    span_id: str
    parent_id: str | None
    name: str
    span_type: Any
    status: Any
    start_time_ns: int
    end_time_ns: int


@dataclass(frozen=True)
class _Template:
    translated: dict
    span_type: Any
    status: Any
    recompute_cost: bool


class Stamper:
    """Translates each distinct span shape (everything but ids, times, the request id, inputs,
    outputs and token usage) once with MLflow's ``translate_span_when_storing`` and stamps each
    span's own values into a copy. A shape whose translation does not pass the stamped values
    through unchanged is never stamped (``spans`` returns None and the caller uses MLflow's path)."""

    def __init__(self) -> None:
        self._templates: dict[tuple, _Template | None] = {}
        self._costs: dict[tuple, str | None] = {}

    @staticmethod
    def _key(span_dict: dict) -> tuple:
        return (
            span_dict["name"], span_dict["parent_span_id"] is None,
            span_dict["status"]["code"], span_dict["status"]["message"],
            tuple((e["name"], tuple(e["attributes"].items())) for e in span_dict["events"]),
            len(span_dict["links"]),
            tuple((k, None if k in _STAMPED_KEYS else v) for k, v in span_dict["attributes"].items()),
        )

    def _template(self, span_dict: dict) -> _Template | None:
        from mlflow.tracing.otel.translation import translate_span_when_storing
        from mlflow.tracing.utils import TraceJSONEncoder

        attributes = span_dict["attributes"]
        marked = {k: json.dumps(f"{_MARK}{k}") if k in _STAMPED_KEYS else v for k, v in attributes.items()}
        span = Span.from_dict({**span_dict, "attributes": marked})
        translated = translate_span_when_storing(span)
        out = translated["attributes"]
        stamped = [k for k in _STAMPED_KEYS if k in attributes]
        if any(out.get(k) != marked[k] for k in stamped):
            return None
        if json.dumps(translated, cls=TraceJSONEncoder).count(_MARK) != len(stamped):
            return None  # a marker was copied into another value
        recompute = (SpanAttributeKey.CHAT_USAGE in stamped and SpanAttributeKey.MODEL in out
                     and SpanAttributeKey.LLM_COST not in attributes)
        if recompute and SpanAttributeKey.LLM_COST in out:
            return None
        return _Template(translated, span.span_type, span.status, recompute)

    def _cost(self, attributes: dict) -> str | None:
        """The LLM_COST attribute ``translate_span_when_storing`` adds for these attributes (its own steps)."""
        from mlflow.tracing.utils import (
            calculate_cost_by_model_and_token_usage,
            dump_span_attribute_value,
        )

        key = (attributes[SpanAttributeKey.CHAT_USAGE], attributes[SpanAttributeKey.MODEL],
               attributes.get(SpanAttributeKey.MODEL_PROVIDER))
        if key not in self._costs:
            value = None
            try:
                token_usage = json.loads(key[0])
                model_name = json.loads(key[1])
                model_provider = json.loads(key[2]) if SpanAttributeKey.MODEL_PROVIDER in attributes else None
                if cost := calculate_cost_by_model_and_token_usage(model_name, token_usage, model_provider):
                    value = dump_span_attribute_value(cost)
            except Exception:  # noqa: BLE001 - as the translation: no cost
                value = None
            if len(self._costs) >= 50_000:  # bounded: token usages vary widely
                self._costs.clear()
            self._costs[key] = value
        return self._costs[key]

    def spans(self, span_dicts: list[dict]) -> list[tuple[StampedSpan, dict]] | None:
        from mlflow.entities.span import _decode_id_from_byte
        from mlflow.tracing.otel.translation import sanitize_attributes
        from mlflow.tracing.utils import encode_span_id

        out = []
        for span_dict in span_dicts:
            key = self._key(span_dict)
            if key not in self._templates:
                self._templates[key] = self._template(span_dict)
            template = self._templates[key]
            if template is None:
                return None
            attributes = span_dict["attributes"]
            stamped_attributes = dict(template.translated["attributes"])
            for k in _STAMPED_KEYS:
                if k in attributes:
                    value = attributes[k]
                    # sanitize_attributes changes only a JSON string literal (json.loads gives a str)
                    if isinstance(value, str) and value.lstrip()[:1] != '"':
                        stamped_attributes[k] = value
                    else:
                        stamped_attributes.update(sanitize_attributes({k: value}))
            if template.recompute_cost and (cost := self._cost(stamped_attributes)) is not None:
                stamped_attributes[SpanAttributeKey.LLM_COST] = cost
            translated = {
                **template.translated,
                "trace_id": span_dict["trace_id"],
                "span_id": span_dict["span_id"],
                "parent_span_id": span_dict["parent_span_id"],
                "start_time_unix_nano": span_dict["start_time_unix_nano"],
                "end_time_unix_nano": span_dict["end_time_unix_nano"],
                "events": [{**e, "time_unix_nano": mine["time_unix_nano"]}
                           for e, mine in zip(template.translated["events"], span_dict["events"])],
                "attributes": stamped_attributes,
            }
            parent = span_dict["parent_span_id"]
            out.append((StampedSpan(
                encode_span_id(_decode_id_from_byte(span_dict["span_id"])),
                encode_span_id(_decode_id_from_byte(parent)) if parent else None,
                span_dict["name"], template.span_type, template.status,
                int(span_dict["start_time_unix_nano"]), int(span_dict["end_time_unix_nano"])), translated))
        return out


_STAMPERS: dict[int, Stamper] = {}


def stamper() -> Stamper:
    """This process's stamper (forked builders each keep their own templates across pieces)."""
    import os

    return _STAMPERS.setdefault(os.getpid(), Stamper())


@contextlib.contextmanager
def without_missing_litellm() -> Iterator[None]:
    """MLflow's cost calculation tries ``import litellm`` for every costed span and falls back to its
    own price table when that fails; a failed import is not cached, so each try searches sys.path
    again (~0.35 ms, about 15% of building a trace's rows). When litellm is not installed, mark it
    missing for the duration: the import then fails at once, with the same result."""
    import importlib.util
    import sys

    if "litellm" in sys.modules or importlib.util.find_spec("litellm") is not None:
        yield
        return
    sys.modules["litellm"] = None  # type: ignore[assignment]  # "import litellm" raises ImportError
    try:
        yield
    finally:
        if sys.modules.get("litellm", 0) is None:
            del sys.modules["litellm"]
