"""The bulk loader's stamped path (each span shape translated once by MLflow, values stamped into
copies) against MLflow's own path, field by field: per trace before writing, and in the tables of a
SQLite and a PostgreSQL store after ``start_trace`` + ``log_spans`` (the store path).

``tests/services/test_mlflow_internal.py::test_direct_load_writes_exactly_the_rows_of_the_store_path``
covers the default (stamped) loader on a few traces; these traces vary what the stamping replaces
(ids, times, inputs and outputs that MLflow's sanitizing unwraps or not, token usage and hence cost,
models with and without a catalog price) and what it must not (OpenTelemetry GenAI attributes from
which MLflow derives usage and model, error events), many traces per shape.
"""

from __future__ import annotations

import random
import time

import pytest
from mlflow import MlflowClient

from services import _mlflow_internal as internal
from services._mlflow_internal import bulk_load, span_stamp

NOW_NS = time.time_ns()


def _specs(experiment_id: str, n: int = 60) -> list[internal.TraceSpec]:
    rng = random.Random(5)
    inputs = [{"q": 1}, "plain", '{"already": "json"}', '"quoted"', "ünïcode ✓", ["a", 1], 7, None, "  {\"x\": 1}"]
    specs = []
    for i in range(n):
        start = NOW_NS - rng.randrange(10**12)
        end = start + rng.randrange(10**6, 10**9)
        usage = {"input_tokens": rng.randint(0, 900), "output_tokens": rng.randint(0, 90)}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        if i % 4 == 0:
            usage["cache_read_input_tokens"] = rng.randint(0, usage["input_tokens"])
        model = ("gpt-4o-mini", "gpt-4o", "house-model")[i % 3]
        children = [internal.SpanSpec("lookup", "TOOL", start + 1, start + 2, inputs=inputs[i % len(inputs)],
                                      outputs=inputs[(i + 3) % len(inputs)])]
        if i % 5:
            children.append(internal.SpanSpec("llm", "CHAT_MODEL", start + 3, end - 1, attributes={
                "mlflow.chat.tokenUsage": usage, "mlflow.llm.model": model, "mlflow.llm.provider": "openai"},
                error="rate limited" if i % 11 == 0 else None))
        else:  # OpenTelemetry GenAI attributes only: MLflow derives usage, model and cost from them
            children.append(internal.SpanSpec("chat", "LLM", start + 3, end - 1, attributes={
                "gen_ai.usage.input_tokens": usage["input_tokens"], "gen_ai.usage.output_tokens": usage["output_tokens"],
                "gen_ai.request.model": model, "gen_ai.system": "openai"}))
        root = internal.SpanSpec("predict", "AGENT", start, end, inputs={"question": f"q{i}"},
                                 outputs=None if i % 7 == 0 else f"a{i}", error="boom" if i % 9 == 0 else None,
                                 children=tuple(children))
        specs.append(internal.TraceSpec(experiment_id, root, tags={"agentops.arm": "ab"[i % 2]},
                                        metadata={"mlflow.modelId": f"m-{i % 3}"}))
    return specs


class _Experiment:
    experiment_id = "1"
    artifact_location = "file:///tmp/artifacts"


def test_stamped_rows_equal_mlflows_path_trace_by_trace():
    specs = _specs("1")
    built = {}
    for stamp in (False, True):
        context = bulk_load._RowContext("postgresql", {"1": _Experiment()}, stamp=stamp, verify_every=10**9)
        with span_stamp.without_missing_litellm():
            built[stamp] = bulk_load._build_rows(context, specs, random.Random(3))
    (ids, rows), (stamped_ids, stamped_rows) = built[False], built[True]
    assert stamped_ids == ids
    names = ("trace_info", "trace_tags", "trace_request_metadata", "spans")
    for name, expected, actual in zip(names, rows, stamped_rows):
        assert len(actual) == len(expected)
        for want, got in zip(expected, actual):
            assert got.keys() == want.keys(), name
            for column in want:
                assert got[column] == want[column], f"{name}.{column} of {want.get('request_id') or want['trace_id']}"
    spans = stamped_rows[3]
    assert any(row["total_cost"] for row in spans) and any(row["model_name"] == "house-model" for row in spans)
    # Most spans really were stamped: a shape whose translation does not pass values through is not.
    templates = span_stamp.stamper()._templates
    assert sum(t is not None for t in templates.values()) >= len(templates) - 2


def test_a_stamped_trace_that_differs_from_mlflows_path_raises(monkeypatch):
    specs = _specs("1", 5)
    context = bulk_load._RowContext("postgresql", {"1": _Experiment()}, stamp=True, verify_every=1)
    real = span_stamp.Stamper.spans

    def off_by_one(self, span_dicts):
        out = real(self, span_dicts)
        return [(span, {**d, "end_time_unix_nano": d["end_time_unix_nano"] + 1}) for span, d in out]

    monkeypatch.setattr(span_stamp.Stamper, "spans", off_by_one)
    with pytest.raises(RuntimeError, match="differ from MLflow's own path"):
        bulk_load._build_rows(context, specs, random.Random(3))


def _rows(uri: str) -> dict[str, list[str]]:
    import sqlalchemy as sa

    engine = sa.create_engine(uri)
    try:
        with engine.connect() as connection:
            return {name: sorted(map(repr, connection.execute(sa.text(f'SELECT * FROM "{name}"')).all()))
                    for name in ("trace_info", "trace_tags", "trace_request_metadata", "spans")}
    finally:
        engine.dispose()


@pytest.mark.parametrize("dialect, workers", [("sqlite", 2), ("postgresql", 2)])
def test_stamped_load_writes_exactly_the_rows_of_the_store_path(tmp_path, dialect, workers, request):
    uris = []
    for name in ("via_store", "stamped"):
        uri = (f"sqlite:///{tmp_path / name}.db" if dialect == "sqlite"
               else request.getfixturevalue("postgres").new_database(name))
        client = MlflowClient(tracking_uri=uri)
        experiment_id = client.create_experiment("load", artifact_location=(tmp_path / "artifacts").as_uri())
        uris.append((client, experiment_id, uri))
    (via_store, experiment_id, store_uri), (stamped, _, stamped_uri) = uris
    specs = _specs(experiment_id)
    seeds = random.Random(7)
    for piece in [specs[i : i + 20] for i in range(0, len(specs), 20)]:
        internal.trace_write._log_traces_bulk(via_store, piece, random.Random(seeds.getrandbits(64)))
    ids = internal.bulk_load_traces(stamped, specs, chunk_size=20, rng=random.Random(7), workers=workers)
    expected, actual = _rows(store_uri), _rows(stamped_uri)
    for table in expected:
        assert actual[table] == expected[table], f"stamped load differs from start_trace + log_spans in {table}"
    assert len(ids) == len(specs) == len(actual["trace_info"])
