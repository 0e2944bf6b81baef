"""Per-row results of evaluation runs and their comparison against a baseline with paired tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Sequence

import pandas as pd

from services import statistics
from services._clients import configure_mlflow, mlflow_client, translate_errors
from services.errors import NotFoundError, ValidationError
from services.evaluations.listing import RunLink, run_link
from services.evaluations.runs import AGENT_TAG, DATASET_TAG, VERSION_TAG, dataset_input_name
from services.links import ModelIndex
from services.scorers import answer_text
from services.settings import Settings


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
    if response is None:
        return ""
    if isinstance(response, str):
        try:
            response = json.loads(response)
        except (json.JSONDecodeError, ValueError):
            return response
    # ResponsesAgent output first; ChatAgent messages, chat completions and plain dicts otherwise.
    text = answer_text(response)
    if text or not isinstance(response, dict) or "output" in response:
        return text
    said = [m.get("content") for m in response.get("messages") or [] if isinstance(m, dict) and m.get("role") == "assistant"]
    said = [t for t in said if isinstance(t, str) and t]
    if said:
        return said[-1]
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        content = (choices[0].get("message") or {}).get("content")
        if isinstance(content, str):
            return content
    for key in ("content", "answer", "text"):
        if isinstance(response.get(key), str):
            return response[key]
    return json.dumps(response, ensure_ascii=False, default=str)


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


def _run_ref(run: Any, letter: str, rows: int, link: RunLink | None = None) -> RunRef:
    tags = run.data.tags
    agent, version = (link.agent, link.version) if link else (tags.get(AGENT_TAG), tags.get(VERSION_TAG))
    name = f"{agent} v{version}" if agent and version else (run.info.run_name or run.info.run_id[:8])
    return RunRef(run.info.run_id, f"{letter}: {name}", run.info.experiment_id, agent, version,
                  tags.get(DATASET_TAG) or dataset_input_name(run), rows)


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
    index_of_models = ModelIndex(client)
    for index, run_id in enumerate(ordered):
        with translate_errors(f"evaluation run {run_id}"):
            run = client.get_run(run_id)
        if run.data.tags.get("mlflow.runType") != "genai_evaluate":
            raise NotFoundError(f"Run {run_id} is not an evaluation run.")
        frame, pass_fail = run_rows(run_id, settings)
        frames[run_id] = frame.set_index("row_key", drop=False)
        for name, flag in pass_fail.items():
            kinds[name] = kinds.get(name, True) and flag
        refs.append(_run_ref(run, chr(ord("A") + index) if index < 26 else str(index + 1), len(frame),
                             run_link(client, run, index_of_models)))
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

