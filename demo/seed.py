"""Seed a demo workspace: agents, versions, aliases, evaluations, live traces and feedback.

Run ``python -m demo.seed`` (or let ``scripts/run`` do it on first start). Everything is made
through MLflow's APIs. A store that already holds agents or experiments is never touched.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import hashlib
import importlib
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from services import _mlflow_internal as internal
from services import overview, registry, serving, traces
from services._clients import configure_mlflow, get_or_create_experiment, mlflow_client
from services.settings import Backend, Settings

DEMO_DIR = Path(__file__).resolve().parent
_logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class DemoVersion:
    strategy: str
    llm_model: str
    description: str


@dataclass(frozen=True)
class DemoAgent:
    name: str
    module: str
    description: str
    eval_file: str
    versions: tuple[DemoVersion, ...]
    aliases: dict[str, int]
    endpoint: str
    split: dict[int, int]
    daily_requests: int


DEMO_AGENTS: tuple[DemoAgent, ...] = (
    DemoAgent(
        name="support-agent",
        module="demo.agents.support_agent",
        description="Answers Acme Cloud product questions from the support FAQ.",
        eval_file="support_eval.json",
        versions=(
            DemoVersion("keyword", "gpt-4o-mini", "Baseline: exact keyword retrieval over the FAQ."),
            DemoVersion("hybrid", "gpt-4o-mini", "Synonyms, stemming and a confidence threshold with escalation."),
            DemoVersion("terse", "gpt-4.1", "Shorter answers on a larger model (drops key facts)."),
        ),
        aliases={"champion": 1, "challenger": 2},
        endpoint="support-prod",
        split={1: 80, 2: 20},
        daily_requests=110,
    ),
    DemoAgent(
        name="orders-agent",
        module="demo.agents.orders_agent",
        description="Tells shoppers where their order is, from the order system.",
        eval_file="orders_eval.json",
        versions=(
            DemoVersion("basic", "gpt-4o-mini", "Baseline order lookup."),
            DemoVersion("robust", "gpt-4o-mini", "Case-insensitive ids, graceful unknown orders, shipping policy tool."),
            DemoVersion("hasty", "gpt-4o-mini", "Skips lookups for some phrasings (regression)."),
        ),
        aliases={"champion": 2, "challenger": 3},
        endpoint="orders-prod",
        split={2: 90, 3: 10},
        daily_requests=80,
    ),
)
REVIEWERS = ("alice@acme.example", "bob@acme.example", "carol@acme.example")
DAYS = 7


def _print_progress(step: int, total: int, message: str) -> None:
    print(f"[{step}/{total}] {message}", flush=True)


def _git_commit(agent: str, strategy: str) -> str:
    return hashlib.sha1(f"{agent}:{strategy}".encode()).hexdigest()


def load_eval_rows(agent: DemoAgent) -> list[dict[str, Any]]:
    """The agent's bundled evaluation rows in MLflow's inputs/expectations shape."""
    return json.loads((DEMO_DIR / "data" / agent.eval_file).read_text(encoding="utf-8"))


def seed(settings: Settings | None = None, *, progress: Progress = _print_progress, seed_value: int = 7) -> bool:
    """Seed the demo workspace; return False (and change nothing) if the store is not empty."""
    settings = configure_mlflow(settings)
    if not overview.store_is_empty(settings):
        return False
    import mlflow

    client = mlflow_client(settings)
    rng = random.Random(seed_value)
    total = sum(len(a.versions) * 2 for a in DEMO_AGENTS) + len(DEMO_AGENTS) * 2
    step = 0

    def tick(message: str) -> None:
        nonlocal step
        step += 1
        progress(step, total, message)

    for agent in DEMO_AGENTS:
        module = importlib.import_module(agent.module)
        agent_file = Path(module.__file__)
        experiment_id = get_or_create_experiment(client, f"agentops-{agent.name}", settings)
        mlflow.set_experiment(experiment_id=experiment_id)
        model_ids: dict[int, str] = {}
        for number, version in enumerate(agent.versions, start=1):
            tick(f"Logging {agent.name} v{number} ({version.strategy})")
            model_ids[number] = _log_version(client, agent, number, version, agent_file, experiment_id)
        client.set_registered_model_tag(agent.name, registry.EXPERIMENT_TAG, experiment_id)
        client.update_registered_model(agent.name, description=agent.description)
        for alias, number in agent.aliases.items():
            client.set_registered_model_alias(agent.name, alias, str(number))

        rows = load_eval_rows(agent)
        dataset_name = f"{agent.name}-golden"
        from mlflow.genai.datasets import create_dataset

        dataset = create_dataset(name=dataset_name, experiment_id=[experiment_id])
        dataset.merge_records(rows)
        for number, version in enumerate(agent.versions, start=1):
            tick(f"Evaluating {agent.name} v{number} on {len(rows)} questions")
            _evaluate_version(agent, number, model_ids[number], dataset, dataset_name, experiment_id)

        tick(f"Recording {DAYS} days of live traffic for {agent.endpoint}")
        _save_endpoint(agent, settings)
        trace_ids = _live_traffic(client, agent, module, model_ids, experiment_id, rows, rng)
        tick(f"Adding reviewer feedback on {agent.name} traces")
        _feedback(client, trace_ids, rng)
    if settings.backend is Backend.LOCAL:
        internal.analyze_sqlite(str(settings.db_path))
    return True


def _log_version(client, agent: DemoAgent, number: int, version: DemoVersion, agent_file: Path, experiment_id: str) -> str:
    import mlflow

    commit = _git_commit(agent.name, version.strategy)
    config = {"strategy": version.strategy, "llm_model": version.llm_model}
    params = {"strategy": version.strategy, "llm_model": version.llm_model, "agent_file": agent_file.name}
    with mlflow.start_run(
        run_name=f"{agent.name}-v{number}-build",
        experiment_id=experiment_id,
        tags={"mlflow.source.git.commit": commit},
    ):
        mlflow.log_params(params)
        info = mlflow.pyfunc.log_model(
            name="agent",
            python_model=str(agent_file),
            model_config=config,
            pip_requirements=[f"mlflow=={mlflow.__version__}"],
            input_example={"input": [{"role": "user", "content": "Hello"}]},
            registered_model_name=agent.name,
            params=params,
            tags={"git_commit": commit},
        )
    version_number = str(info.registered_model_version)
    client.set_model_version_tag(agent.name, version_number, registry.GIT_COMMIT_TAG, commit)
    client.set_model_version_tag(agent.name, version_number, "strategy", version.strategy)
    client.update_model_version(agent.name, version_number, description=version.description)
    return info.model_id


def _evaluate_version(agent: DemoAgent, number: int, model_id: str, dataset, dataset_name: str, experiment_id: str) -> None:
    import mlflow
    from services.evaluations import skip_first_row_check
    from services.scorers import DEMO_SCORERS, answer_text

    loaded = mlflow.pyfunc.load_model(f"models:/{agent.name}/{number}")

    def predict_fn(question: str) -> str:
        response = loaded.predict({"input": [{"role": "user", "content": question}]})
        return answer_text(response)

    with mlflow.start_run(
        run_name=f"eval {agent.name} v{number}",
        experiment_id=experiment_id,
        tags={"agentops.agent": agent.name, "agentops.version": str(number), "agentops.dataset": dataset_name},
    ):
        # evaluate prints banners and a progress bar; the seeder reports its own progress.
        # Its pre-flight call on the first row would abort the whole run when that row is one the
        # version fails on (v1 of the orders agent raises on unknown ids, and dataset order is not
        # fixed); skipping it lets the failure be recorded as a failed row like any other.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                skip_first_row_check():
            mlflow.genai.evaluate(data=dataset, scorers=DEMO_SCORERS, predict_fn=predict_fn, model_id=model_id)
    # evaluate leaves the evaluated model active, which would link later traces to it.
    mlflow.clear_active_model()


def _save_endpoint(agent: DemoAgent, settings: Settings) -> None:
    served = tuple(
        serving.ServedVersion(f"{agent.name}-{n}", agent.name, str(n)) for n in sorted(agent.split)
    )
    routes = tuple(serving.TrafficRoute(f"{agent.name}-{n}", pct) for n, pct in sorted(agent.split.items()))
    serving.save_local_endpoint(
        serving.Endpoint(
            name=agent.endpoint,
            served=served,
            routes=routes,
            state=serving.EndpointState.READY,
            updated_at=datetime.now(tz=timezone.utc),
            updated_by="demo-seed",
        ),
        settings,
    )


def _diurnal_weight(moment: datetime) -> float:
    # Busier during working hours so volume charts have a daily shape.
    return 0.35 + 0.65 * max(0.0, math.sin((moment.hour - 6) / 24 * 2 * math.pi))


def _live_traffic(client, agent: DemoAgent, module, model_ids: dict[int, str], experiment_id: str, rows, rng: random.Random) -> list[tuple[str, bool]]:
    aliases_by_version = {v: a for a, v in agent.aliases.items()}
    now = datetime.now(tz=timezone.utc).replace(second=0, microsecond=0)
    arms = sorted(agent.split)
    weights = [agent.split[a] for a in arms]
    specs: list[internal.TraceSpec] = []
    outcomes: list[bool] = []
    hours = DAYS * 24
    for hour in range(hours, 0, -1):
        slot = now - timedelta(hours=hour)
        expected = agent.daily_requests / 24 * _diurnal_weight(slot) * 1.6
        count = max(0, int(rng.gauss(expected, math.sqrt(max(expected, 1)))))
        for _ in range(count):
            number = rng.choices(arms, weights)[0]
            version = agent.versions[number - 1]
            row = rng.choice(rows)
            start = slot + timedelta(seconds=rng.uniform(0, 3599))
            spec, correct = _trace_spec(agent, module, version, number, model_ids[number], experiment_id, row, start, rng, aliases_by_version.get(number))
            specs.append(spec)
            outcomes.append(correct)
    ids = internal.log_traces(client, specs)
    return list(zip(ids, outcomes))


def _trace_spec(agent, module, version: DemoVersion, number: int, model_id: str, experiment_id: str, row, start: datetime, rng: random.Random, alias: str | None):
    question = row["inputs"]["question"]
    config = {"strategy": version.strategy, "llm_model": version.llm_model}
    user_id = f"user-{rng.randint(1, 60):03d}"
    request = {"input": [{"role": "user", "content": question}], "context": {"user_id": user_id}}
    cursor = int(start.timestamp() * 1e9)
    root_start = cursor
    cursor += int(rng.uniform(2, 8) * 1e6)
    children = []
    error = None
    answer = ""
    correct = False
    try:
        result = module.run_agent(question, config)
    except Exception as exc:  # noqa: BLE001 - the agent's real failure becomes an error trace
        error = f"{type(exc).__name__}: {exc}"
        result = None
    if result is not None and rng.random() < 0.015:
        # Live traffic also fails for reasons outside the agent: a timed-out upstream LLM call.
        error = f"TimeoutError: {result.llm_model} did not answer within 30 s"
        result = None
        cursor += int(30e9)
    if result is not None:
        for call in result.tool_calls:
            duration = int(call.duration_ms * rng.uniform(0.8, 1.6) * 1e6)
            children.append(internal.SpanSpec(call.name, "TOOL", cursor, cursor + duration, inputs=call.arguments, outputs=call.output))
            cursor += duration + int(rng.uniform(0.5, 2) * 1e6)
        duration = int(result.llm_duration_ms * rng.lognormvariate(0, 0.25) * 1e6)
        usage = {"input_tokens": result.input_tokens, "output_tokens": result.output_tokens, "total_tokens": result.input_tokens + result.output_tokens}
        children.append(
            internal.SpanSpec(
                "llm", "CHAT_MODEL", cursor, cursor + duration,
                inputs={"messages": [{"role": "user", "content": question}]},
                outputs={"content": result.answer},
                attributes={"mlflow.chat.tokenUsage": usage, "mlflow.llm.model": result.llm_model, "mlflow.llm.provider": result.llm_provider},
            )
        )
        cursor += duration
        answer = result.answer
        expectations = row.get("expectations", {})
        facts = [f.lower() for f in expectations.get("expected_facts", [])]
        called = {c.name for c in result.tool_calls}
        correct = all(f in answer.lower() for f in facts) and all(t in called for t in expectations.get("required_tools", []))
    cursor += int(rng.uniform(1, 4) * 1e6)
    outputs = None if error else {"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": answer}]}]}
    root = internal.SpanSpec("predict", "AGENT", root_start, cursor, inputs=request, outputs=outputs, error=error, children=tuple(children))
    # Agent and version are linked the way MLflow links them (mlflow.modelId, as set_active_model
    # and serving record), the same path as a real workspace; the only tags are the documented
    # optional extras MLflow has no notion of: the endpoint and the arm.
    tags = {
        traces.ENDPOINT_TAG: agent.endpoint,
        traces.ARM_TAG: f"{agent.name}-{number}",
    }
    metadata = {"mlflow.modelId": model_id, "mlflow.trace.user": user_id}
    return internal.TraceSpec(experiment_id, root, tags=tags, metadata=metadata), correct and error is None


def _feedback(client, trace_ids: list[tuple[str, bool]], rng: random.Random) -> None:
    import mlflow
    from mlflow.entities import AssessmentSource, AssessmentSourceType

    sample = [item for item in trace_ids if rng.random() < 0.06]
    for trace_id, correct in sample:
        reviewer = rng.choice(REVIEWERS)
        # Reviewers mostly agree with the facts, with some noise.
        thumbs_up = correct if rng.random() < 0.9 else not correct
        source = AssessmentSource(source_type=AssessmentSourceType.HUMAN, source_id=reviewer)
        mlflow.log_feedback(
            trace_id=trace_id,
            name="thumbs_up",
            value=thumbs_up,
            source=source,
            rationale="Accurate and complete." if thumbs_up else "Wrong or missing the key fact.",
        )
        mlflow.log_feedback(
            trace_id=trace_id,
            name="rating",
            value=rng.choice([4, 5]) if thumbs_up else rng.choice([1, 2, 3]),
            source=source,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.seed", description=__doc__.splitlines()[0])
    parser.add_argument("--if-empty", action="store_true", help="exit quietly (0) when the store already has content")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # MLflow logs every model registration and prediction check at INFO; keep the output to progress.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    started = time.monotonic()
    settings = configure_mlflow()
    print(f"Seeding the demo workspace into {settings.workspace_label} ...", flush=True)
    if not seed(settings):
        message = "The store already has content; the demo was not seeded (nothing was changed)."
        print(message, flush=True)
        return 0 if args.if_empty else 1
    print(f"Demo workspace ready in {time.monotonic() - started:.0f} s.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
