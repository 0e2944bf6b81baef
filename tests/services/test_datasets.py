"""Evaluation datasets: parsing and validating uploads, and MLflow evaluation datasets."""

from __future__ import annotations

import json

import pytest

from services import datasets
from services.errors import ValidationError

ROWS = [
    {"inputs": {"question": "How do I reset my password?"},
     "expectations": {"expected_facts": ["forgot password"], "required_tools": ["search_faq"],
                      "expected_response": "Click Forgot password."}},
    {"inputs": {"question": "Where is order A1001?"}, "expectations": {"expected_facts": ["shipped"]}},
]
CSV_JSON_COLUMNS = (
    'inputs,expectations\n'
    '"{""question"": ""How do I reset my password?""}","{""expected_facts"": [""forgot password""]}"\n'
    '"{""question"": ""Where is order A1001?""}",\n'
)
CSV_FLAT_COLUMNS = (
    "inputs.question,expectations.expected_facts,expectations.expected_response\n"
    'How do I reset my password?,"[""forgot password""]",Click Forgot password.\n'
    "Where is order A1001?,,\n"
)


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("rows.json", json.dumps(ROWS).encode()),
        ("rows.json", json.dumps({"records": ROWS}).encode()),
        ("rows.jsonl", "\n".join(json.dumps(r) for r in ROWS).encode() + b"\n\n"),
        ("rows.csv", CSV_JSON_COLUMNS.encode()),
        ("rows.csv", CSV_FLAT_COLUMNS.encode()),
    ],
)
def test_valid_uploads_parse_to_mlflow_records(filename, content):
    rows = datasets.parse_upload(filename, content)
    assert [r["inputs"]["question"] for r in rows] == ["How do I reset my password?", "Where is order A1001?"]
    assert rows[0]["expectations"]["expected_facts"] == ["forgot password"]


@pytest.mark.parametrize(
    ("filename", "content", "names"),
    [
        ("rows.json", json.dumps([ROWS[0], {"inputs": {"question": ""}}]), ("Row 2", "inputs.question")),
        ("rows.json", json.dumps([ROWS[0], {"expectations": {}}]), ("Row 2", "'inputs'")),
        ("rows.json", json.dumps([ROWS[0], ROWS[1], {"inputs": {"question": "q"}, "expectations": {"expected_facts": "x"}}]),
         ("Row 3", "expectations.expected_facts")),
        ("rows.json", json.dumps([{"inputs": {"question": "q"}, "answer": "x"}]), ("Row 1", "'answer'")),
        ("rows.jsonl", json.dumps(ROWS[0]) + "\n{not json\n", ("Row 2", "line 2")),
        ("rows.csv", "inputs.question,expectations.expected_facts\nq1,[\"a\"]\nq2,[broken\n",
         ("Row 2", "expectations.expected_facts")),
        ("rows.csv", "question,answer\nq,a\n", ("Column 'question'",)),
        ("rows.json", "{", ("not valid JSON",)),
        ("rows.txt", "x", ("csv", "jsonl")),
        ("rows.json", "[]", ("no rows",)),
    ],
)
def test_malformed_uploads_name_the_row_and_column(filename, content, names):
    with pytest.raises(ValidationError) as info:
        datasets.parse_upload(filename, content.encode())
    for name in names:
        assert name in str(info.value)


def test_seeded_store_lists_and_loads_the_golden_datasets(seeded_settings):
    from services import overview, registry

    ids = overview.agent_experiment_ids(registry.list_agents(seeded_settings), seeded_settings)
    listing = datasets.list_datasets(ids, seeded_settings)
    assert listing.supported
    names = {d.name for d in listing.datasets}
    assert {"support-agent-golden", "orders-agent-golden"} <= names
    rows = datasets.load_dataset_rows("orders-agent-golden", seeded_settings)
    assert len(rows) == 48
    assert datasets.validate_rows(rows) is rows


def test_saving_validates_before_storing(isolated_settings):
    from mlflow import MlflowClient

    from services._clients import get_or_create_experiment

    client = MlflowClient(tracking_uri=isolated_settings.tracking_uri)
    experiment_id = get_or_create_experiment(client, "ds", isolated_settings)
    with pytest.raises(ValidationError, match="Row 1"):
        datasets.save_dataset("bad", [{"inputs": {}}], experiment_id, isolated_settings)
    assert datasets.list_datasets([experiment_id], isolated_settings).datasets == ()
    datasets.save_dataset("good", ROWS, experiment_id, isolated_settings)
    assert [d.name for d in datasets.list_datasets([experiment_id], isolated_settings).datasets] == ["good"]
    assert len(datasets.load_dataset_rows("good", isolated_settings)) == 2
