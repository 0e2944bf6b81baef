"""Release readiness: an automatic deployment checklist per version, shared by the UI and CI.

Each item is computed from MLflow and the backend and says pass / fail / unknown, why, and the
one action that fixes it. Items listed as *required* (registered-model tag
``agentops.readiness.required``, default: the gate and the load check) block a promotion when
they fail, exactly like a failing gate rule, with the same override-with-reason path.

The checks of the logged model itself (signature, input example, requirements, the load check in
a separate process) are in ``services.readiness_checks``; live traffic (evaluation rows left out)
in ``services.readiness_live``; the gate in ``services.gates``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from services import (
    alerting,
    gates,
    live_scoring,
    readiness_live,
    registry,
    roles,
    versions,
)
from services._clients import (
    configure_mlflow,
    get_settings,
    mlflow_client,
    translate_errors,
)
from services.errors import AgentOpsError, ValidationError
from services.evaluations import ROWS_TAG, EvaluationSummary
from services.identity import Identity
from services.readiness_checks import (  # noqa: F401 - re-exported: the checklist's vocabulary
    LOAD_TIMEOUT_S,
    TITLES,
    Item,
    LoadCheckResult,
    Progress,
    Verdict,
    check_load,
    load_item,
    model_checks,
    requirements_check,
    unpinned_requirements,
)
from services.settings import Backend, Settings

REQUIRED_TAG = "agentops.readiness.required"
MIN_ROWS = 20  # fewer evaluation rows than this cannot show a regression with any confidence
MIN_DISTINCT_SHARE = 0.8  # at least 80% of the rows must ask something different
STAGING_ALIASES = ("challenger", "staging")
ALIAS_TRACE_TAG = "agentops.alias"

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
class ReadinessReport:
    """The checklist of one version, and the gate verdict against ``against`` it was evaluated with."""

    agent: str
    version: str
    against: str
    checks: tuple[ReadinessCheck, ...]
    gate: gates.GateResult | None = None
    load: LoadCheckResult | None = None

    def check(self, item: Item | str) -> ReadinessCheck:
        return next(c for c in self.checks if c.item == Item(item))

    @property
    def failures(self) -> tuple[ReadinessCheck, ...]:
        """Required items that fail: they block a promotion."""
        return tuple(c for c in self.checks if c.blocking)

    @property
    def gate_blocked(self) -> bool:
        return bool(self.gate and self.gate.blocked)

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
        gate = self.gate
        return {
            "agent": self.agent,
            "version": self.version,
            "against": self.against,
            "current_version": gate.current_version if gate else None,
            "promotable": not self.blocked,
            "blocked_by_gate": self.gate_blocked,
            "failing_required_items": [c.item.value for c in self.failures],
            "gate": [
                {"rule": c.rule.describe(), "kind": c.rule.kind.value, "metric": c.rule.metric,
                 "threshold": c.rule.threshold, "status": c.status.value, "observed": c.observed, "detail": c.detail}
                for c in (gate.checks if gate else ())
            ],
            "evidence": gate.evidence.summary() if gate else None,
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
    evaluations: readiness_live.EvaluationRuns | None = None  # which runs are evaluations, looked up once
    alert_rules: int | None = None  # enabled alert rules watching the agent (None: could not be read)
    live: Any = None  # the agent's live-scoring configuration, if any
    live_error: str = ""


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
    # Live traffic per LoggedModel (the model-id link), evaluation rows left out.
    traffic = readiness_live.live_traffic_by_model(
        experiment_ids, [m for m in map(registry.model_id_of, all_versions) if m], settings)
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
    alert_rules: int | None = None
    try:
        alert_rules = len(alerting.rules_for(settings, agent))
    except AgentOpsError as exc:
        thresholds_error = thresholds_error or str(exc)
    live, live_error = None, ""
    try:
        live, _ = live_scoring.load_config(agent, settings)
    except AgentOpsError as exc:
        live_error = str(exc)
    return _Context(agent, settings, client, model, experiment_ids, runs, traffic, required,
                    endpoints, endpoints_error, thresholds, thresholds_error,
                    evaluations=readiness_live.EvaluationRuns(client), alert_rules=alert_rules, live=live,
                    live_error=live_error)


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
    against = gates.check_alias(against)
    wanted = check_items(required) if required is not None else None
    if load_timeout <= 0:
        raise ValidationError("The load check timeout must be positive (seconds).")
    settings = configure_mlflow(settings)
    say = progress or (lambda _msg: None)
    say("Reading the registry, evaluations and traffic")
    ctx = _context(agent, settings, wanted)
    versions.require_version_exists(ctx.client, agent, number)
    gate = _gate(ctx, against, number)
    if run_load:
        load = check_load(agent, number, settings, timeout=load_timeout, progress=say)
    say("Checking the logged model")
    checks = _checks(ctx, number, gate, load)
    return ReadinessReport(agent, number, against, checks, gate, load)


def assess_versions(
    agent: str, numbers: Sequence[str | int], settings: Settings | None = None, *, against: str = "champion",
) -> dict[str, ReadinessReport]:
    """The checklist (without the load check) of several versions, sharing the agent-level reads."""
    agent = versions.check_agent_name(agent)
    against = gates.check_alias(against)
    wanted = [versions.check_version(n) for n in numbers]
    settings = configure_mlflow(settings)
    ctx = _context(agent, settings, None)
    reports = {}
    for number in wanted:
        gate = _gate(ctx, against, number)
        reports[number] = ReadinessReport(agent, number, against, _checks(ctx, number, gate, None), gate)
    return reports


def _gate(ctx: _Context, against: str, number: str) -> gates.GateResult:
    return gates.check_gate(ctx.agent, against, number, ctx.model, ctx.settings, runs=ctx.runs,
                            traffic=ctx.traffic, experiment_ids=ctx.experiment_ids)


def _checks(ctx: _Context, number: str, gate: gates.GateResult, load: LoadCheckResult | None) -> tuple[ReadinessCheck, ...]:
    with translate_errors(f"version {number} of {ctx.agent!r}"):
        mv = ctx.client.get_model_version(ctx.agent, number)
    model_id = getattr(mv, "model_id", None) or versions.model_id_of(mv.source)
    uri = f"models:/{ctx.agent}/{number}"
    results: list[tuple[Item, Verdict, str, str]] = []
    results += model_checks(uri)
    results.append(requirements_check(uri))
    results.append(_traces_check(ctx, number, model_id))
    results.append(_datasets_check(ctx, number))
    results.append(_gate_check(gate))
    results.append(load_item(load))
    results.append(_uc_check(ctx))
    results.append(_served_check(ctx, number, model_id))
    results.append(_alerts_check(ctx))
    results.append(_live_check(ctx))
    return tuple(ReadinessCheck(item, verdict, reason, fix if verdict is not Verdict.PASS else "",
                                item in ctx.required)
                 for item, verdict, reason, fix in results)


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
    """Live traffic only: rows of evaluation runs (``mlflow.genai.evaluate``) are not requests."""
    fix = ("Send it some live traffic (a staging endpoint or a share of an endpoint's traffic) so its traces "
           "are recorded; evaluation rows do not count.")
    flow = ctx.traffic.get(model_id or "")
    if flow and flow.traces:
        return (Item.TRACES, Verdict.PASS, f"{flow.traces:,} live trace(s) in the last 7 days", "")
    rows = 0
    try:
        for clauses in ([readiness_live.model_clause(model_id)] if model_id else [],
                        [f"tag.`agentops.agent` = '{_q(ctx.agent)}'", f"tag.`agentops.version` = '{_q(number)}'"]):
            live, seen = readiness_live.find_live_trace(ctx.experiment_ids, clauses, ctx.settings,
                                                        evaluations=ctx.evaluations)
            if live:
                return (Item.TRACES, Verdict.PASS, "live traces exist (none in the last 7 days)", "")
            rows = max(rows, seen)
    except AgentOpsError as exc:
        return (Item.TRACES, Verdict.UNKNOWN, f"cannot search traces: {exc}", "Check access to the agent's experiment.")
    if not ctx.experiment_ids:
        return (Item.TRACES, Verdict.UNKNOWN, "the agent has no experiment to search for traces",
                "Register the version from a LoggedModel (its experiment is found from it), attach an "
                "experiment to the agent on the Versions page, or set AGENTOPS_EXPERIMENT_IDS.")
    if rows:
        return (Item.TRACES, Verdict.FAIL, f"only evaluation rows ({rows:,}) are linked to this version: "
                "no live trace", fix)
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


def _gate_check(plan: gates.GateResult) -> tuple[Item, Verdict, str, str]:
    if not plan.checks:
        return (Item.GATE, Verdict.UNKNOWN, "no gate rules are set for this agent",
                "Set gate rules on the Versions page (Gate rules tab).")
    failed = [c for c in plan.checks if c.status is gates.CheckStatus.FAIL]
    if failed:
        return (Item.GATE, Verdict.FAIL, "; ".join(f"{c.rule.describe()}: {c.detail}" for c in failed)[:400],
                "Improve the version and evaluate it again (or override with a written reason).")
    passed = sum(1 for c in plan.checks if c.status is gates.CheckStatus.PASS)
    if not passed:
        return (Item.GATE, Verdict.UNKNOWN, "no gate rule had data to check",
                f"Evaluate this version and the {plan.alias} holder on the same dataset.")
    no_data = len(plan.checks) - passed
    extra = f" ({no_data} without data)" if no_data else ""
    return (Item.GATE, Verdict.PASS, f"{passed} rule(s) pass against {plan.alias} "
            f"({'v' + plan.current_version if plan.current_version else 'no holder'}){extra}", "")


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
    fix = f"Add an alert rule for {ctx.agent} on the Alerts page (or save thresholds on the Monitoring page)."
    rules = f"{ctx.alert_rules} alert rule(s) with a channel" if ctx.alert_rules else ""
    if ctx.thresholds is None and not ctx.alert_rules:
        return (Item.ALERTS, Verdict.UNKNOWN, f"cannot read the alert configuration: {ctx.thresholds_error}", fix)
    own = (ctx.thresholds or {}).get(ctx.agent)
    if own is None:
        if rules:
            return (Item.ALERTS, Verdict.PASS, rules, "")
        return (Item.ALERTS, Verdict.FAIL, "no alert rule watches this agent and no thresholds are saved for it "
                "(only the defaults apply)", fix)
    parts = [rules or None,
             f"p95 ≤ {own.p95_latency_ms:g} ms" if own.p95_latency_ms is not None else None,
             f"errors ≤ {own.error_rate:.0%}" if own.error_rate is not None else None,
             f"cost/day ≤ ${own.daily_cost:g}" if own.daily_cost is not None else None]
    shown = ", ".join(p for p in parts if p) or "all checks off"
    return (Item.ALERTS, Verdict.PASS, shown, "")


def _live_check(ctx: _Context) -> tuple[Item, Verdict, str, str]:
    fix = f"Choose live scorers and a sample rate for {ctx.agent} on the Monitoring page (Live scoring)."
    if ctx.live_error:
        return (Item.LIVE_SCORERS, Verdict.UNKNOWN, f"cannot read the live-scoring configuration: {ctx.live_error}", fix)
    config = ctx.live
    if config is None or not config.scorers:
        return (Item.LIVE_SCORERS, Verdict.FAIL, "no live scorers are configured for this agent", fix)
    if not config.enabled or config.sample_rate <= 0:
        return (Item.LIVE_SCORERS, Verdict.FAIL, "live scoring is configured but switched off (or samples nothing)", fix)
    return (Item.LIVE_SCORERS, Verdict.PASS,
            f"{', '.join(config.scorers)} on {config.sample_rate:.0%} of traces", "")
