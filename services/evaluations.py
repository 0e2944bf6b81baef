"""Evaluation runs made with ``mlflow.genai.evaluate``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

from services._clients import mlflow_client, translate_errors
from services.settings import Settings

EVAL_RUN_FILTER = "tags.`mlflow.runType` = 'genai_evaluate'"
AGENT_TAG = "agentops.agent"
VERSION_TAG = "agentops.version"
DATASET_TAG = "agentops.dataset"


@dataclass(frozen=True)
class EvaluationSummary:
    """One evaluation run; ``metrics`` holds the ``<scorer>/mean`` values."""

    run_id: str
    run_name: str
    experiment_id: str
    agent: str | None
    version: str | None
    dataset: str | None
    started_at: datetime | None
    status: str
    metrics: dict[str, float]


def latest_evaluations(
    experiment_ids: Sequence[str], *, limit: int = 10, settings: Settings | None = None
) -> list[EvaluationSummary]:
    """The most recent evaluation runs across the given experiments, newest first."""
    if not experiment_ids:
        return []
    client = mlflow_client(settings)
    with translate_errors("evaluation runs"):
        runs = client.search_runs(
            experiment_ids=list(experiment_ids),
            filter_string=EVAL_RUN_FILTER,
            max_results=limit,
            order_by=["attributes.start_time DESC"],
        )
    return [
        EvaluationSummary(
            run_id=run.info.run_id,
            run_name=run.info.run_name or run.info.run_id,
            experiment_id=run.info.experiment_id,
            agent=run.data.tags.get(AGENT_TAG),
            version=run.data.tags.get(VERSION_TAG),
            dataset=run.data.tags.get(DATASET_TAG),
            started_at=datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc)
            if run.info.start_time
            else None,
            status=run.info.status,
            metrics={k: v for k, v in run.data.metrics.items() if k.endswith("/mean")},
        )
        for run in runs
    ]


# --- Running evaluations ----------------------------------------------------------------------

import contextlib
import io
import json
import threading
from enum import StrEnum
from typing import Any, Callable

import pandas as pd

from services import statistics
from services._clients import configure_mlflow, get_or_create_experiment
from services.errors import NotFoundError, ValidationError

# Registered-model tag naming the experiment of an agent (kept in sync with services.registry).
_EXPERIMENT_TAG = "agentops.experiment_id"
ROWS_TAG = "agentops.rows"
SCORERS_TAG = "agentops.scorers"

Progress = Callable[[int, int, str], None]
# evaluate() changes process-wide state (active model, stdout); one evaluation at a time.
_EVALUATE_LOCK = threading.Lock()


@dataclass(frozen=True)
class EvaluationRequest:
    """What to evaluate: a version number or alias of ``agent`` on a named dataset or given rows."""

    agent: str
    version: str
    scorers: tuple[str, ...]
    dataset_name: str | None = None
    rows: tuple[dict[str, Any], ...] | None = None
    dataset_label: str | None = None
    options: Any = None  # services.scorers.ScorerOptions


@dataclass(frozen=True)
class ResolvedVersion:
    agent: str
    version: str
    model_id: str | None
    experiment_id: str


def _check_request(request: EvaluationRequest) -> None:
    if not request.agent.strip():
        raise ValidationError("Pick an agent to evaluate.")
    if not request.version.strip():
        raise ValidationError("Pick a version or alias to evaluate.")
    if (request.dataset_name is None) == (request.rows is None):
        raise ValidationError("Pick exactly one dataset: an MLflow evaluation dataset or an uploaded file.")
    if not request.scorers:
        raise ValidationError("Pick at least one scorer.")


def resolve_version(agent: str, ref: str, settings: Settings | None = None) -> ResolvedVersion:
    """A version number or alias of an agent → its number, LoggedModel id and experiment."""
    settings = configure_mlflow(settings)
    client = mlflow_client(settings)
    ref = ref.strip()
    with translate_errors(f"registered model {agent!r}"):
        model = client.get_registered_model(agent)
        if ref.removeprefix("v").isdigit():
            version = client.get_model_version(agent, ref.removeprefix("v"))
        else:
            alias = ref.removeprefix("@")
            try:
                version = client.get_model_version_by_alias(agent, alias)
            except Exception as exc:  # noqa: BLE001 - a missing alias is reported as INVALID_PARAMETER_VALUE
                if "alias" in str(exc).lower() and "not found" in str(exc).lower():
                    raise NotFoundError(f"{agent} has no alias @{alias}.") from exc
                raise
    source = version.source or ""
    model_id = getattr(version, "model_id", None) or (
        source.removeprefix("models:/").split("/")[0] if source.startswith("models:/m-") else None
    )
    experiment_id = (getattr(model, "tags", None) or {}).get(_EXPERIMENT_TAG)
    if not experiment_id:
        with translate_errors("the experiment of the agent"):
            experiment_id = get_or_create_experiment(client, f"agentops-{agent}", settings)
    return ResolvedVersion(agent, str(version.version), model_id, str(experiment_id))


@contextlib.contextmanager
def skip_first_row_check() -> Any:
    """Skip evaluate's trial prediction on the first row.

    When that single row raises, evaluate aborts the whole run; our predict function is
    already traced, so the check adds nothing and a failing row must be recorded, not fatal.
    """
    import os

    key = "MLFLOW_GENAI_EVAL_SKIP_TRACE_VALIDATION"
    previous = os.environ.get(key)
    os.environ[key] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def evaluate_rows(
    rows: list[dict[str, Any]],
    predict_fn: Callable[..., Any],
    scorers: list[Any],
    *,
    experiment_id: str,
    run_name: str,
    tags: dict[str, str],
    model_id: str | None = None,
    progress: Progress | None = None,
) -> str:
    """Run ``mlflow.genai.evaluate`` on rows in a new run; returns the run id.

    A row whose prediction raises is stored as a failed trace (state ERROR), not dropped.
    """
    import mlflow

    total = len(rows)
    done = 0
    counter = threading.Lock()

    @mlflow.trace(name="predict_fn")
    def counted(**inputs: Any) -> Any:
        nonlocal done
        try:
            return predict_fn(**inputs)
        finally:
            with counter:
                done += 1
                current = done
            if progress:
                progress(min(current, total), total, f"Predicted {min(current, total)} of {total} rows")

    with _EVALUATE_LOCK:
        if progress:
            progress(0, total, "Starting the evaluation run")
        all_tags = {**tags, ROWS_TAG: str(total)}
        with mlflow.start_run(run_name=run_name, experiment_id=experiment_id, tags=all_tags) as run:
            # evaluate prints banners and a tqdm bar; progress is reported through the callback.
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
                skip_first_row_check(),
            ):
                mlflow.genai.evaluate(data=rows, scorers=scorers, predict_fn=counted, model_id=model_id)
        # evaluate leaves the evaluated model active, which would link later traces to it.
        mlflow.clear_active_model()
    if progress:
        progress(total, total, "Scored and stored")
    return run.info.run_id


def run_evaluation(request: EvaluationRequest, settings: Settings | None = None, progress: Progress | None = None) -> str:
    """Evaluate a registered version (number or alias) on a dataset with the chosen scorers."""
    from services import datasets, scorers
    from services.settings import Backend

    _check_request(request)
    settings = configure_mlflow(settings)
    rows = datasets.validate_rows(list(request.rows)) if request.rows is not None else None
    built = scorers.build_scorers(
        list(request.scorers), request.options, databricks=settings.backend is Backend.DATABRICKS
    )
    resolved = resolve_version(request.agent, request.version, settings)
    if rows is None:
        rows = datasets.validate_rows(datasets.load_dataset_rows(request.dataset_name or "", settings))
    dataset_label = request.dataset_name or request.dataset_label or "upload"
    import mlflow

    if progress:
        progress(0, len(rows), f"Loading {request.agent} v{resolved.version}")
    with translate_errors(f"models:/{request.agent}/{resolved.version}"):
        loaded = mlflow.pyfunc.load_model(f"models:/{request.agent}/{resolved.version}")

    def predict_fn(question: str, **_: Any) -> str:
        return scorers.answer_text(loaded.predict({"input": [{"role": "user", "content": question}]}))

    with translate_errors("the evaluation run"):
        return evaluate_rows(
            rows,
            predict_fn,
            built,
            experiment_id=resolved.experiment_id,
            run_name=f"eval {request.agent} v{resolved.version} on {dataset_label}",
            tags={
                AGENT_TAG: request.agent,
                VERSION_TAG: resolved.version,
                DATASET_TAG: dataset_label,
                SCORERS_TAG: ",".join(request.scorers),
            },
            model_id=resolved.model_id,
            progress=progress,
        )


# --- Per-row results and comparison -------------------------------------------------------------

class RowChange(StrEnum):
    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    UNCHANGED = "unchanged"
    ONLY_BASELINE = "only in baseline"
    ONLY_CANDIDATE = "not in baseline"


@dataclass(frozen=True)
class RunRef:
    """One compared run; ``label`` ("A: support-agent v2") names it in tables and verdicts."""

    run_id: str
    label: str
    experiment_id: str
    agent: str | None
    version: str | None
    dataset: str | None
    rows: int


@dataclass(frozen=True)
class CandidateComparison:
    """One run against the baseline: row overlap, one paired test per metric and the verdict."""

    candidate: RunRef
    shared_rows: int
    only_in_baseline: int
    only_in_candidate: int
    tests: tuple[statistics.PairedTest, ...]
    verdict: str

    @property
    def disjoint(self) -> bool:
        return self.shared_rows == 0


@dataclass(frozen=True)
class Comparison:
    """Two or more evaluation runs compared row by row against a baseline.

    ``summary`` columns: run, metric, kind, n, baseline, value, delta, ci_low, ci_high,
    p_value, test, direction (one row per candidate run and metric).
    ``rows`` columns: row_key, question, change (``RowChange``), present_in, then per run
    ``<label> · output``, ``<label> · <metric>`` (1/0 or number, NaN = failed or missing) and
    ``<label> · <metric> rationale``.
    ``deltas`` columns: run, metric, row_key, delta (per shared row, candidate − baseline).
    This is what the promotion gate reads as evidence.
    """

    baseline: RunRef
    candidates: tuple[CandidateComparison, ...]
    metrics: tuple[str, ...]
    summary: pd.DataFrame
    rows: pd.DataFrame
    deltas: pd.DataFrame

    @property
    def runs(self) -> tuple[RunRef, ...]:
        return (self.baseline, *(c.candidate for c in self.candidates))


RUN_ROW_COLUMNS = ("row_key", "question", "inputs", "output", "state", "trace_id")


def _score(value: Any) -> tuple[float | None, bool]:
    """(numeric value, is pass/fail) of an assessment value."""
    if isinstance(value, bool):
        return float(value), True
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("yes", "pass", "true"):
            return 1.0, True
        if lowered in ("no", "fail", "false"):
            return 0.0, True
        try:
            return float(lowered), False
        except ValueError:
            return None, False
    if isinstance(value, (int, float)):
        return float(value), False
    return None, False


def _output_text(response: Any) -> str:
    from services.scorers import answer_text

    if response is None:
        return ""
    if isinstance(response, str):
        try:
            response = json.loads(response)
        except (json.JSONDecodeError, ValueError):
            return response
    return answer_text(response)


def run_rows(run_id: str, settings: Settings | None = None) -> tuple[pd.DataFrame, dict[str, bool]]:
    """Per-row results of an evaluation run and each metric's pass/fail flag.

    Columns: ``RUN_ROW_COLUMNS`` plus ``<metric>`` (1/0 or number; NaN when the scorer failed)
    and ``<metric> rationale``. ``state`` is ``OK`` or ``ERROR`` (the prediction failed).
    Assessments added later by another run (re-scoring) are ignored.
    """
    import mlflow

    settings = configure_mlflow(settings)
    client = mlflow_client(settings)
    with translate_errors(f"evaluation run {run_id}"):
        run = client.get_run(run_id)
        traces = mlflow.search_traces(
            locations=[run.info.experiment_id], run_id=run_id, include_spans=True, return_type="list"
        )
    records: list[dict[str, Any]] = []
    pass_fail: dict[str, bool] = {}
    seen: dict[str, int] = {}
    for trace in sorted(traces, key=lambda t: t.info.request_time or 0):
        try:
            inputs = json.loads(trace.data.request) if trace.data.request else {}
        except (json.JSONDecodeError, TypeError):
            inputs = {"question": str(trace.data.request)}
        if isinstance(inputs, dict) and len(inputs) == 1:
            (only_key, only_value), = inputs.items()
            # A traced ``f(**inputs)`` records its keyword arguments under the parameter's name.
            if only_key in ("inputs", "kwargs") and isinstance(only_value, dict):
                inputs = only_value
        inputs = _as_question(inputs)
        canonical = json.dumps(inputs, sort_keys=True, default=str)
        seen[canonical] = seen.get(canonical, 0) + 1
        # Duplicate inputs in one dataset are paired by occurrence.
        key = canonical if seen[canonical] == 1 else f"{canonical}#{seen[canonical]}"
        state = str(getattr(trace.info.state, "value", trace.info.state))
        record: dict[str, Any] = {
            "row_key": key,
            "question": str(inputs.get("question", canonical)) if isinstance(inputs, dict) else canonical,
            "inputs": canonical,
            "output": _output_text(trace.data.response),
            "state": state,
            "trace_id": trace.info.trace_id,
        }
        for assessment in sorted(trace.info.assessments or [], key=lambda a: a.create_time_ms or 0):
            feedback = getattr(assessment, "feedback", None)
            if feedback is None:
                continue
            source_run = (assessment.metadata or {}).get("mlflow.assessment.sourceRunId")
            if source_run and source_run != run_id:
                continue
            name = assessment.name
            value, is_pf = _score(feedback.value)
            error = getattr(feedback, "error", None)
            record[name] = value
            rationale = assessment.rationale or ""
            if error is not None:
                rationale = f"Scorer error: {getattr(error, 'error_message', None) or getattr(error, 'error_code', error)}"
            record[f"{name} rationale"] = rationale
            if value is not None:
                pass_fail[name] = pass_fail.get(name, True) and is_pf
            else:
                pass_fail.setdefault(name, True)
        if state == "ERROR" and not record["output"]:
            record["output"] = "(prediction failed)"
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=None) if records else pd.DataFrame(columns=list(RUN_ROW_COLUMNS))
    return frame, pass_fail


def _as_question(inputs: Any) -> Any:
    """``{"question": text}`` for a ResponsesAgent request, so runs traced at either level pair up.

    When ``predict_fn`` calls a traced model, evaluate keeps the model's own root span, whose
    request is the ResponsesAgent payload rather than the dataset row's inputs.
    """
    if not isinstance(inputs, dict):
        return inputs
    payload = inputs.get("request") if isinstance(inputs.get("request"), dict) else inputs
    messages = payload.get("input") if isinstance(payload, dict) else None
    if "question" not in inputs and isinstance(messages, list):
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            content = users[-1].get("content")
            if isinstance(content, list):
                content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
            return {"question": str(content)}
    return inputs


def _run_ref(run: Any, letter: str, rows: int) -> RunRef:
    tags = run.data.tags
    agent, version = tags.get(AGENT_TAG), tags.get(VERSION_TAG)
    name = f"{agent} v{version}" if agent and version else (run.info.run_name or run.info.run_id[:8])
    return RunRef(run.info.run_id, f"{letter}: {name}", run.info.experiment_id, agent, version, tags.get(DATASET_TAG), rows)


def compare_runs(
    run_ids: Sequence[str], baseline_run_id: str | None = None, settings: Settings | None = None,
    *, alpha: float = statistics.ALPHA,
) -> Comparison:
    """Compare evaluation runs row by row against a baseline (default: the first) with paired tests."""
    run_ids = list(dict.fromkeys(run_ids))
    if len(run_ids) < 2:
        raise ValidationError("Pick at least two evaluation runs to compare.")
    baseline_run_id = baseline_run_id or run_ids[0]
    if baseline_run_id not in run_ids:
        raise ValidationError("The baseline must be one of the compared runs.")
    ordered = [baseline_run_id] + [r for r in run_ids if r != baseline_run_id]
    settings = configure_mlflow(settings)
    client = mlflow_client(settings)
    frames: dict[str, pd.DataFrame] = {}
    kinds: dict[str, bool] = {}
    refs: list[RunRef] = []
    for index, run_id in enumerate(ordered):
        with translate_errors(f"evaluation run {run_id}"):
            run = client.get_run(run_id)
        if run.data.tags.get("mlflow.runType") != "genai_evaluate":
            raise NotFoundError(f"Run {run_id} is not an evaluation run.")
        frame, pass_fail = run_rows(run_id, settings)
        frames[run_id] = frame.set_index("row_key", drop=False)
        for name, flag in pass_fail.items():
            kinds[name] = kinds.get(name, True) and flag
        refs.append(_run_ref(run, chr(ord("A") + index) if index < 26 else str(index + 1), len(frame)))
    metrics = tuple(sorted(kinds))
    base_ref, base = refs[0], frames[baseline_run_id]

    summary_records: list[dict[str, Any]] = []
    delta_records: list[dict[str, Any]] = []
    candidates: list[CandidateComparison] = []
    for ref in refs[1:]:
        other = frames[ref.run_id]
        shared = [k for k in base.index if k in other.index]
        tests = []
        for metric in metrics:
            b = [base.at[k, metric] if metric in base.columns else None for k in shared]
            c = [other.at[k, metric] if metric in other.columns else None for k in shared]
            kind = statistics.MetricKind.PASS_FAIL if kinds[metric] else statistics.MetricKind.NUMERIC
            test = statistics.paired_test(metric, kind, _nan_to_none(b), _nan_to_none(c), alpha=alpha)
            tests.append(test)
            summary_records.append({
                "run": ref.label, "metric": metric, "kind": str(kind), "n": test.n,
                "baseline": test.baseline_mean, "value": test.candidate_mean, "delta": test.delta,
                "ci_low": test.ci_low, "ci_high": test.ci_high, "p_value": test.p_value,
                "test": test.test, "direction": str(test.direction),
            })
            for key, x, y in zip(shared, _nan_to_none(b), _nan_to_none(c)):
                if x is not None and y is not None:
                    delta_records.append({"run": ref.label, "metric": metric, "row_key": key, "delta": y - x})
        candidates.append(CandidateComparison(
            candidate=ref,
            shared_rows=len(shared),
            only_in_baseline=sum(1 for k in base.index if k not in other.index),
            only_in_candidate=sum(1 for k in other.index if k not in base.index),
            tests=tuple(tests),
            verdict=statistics.verdict(ref.label, tests, len(shared)),
        ))

    rows_frame = _rows_frame(refs, frames, metrics)
    summary = pd.DataFrame.from_records(summary_records, columns=[
        "run", "metric", "kind", "n", "baseline", "value", "delta", "ci_low", "ci_high", "p_value", "test", "direction"])
    deltas = pd.DataFrame.from_records(delta_records, columns=["run", "metric", "row_key", "delta"])
    return Comparison(base_ref, tuple(candidates), metrics, summary, rows_frame, deltas)


def _nan_to_none(values: list[Any]) -> list[float | None]:
    out = []
    for v in values:
        out.append(None if v is None or (isinstance(v, float) and v != v) else float(v))
    return out


def _rows_frame(refs: list[RunRef], frames: dict[str, pd.DataFrame], metrics: tuple[str, ...]) -> pd.DataFrame:
    base_ref = refs[0]
    base = frames[base_ref.run_id]
    keys: list[str] = list(base.index)
    for ref in refs[1:]:
        keys.extend(k for k in frames[ref.run_id].index if k not in keys)
    records = []
    for key in keys:
        present = [ref for ref in refs if key in frames[ref.run_id].index]
        question = frames[present[0].run_id].at[key, "question"]
        record: dict[str, Any] = {"row_key": key, "question": question,
                                  "present_in": ", ".join(ref.label.split(":")[0] for ref in present)}
        better = worse = False
        for ref in refs:
            frame = frames[ref.run_id]
            here = key in frame.index
            record[f"{ref.label} · output"] = frame.at[key, "output"] if here else "(not in this run)"
            for metric in metrics:
                value = frame.at[key, metric] if here and metric in frame.columns else None
                record[f"{ref.label} · {metric}"] = value
                rationale = frame.at[key, f"{metric} rationale"] if here and f"{metric} rationale" in frame.columns else ""
                record[f"{ref.label} · {metric} rationale"] = rationale if isinstance(rationale, str) else ""
                if ref is not base_ref and here and key in base.index and metric in base.columns and metric in frame.columns:
                    x, y = base.at[key, metric], frame.at[key, metric]
                    if x == x and y == y and x is not None and y is not None:
                        better |= y > x
                        worse |= y < x
        if key not in base.index:
            change = RowChange.ONLY_CANDIDATE
        elif len(present) < len(refs) and len(present) == 1:
            change = RowChange.ONLY_BASELINE
        elif worse:
            change = RowChange.REGRESSION
        elif better:
            change = RowChange.IMPROVEMENT
        else:
            change = RowChange.UNCHANGED
        record["change"] = str(change)
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return pd.DataFrame(columns=["row_key", "question", "change", "present_in"])
    first = ["row_key", "question", "change", "present_in"]
    return frame[first + [c for c in frame.columns if c not in first]]


def evaluation_evidence(
    candidate_run_id: str, baseline_run_id: str, settings: Settings | None = None
) -> CandidateComparison:
    """The candidate run against the baseline run: the evidence a promotion gate reads."""
    return compare_runs([baseline_run_id, candidate_run_id], baseline_run_id, settings).candidates[0]


def version_choices(agent: str, settings: Settings | None = None) -> dict[str, str]:
    """Versions an evaluation can target: ``{"@alias": "@alias (v2)", "2": "v2", ...}``, aliases first."""
    client = mlflow_client(settings)
    escaped = agent.replace("'", "\\'")
    with translate_errors(f"registered model {agent!r}"):
        model = client.get_registered_model(agent)
        versions = client.search_model_versions(filter_string=f"name='{escaped}'", max_results=1000)
    raw = getattr(model, "aliases", None) or {}
    aliases = raw if isinstance(raw, dict) else {a.alias: a.version for a in raw}
    choices = {f"@{alias}": f"@{alias} (v{number})" for alias, number in sorted(aliases.items())}
    for number in sorted({int(v.version) for v in versions}, reverse=True):
        choices[str(number)] = f"v{number}"
    return choices


def evaluation_runs(experiment_ids: Sequence[str], settings: Settings | None = None, *, limit: int = 200) -> list[EvaluationSummary]:
    """Evaluation runs that can be compared, newest first."""
    return latest_evaluations(experiment_ids, limit=limit, settings=settings)
