"""Evaluations: run mlflow.genai.evaluate against a version, and compare runs row by row."""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from components.caching import per_user_cache
from components.navigation import ensure_app_navigation

ensure_app_navigation()  # before anything renders: see components/navigation.py

from components import evaluations as view
from components.confirm import ConfirmKeys, confirm_box
from components.context import allowed, current_identity, current_settings, page_link, role_hint
from components.empty import agents_or_stop
from components.errors import read_or, show_error
from components.tables import code, plain
from components.widgets import reset_when_changed
from services import datasets, eval_jobs, registry, roles, scorers
from services import evaluations as evaluations_service
from services.errors import AgentOpsError
from services.overview import agent_experiment_ids
from services.settings import Backend, Settings


@per_user_cache(ttl=30, show_spinner=False)
def _agents(settings: Settings) -> list[registry.AgentSummary]:
    return registry.list_agents(settings)


@per_user_cache(ttl=30, show_spinner=False)
def _versions(settings: Settings, agent: str) -> dict[str, str]:
    return evaluations_service.version_choices(agent, settings)


@per_user_cache(ttl=30, show_spinner=False)
def _datasets(settings: Settings, experiment_ids: tuple[str, ...]) -> datasets.DatasetListing:
    return datasets.list_datasets(experiment_ids, settings)


@per_user_cache(ttl=30, show_spinner=False)
def _runs(settings: Settings, experiment_ids: tuple[str, ...]) -> list[evaluations_service.EvaluationSummary]:
    return evaluations_service.evaluation_runs(experiment_ids, settings)


@per_user_cache(ttl=300, show_spinner=False)
def _compare(settings: Settings, run_ids: tuple[str, ...], baseline: str) -> evaluations_service.Comparison:
    return evaluations_service.compare_runs(run_ids, baseline, settings)


@per_user_cache(ttl=30, show_spinner=False)
def _experiment_runs(settings: Settings, experiment_id: str) -> list[evaluations_service.EvaluationSummary]:
    return evaluations_service.experiment_runs(experiment_id, settings)


def _clear_caches() -> None:
    _runs.clear()
    _datasets.clear()


settings = current_settings()
identity = current_identity(settings)
can_run = allowed(settings, identity, roles.Action.RUN_EVALUATION)
st.title("Evaluations")
st.caption("Run `mlflow.genai.evaluate` against a registered version, then compare runs row by row.")

agents = agents_or_stop(_agents, settings, what="Cannot read the registered agents",
                        lead="**No registered agents yet.** Register an agent version in MLflow, then evaluate it "
                             "here;", otherwise="nothing else is needed.")

experiment_ids = tuple(agent_experiment_ids(agents, settings))
run_tab, compare_tab = st.tabs(["Run", "Compare"])

# --- Run ---------------------------------------------------------------------------------------
with run_tab:
    names = [a.name for a in agents]
    left, right = st.columns(2, gap="large")
    with left:
        agent = st.selectbox("Agent", names, key="eval_agent")
        # A version or dataset picked for the previous agent means nothing for this one.
        reset_when_changed("evaluations", agent, ("eval_version", "eval_dataset"))
        choices = read_or({}, f"Cannot list the versions of {plain(agent)}", _versions, settings, agent)
        version = st.selectbox("Version or alias", list(choices), format_func=choices.get, key="eval_version")
        source = st.radio("Dataset", ["MLflow evaluation dataset", "Upload a file"], horizontal=True, key="eval_source")
        dataset_name: str | None = None
        rows: list | None = None
        upload_name: str | None = None
        upload_error: AgentOpsError | None = None
        if source == "MLflow evaluation dataset":
            agent_ids = tuple(agent_experiment_ids([a for a in agents if a.name == agent], settings))
            listing = _datasets(settings, agent_ids)
            if not listing.supported:
                st.warning(listing.reason, icon=":material/dataset:")
            elif not listing.datasets:
                st.info(f"{plain(agent)} has no evaluation datasets yet. Upload a file instead.", icon=":material/dataset:")
            else:
                dataset_name = st.selectbox("Evaluation dataset", [d.name for d in listing.datasets], key="eval_dataset")
        else:
            upload = st.file_uploader(
                "CSV, JSON or JSONL in MLflow's inputs/expectations shape",
                type=list(datasets.UPLOAD_FORMATS), key="eval_upload",
                help='Each row: {"inputs": {"question": ...}, "expectations": {"expected_facts": [...], '
                     '"required_tools": [...], "expected_response": ...}}. CSV: columns "inputs" and '
                     '"expectations" as JSON, or "inputs.question", "expectations.expected_facts", ...',
            )
            if upload is not None:
                try:
                    rows = datasets.parse_upload(upload.name, upload.getvalue())
                    upload_name = upload.name
                    st.success(f"{plain(upload.name)}: {len(rows)} valid rows.", icon=":material/check_circle:")
                except AgentOpsError as exc:
                    upload_error = exc
                    show_error(exc, what=f"{plain(upload.name)} cannot be used")
    with right:
        catalog = scorers.scorer_catalog(databricks=settings.backend is Backend.DATABRICKS)
        available = {s.name: s for s in catalog if s.available}
        chosen = st.multiselect(
            "Scorers", list(available), default=list(scorers.DEFAULT_SCORERS),
            format_func=lambda n: f"{available[n].label} ({available[n].kind})", key="eval_scorers",
        )
        blocked = [s for s in catalog if not s.available]
        if blocked:
            st.caption(
                f":material/block: {', '.join(s.label for s in blocked)} cannot run here: {blocked[0].reason}"
            )
        with st.expander("Budgets and forbidden content"):
            latency = st.number_input("Latency budget (ms)", min_value=1.0, value=2000.0, step=100.0)
            cost = st.number_input("Cost budget per row (USD)", min_value=0.0, value=0.01, step=0.001, format="%.4f")
            forbidden = st.text_input("Forbidden terms (comma-separated)", value="")

    ready = version is not None and (dataset_name is not None or rows is not None) and bool(chosen)
    on = f"dataset **{plain(dataset_name)}**" if dataset_name is not None else (
        f"{len(rows)} uploaded rows ({plain(upload_name)})" if rows is not None else "")
    if confirm_box(f"Evaluate **{plain(agent)}** {plain(choices.get(version, version))} on {on} with "
                   f"{plain(', '.join(chosen))}: one MLflow run in the agent's experiment." if ready else "",
                   keys=ConfirmKeys(confirm="eval_run"), confirm_label="Run evaluation", icon=":material/play_arrow:",
                   ask_reason=False, actor=identity.user, compact=True,
                   disabled_hint="" if can_run else role_hint(roles.Action.RUN_EVALUATION),
                   missing="" if ready else "Pick a version, a dataset (or a valid file) and at least one scorer.",
                   ).confirmed:
        request = evaluations_service.EvaluationRequest(
            agent=agent,
            version=str(version),
            scorers=tuple(chosen),
            dataset_name=dataset_name,
            rows=tuple(rows) if rows is not None else None,
            dataset_label=upload_name,
            options=scorers.ScorerOptions(
                latency_budget_ms=float(latency), cost_budget_usd=float(cost),
                forbidden_terms=tuple(t.strip() for t in forbidden.split(",") if t.strip()),
            ),
        )
        # One request id per request, kept until it succeeded: pressing Run again after a failure
        # with the same choices retries that request, which then completes exactly once.
        fingerprint = evaluations_service.request_fingerprint(request)
        pending = st.session_state.get("eval_request")
        if not pending or pending.get("fingerprint") != fingerprint:
            pending = {"fingerprint": fingerprint, "request_id": evaluations_service.new_request_id()}
            st.session_state["eval_request"] = pending
        request = replace(request, request_id=pending["request_id"])
        try:
            job_id = eval_jobs.start_job(request, settings, identity)
            started = st.session_state.setdefault("eval_jobs", [])
            if job_id not in started:  # the same request still going returns its job
                started.insert(0, job_id)
        except AgentOpsError as exc:
            show_error(exc, what="The evaluation did not start")

    job_ids = list(st.session_state.get("eval_jobs", []))
    jobs = [job for job in (eval_jobs.get_job(j) for j in job_ids) if job is not None]
    active = any(not job.finished for job in jobs)

    def _forget_settled(shown: list[eval_jobs.EvalJob]) -> None:
        """Keep the request id only while its last job was interrupted (a retry must reuse it)."""
        pending = st.session_state.get("eval_request")
        if pending and any(j.finished and not j.interrupted and j.request_id == pending["request_id"] for j in shown):
            del st.session_state["eval_request"]  # succeeded, or refused for good: the next click is a new request

    _forget_settled(jobs)

    @st.fragment(run_every=2 if active else None)
    def _progress() -> None:
        shown = [job for job in (eval_jobs.get_job(j) for j in job_ids) if job is not None]
        for job in shown:
            if job.status is eval_jobs.JobStatus.SUCCEEDED:
                st.success(f"**{plain(job.label)}** finished: run {code(job.run_id)}. Compare it in the Compare tab.",
                           icon=":material/check_circle:")
            elif job.status is eval_jobs.JobStatus.FAILED and job.interrupted:
                st.error(f"**{plain(job.label)}** was interrupted: {plain(job.error)} Press **Run evaluation** "
                         f"again with the same choices to retry request {code(job.request_id)}: it is not run twice.",
                         icon=":material/cloud_off:")
            elif job.status is eval_jobs.JobStatus.FAILED:
                st.error(f"**{plain(job.label)}** failed: {plain(job.error)}", icon=":material/error:")
            else:
                st.progress(job.fraction, text=f"{plain(job.label)}: {plain(job.message)}")
        _forget_settled(shown)
        if active and all(job.finished for job in shown):
            # Every page's cached reads (Overview, Versions, readiness) show the new run at once.
            st.cache_data.clear()
            st.rerun()

    if jobs:
        st.subheader("Runs started here")
        _progress()
    else:
        st.caption("Runs execute in the background: keep using the app while they run.")

    st.subheader("Evaluation runs")
    where = st.columns([2, 2])
    scope_choice = where[0].selectbox(
        "Experiment", ["All the agents' experiments", *experiment_ids, "Another experiment id…"], key="eval_scope",
        help="Runs made outside the app are listed too: with a LoggedModel they are tied to its version; a bare "
             "predict_fn run is listed under its experiment, not attached to a version, and can be compared.")
    other_id = where[1].text_input("Experiment id", key="eval_scope_other",
                                   placeholder="e.g. 123456789") if scope_choice == "Another experiment id…" else ""
    recent = []
    try:
        if scope_choice == "Another experiment id…":
            recent = _experiment_runs(settings, other_id) if other_id.strip() else []
        elif scope_choice in experiment_ids:
            recent = _runs(settings, (scope_choice,))
        else:
            recent = _runs(settings, experiment_ids)
    except AgentOpsError as exc:
        show_error(exc, what="Cannot list evaluation runs")
    if not recent:
        st.caption("No evaluation runs here yet: run one above, or pick another experiment.")
    if recent:
        retried = {r.request_id for r in recent if r.request_id and r.state == "finished"}
        interrupted = [r for r in recent if r.interrupted and r.request_id not in retried]
        if interrupted:
            st.warning(
                f"**{len(interrupted)} {'run was' if len(interrupted) == 1 else 'runs were'} interrupted and not completed since** (the MLflow backend or the "
                "app went away mid-run). Their partial results are not used in comparisons or gates. Run the same "
                "evaluation again to retry.",
                icon=":material/cloud_off:",
            )
        st.dataframe(view.runs_frame(recent[:50]), hide_index=True, use_container_width=True)

# --- Compare -----------------------------------------------------------------------------------
with compare_tab:
    runs = read_or([], "Cannot list evaluation runs", _runs, settings, experiment_ids)
    # An interrupted run's figures are partial: never compared, nor shown next to its retry.
    left_out = [r for r in runs if r.interrupted]
    runs = [r for r in runs if not r.interrupted]
    if left_out:
        st.caption(f":material/cloud_off: {len(left_out)} interrupted {'run' if len(left_out) == 1 else 'runs'} left out: their results are incomplete.")
    if len(runs) < 2:
        st.info("**Comparing needs two or more evaluation runs.** Start one in the Run tab.", icon=":material/fact_check:")
    else:
        labels = {r.run_id: view.run_label(r) for r in runs}
        picked = st.multiselect("Runs to compare", list(labels), format_func=labels.get, key="compare_runs",
                                placeholder="Pick two or more evaluation runs")
        if len(picked) < 2:
            st.info("Pick two or more runs; the first is the baseline unless you choose another.", icon=":material/compare:")
        else:
            baseline = st.selectbox("Baseline", picked, format_func=labels.get, key="compare_baseline")
            try:
                with st.spinner("Reading per-row results and running paired tests…"):
                    comparison = _compare(settings, tuple(picked), baseline)
            except AgentOpsError as exc:
                show_error(exc, what="Cannot compare these runs")
                st.stop()
            for candidate in comparison.candidates:
                if candidate.disjoint:
                    st.warning(
                        f"**{candidate.candidate.label}** and the baseline share no rows (disjoint datasets: "
                        f"{candidate.only_in_baseline} rows only in the baseline, {candidate.only_in_candidate} only in "
                        "this run). Nothing can be tested.", icon=":material/join_inner:")
                    continue
                significant = any(t.direction in ("better", "worse") for t in candidate.tests)
                (st.success if significant else st.info)(plain(candidate.verdict), icon=":material/analytics:")
                if candidate.only_in_baseline or candidate.only_in_candidate:
                    st.caption(
                        f"{candidate.only_in_baseline} rows only in the baseline and {candidate.only_in_candidate} "
                        f"only in {candidate.candidate.label}: left out of the tests, listed in the table below."
                    )
            st.subheader("Per-metric summary")
            st.dataframe(view.summary_frame(comparison), hide_index=True, use_container_width=True)
            if not comparison.deltas.empty:
                left, right = st.columns(2)
                left.plotly_chart(view.delta_chart(comparison), use_container_width=True, config={"displayModeBar": False})
                right.plotly_chart(view.delta_distribution(comparison), use_container_width=True, config={"displayModeBar": False})
            st.subheader("Rows")
            counts = comparison.rows["change"].value_counts().to_dict() if not comparison.rows.empty else {}
            choice = st.radio(
                "Show", list(view.ROW_FILTERS), horizontal=True, key="compare_filter",
                format_func=lambda c: c if view.ROW_FILTERS[c] is None
                else f"{c} ({sum(counts.get(str(w), 0) for w in view.ROW_FILTERS[c])})",
            )
            st.dataframe(view.filter_rows(comparison, choice), hide_index=True, use_container_width=True)
    page_link("versions", "Promote a version whose evaluation is better", icon=":material/sell:")
