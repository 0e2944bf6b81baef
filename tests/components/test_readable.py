"""Awkward values read well: dashes for missing cells, readable time axes, any feedback kind."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from components.charts import time_axis
from components.tables import DASH, cell, readable
from services import feedback as fb
from services.review_queue.conversation_view import _answer
from services.review_queue.sources import _is_low

MISSING = [None, math.nan, np.float64("nan"), pd.NaT, pd.NA, "", "  "]


@pytest.mark.parametrize("value", MISSING)
def test_missing_values_are_a_dash(value):
    assert cell(value) == DASH


def test_a_frame_shows_no_none_nan_or_nat():
    frame = pd.DataFrame({"when": [pd.Timestamp("2026-12-06 14:05", tz="UTC"), pd.NaT],
                          "rate": [0.125, None], "counts": [{"yes": 2, "no": 1}, {}], "n": [3, 4]})
    shown = readable(frame, {"rate": ".1%"}, keep=("n",))
    assert shown.to_dict("list") == {"when": ["2026-12-06 14:05 UTC", DASH], "rate": ["12.5%", DASH],
                                     "counts": ["yes: 2 · no: 1", DASH], "n": [3, 4]}


def test_a_lone_time_bucket_is_shown_as_a_date_range():
    figure = go.Figure(go.Scatter(x=[pd.Timestamp("2026-12-06", tz="UTC")], y=[1]))
    time_axis(figure)
    low, high = figure.layout.xaxis.range
    assert pd.Timestamp(high) - pd.Timestamp(low) == pd.Timedelta(days=2)
    assert figure.layout.xaxis.type == "date" and "UTC" in figure.layout.xaxis.hoverformat


@pytest.mark.parametrize(("values", "kind"), [
    ([True, False, "true"], fb.FeedbackKind.BOOLEAN),
    ([1, 2.5, 4], fb.FeedbackKind.NUMERIC),
    (["ok", "rude", "ok"], fb.FeedbackKind.CATEGORICAL),
    ([f"free text {i}" for i in range(30)], fb.FeedbackKind.TEXT),
])
def test_feedback_kinds_are_read_from_the_values(values, kind):
    assert fb.feedback_kind(values) is kind


@pytest.mark.parametrize(("value", "threshold", "negative", "low"), [
    (False, 0.5, set(), True), (True, 0.5, set(), False), (0.25, 0.5, set(), True), (3, 0.5, set(), False),
    ("rude", 0.5, {"rude"}, True), ("ok", 0.5, {"rude"}, False), ("no", 0.5, set(), True),
])
def test_negative_values_of_any_feedback_kind(value, threshold, negative, low):
    assert _is_low(value, threshold, negative) is low


@pytest.mark.parametrize(("outputs", "text"), [
    ({"output": [{"type": "message", "content": [{"type": "output_text", "text": "Responses text"}]}]}, "Responses text"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ChatAgent text"}]}, "ChatAgent text"),
    ({"choices": [{"message": {"role": "assistant", "content": "completion"}}]}, "completion"),
])
def test_agent_outputs_read_as_their_text(outputs, text):
    assert _answer(outputs) == text
