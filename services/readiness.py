"""Release readiness: an automatic deployment checklist per version, shared by the UI and CI.

Each item is computed from MLflow and the backend and says pass / fail / unknown, why, and the
one action that fixes it. Items listed as *required* (registered-model tag
``agentops.readiness.required``, default: the gate and the load check) block a promotion when
they fail, exactly like a failing gate rule, with the same override-with-reason path.

The load-and-predict check runs in a separate Python process with a timeout, so a model that
crashes, hangs or exhausts memory while loading cannot take the app down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable, Sequence

from services import registry, releases, roles, versions
from services._clients import LOCAL_MLFLOW_DEFAULTS, configure_mlflow, get_settings, mlflow_client, translate_errors
from services.errors import AgentOpsError, ValidationError
from services.evaluations import EvaluationSummary, ROWS_TAG
from services.identity import Identity
from services.settings import Backend, Settings

REQUIRED_TAG = "agentops.readiness.required"
MIN_ROWS = 20  # fewer evaluation rows than this cannot show a regression with any confidence
MIN_DISTINCT_SHARE = 0.8  # at least 80% of the rows must ask something different
LOAD_TIMEOUT_S = 180.0
STAGING_ALIASES = ("challenger", "staging")
ALIAS_TRACE_TAG = "agentops.alias"

Progress = Callable[[str], None]


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    UNKNOWN = "unknown"


class Item(StrEnum):
    SIGNATURE = "signature"
    INPUT_EXAMPLE = "input_example"
    REQUIREMENTS = "requirements_pinned"
    TRACES = "traces"
    DATASETS = "eval_datasets"
    GATE = "gate"
    LOADS = "loads_and_predicts"
    UNITY_CATALOG = "unity_catalog"
    SERVED = "served_challenger"
    ALERTS = "alert_thresholds"


TITLES = {
    Item.SIGNATURE: "Model signature",
    Item.INPUT_EXAMPLE: "Input example",
    Item.REQUIREMENTS: "Pinned requirements",
    Item.TRACES: "Traces exist",
    Item.DATASETS: "Evaluation dataset size & diversity",
    Item.GATE: "Latest evaluation passes the gate",
    Item.LOADS: "Loads and answers its input example",
    Item.UNITY_CATALOG: "Unity Catalog three-level name",
    Item.SERVED: "Served behind challenger / staging traffic",
    Item.ALERTS: "Alert thresholds for the agent",
}
DEFAULT_REQUIRED = frozenset({Item.GATE, Item.LOADS})


@dataclass(frozen=True)
class ReadinessCheck:
    """One checklist item: its verdict, why, and the one action that fixes it."""

    item: Item
    verdict: Verdict
    reason: str
    fix: str = ""
    required: bool = False

    @property
    def title(self) -> str:
        return TITLES[self.item]

    @property
    def blocking(self) -> bool:
        return self.required and self.verdict is Verdict.FAIL


@dataclass(frozen=True)
class LoadCheckResult:
    """Outcome of loading ``models:/NAME/N`` in a separate process and predicting its input example."""

    ok: bool
    stage: str  # "load", "input_example", "predict", "timeout", "process" or "done"
    error: str
    seconds: float
    output_preview: str = ""


@dataclass(frozen=True)
class ReadinessReport:
    """The checklist of one version, and the gate plan it was evaluated with (single-version mode)."""

    agent: str
    version: str
    against: str
    checks: tuple[ReadinessCheck, ...]
    plan: releases.PromotionPlan | None = None
    load: LoadCheckResult | None = None

    def check(self, item: Item | str) -> ReadinessCheck:
        return next(c for c in self.checks if c.item == Item(item))

    @property
    def failures(self) -> tuple[ReadinessCheck, ...]:
        """Required items that fail: they block a promotion."""
        return tuple(c for c in self.checks if c.blocking)

    @property
    def gate_blocked(self) -> bool:
        return bool(self.plan and self.plan.blocked)

    @property
    def blocked(self) -> bool:
        """True when the version must not be promoted (gate or a required item fails)."""
        return self.gate_blocked or bool(self.failures)

    def counts(self) -> dict[Verdict, int]:
        return {v: sum(1 for c in self.checks if c.verdict is v) for v in Verdict}

    def summary(self) -> str:
        """One line, e.g. ``7/10 pass · 1 fail · 2 unknown``."""
        n = self.counts()
        text = f"{n[Verdict.PASS]}/{len(self.checks)} pass"
        if n[Verdict.FAIL]:
            text += f" · {n[Verdict.FAIL]} fail"
        if n[Verdict.UNKNOWN]:
            text += f" · {n[Verdict.UNKNOWN]} unknown"
        if self.failures:
            text += " · blocked"
        return text

    def audit_summary(self) -> dict[str, Any]:
        """A compact JSON-able summary for the audit record."""
        return {
            "items": {c.item.value: c.verdict.value for c in self.checks},
            "required": sorted(c.item.value for c in self.checks if c.required),
            "failing_required": [c.item.value for c in self.failures],
        }

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable report (what the CI command writes as JSON)."""
        plan = self.plan
        return {
            "agent": self.agent,
            "version": self.version,
            "against": self.against,
            "current_version": plan.current_version if plan else None,
            "promotable": not self.blocked,
            "blocked_by_gate": self.gate_blocked,
            "failing_required_items": [c.item.value for c in self.failures],
            "gate": [
                {"rule": c.rule.describe(), "kind": c.rule.kind.value, "metric": c.rule.metric,
                 "threshold": c.rule.threshold, "status": c.status.value, "observed": c.observed, "detail": c.detail}
                for c in (plan.checks if plan else ())
            ],
            "evidence": plan.evidence.summary() if plan else None,
            "readiness": [
                {"item": c.item.value, "title": c.title, "verdict": c.verdict.value, "required": c.required,
                 "reason": c.reason, "fix": c.fix}
                for c in self.checks
            ],
            "load_check": None if self.load is None else {
                "ok": self.load.ok, "stage": self.load.stage, "error": self.load.error,
                "seconds": round(self.load.seconds, 2), "output_preview": self.load.output_preview,
            },
        }


# --- required items ---------------------------------------------------------------------------

def parse_required(raw: str | None) -> frozenset[Item]:
    """Required items from the tag's JSON list; the defaults when unset."""
    if raw is None or not raw.strip():
        return DEFAULT_REQUIRED
    try:
        data = json.loads(raw)
        if not isinstance(data, list):
            raise TypeError("not a list")
        return frozenset(Item(x) for x in data)
    except (ValueError, TypeError) as exc:
        valid = ", ".join(i.value for i in Item)
        raise ValidationError(f"The {REQUIRED_TAG} tag is not a JSON list of items ({exc}); use some of: {valid}.") from None


def check_items(names: Sequence[str]) -> frozenset[Item]:
    """Item names → items; ``ValidationError`` naming an unknown one."""
    items = set()
    for name in names:
        try:
            items.add(Item(name.strip()))
        except ValueError:
            valid = ", ".join(i.value for i in Item)
            raise ValidationError(f"{name!r} is not a readiness item; use one of: {valid}.") from None
    return frozenset(items)


def set_required_items(agent: str, items: Sequence[str], identity: Identity, settings: Settings | None = None) -> frozenset[Item]:
    """Store which items block a promotion for this agent (a registered-model tag); needs the admin role."""
    agent = versions.check_agent_name(agent)
    checked = check_items(items)
    roles.enforce(identity, roles.Action.EDIT_RULES, settings or get_settings())
    client = mlflow_client(settings)
    with translate_errors(f"registered model {agent!r}"):
        client.set_registered_model_tag(agent, REQUIRED_TAG, json.dumps(sorted(i.value for i in checked)))
        client.set_registered_model_tag(agent, REQUIRED_TAG + ".updated_by", identity.user)
    return checked


# --- the load check (separate process) ------------------------------------------------------

_LOAD_SCRIPT = r"""
import json, sys, time
def result(**kw):
    print("RESULT " + json.dumps(kw), flush=True)
    sys.exit(0)
uri = sys.argv[1]
print("STAGE Importing MLflow", flush=True)
import mlflow
try:
    import mlflow.tracing
    mlflow.tracing.disable()  # the check must not create traces that count as real traffic
except Exception:
    pass
print("STAGE Loading " + uri, flush=True)
try:
    model = mlflow.pyfunc.load_model(uri)
except BaseException as exc:
    result(ok=False, stage="load", error=f"{type(exc).__name__}: {exc}")
try:
    example = model.input_example
except BaseException as exc:
    result(ok=False, stage="input_example", error=f"cannot read the saved input example: {type(exc).__name__}: {exc}")
if example is None:
    result(ok=False, stage="input_example", error="the model has no saved input example to answer")
print("STAGE Predicting its input example", flush=True)
try:
    output = model.predict(example)
except BaseException as exc:
    result(ok=False, stage="predict", error=f"{type(exc).__name__}: {exc}")
result(ok=True, stage="done", error="", output=repr(output)[:300])
"""


def _subprocess_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in LOCAL_MLFLOW_DEFAULTS.items():
        env.setdefault(key, value)
    env["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    env["MLFLOW_REGISTRY_URI"] = settings.registry_uri
    env["MLFLOW_TRACING_ENABLED"] = "false"
    return env


def check_load(
    agent: str, version: str | int, settings: Settings | None = None, *,
    timeout: float = LOAD_TIMEOUT_S, progress: Progress | None = None,
) -> LoadCheckResult:
    """Load ``models:/agent/version`` in a separate process and predict its saved input example."""
    agent = versions.check_agent_name(agent)
    number = versions.check_version(version)
    if timeout <= 0:
        raise ValidationError("The load check timeout must be positive (seconds).")
    settings = configure_mlflow(settings)
    versions.require_version_exists(mlflow_client(settings), agent, number)
    uri = f"models:/{agent}/{number}"
    started = time.monotonic()
    say = progress or (lambda _msg: None)
    say(f"Starting a separate process for {uri}")
    process = subprocess.Popen(
        [sys.executable, "-c", _LOAD_SCRIPT, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=_subprocess_env(settings), cwd=str(settings.data_dir if settings.data_dir.exists() else os.getcwd()),
    )
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        process.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(process.stderr), daemon=True)
    reader.start()
    outcome: dict[str, Any] | None = None
    try:
        for line in process.stdout:
            if line.startswith("STAGE "):
                say(line.removeprefix("STAGE ").strip())
            elif line.startswith("RESULT "):
                outcome = json.loads(line.removeprefix("RESULT "))
        process.wait()
    finally:
        timer.cancel()
        reader.join(timeout=5)
    seconds = time.monotonic() - started
    if timed_out.is_set() and outcome is None:
        return LoadCheckResult(False, "timeout", f"no answer within {timeout:g} s; the process was stopped", seconds)
    if outcome is None:
        tail = "".join(stderr_lines).strip().splitlines()[-3:]
        return LoadCheckResult(False, "process", f"the check process exited with code {process.returncode}: "
                               + (" | ".join(tail) or "no output"), seconds)
    say("Done" if outcome.get("ok") else f"Failed at {outcome.get('stage')}")
    return LoadCheckResult(bool(outcome.get("ok")), str(outcome.get("stage")), str(outcome.get("error") or ""),
                           seconds, str(outcome.get("output") or ""))


# --- agent-level context, read once for any number of versions ---------------------------------

@dataclass
class _Context:
    agent: str
    settings: Settings
    client: Any
    model: Any
    experiment_ids: list[str]
    runs: list[EvaluationSummary]
    traffic: dict[str, versions.VersionTraffic]
    required: frozenset[Item]
    endpoints: list[Any] | None
    endpoints_error: str
    thresholds: dict[str, Any] | None
    thresholds_error: str
    dataset_cache: dict[str, tuple[int, int] | None] = field(default_factory=dict)


def _context(agent: str, settings: Settings, required: frozenset[Item] | None) -> _Context:
    from services import alerts, serving

    client = mlflow_client(settings)
    with translate_errors(f"registered model {agent!r}"):
        model = client.get_registered_model(agent)
    if required is None:
        required = parse_required((model.tags or {}).get(REQUIRED_TAG))
    with translate_errors(f"versions of {agent!r}"):
        all_versions = registry.agent_versions(client, agent)
    experiment_ids = versions.agent_experiment_ids(agent, settings, model=model, versions=all_versions)
    runs = versions.evaluations_for(agent, settings, experiment_ids=experiment_ids)
    # Live traffic per LoggedModel, aggregated in the store (the model-id link).
    traffic = versions.traffic_by_model(experiment_ids, settings,
                                        model_ids=[m for m in map(registry.model_id_of, all_versions) if m])
    endpoints, endpoints_error = None, ""
    try:
        endpoints = serving.list_endpoints(settings)
    except AgentOpsError as exc:
        endpoints_error = str(exc)
    thresholds, thresholds_error = None, ""
    try:
        thresholds = alerts.load_thresholds(settings)
    except AgentOpsError as exc:
        thresholds_error = str(exc)
    return _Context(agent, settings, client, model, experiment_ids, runs, traffic, required,
                    endpoints, endpoints_error, thresholds, thresholds_error)


# --- the checklist -------------------------------------------------------------------------

def assess(
    agent: str, version: str | int, settings: Settings | None = None, *,
    against: str = "champion", load: LoadCheckResult | None = None, run_load: bool = False,
    load_timeout: float = LOAD_TIMEOUT_S, required: Sequence[str] | None = None, progress: Progress | None = None,
) -> ReadinessReport:
    """The full checklist of one version, with the gate plan against the ``against`` alias.

    Args:
        load: the result of an earlier ``check_load``; ``run_load=True`` runs one now instead.
        required: item names that block; default: the agent's ``agentops.readiness.required`` tag.
    """
    agent = versions.check_agent_name(agent)
    number = versions.check_version(version)
    against = releases.check_alias(against)
    wanted = check_items(required) if required is not None else None
    if load_timeout <= 0:
        raise ValidationError("The load check timeout must be positive (seconds).")
    settings = configure_mlflow(settings)
    say = progress or (lambda _msg: None)
    say("Reading the registry, evaluations and traffic")
    ctx = _context(agent, settings, wanted)
    versions.require_version_exists(ctx.client, agent, number)
    plan = releases.plan_promotion(agent, against, number, settings)
    if run_load:
        load = check_load(agent, number, settings, timeout=load_timeout, progress=say)
    say("Checking the logged model")
    checks = _checks(ctx, number, plan, load)
    return ReadinessReport(agent, number, against, checks, plan, load)


def assess_versions(
    agent: str, numbers: Sequence[str | int], settings: Settings | None = None, *, against: str = "champion",
) -> dict[str, ReadinessReport]:
    """The checklist (without the load check) of several versions, sharing the agent-level reads."""
    agent = versions.check_agent_name(agent)
    against = releases.check_alias(against)
    wanted = [versions.check_version(n) for n in numbers]
    settings = configure_mlflow(settings)
    ctx = _context(agent, settings, None)
    rules = releases.parse_rules((ctx.model.tags or {}).get(releases.GATE_TAG))
    current = registry.aliases_of(ctx.model).get(against)
    reports = {}
    for number in wanted:
        evidence = releases.gather_evidence(agent, number, current, settings, model=ctx.model,
                                            runs=ctx.runs, traffic=ctx.traffic)
        plan = releases.PromotionPlan(agent, against, current, number, evidence, releases.evaluate_gate(rules, evidence))
        reports[number] = ReadinessReport(agent, number, against, _checks(ctx, number, plan, None), plan)
    return reports


def _checks(ctx: _Context, number: str, plan: releases.PromotionPlan, load: LoadCheckResult | None) -> tuple[ReadinessCheck, ...]:
    with translate_errors(f"version {number} of {ctx.agent!r}"):
        mv = ctx.client.get_model_version(ctx.agent, number)
    model_id = getattr(mv, "model_id", None) or versions.model_id_of(mv.source)
    uri = f"models:/{ctx.agent}/{number}"
    results: list[tuple[Item, Verdict, str, str]] = []
    results += _model_checks(uri)
    results.append(_requirements_check(uri))
    results.append(_traces_check(ctx, number, model_id))
    results.append(_datasets_check(ctx, number))
    results.append(_gate_check(plan))
    results.append(_load_check(load))
    results.append(_uc_check(ctx))
    results.append(_served_check(ctx, number, model_id))
    results.append(_alerts_check(ctx))
    return tuple(ReadinessCheck(item, verdict, reason, fix if verdict is not Verdict.PASS else "",
                                item in ctx.required)
                 for item, verdict, reason, fix in results)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _model_checks(uri: str) -> list[tuple[Item, Verdict, str, str]]:
    from mlflow.models import get_model_info

    try:
        info = get_model_info(uri)
    except Exception as exc:  # noqa: BLE001 - reported as unknown with the reason
        why = f"cannot read the MLmodel file of {uri}: {_first_line(exc)}"
        fix = "Check that the version's artifacts are readable from here."
        return [(Item.SIGNATURE, Verdict.UNKNOWN, why, fix), (Item.INPUT_EXAMPLE, Verdict.UNKNOWN, why, fix)]
    out = []
    signature = info.signature
    if signature is None:
        out.append((Item.SIGNATURE, Verdict.FAIL, "the logged model has no signature",
                    "Re-log the model with input_example=... (MLflow infers the signature) or signature=..."))
    else:
        # Unnamed (tensor/column-index) inputs are numbered: ints, shown as text.
        names = ", ".join(str(n) for n in getattr(signature.inputs, "input_names", lambda: [])() or []) or "unnamed inputs"
        out.append((Item.SIGNATURE, Verdict.PASS, f"signature with inputs: {names}"[:200], ""))
    example = info.saved_input_example_info
    if not example:
        out.append((Item.INPUT_EXAMPLE, Verdict.FAIL, "no input example was saved with the model",
                    "Re-log the model with input_example=... so it can be smoke-tested and served."))
    else:
        out.append((Item.INPUT_EXAMPLE, Verdict.PASS, f"saved input example ({example.get('type', 'json')})", ""))
    return out


def unpinned_requirements(lines: Sequence[str]) -> list[str]:
    """Requirement lines that do not pin one exact version (``==`` / ``===``, a URL or a wheel file)."""
    loose = []
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith(("-r ", "-c ", "--")):
            continue
        spec = line.split(";", 1)[0].strip()
        if "==" in spec or " @ " in spec or spec.endswith(".whl") or "://" in spec:
            continue
        loose.append(spec)
    return loose


def _requirements_check(uri: str) -> tuple[Item, Verdict, str, str]:
    import mlflow.pyfunc

    try:
        path = mlflow.pyfunc.get_model_dependencies(uri)
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except Exception as exc:  # noqa: BLE001
        return (Item.REQUIREMENTS, Verdict.UNKNOWN, f"cannot read requirements.txt: {_first_line(exc)}",
                "Check that the version's artifacts are readable from here.")
    loose = unpinned_requirements(lines)
    if loose:
        return (Item.REQUIREMENTS, Verdict.FAIL, f"not pinned to one version: {', '.join(loose)[:300]}",
                "Re-log with pip_requirements pinned exactly, e.g. mlflow==3.17.2.")
    real = [line for line in lines if line.split('#', 1)[0].strip()]
    return (Item.REQUIREMENTS, Verdict.PASS, f"all {len(real)} requirement(s) pinned", "")


def _count_traces(ctx: _Context, clauses: list[str]) -> int:
    if not ctx.experiment_ids:
        return 0
    with translate_errors("traces"):
        page = ctx.client.search_traces(locations=list(ctx.experiment_ids), filter_string=" AND ".join(clauses),
                                        max_results=1, include_spans=False)
    return len(page)


def _q(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _traces_check(ctx: _Context, number: str, model_id: str | None) -> tuple[Item, Verdict, str, str]:
    fix = "Send it some traffic (a staging endpoint or the Evaluations page) so its traces are recorded."
    flow = ctx.traffic.get(model_id or "")
    if flow and flow.traces:
        return (Item.TRACES, Verdict.PASS, f"{flow.traces:,} trace(s) in the last 7 days", "")
    try:
        older = _count_traces(ctx, [f"metadata.`mlflow.modelId` = '{_q(model_id)}'"]) if model_id else 0
        if not older:
            older = _count_traces(ctx, [f"tag.`agentops.agent` = '{_q(ctx.agent)}'",
                                        f"tag.`agentops.version` = '{_q(number)}'"])
    except AgentOpsError as exc:
        return (Item.TRACES, Verdict.UNKNOWN, f"cannot search traces: {exc}", "Check access to the agent's experiment.")
    if older:
        return (Item.TRACES, Verdict.PASS, "traces exist (none in the last 7 days)", "")
    if not ctx.experiment_ids:
        return (Item.TRACES, Verdict.UNKNOWN, "the agent has no experiment to search for traces",
                "Register the version from a LoggedModel (its experiment is found from it), attach an "
                "experiment to the agent on the Versions page, or set AGENTOPS_EXPERIMENT_IDS.")
    return (Item.TRACES, Verdict.FAIL, "no trace is linked to this version", fix)


def _dataset_shape(ctx: _Context, name: str) -> tuple[int, int] | None:
    """(rows, distinct inputs) of an MLflow evaluation dataset, or None when it is not one."""
    if name in ctx.dataset_cache:
        return ctx.dataset_cache[name]
    from services import datasets

    shape = None
    try:
        rows = datasets.load_dataset_rows(name, ctx.settings)
        distinct = {json.dumps(r.get("inputs"), sort_keys=True, default=str) for r in rows}
        shape = (len(rows), len(distinct))
    except Exception:  # noqa: BLE001 - an uploaded file or a backend without datasets
        shape = None
    ctx.dataset_cache[name] = shape
    return shape


def _datasets_check(ctx: _Context, number: str) -> tuple[Item, Verdict, str, str]:
    fix = f"Evaluate it on a dataset of at least {MIN_ROWS} distinct questions."
    mine = [r for r in ctx.runs if r.version == number and r.status == "FINISHED"]
    if not mine:
        return (Item.DATASETS, Verdict.FAIL, "this version has no finished evaluation run", fix)
    latest = mine[0]
    name = latest.dataset or "unnamed"
    shape = _dataset_shape(ctx, name) if latest.dataset else None
    if shape is None:
        try:
            with translate_errors(f"evaluation run {latest.run_id}"):
                rows_tag = ctx.client.get_run(latest.run_id).data.tags.get(ROWS_TAG)
        except AgentOpsError:
            rows_tag = None
        if rows_tag and rows_tag.isdigit():
            rows = int(rows_tag)
            if rows < MIN_ROWS:
                return (Item.DATASETS, Verdict.FAIL, f"latest evaluation ({name}) had only {rows} row(s) (< {MIN_ROWS})", fix)
            return (Item.DATASETS, Verdict.UNKNOWN,
                    f"latest evaluation ({name}) had {rows} rows; diversity unknown (not an MLflow dataset)",
                    "Store the rows as an MLflow evaluation dataset so their diversity can be checked.")
        return (Item.DATASETS, Verdict.UNKNOWN, f"the size of dataset {name!r} is not recorded",
                "Evaluate on an MLflow evaluation dataset (Evaluations page) so its size is known.")
    rows, distinct = shape
    share = distinct / rows if rows else 0.0
    described = f"{name}: {rows} row(s), {distinct} distinct input(s)"
    if rows < MIN_ROWS:
        return (Item.DATASETS, Verdict.FAIL, f"{described} — fewer than {MIN_ROWS} rows", fix)
    if share < MIN_DISTINCT_SHARE:
        return (Item.DATASETS, Verdict.FAIL, f"{described} — only {share:.0%} distinct (< {MIN_DISTINCT_SHARE:.0%})",
                "Remove duplicate questions and add varied ones to the dataset.")
    return (Item.DATASETS, Verdict.PASS, described, "")


def _gate_check(plan: releases.PromotionPlan) -> tuple[Item, Verdict, str, str]:
    if not plan.checks:
        return (Item.GATE, Verdict.UNKNOWN, "no gate rules are set for this agent",
                "Set gate rules on the Versions page (Gate rules tab).")
    failed = [c for c in plan.checks if c.status is releases.CheckStatus.FAIL]
    if failed:
        return (Item.GATE, Verdict.FAIL, "; ".join(f"{c.rule.describe()}: {c.detail}" for c in failed)[:400],
                "Improve the version and evaluate it again (or override with a written reason).")
    passed = sum(1 for c in plan.checks if c.status is releases.CheckStatus.PASS)
    if not passed:
        return (Item.GATE, Verdict.UNKNOWN, "no gate rule had data to check",
                f"Evaluate this version and the {plan.alias} holder on the same dataset.")
    no_data = len(plan.checks) - passed
    extra = f" ({no_data} without data)" if no_data else ""
    return (Item.GATE, Verdict.PASS, f"{passed} rule(s) pass against {plan.alias} "
            f"({'v' + plan.current_version if plan.current_version else 'no holder'}){extra}", "")


def _load_check(load: LoadCheckResult | None) -> tuple[Item, Verdict, str, str]:
    if load is None:
        return (Item.LOADS, Verdict.UNKNOWN, "not run yet", "Run the load check (it runs in a separate process).")
    if load.ok:
        return (Item.LOADS, Verdict.PASS, f"loaded and answered its input example in {load.seconds:.1f} s", "")
    fixes = {
        "input_example": "Re-log the model with input_example=... so it can be smoke-tested.",
        "timeout": "Make loading and the first prediction faster, or run the check with a longer timeout.",
        "predict": "Fix the model's predict code for its own input example (see the error) and log a new version.",
    }
    return (Item.LOADS, Verdict.FAIL, f"failed at {load.stage}: {load.error}"[:500],
            fixes.get(load.stage, "Fix the model's loading code (see the error) and log a new version."))


def _uc_check(ctx: _Context) -> tuple[Item, Verdict, str, str]:
    if ctx.settings.backend is not Backend.DATABRICKS:
        return (Item.UNITY_CATALOG, Verdict.UNKNOWN, f"only checked on Databricks (backend: {ctx.settings.backend.value})",
                "Run the gate with AGENTOPS_BACKEND=databricks to check the Unity Catalog name.")
    parts = ctx.agent.split(".")
    if len(parts) == 3 and all(parts):
        return (Item.UNITY_CATALOG, Verdict.PASS, f"registered as {ctx.agent} (catalog.schema.model)", "")
    return (Item.UNITY_CATALOG, Verdict.FAIL, f"{ctx.agent!r} is not a catalog.schema.model name",
            "Register the model in Unity Catalog as <catalog>.<schema>.<model>.")


def _served_check(ctx: _Context, number: str, model_id: str | None) -> tuple[Item, Verdict, str, str]:
    fix = "Route a share of traffic to it on a staging endpoint, or set it as challenger and let it serve."
    for endpoint in ctx.endpoints or ():
        for served in endpoint.served:
            if served.model_name == ctx.agent and str(served.model_version) == number:
                share = endpoint.percentage_for(served.entity_name)
                if share > 0:
                    return (Item.SERVED, Verdict.PASS, f"{share}% of {endpoint.name} traffic", "")
    try:
        for alias in STAGING_ALIASES:
            clauses = [f"tag.`{ALIAS_TRACE_TAG}` LIKE '%{alias}%'"]
            if model_id:
                clauses.append(f"metadata.`mlflow.modelId` = '{_q(model_id)}'")
            else:
                clauses += [f"tag.`agentops.agent` = '{_q(ctx.agent)}'", f"tag.`agentops.version` = '{_q(number)}'"]
            if _count_traces(ctx, clauses):
                return (Item.SERVED, Verdict.PASS, f"served traffic as {alias} (traces tagged {ALIAS_TRACE_TAG})", "")
    except AgentOpsError as exc:
        return (Item.SERVED, Verdict.UNKNOWN, f"cannot search traces: {exc}", "Check access to the agent's experiment.")
    if ctx.endpoints is None:
        return (Item.SERVED, Verdict.UNKNOWN, f"cannot read the serving endpoints: {ctx.endpoints_error}",
                "Check access to the serving endpoints.")
    return (Item.SERVED, Verdict.FAIL, "no endpoint routes traffic to it and no challenger/staging trace exists", fix)


def _alerts_check(ctx: _Context) -> tuple[Item, Verdict, str, str]:
    fix = f"Save alert thresholds for {ctx.agent} on the Monitoring page."
    if ctx.thresholds is None:
        return (Item.ALERTS, Verdict.UNKNOWN, f"cannot read the alert thresholds: {ctx.thresholds_error}", fix)
    own = ctx.thresholds.get(ctx.agent)
    if own is None:
        return (Item.ALERTS, Verdict.FAIL, "no alert thresholds are saved for this agent (only the defaults apply)", fix)
    parts = [f"p95 ≤ {own.p95_latency_ms:g} ms" if own.p95_latency_ms is not None else None,
             f"errors ≤ {own.error_rate:.0%}" if own.error_rate is not None else None,
             f"cost/day ≤ ${own.daily_cost:g}" if own.daily_cost is not None else None]
    shown = ", ".join(p for p in parts if p) or "all checks off"
    return (Item.ALERTS, Verdict.PASS, shown, "")


# --- promotion behind gate + readiness ---------------------------------------------------------

def promote(
    agent: str, alias: str, version: str | int, identity: Identity, *, reason: str = "", override: bool = False,
    expected_current: str | None | object = ..., load: LoadCheckResult | None = None,
    settings: Settings | None = None, request_id: str | None = None,
) -> releases.PromotionResult:
    """Promote behind the gate *and* the readiness checklist; failing required items block alike.

    ``request_id`` identifies one confirmation: retrying it after a failure completes an
    interrupted promotion instead of making a second change (see ``releases.promote``).
    """
    if override and not (reason or "").strip():
        raise ValidationError("Overriding the gate needs a written reason.")
    report = assess(agent, version, settings, against=alias, load=load)
    return releases.promote(
        agent, alias, version, identity, reason=reason, override=override, expected_current=expected_current,
        settings=settings, readiness_failures=tuple(f"{c.title} ({c.reason})" for c in report.failures),
        readiness_evidence=report.audit_summary(), request_id=request_id,
    )
