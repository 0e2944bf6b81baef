"""Monitoring widgets: a trace's detail shows agent-written names as text, and the price editor's rows."""

from __future__ import annotations

import time

import pandas as pd
import pytest
from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from components.charts import chart_text
from components.monitoring import price_rows, series_chart, span_waterfall, breakdown_chart
from components.tables import plain
from services import _mlflow_internal as internal
from services import trace_explorer
from services.errors import ValidationError

LINK_SPAN = "[link-span](javascript:alert(1))"
IMAGE_ERROR = "![pix](http://127.0.0.1:9/pix.png) failed"
HTML_MODEL = "<a href='http://127.0.0.1:9/'>model</a>"


def _render(detail) -> None:
    from components.monitoring import trace_detail_block

    trace_detail_block(detail)


@pytest.fixture
def payload_trace(isolated_settings):
    """One trace: a root span with a payload name and error, a tool span, and an LLM span with a payload model."""
    client = MlflowClient(tracking_uri=isolated_settings.tracking_uri)
    experiment_id = client.create_experiment("pay", artifact_location=(isolated_settings.artifact_root / "p").as_uri())
    start = time.time_ns() - 60_000_000_000
    llm = internal.SpanSpec("llm", "CHAT_MODEL", start + 2_000_000, start + 8_000_000, inputs={"messages": []},
                            outputs={"text": "a"}, attributes={"mlflow.chat.tokenUsage": {"input_tokens": 12,
                                                                                          "output_tokens": 3,
                                                                                          "total_tokens": 15},
                                                               "mlflow.llm.model": HTML_MODEL})
    tool = internal.SpanSpec("search", "TOOL", start + 1_000_000, start + 1_500_000, inputs={"q": "x"}, outputs="hit")
    root = internal.SpanSpec(LINK_SPAN, "AGENT", start, start + 10_000_000, inputs={"question": "q"}, outputs="a",
                             error=IMAGE_ERROR, children=(tool, llm))
    (trace_id,) = internal.log_traces(client, [internal.TraceSpec(experiment_id, root, tags={})])
    return trace_explorer.trace_detail(trace_id, isolated_settings)


def test_trace_detail_shows_agent_written_names_as_text(payload_trace):
    app = AppTest.from_function(_render, args=(payload_trace,), default_timeout=30).run()
    assert not app.exception
    labels = [e.label for e in app.expander]
    assert any(plain(LINK_SPAN) in label for label in labels)
    assert not any(LINK_SPAN in label for label in labels)  # escaped, so the link cannot render
    errors = [e.value for e in app.error]
    assert errors and all("![" not in e for e in errors) and any(plain(IMAGE_ERROR) in e for e in errors)
    captions = [c.value for c in app.caption]
    # Only the LLM span names a model; the others must not say "Model nan".
    model_captions = [c for c in captions if c.startswith("Model ")]
    assert model_captions == [f"Model {plain(HTML_MODEL)} · tokens in 12 / out 3 · cost —"]
    assert not any("nan" in c for c in captions)


def test_plotly_labels_escape_html(payload_trace):
    waterfall = span_waterfall(payload_trace.spans)
    labels = list(waterfall.data[0].y)
    assert any(chart_text(LINK_SPAN) in label for label in labels)
    assert not any("<" in label for label in labels)
    frame = pd.DataFrame({"model": [HTML_MODEL], "cost": [1.0]})
    assert list(breakdown_chart(frame, "model", "cost", "Cost").data[0].y) == [chart_text(HTML_MODEL)]
    series = pd.DataFrame({"bucket": [pd.Timestamp("2025-01-01", tz="UTC")], "group": [HTML_MODEL], "requests": [3]})
    assert series_chart(series, {"requests": "requests"}, "Requests").data[0].name == chart_text(HTML_MODEL)


def test_price_rows_refuse_a_model_named_twice():
    edited = pd.DataFrame({"model": ["m", "n "], "input_per_mtok": [1.0, 2.0], "output_per_mtok": [2.0, 3.0],
                           "cached_input_per_mtok": [float("nan"), 0.5]})
    assert price_rows(edited) == {"m": {"input_per_mtok": 1.0, "output_per_mtok": 2.0, "cached_input_per_mtok": None},
                                  "n": {"input_per_mtok": 2.0, "output_per_mtok": 3.0, "cached_input_per_mtok": 0.5}}
    twice = pd.concat([edited, edited.iloc[[1]].assign(model="n", input_per_mtok=9.0)], ignore_index=True)
    with pytest.raises(ValidationError, match="'n' is listed twice"):
        price_rows(twice)
