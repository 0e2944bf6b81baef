"""Captured, batch-written traces: the MLflow internals are still there, and the stored traces
equal the ones MLflow's own exporter writes (spans, tags, metadata, token usage, cost, model link)."""

from __future__ import annotations

import inspect
import json
import logging

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities.trace_location import MlflowExperimentLocation
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from demo.agents.support_agent import SupportAgent
from services._mlflow_internal import span_batch
from services._clients import configure_mlflow
from services.settings import load_settings

AGENT = SupportAgent({"strategy": "hybrid", "llm_model": "gpt-4o-mini"})
QUESTIONS = ["How do I reset my password?", "When will I be billed?", "Do you support SSO?"]
TAGS = {"agentops.agent": "support", "agentops.version": "2", "agentops.endpoint": "ep", "agentops.arm": "support_2"}
# Differ between any two traces by construction (ids, clocks).
PER_TRACE_SPAN_ATTRIBUTES = {"mlflow.traceRequestId"}


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory):
    """One store for this module (creating a SQLite store takes seconds); each test has its own experiments."""
    return load_settings({"AGENTOPS_DATA_DIR": str(tmp_path_factory.mktemp("span-batch"))})


@pytest.fixture
def new_experiment(module_settings, request):
    configure_mlflow(module_settings)
    client = MlflowClient(tracking_uri=module_settings.tracking_uri)
    counter = iter(range(100))

    def create() -> str:
        name = f"{request.node.name}-{next(counter)}"
        return client.create_experiment(name, artifact_location=(module_settings.artifact_root / name).as_uri())

    return create


@pytest.fixture
def store(module_settings, new_experiment):
    client = MlflowClient(tracking_uri=module_settings.tracking_uri)
    experiment_id = new_experiment()
    model_id = client.create_logged_model(experiment_id, name="support").model_id
    assert span_batch.install()
    yield client, experiment_id, model_id
    mlflow.flush_trace_async_logging()


def _serve(experiment_id: str, model_id: str, question: str, *, capture: bool, fail: bool = False):
    """What the gateway does around ``predict``: a root span with tags, model link, user and session."""
    request = {"input": [{"role": "user", "content": question}], "context": {"user_id": "u-1", "conversation_id": "c-1"}}
    with span_batch.capture(enabled=capture) as captured:
        with mlflow.start_span(name="ep", span_type="AGENT", trace_destination=MlflowExperimentLocation(experiment_id)) as span:
            span.set_inputs(request)
            mlflow.update_current_trace(tags=TAGS, model_id=model_id, user="u-1", session_id="c-1")
            if fail:
                span.record_exception(RuntimeError("agent broke"))
                span.set_status("ERROR")
            else:
                span.set_outputs(AGENT.predict(request).model_dump(exclude_none=True))
    return span.trace_id, captured


def _shape(trace) -> dict:
    """A trace's content with ids and clock readings taken out."""
    names = {s.span_id: s.name for s in trace.data.spans}
    spans = []
    for s in sorted(trace.data.spans, key=lambda s: (s.start_time_ns, s.name)):
        spans.append({
            "name": s.name,
            "type": s.span_type,
            "parent": names.get(s.parent_id),
            "status": (str(s.status.status_code), s.status.description),
            "inputs": s.inputs,
            "outputs": s.outputs,
            "attributes": {k: v for k, v in s.attributes.items() if k not in PER_TRACE_SPAN_ATTRIBUTES},
            "events": [(e.name, e.attributes) for e in s.events],
            "ended": s.end_time_ns is not None and s.end_time_ns >= s.start_time_ns,
        })
    info = trace.info
    trace_id = info.trace_id
    metadata = dict(info.trace_metadata)
    sizes = json.loads(metadata.pop("mlflow.trace.sizeStats"))
    # The serialized size holds clock readings and durations of varying digits: equal within a few
    # bytes (2 seen), compared within 16 bytes where two traces are compared, not to the byte.
    size_bytes = metadata.pop("mlflow.trace.sizeBytes", None)
    return {
        "has_size_bytes": size_bytes is not None and int(size_bytes) > 0,
        "state": str(info.state),
        "tags": {k: v.replace(trace_id, "<id>") for k, v in info.tags.items()},
        "metadata": metadata,
        "size_stat_keys": sorted(sizes),
        "num_spans": sizes["num_spans"],
        "token_usage": info.token_usage,
        "cost": info.cost,
        "previews": (info.request_preview, info.response_preview),
        "spans": spans,
    }


def test_mlflow_internals_used_by_the_capture_are_still_there(module_settings):
    from mlflow.tracing import provider
    from mlflow.tracing.processor.base_mlflow import BaseMlflowSpanProcessor
    from mlflow.tracing.processor.mlflow_v3 import MlflowV3SpanProcessor
    from mlflow.tracing.trace_manager import InMemoryTraceManager

    factory = getattr(provider, "_get_mlflow_span_processor", None)
    if getattr(factory, "_agentops_original", None):
        factory = factory._agentops_original
    assert callable(factory), "mlflow.tracing.provider._get_mlflow_span_processor is gone"
    assert list(inspect.signature(factory).parameters) == ["tracking_uri"]
    assert type(factory(module_settings.tracking_uri)) is MlflowV3SpanProcessor, "MLflow's default processor changed"
    assert callable(provider._get_span_processor) and hasattr(provider.provider.once, "_done")
    for name in ("_start_trace", "_on_end_impl", "_update_trace_info", "record_metrics_for_span"):
        assert callable(getattr(BaseMlflowSpanProcessor, name, None)), f"BaseMlflowSpanProcessor.{name} is gone"
    assert list(inspect.signature(BaseMlflowSpanProcessor._update_trace_info).parameters) == ["self", "trace", "root_span"]
    for name in ("pop_trace", "get_trace", "has_open_spans"):
        assert callable(getattr(InMemoryTraceManager, name, None)), f"InMemoryTraceManager.{name} is gone"
    for name in ("start_trace", "log_spans", "get_experiment"):
        assert callable(getattr(SqlAlchemyStore, name, None)), f"SqlAlchemyStore.{name} is gone"
    assert "ManagedSessionMaker" in inspect.getsource(SqlAlchemyStore._start_trace_once)
    assert "ManagedSessionMaker" in inspect.getsource(SqlAlchemyStore._log_spans_once)


def test_captured_trace_bypasses_mlflow_export_and_other_traces_do_not(store):
    client, experiment_id, model_id = store
    captured_id, captured = _serve(experiment_id, model_id, QUESTIONS[0], capture=True)
    exported_id, not_captured = _serve(experiment_id, model_id, QUESTIONS[0], capture=False)
    assert span_batch.is_installed(), "MLflow rebuilt its provider without the capturing processor"
    assert captured.trace is not None and captured.trace.trace_id == captured_id
    assert not_captured.trace is None
    assert span_batch.in_flight() == 0
    mlflow.flush_trace_async_logging()
    # MLflow's exporter wrote the other trace, and nothing of the captured one.
    assert client.get_trace(exported_id).info.trace_id == exported_id
    assert not client.search_traces(locations=[experiment_id], filter_string=f"trace.request_id = '{captured_id}'")
    assert span_batch.write_traces(client, [captured.trace]) == {}
    assert len(client.get_trace(captured_id).data.spans) == 4


@pytest.mark.parametrize("fail", [False, True], ids=["ok", "error"])
def test_batched_traces_equal_traces_exported_by_mlflow(store, fail):
    client, experiment_id, model_id = store
    batched_id, captured = _serve(experiment_id, model_id, QUESTIONS[1], capture=True, fail=fail)
    exported_id, _ = _serve(experiment_id, model_id, QUESTIONS[1], capture=False, fail=fail)
    assert span_batch.write_traces(client, [captured.trace]) == {}
    mlflow.flush_trace_async_logging()

    batched, exported = client.get_trace(batched_id), client.get_trace(exported_id)
    assert _shape(batched) == _shape(exported)
    sizes = [int(t.info.trace_metadata["mlflow.trace.sizeBytes"]) for t in (batched, exported)]
    assert abs(sizes[0] - sizes[1]) <= 16, sizes
    assert batched.info.trace_metadata["mlflow.modelId"] == model_id
    assert batched.info.trace_metadata["mlflow.trace.user"] == "u-1"
    assert batched.info.tags["agentops.arm"] == "support_2"
    if fail:
        assert str(batched.info.state).endswith("ERROR")
    else:
        assert batched.info.token_usage["total_tokens"] > 0
        assert batched.info.cost["total_cost"] > 0
    linked = {t.info.trace_id for t in client.search_traces(locations=[experiment_id], model_id=model_id)}
    assert {batched_id, exported_id} <= linked


def test_one_batch_holds_many_traces_and_experiments(store, new_experiment, caplog):
    client, experiment_id, model_id = store
    other = new_experiment()
    served = [_serve(experiment_id if i % 3 else other, model_id, QUESTIONS[i % 3], capture=True) for i in range(30)]
    with caplog.at_level(logging.INFO, logger=span_batch.__name__):
        assert span_batch.write_traces(client, [c.trace for _, c in served]) == {}
    assert "one transaction failed" not in caplog.text, "the one-transaction fast path no longer works"
    for i, (trace_id, captured) in enumerate(served):
        stored = client.get_trace(trace_id)
        assert stored.info.experiment_id == (experiment_id if i % 3 else other)
        assert {s.trace_id for s in stored.data.spans} == {trace_id}
        assert sorted(s.span_id for s in stored.data.spans) == sorted(s.span_id for s in captured.trace.trace.data.spans)
        llm = next(s for s in stored.data.spans if s.name == "llm")
        assert stored.info.token_usage["total_tokens"] == llm.attributes["mlflow.chat.tokenUsage"]["total_tokens"]


def test_a_conflicting_batch_is_rolled_back_and_written_trace_by_trace(store, caplog):
    client, experiment_id, model_id = store
    first = _serve(experiment_id, model_id, QUESTIONS[0], capture=True)[1].trace
    assert span_batch.write_traces(client, [first]) == {}
    before = _shape(client.get_trace(first.trace_id))
    others = [_serve(experiment_id, model_id, q, capture=True)[1].trace for q in QUESTIONS[1:]]
    with caplog.at_level(logging.INFO, logger=span_batch.__name__):
        # ``first`` exists already: the one-transaction path meets a conflict and must not keep
        # a half-written batch; the per-trace path writes the rest and merges ``first``.
        assert span_batch.write_traces(client, [others[0], first, others[1]]) == {}
    assert "one transaction failed" in caplog.text
    assert _shape(client.get_trace(first.trace_id)) == before
    for trace in others:
        assert len(client.get_trace(trace.trace_id).data.spans) == 4
    assert len(client.search_traces(locations=[experiment_id], include_spans=False)) == 3


def test_a_trace_that_cannot_be_written_is_reported_and_the_rest_are_stored(store, new_experiment):
    client, experiment_id, model_id = store
    doomed = new_experiment()
    good = _serve(experiment_id, model_id, QUESTIONS[0], capture=True)[1].trace
    bad = _serve(doomed, model_id, QUESTIONS[1], capture=True)[1].trace
    client.delete_experiment(doomed)

    failures = span_batch.write_traces(client, [good, bad])
    assert list(failures) == [bad.trace_id]
    assert "deleted" in failures[bad.trace_id] or "active" in failures[bad.trace_id]
    assert len(client.get_trace(good.trace_id).data.spans) == 4
    assert not client.search_traces(locations=[doomed], include_spans=False)


def test_an_mlflow_server_is_batched_and_databricks_uses_mlflow_exporter():
    # Issue 19: a remote mlflow server takes batches over REST (rest_trace_batch, tested against a
    # real server in tests/gateway/test_gateway_server.py); Databricks keeps MLflow's exporter.
    assert span_batch.supports_batching(MlflowClient(tracking_uri="http://127.0.0.1:9"))
    assert not span_batch.supports_batching(MlflowClient(tracking_uri="databricks"))


def test_uninstall_restores_mlflow_processor(store):
    client, experiment_id, model_id = store
    span_batch.uninstall()
    try:
        trace_id, captured = _serve(experiment_id, model_id, QUESTIONS[0], capture=True)
        assert captured.trace is None and not span_batch.is_installed()
        mlflow.flush_trace_async_logging()
        assert client.get_trace(trace_id).info.trace_id == trace_id
    finally:
        assert span_batch.install()
