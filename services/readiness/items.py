"""The checklist items computed from the agent's context: traces, datasets, the gate, Unity Catalog, serving,
alerts and live scoring (the logged model's own checks are in ``services.readiness_checks``)."""

from __future__ import annotations

import json

from services import (
    gates,
    version_traffic,
)
from services._clients import (
    translate_errors,
)
from services.errors import AgentOpsError
from services.evaluations import ROWS_TAG
from services.readiness.context import AgentContext
from services.readiness.report import (
    ALIAS_TRACE_TAG,
    MIN_DISTINCT_SHARE,
    MIN_ROWS,
    STAGING_ALIASES,
)
from services.readiness_checks import (
    Item,
    Verdict,
)
from services.settings import Backend
from services.filter_strings import escape


def count_traces(ctx: AgentContext, clauses: list[str]) -> int:
    if not ctx.experiment_ids:
        return 0
    with translate_errors("traces"):
        page = ctx.client.search_traces(locations=list(ctx.experiment_ids), filter_string=" AND ".join(clauses),
                                        max_results=1, include_spans=False)
    return len(page)


def traces_check(ctx: AgentContext, number: str, model_id: str | None) -> tuple[Item, Verdict, str, str]:
    """Live traffic only: rows of evaluation runs (``mlflow.genai.evaluate``) are not requests."""
    fix = ("Send it some live traffic (a staging endpoint or a share of an endpoint's traffic) so its traces "
           "are recorded; evaluation rows do not count.")
    flow = ctx.traffic.get(model_id or "")
    if flow and flow.traces:
        return (Item.TRACES, Verdict.PASS, f"{flow.traces:,} live trace(s) in the last 7 days", "")
    rows = 0
    try:
        for clauses in ([version_traffic.model_clause(model_id)] if model_id else [],
                        [f"tag.`agentops.agent` = '{escape(ctx.agent)}'", f"tag.`agentops.version` = '{escape(number)}'"]):
            live, seen = version_traffic.find_live_trace(ctx.experiment_ids, clauses, ctx.settings,
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


def dataset_shape(ctx: AgentContext, name: str) -> tuple[int, int] | None:
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


def datasets_check(ctx: AgentContext, number: str) -> tuple[Item, Verdict, str, str]:
    fix = f"Evaluate it on a dataset of at least {MIN_ROWS} distinct questions."
    mine = [r for r in ctx.runs if r.version == number and r.status == "FINISHED"]
    if not mine:
        return (Item.DATASETS, Verdict.FAIL, "this version has no finished evaluation run", fix)
    latest = mine[0]
    name = latest.dataset or "unnamed"
    shape = dataset_shape(ctx, name) if latest.dataset else None
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


def gate_check(plan: gates.GateResult) -> tuple[Item, Verdict, str, str]:
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


def uc_check(ctx: AgentContext) -> tuple[Item, Verdict, str, str]:
    if ctx.settings.backend is not Backend.DATABRICKS:
        return (Item.UNITY_CATALOG, Verdict.UNKNOWN, f"only checked on Databricks (backend: {ctx.settings.backend.value})",
                "Run the gate with AGENTOPS_BACKEND=databricks to check the Unity Catalog name.")
    parts = ctx.agent.split(".")
    if len(parts) == 3 and all(parts):
        return (Item.UNITY_CATALOG, Verdict.PASS, f"registered as {ctx.agent} (catalog.schema.model)", "")
    return (Item.UNITY_CATALOG, Verdict.FAIL, f"{ctx.agent!r} is not a catalog.schema.model name",
            "Register the model in Unity Catalog as <catalog>.<schema>.<model>.")


def served_check(ctx: AgentContext, number: str, model_id: str | None) -> tuple[Item, Verdict, str, str]:
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
                clauses.append(f"metadata.`mlflow.modelId` = '{escape(model_id)}'")
            else:
                clauses += [f"tag.`agentops.agent` = '{escape(ctx.agent)}'", f"tag.`agentops.version` = '{escape(number)}'"]
            if count_traces(ctx, clauses):
                return (Item.SERVED, Verdict.PASS, f"served traffic as {alias} (traces tagged {ALIAS_TRACE_TAG})", "")
    except AgentOpsError as exc:
        return (Item.SERVED, Verdict.UNKNOWN, f"cannot search traces: {exc}", "Check access to the agent's experiment.")
    if ctx.endpoints is None:
        return (Item.SERVED, Verdict.UNKNOWN, f"cannot read the serving endpoints: {ctx.endpoints_error}",
                "Check access to the serving endpoints.")
    return (Item.SERVED, Verdict.FAIL, "no endpoint routes traffic to it and no challenger/staging trace exists", fix)


def alerts_check(ctx: AgentContext) -> tuple[Item, Verdict, str, str]:
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


def live_check(ctx: AgentContext) -> tuple[Item, Verdict, str, str]:
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
