"""Monitoring: traffic, errors, latency, tokens and cost per version, alias and arm; alerts; trace explorer."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import streamlit as st

from components.caching import per_user_cache
from components.navigation import ensure_app_navigation

ensure_app_navigation()  # before anything renders: see components/navigation.py

from dataclasses import asdict

from components.confirm import NOTHING_CHANGES, ConfirmKeys, changes, confirm_box, held, hold, release
from components.context import allowed, current_identity, current_settings, role_hint
from components.empty import seed_hint
from components.errors import read_or, show_error
from components.live_scoring import render_live_scoring
from components.monitoring import breakdown_chart, price_rows, series_chart, trace_detail_block
from components.tables import explorer_frame, plain, totals_frame
from services import monitoring as mon
from services import alerts
from services import trace_explorer
from services import pricing, registry, roles, team_state
from services.errors import AgentOpsError, ConflictError
from services.overview import agent_experiment_ids
from services.settings import Settings
from services.traces import ARM_TAG, ENDPOINT_TAG, recent_tag_values

WINDOWS = {"Last hour": timedelta(hours=1), "Last 24 hours": timedelta(days=1),
           "Last 7 days": timedelta(days=7), "Last 30 days": timedelta(days=30)}
ANY = "Any"
PLOT_CONFIG = {"displayModeBar": False}


@per_user_cache(ttl=60, show_spinner=False)
def _agents(settings: Settings) -> list[registry.AgentSummary]:
    return registry.list_agents(settings)


@per_user_cache(ttl=60, show_spinner=False)
def _tag_values(settings: Settings, experiment_ids: tuple[str, ...], key: str, start: datetime, end: datetime) -> list[str]:
    return recent_tag_values(experiment_ids, key, start, end, settings=settings)


@per_user_cache(ttl=60, show_spinner=False)
def _versions(settings: Settings, query: mon.TraceQuery) -> list[str]:
    return mon.versions_with_traffic(query, settings)


@per_user_cache(ttl=60, show_spinner=False)
def _data(settings: Settings, query: mon.TraceQuery, split: str, groups: tuple[str, ...],
          prices: dict[str, pricing.ModelPrice]) -> mon.MonitoringData:
    return mon.monitoring_data(query, split, groups, prices=prices, settings=settings,
                               warehouse=mon.warehouse_for(settings))


@per_user_cache(ttl=60, show_spinner=False)
def _health(settings: Settings, query: mon.TraceQuery, feedback_name: str,
            prices: dict[str, pricing.ModelPrice]) -> alerts.AgentHealth:
    return alerts.agent_health(query, feedback_name=feedback_name, prices=prices, settings=settings)


@per_user_cache(ttl=30, show_spinner=False)
def _page(settings: Settings, explorer: trace_explorer.ExplorerQuery, page_size: int, token: str | None) -> trace_explorer.TracePage:
    return trace_explorer.search_page(explorer, page_size=page_size, page_token=token, settings=settings)


@per_user_cache(ttl=300, show_spinner=False)
def _detail(settings: Settings, trace_id: str) -> trace_explorer.TraceDetail:
    return trace_explorer.trace_detail(trace_id, settings)


def _pick(column, label: str, options: list[str], key: str) -> str | None:
    choice = column.selectbox(label, [ANY, *options], key=key)
    return None if choice == ANY else choice


settings = current_settings()
identity = current_identity(settings)
can_edit = allowed(settings, identity, roles.Action.EDIT_RULES)
st.title("Monitoring")
if notice := st.session_state.pop("mon_notice", None):  # a saved change, said after the rerun that shows it
    st.success(notice, icon=":material/check_circle:")

try:
    agents = _agents(settings)
    prices = pricing.load_prices(settings)
    thresholds = alerts.load_thresholds(settings)
    # The versions this session's forms were filled from: a save names them, so a teammate's save
    # in between gives a conflict instead of being overwritten.
    stored_versions = {"thr:" + k: v for k, v in alerts.threshold_versions(settings).items()}
    stored_versions["prices"] = pricing.prices_version(settings)
except AgentOpsError as exc:
    show_error(exc, what="Cannot read the workspace")
    st.stop()

experiment_ids = tuple(agent_experiment_ids(agents, settings))
if not experiment_ids:
    st.info(
        seed_hint(settings, "**There are no agents or trace experiments to monitor yet.** Register an agent from a "
                  "LoggedModel (its experiment is found from it), or set `AGENTOPS_EXPERIMENT_IDS`,",
                  "and its traces appear here."),
        icon=":material/inbox:",
    )
    st.stop()

# --- filters -------------------------------------------------------------------------------
# The window end is rounded up to the minute so cached results are reused within a minute.
now = datetime.now(tz=timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
top = st.columns([2, 2, 2, 2])
agent = _pick(top[0], "Agent", [a.name for a in agents], "mon_agent")
window_label = top[1].selectbox("Time window", list(WINDOWS), index=2, key="mon_window")
start = now - WINDOWS[window_label]
split_label = top[2].selectbox("Split charts by", ["Version", "Alias", "Arm", "None"], key="mon_split")
status_label = top[3].selectbox("Status", [ANY, "OK", "ERROR"], key="mon_status")

scope_ids = experiment_ids
if agent:
    chosen = next(a for a in agents if a.name == agent)
    scope_ids = tuple(dict.fromkeys(i for i in (*chosen.experiment_ids, *settings.experiment_ids) if i)) or experiment_ids

try:
    # Versions with traffic in the window, attributed through the traces' mlflow.modelId.
    versions = _versions(settings, mon.TraceQuery(scope_ids, start, now, agent=agent))
    arms = _tag_values(settings, scope_ids, ARM_TAG, start, now)
    endpoints = _tag_values(settings, scope_ids, ENDPOINT_TAG, start, now)
except AgentOpsError as exc:
    show_error(exc, what="Cannot read traces")
    st.stop()
aliases = sorted({alias for a in agents if not agent or a.name == agent for alias in a.aliases})

second = st.columns(4)
version = _pick(second[0], "Version", versions, "mon_version")
alias = _pick(second[1], "Alias", aliases, "mon_alias")
endpoint = _pick(second[2], "Endpoint", endpoints, "mon_endpoint")
arm = _pick(second[3], "Arm", arms, "mon_arm")

query = mon.TraceQuery(scope_ids, start, now, agent=agent, version=version, alias=alias, endpoint=endpoint, arm=arm,
                       status=mon.Status(status_label) if status_label != ANY else None)
split = {"Version": mon.Split.VERSION, "Alias": mon.Split.ALIAS, "Arm": mon.Split.ARM, "None": mon.Split.NONE}[split_label]
groups = {mon.Split.VERSION: versions, mon.Split.ALIAS: aliases, mon.Split.ARM: arms, mon.Split.NONE: []}[split]
if split is not mon.Split.NONE and not groups:
    split, groups = mon.Split.NONE, []
if split is mon.Split.VERSION and not agent:
    st.caption("Versions are numbered per agent: pick an agent, or split by arm, to keep agents apart.")

try:
    with st.spinner("Aggregating traces in the store…"):
        data = _data(settings, query, split.value, tuple(groups), prices)
except AgentOpsError as exc:
    show_error(exc, what="Cannot aggregate traces")
    st.stop()

# --- alerts --------------------------------------------------------------------------------
st.subheader("Alerts")
alert_agents = [a for a in agents if a.experiment_ids and (not agent or a.name == agent)]
fired: list[alerts.Alert] = []
try:
    for a in alert_agents:
        limits = alerts.thresholds_for(thresholds, a.name)
        health_query = mon.TraceQuery(tuple(a.experiment_ids), start, now, agent=a.name)
        fired += alerts.check_alerts(_health(settings, health_query, limits.feedback_name, prices), limits)
except AgentOpsError as exc:
    show_error(exc, what="Cannot check alert thresholds")
if fired:
    for alert in fired:
        st.error(f"**{plain(alert.agent)}** — {plain(alert.message)}", icon=":material/notifications_active:")
else:
    st.success(f"No thresholds crossed in the {window_label.lower()}.", icon=":material/check_circle:")

with st.expander("Alert thresholds", icon=":material/tune:"):
    target = st.selectbox("Thresholds for", ["* (default for all agents)", *[a.name for a in agents]], key="mon_thr_agent")
    target_key = "*" if target.startswith("*") else target
    current = alerts.thresholds_for(thresholds, target_key)
    seen = st.session_state.setdefault("mon_seen_versions", {})
    seen.setdefault("thr:" + target_key, stored_versions.get("thr:" + target_key, 0))
    with st.form("mon_thresholds"):
        cols = st.columns(5)
        p95 = cols[0].number_input("p95 latency (ms)", min_value=0.0, value=float(current.p95_latency_ms or 0), step=100.0)
        err = cols[1].number_input("Error rate (%)", min_value=0.0, max_value=100.0,
                                   value=float((current.error_rate or 0) * 100), step=0.5)
        daily = cols[2].number_input("Daily cost ($)", min_value=0.0, value=float(current.daily_cost or 0), step=1.0)
        score = cols[3].number_input("Min feedback score", value=float(current.min_feedback_score or 0), step=0.05)
        fname = cols[4].text_input("Feedback name", value=current.feedback_name)
        st.caption("A zero switches a check off." + ("" if can_edit else f" {role_hint(roles.Action.EDIT_RULES)}"))
        reviewed = st.form_submit_button("Review thresholds", icon=":material/fact_check:", disabled=not can_edit)
    if reviewed:  # checked now, saved only once confirmed
        release("mon.thresholds")
        try:
            hold("mon.thresholds", (target_key, alerts.validate_thresholds(alerts.AlertThresholds(
                p95 or None, (err / 100) or None, daily or None, score or None, fname.strip()))))
        except AgentOpsError as exc:
            show_error(exc, what="Thresholds not saved")
    pending = held("mon.thresholds")
    if pending is not None and pending[0] == target_key:
        answer = confirm_box(f"Thresholds for **{plain(target)}**:\n\n{changes(asdict(current), asdict(pending[1]))}",
                             keys=ConfirmKeys(confirm="mon_thr_save", cancel="mon_thr_cancel"),
                             confirm_label="Save thresholds", icon=":material/save:", ask_reason=False,
                             actor=identity.user, held_as="mon.thresholds",
                             missing=NOTHING_CHANGES if asdict(current) == asdict(pending[1]) else "")
        if answer.confirmed:
            try:
                alerts.save_thresholds(settings, target_key, pending[1], identity=identity,
                                       expected_version=seen["thr:" + target_key])
                seen.pop("thr:" + target_key, None)
                release("mon.thresholds")
                _health.clear()
                st.session_state["mon_notice"] = f"Saved thresholds for {plain(target)}."
                st.rerun()
            except AgentOpsError as exc:
                if isinstance(exc, ConflictError):  # the next save builds on the values now shown
                    seen["thr:" + target_key] = alerts.threshold_versions(settings).get(target_key, 0)
                show_error(exc, what="Thresholds not saved")

charts_tab, explorer_tab, prices_tab = st.tabs(["Charts", "Trace explorer", "Prices"])

# --- charts --------------------------------------------------------------------------------
with charts_tab:
    if data.is_empty:
        st.info(f"**No traces match these filters in the {window_label.lower()}.** Widen the time window or "
                "clear a filter.", icon=":material/search_off:")
    else:
        totals = data.totals
        requests = int(totals["requests"].sum())
        errors = int(totals["errors"].sum())
        cost = float(totals["cost"].sum())
        kpis = st.columns(5)
        kpis[0].metric("Requests", f"{requests:,}")
        kpis[1].metric("Error rate", f"{errors / requests:.1%}" if requests else "—")
        kpis[2].metric("Total cost", f"${cost:,.4f}")
        kpis[3].metric("Cost / 1k requests", f"${cost / requests * 1000:,.3f}" if requests else "—")
        no_tokens = int(totals["traces_without_tokens"].sum())
        kpis[4].metric("Traces without token usage", f"{no_tokens:,}",
                       help="Traces that recorded no token usage: excluded from token and estimated cost figures.")
        interval = data.interval_seconds
        bucket = f"{interval // 3600} h" if interval >= 3600 else f"{interval // 60} min"
        how = {"sql": f"{data.store_queries} SQL statements on the store's trace tables",
               "warehouse": "one statement on the SQL warehouse"}.get(data.aggregation_path,
                                                                       f"{data.store_queries} store metric queries")
        st.caption(f"Aggregated in the store in {data.elapsed_s:.2f} s ({how}) · {bucket} buckets · "
                   f"series by {data.split.value}")
        series = data.series
        left, right = st.columns(2)
        left.plotly_chart(series_chart(series, {"requests": "requests"}, "Requests", bars=True),
                          width="stretch", config=PLOT_CONFIG)
        right.plotly_chart(series_chart(series, {"error_rate": "error rate"}, "Error rate", y_format=".0%"),
                           width="stretch", config=PLOT_CONFIG)
        pct = st.segmented_control("Latency percentile", ["p50", "p95", "p99"], default="p95", key="mon_pct") or "p95"
        left, right = st.columns(2)
        left.plotly_chart(series_chart(series, {f"{pct}_ms": pct}, f"Latency {pct}", y_suffix=" ms"),
                          width="stretch", config=PLOT_CONFIG)
        right.plotly_chart(series_chart(series, {"input_tokens": "input", "output_tokens": "output"}, "Tokens"),
                           width="stretch", config=PLOT_CONFIG)
        left, right = st.columns(2)
        left.plotly_chart(series_chart(series, {"cost_per_request": "cost / request"}, "Cost per request",
                                       y_format="$.5f"), width="stretch", config=PLOT_CONFIG)
        right.plotly_chart(series_chart(series, {"cost": "cost"}, "Total cost", y_format="$.4f", bars=True),
                           width="stretch", config=PLOT_CONFIG)

        st.subheader("Cost breakdown")
        left, right = st.columns(2)
        if len(data.by_model):
            left.plotly_chart(breakdown_chart(data.by_model, "model", "cost", "Cost by model"),
                              width="stretch", config=PLOT_CONFIG)
        else:
            left.info("No LLM spans name a model in this window.")
        if data.split is not mon.Split.NONE:
            right.plotly_chart(breakdown_chart(totals, "group", "cost", f"Cost by {data.split.value}"),
                               width="stretch", config=PLOT_CONFIG)
        # Formatted in components.tables: a figure that does not exist is a dash, never None or nan.
        st.dataframe(totals_frame(totals, data.split.value if data.split is not mon.Split.NONE else "scope"),
                     hide_index=True, width="stretch",
                     column_config={"error_rate": st.column_config.TextColumn("error rate"),
                                    "unpriced_models": st.column_config.TextColumn(
                                        help="LLM models with neither a recorded cost nor a price")})
        unpriced = sorted({m for s in totals["unpriced_models"] for m in s.split(", ") if m})
        if unpriced:
            st.warning(f"No recorded cost and no price for: {plain(', '.join(unpriced))}. Add them on the Prices tab.",
                       icon=":material/price_change:")

# --- explorer ------------------------------------------------------------------------------
with explorer_tab:
    cols = st.columns(4)
    min_latency = cols[0].number_input("Min latency (ms)", min_value=0, value=0, step=100, key="mon_min_lat")
    max_latency = cols[1].number_input("Max latency (ms, 0 = none)", min_value=0, value=0, step=100, key="mon_max_lat")
    feedback = cols[2].selectbox("Feedback", ["Any", "Negative", "Positive"], key="mon_feedback")
    page_size = cols[3].selectbox("Rows per page", [25, 50, 100], index=1, key="mon_page_size")
    explorer = trace_explorer.ExplorerQuery(
        query, min_latency_ms=min_latency or None, max_latency_ms=max_latency or None,
        feedback=mon.FeedbackFilter(feedback.lower()),
        feedback_name=alerts.thresholds_for(thresholds, agent or "*").feedback_name,
    )
    # Page tokens of the pages seen so far, reset whenever the filters change.
    signature = repr((explorer, page_size))
    if st.session_state.get("mon_sig") != signature:
        st.session_state.mon_sig, st.session_state.mon_tokens = signature, [None]
    tokens: list[str | None] = st.session_state.mon_tokens
    page = read_or(None, "Cannot search traces", _page, settings, explorer, page_size, tokens[-1])
    if page is not None:
        if page.rows.empty:
            st.info("**No traces match these filters.** Widen the time window, clear a filter or the latency range.",
                    icon=":material/search_off:")
        else:
            st.caption(f"Page {len(tokens)} · {len(page.rows)} traces, newest first")
            shown = explorer_frame(page.rows)  # a missing agent, version, token count or cost is a dash
            event = st.dataframe(
                shown, hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row",
                key="mon_table",
                column_config={
                    "time": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
                    "input_tokens": st.column_config.TextColumn(help="—: the trace recorded no token usage"),
                    "cost": st.column_config.TextColumn(help="MLflow's recorded cost; —: none recorded"),
                    "version": st.column_config.TextColumn(help="—: no registered version found; 'link' says why"),
                    "model_id": st.column_config.TextColumn(help="The trace's mlflow.modelId: the LoggedModel that served it"),
                    "link": st.column_config.TextColumn(
                        help="How agent and version were found: through the model id (LoggedModel → registered "
                             "version), through the tags older app versions wrote, or why they are missing"),
                },
            )
            nav = st.columns([1, 1, 6])
            if nav[0].button("Previous", disabled=len(tokens) == 1, key="mon_prev"):
                tokens.pop()
                st.rerun()
            if nav[1].button("Next", disabled=page.next_token is None, key="mon_next"):
                tokens.append(page.next_token)
                st.rerun()
            selected = event.selection.rows if event and event.selection else []
            trace_id = page.rows.iloc[selected[0]]["trace_id"] if selected else None
            if trace_id:
                detail = read_or(None, "Cannot open the trace", _detail, settings, trace_id)
                if detail is not None:
                    trace_detail_block(detail, PLOT_CONFIG)
            else:
                st.caption("Select a row to open the trace: span tree, inputs and outputs, tokens, cost, assessments.")

# --- prices --------------------------------------------------------------------------------
with prices_tab:
    st.caption("Used for LLM models without a cost recorded by MLflow. US dollars per million tokens; cached "
               "input tokens are priced separately. Stored with the team's data (experiment "
               f"`{team_state.state_experiment(settings)}`), so everyone on this store uses the same prices.")
    seen = st.session_state.setdefault("mon_seen_versions", {})
    seen.setdefault("prices", stored_versions["prices"])
    table = pd.DataFrame([{"model": m, "input_per_mtok": p.input_per_mtok, "output_per_mtok": p.output_per_mtok,
                           "cached_input_per_mtok": p.cached_input_per_mtok} for m, p in sorted(prices.items())],
                         columns=["model", "input_per_mtok", "output_per_mtok", "cached_input_per_mtok"])
    edited = st.data_editor(table, num_rows="dynamic", hide_index=True, width="stretch", key="mon_prices",
                            disabled=not can_edit)
    rows, refused = None, ""
    try:
        rows = pricing.validate_prices(price_rows(edited.dropna(how="all")))
    except AgentOpsError as exc:
        refused = str(exc)
        if can_edit:
            st.warning(f"{plain(refused)} Nothing is saved until the table is fixed.", icon=":material/edit_off:")

    def _shown(table_prices: dict) -> dict[str, str]:
        return {m: f"in ${p.input_per_mtok:g} · out ${p.output_per_mtok:g} · cached in ${p.cached_input_per_mtok:g}"
                for m, p in table_prices.items()}

    answer = confirm_box(changes(_shown(prices), _shown(rows)) if rows is not None else None,
                         keys=ConfirmKeys(confirm="mon_save_prices"), confirm_label="Save prices",
                         icon=":material/save:", ask_reason=False, actor=identity.user, button_type="secondary",
                         disabled_hint="" if can_edit else role_hint(roles.Action.EDIT_RULES),
                         missing="Fix the price table first." if refused else (
                             NOTHING_CHANGES if rows is not None and _shown(rows) == _shown(prices) else ""))
    if answer.confirmed:
        try:
            pricing.save_prices(settings, {m: asdict(p) for m, p in rows.items()}, identity=identity,
                                expected_version=seen["prices"])
            seen.pop("prices", None)
            _data.clear()
            _health.clear()
            st.session_state["mon_notice"] = "Prices saved."
            st.rerun()
        except AgentOpsError as exc:
            if isinstance(exc, ConflictError):
                seen["prices"] = pricing.prices_version(settings)
            show_error(exc, what="Prices not saved")

render_live_scoring(settings, identity, [a.name for a in agents], agent, start, now, split_label)
