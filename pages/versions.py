"""Versions & releases: browse versions, compare them, promote and roll back aliases behind a gate."""

from __future__ import annotations

import uuid

import pandas as pd
import streamlit as st

from components.caching import per_user_cache
from components.navigation import ensure_app_navigation

ensure_app_navigation()  # before anything renders: see components/navigation.py

from components.alias_history import show_alias_history
from components.app_homes import forget_homes
from components.confirm import ConfirmKeys, confirm_box
from components.context import allowed, current_identity, current_settings, role_hint
from components.empty import agents_or_stop
from components.errors import read_or, show_error
from components.readiness import readiness_cell, show_readiness
from components.tables import code, plain
from components.versions import (
    diff_frame,
    plan_blockers,
    rules_change,
    show_linked_prompts,
    show_plan,
    show_prompt_changes,
    show_version_detail,
    show_versions_table,
)
from components.widgets import reset_when_changed
from services import gates, promotion, prompts, readiness, registry, releases, roles, versions
from services.errors import AgentOpsError
from services.settings import Settings

PAGE_SIZES = (25, 50, 100)
_PENDING = "versions.pending_plan"
# One id per confirmed plan: a retry after a failure completes the same promotion, exactly once.
_PENDING_REQUEST = "versions.pending_request"
_NOTICE = "versions.notice"
_LOADS = "versions.load_checks"  # "agent/version" -> readiness.LoadCheckResult of this session


@per_user_cache(ttl=30, show_spinner=False)
def _agents(settings: Settings) -> list[registry.AgentSummary]:
    return registry.list_agents(settings)


@per_user_cache(ttl=30, show_spinner=False)
def _versions(settings: Settings, agent: str) -> pd.DataFrame:
    return versions.list_versions(agent, settings)


@per_user_cache(ttl=30, show_spinner=False)
def _detail(settings: Settings, agent: str, version: str) -> versions.VersionDetail:
    return versions.version_detail(agent, version, settings)


@per_user_cache(ttl=30, show_spinner=False)
def _diff(settings: Settings, agent: str, left: str, right: str) -> versions.VersionDiff:
    return versions.diff_versions(agent, left, right, settings)


@per_user_cache(ttl=30, show_spinner=False)
def _prompts(settings: Settings, agent: str, version: str) -> tuple[prompts.PromptRef, ...]:
    return prompts.linked_prompts(agent, version, settings)


@per_user_cache(ttl=30, show_spinner=False)
def _prompt_changes(settings: Settings, agent: str, left: str, right: str) -> tuple[prompts.PromptChange, ...]:
    return prompts.prompt_changes(agent, left, right, settings)


@per_user_cache(ttl=30, show_spinner=False)
def _states(settings: Settings, agent: str) -> list[releases.AliasState]:
    return releases.alias_states(agent, settings)


@per_user_cache(ttl=30, show_spinner=False)
def _history(settings: Settings, agent: str) -> list:
    return releases.alias_history(agent, settings=settings, include_interrupted=True)


@per_user_cache(ttl=30, show_spinner=False)
def _rules(settings: Settings, agent: str) -> list[gates.GateRule]:
    return gates.gate_rules(agent, settings)


@per_user_cache(ttl=30, show_spinner=False)
def _readiness_cells(settings: Settings, agent: str, numbers: tuple[str, ...]) -> dict[str, str]:
    return {n: readiness_cell(r) for n, r in readiness.assess_versions(agent, numbers, settings).items()}


@per_user_cache(ttl=30, show_spinner=False)
def _readiness(settings: Settings, agent: str, version: str, against: str, load_key: str,
               _load: readiness.LoadCheckResult | None) -> readiness.ReadinessReport:
    return readiness.assess(agent, version, settings, against=against, load=_load)


def _clear_caches() -> None:
    for loader in (_agents, _versions, _detail, _diff, _states, _history, _rules, _readiness_cells, _readiness):
        loader.clear()
    forget_homes()  # the first alias change creates the audit experiment


def _changed(notice: str, *forget: str) -> None:
    """After a stored change: forget the session keys that described it, reload, and say what changed."""
    for key in forget:
        st.session_state.pop(key, None)
    _clear_caches()
    st.session_state[_NOTICE] = notice
    st.rerun()


def _load_result(agent: str, version: str) -> readiness.LoadCheckResult | None:
    return st.session_state.setdefault(_LOADS, {}).get(f"{agent}/{version}")


def _readiness_panel(settings: Settings, agent: str, version: str, against: str,
                     key: str) -> readiness.ReadinessReport | None:
    """The checklist of one version, with the on-demand load check; None when it cannot be read."""
    load = _load_result(agent, version)
    load_key = "" if load is None else f"{load.ok}/{load.stage}/{load.seconds}"
    try:
        with st.spinner(f"Checking the readiness of v{version}…"):
            report = _readiness(settings, agent, version, against, load_key, load)
    except AgentOpsError as exc:
        show_error(exc, what=f"Cannot check the readiness of v{version}")
        return None

    def run(progress) -> readiness.LoadCheckResult:
        result = readiness.check_load(agent, version, settings, progress=progress)
        st.session_state.setdefault(_LOADS, {})[f"{agent}/{version}"] = result
        return result

    try:
        if show_readiness(report, key=key, run_load_check=run):
            st.rerun()
    except AgentOpsError as exc:
        show_error(exc, what=f"Cannot run the load check of v{version}")
    return report


def _plan(settings: Settings, agent: str, alias: str, version: str, *, keep_request: bool = False) -> None:
    """Judge a promotion once (gate + readiness, with this session's load check) and keep it for confirming."""
    try:
        with st.spinner("Gathering evidence and checking readiness…"):
            st.session_state[_PENDING] = promotion.plan_promotion(agent, alias, version, settings,
                                                                   load=_load_result(agent, version))
        if not keep_request or _PENDING_REQUEST not in st.session_state:
            st.session_state[_PENDING_REQUEST] = uuid.uuid4().hex
    except AgentOpsError as exc:
        st.session_state.pop(_PENDING, None)
        show_error(exc, what="Cannot plan this promotion")


settings = current_settings()
identity = current_identity(settings)
can_promote = allowed(settings, identity, roles.Action.PROMOTE)
can_edit_rules = allowed(settings, identity, roles.Action.EDIT_RULES)
st.title("Versions & releases")

agents = agents_or_stop(_agents, settings, what="Cannot read the model registry",
                        lead="**No registered agents yet.** Register an agent version in MLflow (for example "
                             "`mlflow.pyfunc.log_model(..., registered_model_name=...)`),",
                        otherwise="and it appears here.")

notice = st.session_state.pop(_NOTICE, None)
if notice:
    st.success(plain(notice), icon=":material/check_circle:")

query = st.text_input("Search agents", placeholder="name contains…", key="versions.agent_search")
names = [a.name for a in agents if query.strip().lower() in a.name.lower()]
if not names:
    st.info(f"No agent name contains {plain(repr(query))}. Clear the search to see all {len(agents)} agents.",
            icon=":material/search_off:")
    st.stop()
agent = st.selectbox("Agent", names, key="versions.agent")
# A version or alias picked for the previous agent means nothing for this one.
reset_when_changed("versions", agent, ("versions.detail", "versions.left", "versions.right", "versions.target",
                                       "versions.alias", "versions.alias_other", "versions.page"))

try:
    frame = _versions(settings, agent)
except AgentOpsError as exc:
    show_error(exc, what=f"Cannot list the versions of {plain(agent)}")
    st.stop()

if frame.empty:
    st.info(f"**{plain(agent)} has no versions yet.** Log a model with {code(f'registered_model_name={agent!r}')} "
            "to create one.",
            icon=":material/inbox:")
    st.stop()

with st.expander("Experiments of this agent", icon=":material/science:"):
    chosen_agent = next(a for a in agents if a.name == agent)
    attached = registry.attached_experiments(chosen_agent.tags)
    if chosen_agent.experiment_ids:
        st.caption("Traces and evaluations are read from: "
                   + ", ".join(f"`{e}`" + (" (attached)" if e in attached else "") for e in chosen_agent.experiment_ids)
                   + ". Found from the versions' LoggedModels and source runs; attach one for traces logged "
                     "outside any LoggedModel.")
    else:
        st.caption("No experiment found from the versions' LoggedModels: attach the experiment holding this "
                   "agent's traces.")
    edit_hint = "" if can_edit_rules else role_hint(roles.Action.EDIT_RULES)
    new_experiment = st.text_input("Experiment id to attach", key="versions.attach_id")
    if confirm_box(f"Attach experiment `{plain(new_experiment.strip())}` to **{plain(agent)}**: its traces and "
                   "evaluations are read with this agent's." if new_experiment.strip() else "",
                   keys=ConfirmKeys(confirm="versions.attach"), confirm_label="Attach", icon=":material/link:",
                   ask_reason=False, actor=identity.user, compact=True, button_type="secondary",
                   disabled_hint=edit_hint, missing="" if new_experiment.strip() else "Type an experiment id to attach.",
                   ).confirmed:
        try:
            registry.attach_experiment(agent, new_experiment, identity, settings)
            _changed(f"Attached experiment {new_experiment.strip()} to {agent}.")
        except AgentOpsError as exc:
            show_error(exc, what="Experiment not attached")
    if attached:
        to_detach = st.selectbox("Attached experiment", attached, key="versions.detach_id")
        if confirm_box(f"Detach experiment `{plain(to_detach)}` from **{plain(agent)}**: its traces and evaluations "
                       "are no longer read with this agent's (nothing is deleted).",
                       keys=ConfirmKeys(confirm="versions.detach"), confirm_label="Detach", icon=":material/link_off:",
                       ask_reason=False, actor=identity.user, compact=True, button_type="secondary",
                       disabled_hint=edit_hint).confirmed:
            try:
                registry.detach_experiment(agent, to_detach, identity, settings)
                _changed(f"Detached experiment {to_detach} from {agent}.")
            except AgentOpsError as exc:
                show_error(exc, what="Experiment not detached")

numbers = [str(v) for v in frame["version"]]
tab_list, tab_compare, tab_promote, tab_history, tab_gate = st.tabs(
    ["Versions", "Compare", "Promote / roll back", "Alias history & audit", "Gate rules"]
)

with tab_list:
    controls = st.columns([3, 1, 1])
    search = controls[0].text_input("Filter versions", placeholder="v3, alias, commit, param value…",
                                    key="versions.search")
    page_size = controls[1].selectbox("Per page", PAGE_SIZES, key="versions.page_size")
    shown = versions.filter_versions(frame, search)
    _, pages = versions.paginate(shown, 1, page_size)
    page = controls[2].number_input("Page", min_value=1, max_value=pages, value=1, key="versions.page")
    rows, pages = versions.paginate(shown, int(page), page_size)
    st.caption(f"{len(shown)} of {len(frame)} versions · page {min(int(page), pages)} of {pages} · "
               "traffic over the last 7 days")
    if rows.empty:
        st.info("No version matches the filter.", icon=":material/search_off:")
    else:
        try:
            with st.spinner("Checking release readiness…"):
                cells = _readiness_cells(settings, agent, tuple(str(v) for v in rows["version"]))
        except AgentOpsError as exc:
            cells = None
            st.caption(f"Release readiness is not available: {plain(exc)}")
        show_versions_table(rows, cells)
    chosen = st.selectbox("Version detail", numbers, format_func=lambda v: f"v{v}", key="versions.detail")
    try:
        show_version_detail(_detail(settings, agent, chosen))
    except AgentOpsError as exc:
        show_error(exc, what=f"Cannot read v{chosen}")
    try:
        show_linked_prompts(_prompts(settings, agent, chosen), chosen)
    except AgentOpsError as exc:
        show_error(exc, what=f"Cannot read the prompts v{chosen} uses")
    with st.expander(f"Release readiness of v{chosen} (against champion)", expanded=True):
        _readiness_panel(settings, agent, chosen, "champion", key="versions.detail_load_check")

with tab_compare:
    if len(numbers) < 2:
        st.info("Only one version exists; register another to compare.", icon=":material/compare_arrows:")
    else:
        left_col, right_col = st.columns(2)
        left = left_col.selectbox("Left", numbers, index=1, format_func=lambda v: f"v{v}", key="versions.left")
        right = right_col.selectbox("Right", numbers, index=0, format_func=lambda v: f"v{v}", key="versions.right")
        try:
            diff = _diff(settings, agent, left, right)
            if diff.identical:
                st.info(f"v{left} and v{right} have the same params and tags.", icon=":material/drag_handle:")
            else:
                st.caption("Only the params and tags that differ.")
                st.dataframe(diff_frame(diff), hide_index=True, width="stretch")
        except AgentOpsError as exc:
            show_error(exc, what="Cannot compare the versions")
        st.subheader("Prompts")
        try:
            show_prompt_changes(_prompt_changes(settings, agent, left, right), left, right)
        except AgentOpsError as exc:
            show_error(exc, what="Cannot compare the prompts of these versions")

with tab_promote:
    states = read_or([], "Cannot read the aliases", _states, settings, agent)
    known = sorted({"champion", "challenger", *(s.alias for s in states)})
    cols = st.columns([2, 2, 2])
    alias_options = [*known, "other…"]
    alias_choice = cols[0].selectbox("Alias", alias_options, index=alias_options.index("champion"),
                                     key="versions.alias")
    alias = cols[1].text_input("New alias name", key="versions.alias_other") if alias_choice == "other…" else alias_choice
    target = cols[2].selectbox("Version", numbers, format_func=lambda v: f"v{v}", key="versions.target")
    if not can_promote:
        st.caption(f":material/lock: {role_hint(roles.Action.PROMOTE)}")
    if st.button("Review promotion", icon=":material/fact_check:", key="versions.review", disabled=not can_promote):
        _plan(settings, agent, alias, target)

    plan: promotion.PromotionPlan | None = st.session_state.get(_PENDING)
    if plan is not None and plan.agent == agent:
        with st.container(border=True):
            show_plan(plan)

            def run(progress) -> readiness.LoadCheckResult:
                result = readiness.check_load(plan.agent, plan.target_version, settings, progress=progress)
                st.session_state.setdefault(_LOADS, {})[f"{plan.agent}/{plan.target_version}"] = result
                return result

            try:
                if show_readiness(plan.readiness, key="versions.load_check", run_load_check=run):
                    # The checklist changed: judge the plan again with the load check's result.
                    _plan(settings, plan.agent, plan.alias, plan.target_version, keep_request=True)
                    st.rerun()
            except AgentOpsError as exc:
                show_error(exc, what=f"Cannot run the load check of v{plan.target_version}")
            if plan.is_noop:
                st.info(f"{plain(plan.alias)} already points to v{plan.target_version}.", icon=":material/info:")
            answer = confirm_box(None, keys=ConfirmKeys.under("versions"), confirm_label="Confirm promotion",
                                 blocked=plan_blockers(plan), actor=identity.user,
                                 disabled_hint="" if can_promote else role_hint(roles.Action.PROMOTE))
            if answer.cancelled:
                st.session_state.pop(_PENDING, None)
                st.session_state.pop(_PENDING_REQUEST, None)
                st.rerun()
            if answer.confirmed:
                request = promotion.PromotionRequest.confirming(
                    plan, reason=answer.reason, override=answer.override,
                    request_id=st.session_state.get(_PENDING_REQUEST),
                )
                try:
                    with st.spinner(f"Promoting v{plan.target_version} to {plain(plan.alias)}…"):
                        result = releases.promote(request, identity, settings)
                except AgentOpsError as exc:
                    show_error(exc, what="The promotion did not complete")
                else:
                    change = result.change
                    _changed(f"{change.alias}: v{change.from_version or '—'} → v{change.to_version} "
                             f"(recorded as {change.gate.value} by {change.user}). " + " ".join(result.messages),
                             _PENDING, _PENDING_REQUEST)


with tab_history:
    try:
        states = _states(settings, agent)
        history = _history(settings, agent)
    except AgentOpsError as exc:
        show_error(exc, what="Cannot read the audit trail")
        states, history = [], []
    # An alias change also forgets a promotion planned against the holder it replaced.
    show_alias_history(agent, states, history, settings=settings, identity=identity, can_promote=can_promote,
                       changed=lambda notice, *keys: _changed(notice, *keys, _PENDING, _PENDING_REQUEST))

with tab_gate:
    rules = read_or([], "Cannot read the gate rules", _rules, settings, agent)
    st.caption(f"Stored on the registered model as the `{gates.GATE_TAG}` tag, so they travel with the agent. "
               "Metrics are evaluation metric names such as `expected_facts/mean`.")
    editor = st.data_editor(
        pd.DataFrame([{"kind": r.kind.value, "metric": r.metric or "", "threshold": r.threshold} for r in rules],
                     columns=["kind", "metric", "threshold"]),
        num_rows="dynamic", width="stretch", key="versions.rules_editor",
        column_config={
            "kind": st.column_config.SelectboxColumn("Rule", options=[k.value for k in gates.RuleKind], required=True),
            "metric": st.column_config.TextColumn("Metric"),
            "threshold": st.column_config.NumberColumn("Threshold", required=True),
        },
    )
    new_rules: list[gates.GateRule] | None = None
    try:
        new_rules = [
            gates.GateRule(gates.RuleKind(row["kind"]), float(row["threshold"]), (row["metric"] or None))
            for row in editor.dropna(subset=["kind", "threshold"]).to_dict("records")
        ]
    except (ValueError, TypeError) as exc:
        show_error(exc, what="The edited rules cannot be read")
    changed = new_rules is not None and new_rules != rules
    answer = confirm_box(
        rules_change(rules, new_rules) if changed else None,
        keys=ConfirmKeys(confirm="versions.save_rules", reason="versions.rules_reason"), confirm_label="Save gate rules", icon=":material/save:",
        reason_label="Why change the gate rules? (optional, recorded)",
        blocked=["The edited rules cannot be read; fix the table first."] if new_rules is None else (),
        allow_override=False, disabled_hint="" if can_edit_rules else role_hint(roles.Action.EDIT_RULES),
        actor=identity.user,
    )
    if answer.confirmed and new_rules is not None:
        try:
            gates.set_gate_rules(agent, new_rules, identity, settings, reason=answer.reason)
        except AgentOpsError as exc:
            show_error(exc, what="The gate rules were not saved")
        else:
            _changed(f"Saved {len(new_rules)} gate rule(s) for {agent}.")

if st.button("Refresh", icon=":material/refresh:", key="versions.refresh"):
    _clear_caches()
    st.rerun()
