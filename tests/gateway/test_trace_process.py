"""The writer process: batches written by a spawned child into the real store, and a child that
dies is replaced without losing the batch (the writer retries it)."""

from __future__ import annotations

import os
import signal

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities.trace_location import MlflowExperimentLocation

from gateway.trace_process import ProcessTraceSink
from gateway.trace_writer import TraceWriter
from services._mlflow_internal import span_batch
from services._clients import configure_mlflow
from services.settings import load_settings


@pytest.fixture(scope="module")
def sink_store(tmp_path_factory):
    settings = configure_mlflow(load_settings({"AGENTOPS_DATA_DIR": str(tmp_path_factory.mktemp("sink"))}))
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment_id = client.create_experiment("sink", artifact_location=(settings.artifact_root / "sink").as_uri())
    assert span_batch.install()
    sink = ProcessTraceSink(settings)
    yield settings, client, experiment_id, sink
    sink.close()


def _captured(experiment_id: str, i: int) -> span_batch.CapturedTrace:
    with span_batch.capture() as captured:
        with mlflow.start_span("root", span_type="AGENT", trace_destination=MlflowExperimentLocation(experiment_id)) as root:
            root.set_inputs({"i": i})
            mlflow.update_current_trace(tags={"n": str(i)})
            with mlflow.start_span("child", span_type="TOOL") as child:
                child.set_outputs(i * 2)
    assert captured.trace is not None
    return captured.trace


def test_the_child_process_writes_batches_into_the_store(sink_store):
    settings, client, experiment_id, sink = sink_store
    configure_mlflow(settings)
    traces = [_captured(experiment_id, i) for i in range(5)]
    assert sink(traces) == {}
    assert sink.pid != os.getpid()
    for i, trace in enumerate(traces):
        stored = client.get_trace(trace.trace_id)
        assert stored.info.tags["n"] == str(i)
        assert sorted(s.name for s in stored.data.spans) == ["child", "root"]


def test_a_killed_child_is_replaced_and_the_writer_loses_nothing(sink_store):
    settings, client, experiment_id, sink = sink_store
    configure_mlflow(settings)
    sink([_captured(experiment_id, 100)])  # make sure a child is up
    os.kill(sink.pid, signal.SIGKILL)
    writer = TraceWriter(sink, attempts=3, retry_delay_s=0.05)
    traces = [_captured(experiment_id, 200 + i) for i in range(3)]
    try:
        for trace in traces:
            assert writer.submit(trace)
        assert writer.flush(180)
    finally:
        writer.close()
    assert (writer.stats().written, writer.stats().failed) == (3, 0)
    assert sink.restarts >= 1
    for trace in traces:
        assert len(client.get_trace(trace.trace_id).data.spans) == 2
