"""Serving: endpoints and their traffic splits, test traffic, judging arms, promoting the winner."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import streamlit as st

from components.caching import per_user_cache
from components.navigation import ensure_app_navigation

ensure_app_navigation()  # before anything renders: see components/navigation.py

from components.charts import split_chart
from components.context import allowed, current_identity, current_settings, role_hint
from components.empty import seed_hint
from components.endpoint_editor import endpoint_editor
from components.errors import read_or, show_error
from components.rollouts import rollout_panel
from components.confirm import ConfirmKeys, confirm_box
from components.serving import (
    arms_frame,
    budgets_frame,
    comparisons_frame,
    deploy_frame,
    escape_md,
    gateway_models_frame,
    history_block,
    interrupted_notice,
    promote_done,
    promote_form,
    window_select,
)
from components.split_editor import SplitRow, VersionSource, split_editor
from services import ab, audit, registry, roles, serving, team_state, traffic
from services.serving import EndpointBackend, ai_gateway
from services.errors import AgentOpsError
from services.identity import Identity
from services.rollout_ports import ServicePorts
from services.settings import Backend, Settings

settings = current_settings()
identity = current_identity(settings)
can_change = allowed(settings, identity, roles.Action.CHANGE_TRAFFIC)
st.title("Serving & A/B traffic")
if not can_change:
    st.caption(f":material/lock: You can look, not change: {role_hint(roles.Action.CHANGE_TRAFFIC)}")


@per_user_cache(ttl=15, show_spinner=False)
def _endpoints(settings: Settings) -> list[serving.Endpoint]:
    return serving.list_endpoints(settings)


@per_user_cache(ttl=60, show_spinner=False)
def _agents(settings: Settings) -> list[registry.AgentSummary]:
    return registry.list_agents(settings)


@per_user_cache(ttl=30, show_spinner="Judging the arms…")
def _report(settings: Settings, endpoint: str, experiments: tuple[str, ...], hours: int, effect: float) -> ab.ArmReport:
    end = datetime.now(tz=timezone.utc)
    return ab.judge_endpoint(endpoint, list(experiments), end - timedelta(hours=hours), end,
                             minimum_effect=effect, settings=settings)


def _clear() -> None:
    _endpoints.clear()
    _report.clear()
    _agents.clear()


def _changes(endpoint_name: str, settings: Settings) -> list[audit.Change] | None:
    """The audit trail of one endpoint (both sections of the page); None when it cannot be read."""
    return read_or(None, "Cannot read the audit trail", lambda: audit.traffic_changes(endpoint_name, settings=settings))


def _interrupted(endpoint: serving.Endpoint, changes: list[audit.Change] | None, *, settings: Settings,
                 identity: Identity, can_change: bool) -> None:
    """Name an interrupted change; an operator can settle it from what the endpoint serves now."""
    notice = interrupted_notice(changes or [])
    settled = st.session_state.pop(f"settled::{endpoint.name}", None)
    if settled:
        st.success(escape_md(settled), icon=":material/task_alt:")
    if not notice:
        return
    st.warning(escape_md(notice) + " If that confirmation is gone (another session, a reload), settle the record "
               "from the split the endpoint serves now.", icon=":material/sync_problem:")
    answer = confirm_box(None, keys=ConfirmKeys(confirm=f"settle::{endpoint.name}"),
                         confirm_label="Settle from the current split", ask_reason=False, actor=identity.user,
                         disabled_hint="" if can_change else role_hint(roles.Action.CHANGE_TRAFFIC))
    if answer.confirmed:
        try:
            st.session_state[f"settled::{endpoint.name}"] = serving.settle_interrupted(
                endpoint, changes[0], user=identity.user, settings=settings, identity=identity)
        except AgentOpsError as exc:
            show_error(exc, what="The interrupted change was not settled")
        else:
            _clear()
            st.rerun()


def _split_text(endpoint: serving.Endpoint, labels: dict[str, str], *, pending: bool = False) -> str:
    by_entity = {v.entity_name: v.label for v in endpoint.served}
    routes = endpoint.pending_routes if pending else endpoint.routes
    return " · ".join(f"{labels.get(r.entity_name) or by_entity.get(r.entity_name, r.entity_name)} {r.percentage}%"
                      for r in routes) or "—"


def _deploy_section(agents: dict[str, registry.AgentSummary], *, settings: Settings, identity: Identity,
                    can_change: bool) -> None:
    """Databricks: deploy a UC model version with databricks.agents.deploy (preview, confirm, progress)."""
    st.markdown("Runs `databricks.agents.deploy`: creates or updates the model's `agents_<catalog>-<schema>-<model>` "
                "endpoint and routes **100%** of its traffic to the new version; versions already served stay at 0%.")
    uc_agents = [name for name in agents if name.count(".") == 2]
    c1, c2 = st.columns([3, 1])
    if uc_agents:
        model = c1.selectbox("Model (Unity Catalog)", uc_agents, key="deploy_model")
        latest = agents[model].latest_version
        versions = [str(v) for v in range(int(latest), 0, -1)] if latest else []
        version = c2.selectbox("Version", versions, key="deploy_version")
    else:
        model = c1.text_input("Model (catalog.schema.model)", key="deploy_model_text")
        version = c2.text_input("Version", key="deploy_version_text")
    done = st.session_state.pop("deploy_done", None)
    if done is not None:
        st.success(done["message"], icon=":material/rocket_launch:")
        links = [(label, url) for label, url in done["links"] if url]
        for column, (label, url) in zip(st.columns(max(len(links), 1)), links):
            column.link_button(label, url)
    reason = st.text_input("Reason (recorded in the audit trail)", key="deploy_reason")
    if st.button("Review deployment", type="primary", key="deploy_review", disabled=not can_change or not model or not version,
                 help=None if can_change else role_hint(roles.Action.CHANGE_TRAFFIC)):
        st.session_state.pop("deploy_plan", None)
        try:
            with st.spinner("Checking the version in Unity Catalog and its endpoint…"):
                experiment = agents[model].experiment_id if model in agents else None
                st.session_state["deploy_plan"] = serving.plan_deploy(
                    model, version, experiment_id=experiment or next(iter(settings.experiment_ids), None),
                    settings=settings, user_token=identity.access_token)
        except AgentOpsError as exc:
            show_error(exc, what="This version cannot be deployed")
    plan: serving.DeployPlan | None = st.session_state.get("deploy_plan")
    if plan is None:
        return
    st.subheader(escape_md(f"{plan.model_name} v{plan.model_version} → {plan.endpoint_name}"))
    st.caption(("A new endpoint will be created (this takes several minutes)." if plan.creates_endpoint
                else "The existing endpoint is updated; the previous versions keep serving until the rollout ends.")
               + f" Served entity: `{plan.entity_name}`.")
    st.dataframe(deploy_frame(plan), hide_index=True, use_container_width=True)
    sure = st.checkbox(f"Send all traffic of {plan.endpoint_name} to v{plan.model_version}", key="deploy_confirm")
    answer = confirm_box(None, keys=ConfirmKeys(confirm="deploy_go", cancel="deploy_cancel"), confirm_label="Deploy",
                         ask_reason=False, actor=identity.user, disabled_hint="" if can_change else role_hint(roles.Action.CHANGE_TRAFFIC),
                         missing="" if sure and reason.strip() else "Tick the box above and give a reason to deploy.")
    request_key = f"deploy_request::{plan.model_name}::{plan.model_version}::{plan.endpoint_name}"
    if answer.confirmed:
        try:
            with st.status(f"Deploying {plan.model_name} v{plan.model_version}…", expanded=True) as status:
                # One request id per planned deploy: pressing Deploy again after an interruption resumes
                # the same audited change instead of deploying twice.
                request_id = st.session_state.setdefault(request_key, uuid.uuid4().hex)
                done = serving.deploy_version(plan.model_name, plan.model_version, user=identity.user, reason=reason,
                                              identity=identity, plan=plan, experiment_id=plan.experiment_id,
                                              settings=settings, progress=status.write, request_id=request_id)
                status.update(label=f"{plan.model_name} v{plan.model_version} is serving on {plan.endpoint_name}",
                              state="complete")
        except AgentOpsError as exc:
            _clear()
            show_error(exc, what="The version was not deployed")
        else:
            # Rerun so the chart, the split editor and the history show the new state; the notice survives it.
            st.session_state.pop("deploy_plan", None)
            st.session_state.pop("deploy_confirm", None)
            st.session_state.pop(request_key, None)
            st.session_state.pop(f"split_rows::{plan.endpoint_name}", None)  # the split editor re-reads the endpoint
            st.session_state["deploy_done"] = {
                "message": f"Deployed {plan.model_name} v{plan.model_version} on {plan.endpoint_name}; recorded in its "
                           "history.",
                "links": [("Open the endpoint", done.endpoint_url), ("Open the Review App", done.review_app_url)],
            }
            _clear()
            st.rerun()
    if answer.cancelled:
        st.session_state.pop("deploy_plan", None)
        st.rerun()


def _gateway_section(settings: Settings, identity: Identity, can_change: bool) -> None:
    """MLflow AI Gateway endpoints: same split editor, judging and promotion as agent endpoints."""
    try:
        gateways = {g.endpoint.name: g for g in ai_gateway.list_gateway_endpoints(settings)}
    except AgentOpsError as exc:
        show_error(exc, what="Cannot read the MLflow AI Gateway endpoints")
        return
    if not gateways:
        st.info("**No AI Gateway endpoints yet.** Create one in the MLflow UI (AI Gateway → Endpoints) with two or "
                "more models and the traffic-split routing strategy.", icon=":material/route:")
        return
    gname = st.selectbox("AI Gateway endpoint", list(gateways), key="aigw_endpoint")
    gateway = gateways[gname]
    g_endpoint = gateway.endpoint
    st.plotly_chart(split_chart((g_endpoint,)), use_container_width=True, config={"displayModeBar": False})
    st.dataframe(gateway_models_frame(gateway), hide_index=True, use_container_width=True)
    st.caption(f"Routing: {gateway.routing_strategy or 'first model only'} · fallback: "
               f"{gateway.fallback_strategy or 'none'} · usage tracking: {'on' if gateway.usage_tracking else 'off'}")
    if gateway.budgets:
        st.dataframe(budgets_frame(gateway), hide_index=True, use_container_width=True)
    g_changes = _changes(gname, settings)
    _interrupted(g_endpoint, g_changes, settings=settings, identity=identity, can_change=can_change)
    g_split, g_judge, g_rollout, g_history = st.tabs(["Edit split", "Judge arms", "Guarded rollout", "History"])
    with g_split:
        labels = serving.arm_labels(g_endpoint)
        stored = split_editor(
            g_endpoint, [SplitRow(s.entity_name, labels[s.entity_name], s.entity_name, s.entity_name)
                         for s in g_endpoint.served],
            prefix="aigw_", can_change=can_change, locked=None if can_change else role_hint(roles.Action.CHANGE_TRAFFIC),
            intro="Set each model's share of requests. Shares are whole percents and must add up to 100. "
                  "Fallback models keep their place.",
            plan=lambda shares, _sticky: serving.plan_weights(gname, shares, settings=settings),
            apply=lambda plan, reason, request_id, progress: serving.apply_split(
                plan, user=identity.user, reason=reason, settings=settings, identity=identity,
                progress=progress, request_id=request_id),
            note=ai_gateway.CONFIG_CACHE_NOTE, actor=identity.user)
        if stored is not None:
            st.toast(f"{gname}: new weights applied and recorded.")
            st.rerun()
    with g_judge:
        if gateway.attribution_problem:
            st.warning(f"**Arms cannot be judged.** {gateway.attribution_problem}", icon=":material/help:")
        else:
            g_hours = window_select(f"aigw_window::{gname}")
            end = datetime.now(tz=timezone.utc)
            try:
                with st.spinner("Judging the arms from the gateway's usage traces…"):
                    g_report = ab.judge_endpoint(gname, [], end - timedelta(hours=g_hours), end, settings=settings,
                                                 source=EndpointBackend.MLFLOW_GATEWAY)
            except AgentOpsError as exc:
                show_error(exc, what="Cannot judge the arms")
                g_report = None
            if g_report is not None and not any(a.requests for a in g_report.arms):
                st.info("No usage traces in this window yet.", icon=":material/hourglass_empty:")
            elif g_report is not None:
                st.markdown(f"**Verdict.** {g_report.verdict}")
                st.dataframe(arms_frame(g_report), hide_index=True, use_container_width=True)
                with st.expander("Tests per metric"):
                    st.dataframe(comparisons_frame(g_report), hide_index=True, use_container_width=True)
                request = promote_form(
                    g_report, key=f"aigw_::{gname}", labels={a.entity_name: a.entity_name for a in g_report.arms},
                    can_change=can_change, now=_split_text(g_endpoint, {}), actor=identity.user,
                    caption="Sets the chosen model's weight to 100% and the others to 0%, audited. There is no "
                            "registry alias to move: AI Gateway models are provider models, not registered versions.")
                if request is not None:
                    try:
                        outcome = ab.promote_arm(gname, request.entity_name, identity, reason=request.reason,
                                                 action=request.action, settings=settings, source=EndpointBackend.MLFLOW_GATEWAY,
                                                 request_id=request.request_id)
                        promote_done(f"aigw_::{gname}")
                        st.success(outcome.message + " " + ai_gateway.CONFIG_CACHE_NOTE)
                    except AgentOpsError as exc:
                        show_error(exc, what="Promotion did not complete")
    with g_rollout:
        if gateway.attribution_problem:
            st.warning(f"**No guarded rollout here yet.** The controller judges the arms from the gateway's usage "
                       f"traces: {gateway.attribution_problem}", icon=":material/help:")
        else:
            rollout_panel(gname, [s.entity_name for s in g_endpoint.served], settings=settings, identity=identity,
                          can_change=can_change, ports=ServicePorts(settings), key=f"aigw_rollout::{gname}")
    with g_history:
        if g_changes is not None:
            history_block(g_changes)


if settings.backend is Backend.MLFLOW:
    layer = st.segmented_control("Serving layer", ["Agent endpoints", "MLflow AI Gateway"], default="Agent endpoints",
                                 key="serving_layer")
    if layer == "MLflow AI Gateway":
        _gateway_section(settings, identity, can_change)
        st.stop()


try:
    endpoints = _endpoints(settings)
except AgentOpsError as exc:
    show_error(exc, what="Cannot read the serving endpoints")
    st.stop()
try:
    agents = {a.name: a for a in _agents(settings)}
except AgentOpsError as exc:
    # The split and the history do not need the registry; adding versions and deploying name them by hand.
    show_error(exc, what="Cannot read the registered agents")
    agents = {}
if settings.backend is not Backend.DATABRICKS:
    endpoint_editor(endpoints, agents, settings=settings, identity=identity, can_change=can_change, on_change=_clear)

if not endpoints:
    if settings.backend is Backend.DATABRICKS:
        st.info("**No serving endpoints yet.** Deploy a registered agent version below; it gets its own "
                "`agents_…` endpoint.", icon=":material/route:")
        _deploy_section(agents, settings=settings, identity=identity, can_change=can_change)
    else:
        st.info(
            seed_hint(settings, "**No agent endpoints yet.** Endpoint configurations and splits are stored with the "
                      f"team's data (experiment `{team_state.state_experiment(settings)}`), so everyone on this "
                      "store sees the same ones;",
                      "none has been created on this store yet."
                      + (" MLflow AI Gateway endpoints are under *Serving layer* above."
                         if settings.backend is Backend.MLFLOW else "")),
            icon=":material/route:",
        )
    st.stop()

if settings.backend is not Backend.DATABRICKS:
    problem = traffic.gateway_status(settings)
    if problem:
        st.warning(f"The local gateway at `{settings.gateway_url}` is {problem}. Splits can still be edited; "
                   "requests and test traffic need it (`./scripts/run` starts it).", icon=":material/power_off:")
    else:
        st.caption(f"Local gateway: `{settings.gateway_url}/serving-endpoints/<name>/invocations`")
        for line in traffic.gateway_problems(settings):
            st.warning(f"The local gateway reports: {escape_md(line)}", icon=":material/report:")

by_name = {e.name: e for e in endpoints}
name = st.selectbox("Endpoint", list(by_name), key="serving_endpoint")
endpoint = by_name[name]
if endpoint.error:
    st.error(f"**{escape_md(name)} cannot be read.** {escape_md(endpoint.error)} The other endpoints are listed as "
             "usual.", icon=":material/error:")
    st.stop()
cols = st.columns([3, 1, 1])
cols[0].plotly_chart(split_chart((endpoint,)), use_container_width=True, config={"displayModeBar": False})
cols[1].metric("State", endpoint.state.value)
cols[2].metric("Sticky routing", "on" if endpoint.sticky else "off")
if endpoint.pending_routes:
    st.info(f"**A configuration update is rolling out.** Serving now: {escape_md(_split_text(endpoint, {}, pending=False))}"
            f" → when it finishes: {escape_md(_split_text(endpoint, {}, pending=True))}.", icon=":material/sync:")
# On Databricks the endpoint names only its creator; who changed it comes from the audit trail.
changed_by = endpoint.updated_by or ("nobody through this app (no change in its audit trail)"
                                     if settings.backend is Backend.DATABRICKS else "unknown")
st.caption(f"Last updated {endpoint.updated_at:%Y-%m-%d %H:%M} UTC · last change by {escape_md(changed_by)}"
           if endpoint.updated_at else "Never updated through the app.")
model_names = sorted({s.model_name for s in endpoint.served})
experiments = tuple(e for e in (agents[m].experiment_id for m in model_names if m in agents) if e)

changes = _changes(name, settings)
_interrupted(endpoint, changes, settings=settings, identity=identity, can_change=can_change)
tab_names = ["Edit split", "Judge arms", "Guarded rollout", "Send test traffic", "History"]
if settings.backend is Backend.DATABRICKS:
    tab_names.append("Deploy version")
split_tab, judge_tab, rollout_tab, traffic_tab, history_tab, *rest = st.tabs(tab_names)
deploy_tab = rest[0] if rest else None

with split_tab:
    candidates = [a for a in agents.values() if a.name in model_names or not model_names] or list(agents.values())
    arms = serving.arm_labels(endpoint)
    stored = split_editor(
        endpoint, [SplitRow((s.model_name, s.model_version), arms[s.entity_name], f"{s.model_name}::{s.model_version}",
                            s.entity_name) for s in endpoint.served],
        prefix="", can_change=can_change, locked=None if can_change else role_hint(roles.Action.CHANGE_TRAFFIC),
        intro="Set each served version's share of requests. Shares are whole percents and must add up to 100.",
        # An external or foundation model has no version: it is named by its served entity.
        add=VersionSource({a.name: a.latest_version for a in candidates},
                          lambda agent, version: SplitRow((agent, version), serving.version_label(agent, version),
                                                          f"{agent}::{version}")),
        sticky=endpoint.sticky, sticky_locked=settings.backend is Backend.DATABRICKS,
        plan=lambda shares, sticky: serving.plan_split(name, shares, sticky=sticky, settings=settings),
        apply=lambda plan, reason, request_id, progress: serving.apply_split(
            plan, user=identity.user, reason=reason, settings=settings, identity=identity,
            user_token=identity.access_token, progress=progress, request_id=request_id),
        actor=identity.user)
    if stored is not None:
        _clear()
        st.toast(f"{stored.name}: new split applied and recorded.")
        st.rerun()

with judge_tab:
    c1, c2 = st.columns(2)
    hours = window_select(f"window::{name}", c1)
    effect = c2.slider("Smallest error-rate change you care about", 0.005, 0.10, 0.02, 0.005, format="%.3f",
                       key=f"effect::{name}")
    report = read_or(None, "Cannot judge the arms", _report, settings, name, experiments, hours, effect)
    if report is not None:
        if not any(a.requests for a in report.arms):
            st.info("No traffic in this window yet. Send test traffic or widen the window.", icon=":material/hourglass_empty:")
        else:
            st.markdown(f"**Verdict.** {report.verdict}")
            st.dataframe(arms_frame(report), hide_index=True, use_container_width=True)  # formatted in the frame
            with st.expander("Tests per metric"):
                st.dataframe(comparisons_frame(report), hide_index=True, use_container_width=True)
            labels = {a.entity_name: serving.version_label(a.model_name, a.version) for a in report.arms}
            request = promote_form(
                report, key=f"::{name}", labels=labels, can_change=can_change, allow_override=True, actor=identity.user,
                now=_split_text(endpoint, labels), after_note=lambda label: f" · champion → v{label.rsplit('v', 1)[-1]}",
                caption="Moves 100% of traffic to the chosen arm, then points `champion` at its version. Both are audited.")
            if request is not None:
                try:
                    with st.spinner("Moving traffic, then the alias…"):
                        outcome = ab.promote_arm(name, request.entity_name, identity, reason=request.reason,
                                                 override_gate=request.override_gate, action=request.action,
                                                 settings=settings, request_id=request.request_id)
                    promote_done(f"::{name}")
                    _clear()
                    st.success(outcome.message)
                except AgentOpsError as exc:
                    _clear()
                    show_error(exc, what="Promotion did not complete")

with rollout_tab:
    rollout_panel(name, [s.entity_name for s in endpoint.served], settings=settings, identity=identity,
                  can_change=can_change, ports=ServicePorts(settings), key=f"rollout::{name}")

with traffic_tab:
    if settings.backend is Backend.DATABRICKS:
        st.info("Test traffic goes through the local gateway; on Databricks, query the endpoint directly.")
    else:
        n = st.number_input("Requests", min_value=1, max_value=traffic.MAX_TEST_REQUESTS, value=50, step=10, key=f"n::{name}")
        if st.button("Send", key=f"send::{name}"):
            try:
                questions = traffic.sample_questions(model_names, settings)
                bar = st.progress(0.0, text="Sending…")
                result = traffic.send_test_traffic(
                    name, questions, int(n), settings=settings,
                    progress=lambda done, total: bar.progress(done / total, text=f"{done}/{total} requests"),
                )
                st.success(f"{result.ok} of {result.sent} answered; per arm: "
                           + ", ".join(f"{k}: {v}" for k, v in sorted(result.by_arm.items()))
                           + (f" ({result.retried} needed a retry while the gateway was unreachable)" if result.retried else ""))
                for line in result.errors:
                    st.warning(escape_md(line))
                _report.clear()
            except AgentOpsError as exc:
                show_error(exc, what="Test traffic was not sent")

with history_tab:
    if changes is not None:
        history_block(changes)

if deploy_tab is not None:
    with deploy_tab:
        _deploy_section(agents, settings=settings, identity=identity, can_change=can_change)
