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


@pytest.mark.parametrize("point", ["merge_records", "marking it done"])
def test_an_interrupted_save_is_finished_by_saving_again(isolated_settings, monkeypatch, point):
    from mlflow import MlflowClient
    from mlflow.genai.datasets import search_datasets
    from mlflow.genai.datasets.evaluation_dataset import EvaluationDataset

    from services._clients import get_or_create_experiment
    from services.errors import BackendUnavailableError, ConflictError

    client = MlflowClient(tracking_uri=isolated_settings.tracking_uri)
    experiment_id = get_or_create_experiment(client, "ds", isolated_settings)

    def down(*args, **kwargs):
        raise ConnectionError("Connection refused")

    original_merge = EvaluationDataset.merge_records

    def merge_then_down(self, records):
        original_merge(self, records)
        raise ConnectionError("Connection refused")

    with monkeypatch.context() as patch:
        if point == "merge_records":
            patch.setattr(EvaluationDataset, "merge_records", down)
        else:  # the rows are stored, the answer to the last call is lost
            patch.setattr(EvaluationDataset, "merge_records", merge_then_down)
        with pytest.raises(BackendUnavailableError) as failed:
            datasets.save_dataset("golden", ROWS, experiment_id, isolated_settings)
    message = str(failed.value)
    assert "'golden' was created" in message and "Save the same rows under the same name again" in message
    assert "Traceback" not in message
    (left,) = [d for d in search_datasets(filter_string="name = 'golden'")]
    assert datasets.list_datasets([experiment_id], isolated_settings).datasets == ()  # unfinished: not offered
    # Other rows under that name are refused while the interrupted save is unfinished.
    with pytest.raises(ConflictError, match="unfinished"):
        datasets.save_dataset("golden", ROWS[:1], experiment_id, isolated_settings)

    assert datasets.save_dataset("golden", ROWS, experiment_id, isolated_settings) == left.dataset_id
    assert [d.dataset_id for d in search_datasets(filter_string="name = 'golden'")] == [left.dataset_id]
    stored = datasets.load_dataset_rows("golden", isolated_settings)
    assert sorted(r["inputs"]["question"] for r in stored) == sorted(r["inputs"]["question"] for r in ROWS)
    assert [d.name for d in datasets.list_datasets([experiment_id], isolated_settings).datasets] == ["golden"]
    # The same save again changes nothing; other rows under the name are refused as before.
    assert datasets.save_dataset("golden", ROWS, experiment_id, isolated_settings) == left.dataset_id
    assert len(datasets.load_dataset_rows("golden", isolated_settings)) == len(ROWS)
    with pytest.raises(ConflictError, match="already exists"):
        datasets.save_dataset("golden", ROWS[:1], experiment_id, isolated_settings)


def test_rows_the_store_refuses_leave_no_dataset(isolated_settings, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.genai.datasets import search_datasets
    from mlflow.genai.datasets.evaluation_dataset import EvaluationDataset
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    from services._clients import get_or_create_experiment

    experiment_id = get_or_create_experiment(MlflowClient(tracking_uri=isolated_settings.tracking_uri), "ds",
                                             isolated_settings)

    def refuse(self, records):
        raise MlflowException("bad record", error_code=INVALID_PARAMETER_VALUE)

    with monkeypatch.context() as patch:
        patch.setattr(EvaluationDataset, "merge_records", refuse)
        with pytest.raises(ValidationError, match="bad record"):
            datasets.save_dataset("refused", ROWS, experiment_id, isolated_settings)
    assert [d for d in search_datasets(filter_string="name = 'refused'")] == []
