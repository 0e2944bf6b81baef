"""An MLflow 3 workspace written the way another team's code writes it.

Only MLflow's public APIs, and no ``agentops.*`` tag, setting or helper anywhere: agents registered
from LoggedModels, traces linked with ``mlflow.set_active_model``, evaluation runs from
``mlflow.genai.evaluate`` (one with a model, one with a bare ``predict_fn``), feedback logged with
``mlflow.log_feedback`` under the team's own names, a prompt from the prompt registry loaded by
versions. :func:`build` returns the exact facts it wrote, so tests assert against them rather than
against numbers copied into the test.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

UNICODE_AGENT = "Café Helper ✨ ünïcode"
EMPTY_AGENT = "empty-agent"
QUIET_AGENT = "quiet-agent"
BULK_AGENT = "bulk-agent"
BULK_VERSIONS = 200
PROMPT_NAME = "support-system-prompt"
REVIEWERS = ("alice@example.com", "bob@example.com", "chen@example.com")
# Per version of the unicode agent: (traces, of which errors). v3 has versions but no errors.
TRACE_PLAN = {"1": (9, 2), "2": (7, 1), "3": (4, 0)}
UNLINKED_TRACES = 3  # traces in the agent's experiment with no model id at all
ORPHAN_TRACES = 2  # traces linked to a LoggedModel that no registered version comes from
PROMPT_TEMPLATES = (
    "You are a helpful support agent. Answer {{question}} briefly.",
    "You are a helpful support agent for Café customers.\nAnswer {{question}} briefly and cite the order id.",
)


@dataclass
class VersionFacts:
    version: str
    model_id: str
    run_id: str | None
    params: dict[str, str]
    traces: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    trace_ids: list[str] = field(default_factory=list)
    prompt_versions: list[str] = field(default_factory=list)  # "name/version"


@dataclass
class AgentFacts:
    name: str
    experiment_id: str | None
    versions: dict[str, VersionFacts]
    aliases: dict[str, str]


@dataclass
class EvalRunFacts:
    run_id: str
    experiment_id: str
    model_id: str | None
    questions: list[str]


@dataclass
class WorkspaceFacts:
    tracking_uri: str
    data_dir: Path
    agents: dict[str, AgentFacts]
    unlinked_trace_ids: list[str]
    orphan_trace_ids: list[str]
    # assessment name -> value -> count (only feedback the builder logged on live traces)
    feedback: dict[str, Counter]
    feedback_reviewers: dict[str, set[str]]
    eval_runs: dict[str, EvalRunFacts]  # "with_model" / "bare"
    prompt_name: str
    prompt_texts: dict[str, str]  # prompt version -> template

    @property
    def experiment_ids(self) -> set[str]:
        return {a.experiment_id for a in self.agents.values() if a.experiment_id}


def build(data_dir: Path) -> WorkspaceFacts:
    """Write the workspace into ``data_dir/mlflow.db`` (artifacts under ``data_dir/artifacts``)."""
    import mlflow
    from mlflow import MlflowClient

    with mlflow_store_at(data_dir) as uri:
        return _build(mlflow, MlflowClient(uri, uri), uri, data_dir)


@contextlib.contextmanager
def mlflow_store_at(data_dir: Path) -> Iterator[str]:
    """MLflow pointed (quietly) at ``data_dir/mlflow.db`` for the block; yields its URI. Afterwards no run or
    model is left active and MLflow points where it did before."""
    import mlflow

    data_dir.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{data_dir / 'mlflow.db'}"
    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield uri
    finally:
        mlflow.clear_active_model()
        if mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def _experiment(client, name: str, data_dir: Path) -> str:
    return client.create_experiment(name, artifact_location=(data_dir / "artifacts" / name).as_uri())


def _build(mlflow, client, uri: str, data_dir: Path) -> WorkspaceFacts:
    os.environ.setdefault("MLFLOW_GENAI_EVAL_MAX_WORKERS", "2")
    rng = random.Random(1717)
    agents: dict[str, AgentFacts] = {}

    # Prompt registry: two versions of the system prompt.
    prompt_texts = {}
    for template in PROMPT_TEMPLATES:
        pv = mlflow.genai.register_prompt(name=PROMPT_NAME, template=template, commit_message="edit")
        prompt_texts[str(pv.version)] = template

    # --- The unicode agent: three versions logged in runs, traces via set_active_model.
    support_exp = _experiment(client, "support team / café bot", data_dir)
    client.create_registered_model(UNICODE_AGENT, description="Answers customer questions.")
    versions: dict[str, VersionFacts] = {}
    for number in (1, 2, 3):
        params = {"temperature": f"0.{number}", "llm": ["gpt-4o-mini", "gpt-4o", "claude-3-5"][number - 1]}
        with mlflow.start_run(experiment_id=support_exp, run_name=f"build v{number}") as run:
            mlflow.log_params(params)
            model = mlflow.create_external_model(
                name="support-bot", source_run_id=run.info.run_id, params=params, experiment_id=support_exp
            )
            # v1 uses prompt version 1; v2 and v3 use version 2.
            prompt_version = "1" if number == 1 else "2"
            mlflow.genai.load_prompt(f"prompts:/{PROMPT_NAME}/{prompt_version}", model_id=model.model_id)
        mv = mlflow.register_model(f"models:/{model.model_id}", UNICODE_AGENT)
        versions[str(mv.version)] = VersionFacts(
            str(mv.version), model.model_id, run.info.run_id, params,
            prompt_versions=[f"{PROMPT_NAME}/{prompt_version}"],
        )
    aliases = {"champion": "2", "challenger-with-a-rather-long-alias-name": "3"}
    for alias, version in aliases.items():
        client.set_registered_model_alias(UNICODE_AGENT, alias, version)
    agents[UNICODE_AGENT] = AgentFacts(UNICODE_AGENT, support_exp, versions, aliases)

    mlflow.set_experiment(experiment_id=support_exp)
    for number, (count, errors) in TRACE_PLAN.items():
        facts = versions[number]
        mlflow.set_active_model(model_id=facts.model_id)
        for i in range(count):
            fail = i < errors
            tokens_in, tokens_out = rng.randint(20, 80), rng.randint(5, 40)
            trace_id = _one_trace(mlflow, f"question {number}-{i}", tokens_in, tokens_out, fail)
            facts.trace_ids.append(trace_id)
            facts.traces += 1
            facts.errors += int(fail)
            if not fail:
                facts.input_tokens += tokens_in
                facts.output_tokens += tokens_out
    # A LoggedModel nobody registered: its traces link to a model id that maps to no version.
    orphan = mlflow.create_external_model(name="prototype", experiment_id=support_exp)
    mlflow.set_active_model(model_id=orphan.model_id)
    orphaned = [_one_trace(mlflow, f"orphan {i}", 10, 5, False) for i in range(ORPHAN_TRACES)]
    mlflow.clear_active_model()
    unlinked = [_one_trace(mlflow, f"unlinked {i}", 10, 5, False) for i in range(UNLINKED_TRACES)]
    mlflow.flush_trace_async_logging()

    # --- Feedback of the team's own names, from several reviewers.
    from mlflow.entities import AssessmentSource, AssessmentSourceType

    feedback: dict[str, Counter] = {"helpful": Counter(), "accuracy": Counter(), "tone": Counter()}
    reviewers: dict[str, set[str]] = {name: set() for name in feedback}
    all_linked = [t for v in versions.values() for t in v.trace_ids]
    for index, trace_id in enumerate(all_linked[::2]):
        reviewer = REVIEWERS[index % len(REVIEWERS)]
        source = AssessmentSource(source_type=AssessmentSourceType.HUMAN, source_id=reviewer)
        helpful = index % 3 != 0
        accuracy = [0.25, 0.5, 1.0][index % 3]
        tone = ["friendly", "terse", "friendly", "rude"][index % 4]
        for name, value in (("helpful", helpful), ("accuracy", accuracy), ("tone", tone)):
            mlflow.log_feedback(trace_id=trace_id, name=name, value=value, source=source)
            feedback[name][value] += 1
            reviewers[name].add(reviewer)

    # --- Evaluation runs: one of version 2's LoggedModel, one of a bare predict_fn.
    from mlflow.genai.scorers import scorer

    @scorer
    def mentions_order(outputs) -> bool:
        return "order" in str(outputs)

    shared = ["Where is my order?", "How do I return a mug?"]
    with_model_q = shared + ["Do you ship to Norway?"]
    bare_q = shared + ["What are your opening hours?", "Can I pay by card?"]

    def predict(question: str) -> str:
        return f"About your order: {question.lower()}"

    eval_runs = {}
    for key, questions, model_id in (
        ("with_model", with_model_q, versions["2"].model_id),
        ("bare", bare_q, None),
    ):
        with mlflow.start_run(experiment_id=support_exp, run_name=f"eval {key}") as run:
            mlflow.genai.evaluate(
                data=[{"inputs": {"question": q}} for q in questions],
                predict_fn=predict,
                scorers=[mentions_order],
                **({"model_id": model_id} if model_id else {}),
            )
        mlflow.clear_active_model()
        eval_runs[key] = EvalRunFacts(run.info.run_id, support_exp, model_id, questions)

    # --- An agent with no versions, and one with versions but no traces.
    client.create_registered_model(EMPTY_AGENT)
    quiet_exp = _experiment(client, "quiet-experiments", data_dir)
    quiet_versions = {}
    for number in (1, 2):
        params = {"temperature": f"0.{number}"}
        model = mlflow.create_external_model(name="quiet", params=params, experiment_id=quiet_exp)
        mv = mlflow.register_model(f"models:/{model.model_id}", QUIET_AGENT)
        quiet_versions[str(mv.version)] = VersionFacts(str(mv.version), model.model_id, None, params)
    agents[QUIET_AGENT] = AgentFacts(QUIET_AGENT, quiet_exp, quiet_versions, {})
    agents[EMPTY_AGENT] = AgentFacts(EMPTY_AGENT, None, {}, {})

    # --- An agent with hundreds of versions, each its own LoggedModel (no run), two with traces.
    bulk_exp = _experiment(client, "bulk-experiments", data_dir)
    client.create_registered_model(BULK_AGENT)
    bulk_versions = {}
    for number in range(1, BULK_VERSIONS + 1):
        params = {"variant": str(number), "temperature": f"{(number % 10) / 10:.1f}"}
        model = client.create_logged_model(experiment_id=bulk_exp, name=f"bulk-{number}", params=params)
        mv = client.create_model_version(BULK_AGENT, source=f"models:/{model.model_id}", model_id=model.model_id)
        bulk_versions[str(mv.version)] = VersionFacts(str(mv.version), model.model_id, None, params)
    client.set_registered_model_alias(BULK_AGENT, "production", str(BULK_VERSIONS))
    mlflow.set_experiment(experiment_id=bulk_exp)
    for number, count in ((str(BULK_VERSIONS), 3), ("150", 2)):
        facts = bulk_versions[number]
        mlflow.set_active_model(model_id=facts.model_id)
        for i in range(count):
            facts.trace_ids.append(_one_trace(mlflow, f"bulk {number}-{i}", 11, 7, False))
            facts.traces += 1
            facts.input_tokens += 11
            facts.output_tokens += 7
    mlflow.clear_active_model()
    agents[BULK_AGENT] = AgentFacts(BULK_AGENT, bulk_exp, bulk_versions, {"production": str(BULK_VERSIONS)})
    mlflow.flush_trace_async_logging()

    return WorkspaceFacts(
        tracking_uri=uri,
        data_dir=data_dir,
        agents=agents,
        unlinked_trace_ids=unlinked,
        orphan_trace_ids=orphaned,
        feedback=feedback,
        feedback_reviewers=reviewers,
        eval_runs=eval_runs,
        prompt_name=PROMPT_NAME,
        prompt_texts=prompt_texts,
    )


def _one_trace(mlflow, question: str, tokens_in: int, tokens_out: int, fail: bool) -> str:
    """One agent call: a root AGENT span and a CHAT_MODEL child carrying token usage."""
    from mlflow.entities import SpanType
    from mlflow.tracing.constant import SpanAttributeKey

    try:
        with mlflow.start_span(name="agent", span_type=SpanType.AGENT) as root:
            root.set_inputs({"question": question})
            with mlflow.start_span(name="llm", span_type=SpanType.CHAT_MODEL) as llm:
                llm.set_inputs({"messages": [{"role": "user", "content": question}]})
                if fail:
                    raise TimeoutError("the model did not answer within 30 s")
                llm.set_attribute(
                    SpanAttributeKey.CHAT_USAGE,
                    {"input_tokens": tokens_in, "output_tokens": tokens_out, "total_tokens": tokens_in + tokens_out},
                )
                llm.set_outputs({"content": f"answer to {question}"})
            root.set_outputs({"answer": f"answer to {question}"})
    except TimeoutError:
        pass
    return mlflow.get_last_active_trace_id()
