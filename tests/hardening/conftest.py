"""Shared parts of the hardening tests: hypothesis profiles, one small store per module, snapshots.

A snapshot is every row of every table of the store's SQLite database plus a hash of every other
file in the data folder (endpoint configs, price table, alert thresholds, artifacts), so "stored
state unchanged" is checked for everything, not for the few things a test thought of.
"""

from __future__ import annotations

import copy
import hashlib
import os
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import mlflow
import pytest
from hypothesis import HealthCheck, settings as hypothesis_settings

from services.errors import AgentOpsError
from tests.hardening.reliability import InputTally, Tallies

# Deterministic by default (the same inputs every run, so CI and the report's figures are stable);
# HYPOTHESIS_PROFILE=explore draws new inputs each run. No example database is written.
hypothesis_settings.register_profile(
    "hardening", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
hypothesis_settings.register_profile(
    "explore", database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "hardening"))

AGENT = "hard-agent"
ENDPOINT = "hard-prod"
DATASET = "hard-golden"
_VOLATILE = {"mlflow.db", "mlflow.db-journal", "mlflow.db-wal", "mlflow.db-shm"}


# --- snapshots -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    tables: dict[str, Counter]
    files: dict[str, str]


def _cell(value: Any) -> Any:
    return value.hex() if isinstance(value, (bytes, bytearray, memoryview)) else value


def take_snapshot(data_dir: Path) -> Snapshot:
    """Every table's rows (as a multiset) and every other file's hash under ``data_dir``."""
    tables: dict[str, Counter] = {}
    db = data_dir / "mlflow.db"
    if db.exists():
        connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            names = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for name in names:
                rows = connection.execute(f'SELECT * FROM "{name}"').fetchall()
                tables[name] = Counter(tuple(_cell(v) for v in row) for row in rows)
        finally:
            connection.close()
    files = {}
    for path in sorted(data_dir.rglob("*")):
        if path.is_file() and path.name not in _VOLATILE:
            files[str(path.relative_to(data_dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return Snapshot(tables, files)


def snapshot_diff(before: Snapshot, after: Snapshot, limit: int = 3) -> list[str]:
    """Readable differences: rows added/removed per table, files added/removed/changed."""
    lines = []
    for table in sorted(set(before.tables) | set(after.tables)):
        old, new = before.tables.get(table, Counter()), after.tables.get(table, Counter())
        added, removed = list((new - old).elements()), list((old - new).elements())
        if added or removed:
            lines.append(f"table {table}: +{len(added)} -{len(removed)} rows; added {added[:limit]} removed {removed[:limit]}")
    for name in sorted(set(before.files) | set(after.files)):
        if before.files.get(name) != after.files.get(name):
            state = "added" if name not in before.files else "removed" if name not in after.files else "changed"
            lines.append(f"file {name}: {state}")
    return lines


# --- the store every module shares ---------------------------------------------------------


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


class HardStore:
    """A small store holding one of everything the entry points touch."""

    def __init__(self, settings: Any, agent: str, experiment_id: str, trace_ids: list[str], endpoint: str,
                 dataset: str, queue: Any, identity: Any, questions: tuple) -> None:
        self.settings, self.agent, self.experiment_id, self.trace_ids = settings, agent, experiment_id, trace_ids
        self.endpoint, self.dataset, self.queue, self.identity, self.questions = endpoint, dataset, queue, identity, questions

    def __repr__(self) -> str:  # keeps hypothesis' failure reports short
        return f"HardStore({self.settings.data_dir})"

    def snapshot(self) -> Snapshot:
        return take_snapshot(self.settings.data_dir)

    def assert_unchanged(self, before: Snapshot, what: str) -> None:
        changes = snapshot_diff(before, self.snapshot())
        assert not changes, f"{what} changed stored state:\n" + "\n".join(changes)


def build_store(root: Path) -> HardStore:
    from services import datasets, pricing, releases, serving
    from services import feedback as fb
    from services import alerts
    from services import review_queue as rq
    from services import _mlflow_internal as internal
    from services._clients import configure_mlflow, get_or_create_experiment, mlflow_client
    from services.identity import Identity, IdentitySource
    from services.registry import EXPERIMENT_TAG
    from services.settings import load_settings
    from services.traces import AGENT_TAG, ARM_TAG, ENDPOINT_TAG, VERSION_TAG

    settings = configure_mlflow(load_settings({"AGENTOPS_DATA_DIR": str(root)}))
    client = mlflow_client(settings)
    identity = Identity("hardening@example.com", "hardening", IdentitySource.DATABRICKS_APPS)
    experiment_id = get_or_create_experiment(client, f"agentops-{AGENT}", settings)
    for number in (1, 2):
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"{AGENT}-v{number}"):
            mlflow.pyfunc.log_model(name="agent", python_model=_Echo(), registered_model_name=AGENT,
                                    pip_requirements=["mlflow"], params={"temperature": f"0.{number}"})
    client.set_registered_model_tag(AGENT, EXPERIMENT_TAG, experiment_id)
    client.set_registered_model_alias(AGENT, "champion", "1")
    for version in (1, 2):  # two recorded moves, so a rollback has somewhere to go
        releases.promote(AGENT, "challenger", version, identity, reason="hardening store", settings=settings)
    serving.save_local_endpoint(serving.Endpoint(
        ENDPOINT,
        served=(serving.ServedVersion(f"{AGENT}_1", AGENT, "1"), serving.ServedVersion(f"{AGENT}_2", AGENT, "2")),
        routes=(serving.TrafficRoute(f"{AGENT}_1", 80), serving.TrafficRoute(f"{AGENT}_2", 20)),
        state=serving.EndpointState.READY,
    ), settings)
    now_ns = time.time_ns()
    specs = []
    for index in range(4):
        start = now_ns - (index + 1) * 60_000_000_000
        version = str(1 + index % 2)
        root_span = internal.SpanSpec(
            "predict", "AGENT", start, start + 20_000_000,
            inputs={"input": [{"role": "user", "content": f"Where is order {index}?"}]},
            outputs={"output": [{"type": "message", "content": [{"type": "output_text", "text": f"Order {index} shipped."}]}]},
            children=(internal.SpanSpec("lookup", "TOOL", start + 1_000_000, start + 2_000_000,
                                        inputs={"order": index}, outputs="shipped"),),
        )
        specs.append(internal.TraceSpec(experiment_id, root_span, tags={
            AGENT_TAG: AGENT, VERSION_TAG: version, ARM_TAG: f"{AGENT}_{version}", ENDPOINT_TAG: ENDPOINT}))
    trace_ids = internal.log_traces(client, specs)
    questions = (fb.LabelQuestion("tone", "Is the tone right?", fb.LabelKind.CHOICE, ("ok", "rude")),
                 fb.LabelQuestion("note", "Anything else?", fb.LabelKind.TEXT))
    fb.set_label_questions(AGENT, questions, settings)
    fb.submit_review(trace_ids[0], fb.Review(thumbs_up=False, rating=2, comment="late", labels={"tone": "ok"}),
                     identity.user, questions=questions, settings=settings)
    datasets.save_dataset(DATASET, [{"inputs": {"question": "Where is order 1?"},
                                     "expectations": {"expected_facts": ["shipped"]}}], experiment_id, settings)
    queue = rq.create_queue(rq.QueueSpec("hardening", rq.QueueSource.HAND_PICKED, (experiment_id,), agent=AGENT,
                                         trace_ids=tuple(trace_ids)), identity.user, settings)
    pricing.save_prices(settings, {"gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}})
    alerts.save_thresholds(settings, AGENT, alerts.AlertThresholds())
    return HardStore(settings, AGENT, experiment_id, trace_ids, ENDPOINT, DATASET, queue, identity, questions)


@pytest.fixture(scope="module")
def hard_store(tmp_path_factory) -> HardStore:
    from services._clients import configure_mlflow, get_settings

    store = build_store(tmp_path_factory.mktemp("hardening-store"))
    yield store
    configure_mlflow(get_settings())


@pytest.fixture(scope="module")
def tallies():
    """Per-entry-point input counts of this module, written as reliability records at the end."""
    found = Tallies()
    yield found
    found.write_all()


# Errors a service may answer bad user input with; BackendUnavailableError is not one of them
# (the store is up: blaming it for a bad value misleads the user).
INPUT_ERRORS = ("ValidationError", "NotFoundError", "ConflictError", "PermissionDeniedError")


def attempt(tally: InputTally, store: HardStore, call: Callable[[], Any], *, what: str,
            allowed: tuple[str, ...] = INPUT_ERRORS, changes_when_accepted: bool = True) -> tuple[Any, AgentOpsError | None]:
    """Call an entry point on one generated input.

    A refusal must be an ``AgentOpsError`` of an allowed kind with a message, and leave the store
    exactly as it was. Anything else (an untyped exception) propagates and fails the test.
    Accepted input may change state unless ``changes_when_accepted`` is False.
    """
    before = store.snapshot()
    try:
        result = call()
    except AgentOpsError as exc:
        tally.rejected(exc)
        assert type(exc).__name__ in allowed or any(c.__name__ in allowed for c in type(exc).__mro__), (
            f"{what}: {type(exc).__name__} for user input ({exc})")
        message = str(exc).strip()
        assert message and "Traceback" not in message, f"{what}: unhelpful message {message!r}"
        store.assert_unchanged(before, what)
        tally.state_checked()
        return None, exc
    tally.ok()
    if not changes_when_accepted:
        store.assert_unchanged(before, what)
        tally.state_checked()
    return result, None


def deep(value: Any) -> Any:
    return copy.deepcopy(value)
