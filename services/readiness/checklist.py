"""The full checklist of one version, or of several sharing the agent-level reads."""

from __future__ import annotations

from typing import Sequence

from services import (
    gates,
    versions,
)
from services._clients import (
    configure_mlflow,
    translate_errors,
)
from services.errors import ValidationError
from services.readiness.context import AgentContext, read_context
from services.readiness.items import (
    alerts_check,
    datasets_check,
    gate_check,
    live_check,
    served_check,
    traces_check,
    uc_check,
)
from services.readiness.report import ReadinessCheck, ReadinessReport, check_items
from services.readiness_checks import (
    LOAD_TIMEOUT_S,
    Item,
    LoadCheckResult,
    Progress,
    Verdict,
    check_load,
    load_item,
    model_checks,
    requirements_check,
)
from services.settings import Settings


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
    ctx = read_context(agent, settings, wanted)
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
    ctx = read_context(agent, settings, None)
    reports = {}
    for number in wanted:
        gate = _gate(ctx, against, number)
        reports[number] = ReadinessReport(agent, number, against, _checks(ctx, number, gate, None), gate)
    return reports


def _gate(ctx: AgentContext, against: str, number: str) -> gates.GateResult:
    return gates.check_gate(ctx.agent, against, number, ctx.model, ctx.settings, runs=ctx.runs,
                            traffic=ctx.traffic, experiment_ids=ctx.experiment_ids)


def _checks(ctx: AgentContext, number: str, gate: gates.GateResult, load: LoadCheckResult | None) -> tuple[ReadinessCheck, ...]:
    with translate_errors(f"version {number} of {ctx.agent!r}"):
        mv = ctx.client.get_model_version(ctx.agent, number)
    model_id = getattr(mv, "model_id", None) or versions.model_id_of(mv.source)
    uri = f"models:/{ctx.agent}/{number}"
    results: list[tuple[Item, Verdict, str, str]] = []
    results += model_checks(uri)
    results.append(requirements_check(uri))
    results.append(traces_check(ctx, number, model_id))
    results.append(datasets_check(ctx, number))
    results.append(gate_check(gate))
    results.append(load_item(load))
    results.append(uc_check(ctx))
    results.append(served_check(ctx, number, model_id))
    results.append(alerts_check(ctx))
    results.append(live_check(ctx))
    return tuple(ReadinessCheck(item, verdict, reason, fix if verdict is not Verdict.PASS else "",
                                item in ctx.required)
                 for item, verdict, reason, fix in results)
