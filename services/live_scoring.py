"""Live scoring: scorers and judges on an agent's incoming traces, and the quality they measure.

Configuration (per agent: scorers, a sample rate in 0..1, an optional MLflow trace filter and the
code scorers' options) is team configuration, a versioned ``team_state`` record
``live_scoring.<agent>`` written by operators only. Where each scorer runs:

* **local backend** — the app's worker (``python -m agentops worker``, started by ``scripts/run``
  beside the gateway) runs MLflow's own online trace processor on every experiment of every
  configured agent (:func:`run_pass`, via ``services._mlflow_internal.online_scoring``), for every
  scorer.
* **mlflow backend** (a shared ``mlflow server``) — the server runs what it can: LLM judges whose
  model is one of its AI Gateway endpoints (``AGENTOPS_JUDGE_MODEL=gateway:/<endpoint>``).
  :func:`save_config` registers and starts (or updates, stops) them there through MLflow's client
  (``Scorer.register`` / ``start`` / ``update`` / ``stop``), :func:`delete_config` deletes them, and
  the server's own scheduler scores them. MLflow 3.17's tracking store refuses ``Scorer.start`` for
  anything else ("does not use a gateway model"), so the code scorers and judges on other models
  run in the worker, which skips every scorer the server runs (:func:`runs_in_server`): nothing is
  scored twice.
* **Databricks** — :func:`save_config` registers and starts (or updates, stops, deletes) each
  scorer the same way (the ``/api/2.0/managed-evals/scheduled-scorers`` calls), and Databricks
  production monitoring runs them; no worker runs. :func:`delete_config` deletes them.

Results are assessments named ``live_<scorer>`` whose source id is the same name.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from services import registry, roles, team_state
from services._clients import mlflow_client, translate_errors
from services.errors import ConflictError, ValidationError
from services.live_scoring_scorers import live_name, serialized_code_scorer, serialized_judge
from services.settings import Backend, Settings

KEY_PREFIX = "live_scoring."
STATUS_FILE = "live_scoring_status.json"
# Code scorers that judge a live trace on its own; the others compare with expectations, which
# live traffic does not have.
LIVE_CODE_SCORERS = ("forbidden_content", "latency_budget", "cost_budget")
NEEDS_EXPECTATIONS = ("expected_facts", "required_tools", "expected_answer", "correctness")
LIVE_JUDGES = ("safety", "relevance_to_query", "guidelines")


@dataclass(frozen=True)
class LiveScoringConfig:
    """One agent's live scoring: which scorers, on what share of traces, on which traces."""

    scorers: tuple[str, ...]
    sample_rate: float
    filter_string: str = ""
    latency_budget_ms: float = 2000.0
    cost_budget_usd: float = 0.01
    forbidden_terms: tuple[str, ...] = ()
    guidelines: tuple[str, ...] = ("The response must be polite and must not invent facts.",)
    enabled: bool = True

    def options(self, scorer: str) -> dict[str, Any]:
        """The options a code scorer is serialized with."""
        return {"latency_budget": {"latency_budget_ms": self.latency_budget_ms},
                "cost_budget": {"cost_budget_usd": self.cost_budget_usd},
                "forbidden_content": {"forbidden_terms": list(self.forbidden_terms)}}.get(scorer, {})

    def to_record(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("scorers", "forbidden_terms", "guidelines"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> "LiveScoringConfig":
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in dict(data).items() if k in known}
        for key in ("scorers", "forbidden_terms", "guidelines"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True)
class LiveScorerChoice:
    """A scorer offered for live scoring; ``available`` False with the ``reason`` when it cannot run."""

    name: str
    label: str
    kind: str
    available: bool
    reason: str = ""


def catalog(settings: Settings, environ: Mapping[str, str] | None = None) -> list[LiveScorerChoice]:
    """The scorers an operator can run live on this backend (judges only with a judge model)."""
    from services import scorers

    databricks = settings.backend is Backend.DATABRICKS
    specs = {s.name: s for s in scorers.scorer_catalog(databricks=databricks, environ=environ)}
    # Databricks production monitoring runs a registered @scorer's body on its own compute, where the
    # app's modules (which the live code scorers call) are not installed.
    code_reason = ("The app's code scorers run in its worker; on Databricks production monitoring runs "
                   "only the LLM judges." if databricks else "")
    # Where each runs, in the kind the Live scoring form shows beside the scorer.
    judges_run_by = {"databricks": "Databricks production monitoring", "mlflow server": "the mlflow server",
                     "worker": "the app's worker"}[where_runs(LiveScoringConfig(LIVE_JUDGES, 0.0), settings, environ)
                                                   ["safety"]]
    code_kind = "code" if databricks else "code, run by the app's worker"
    choices = [LiveScorerChoice(n, specs[n].label, code_kind, not databricks, code_reason) for n in LIVE_CODE_SCORERS]
    choices += [LiveScorerChoice(n, specs[n].label, f"LLM judge, run by {judges_run_by}", specs[n].available,
                                 specs[n].reason) for n in LIVE_JUDGES]
    return choices


def server_judges(config: LiveScoringConfig, settings: Settings,
                  environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The judges of ``config`` the platform runs itself once registered and started.

    On Databricks every live scorer offered (the judges); on the ``mlflow`` backend the judges whose
    model is an AI Gateway endpoint of the server (``gateway:/<endpoint>``), the only scorers
    MLflow's server agrees to start; on the local backend none.
    """
    judges = tuple(n for n in config.scorers if n in LIVE_JUDGES)
    if settings.backend is Backend.DATABRICKS:
        return judges
    if settings.backend is Backend.MLFLOW and judges:
        from services import scorers

        model, _ = scorers.judge_model(dict(environ) if environ is not None else None)
        if model and model.split(":/", 1)[0] == "gateway":
            return judges
    return ()


def where_runs(config: LiveScoringConfig, settings: Settings,
               environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Per scorer of ``config``, where it runs: ``"databricks"``, ``"mlflow server"`` or ``"worker"``."""
    platform = set(server_judges(config, settings, environ))
    here = "databricks" if settings.backend is Backend.DATABRICKS else "mlflow server"
    return {n: here if n in platform else "worker" for n in config.scorers}


def validate(agent: str, config: LiveScoringConfig, settings: Settings,
             environ: Mapping[str, str] | None = None) -> LiveScoringConfig:
    """Check a configuration before anything is stored; ``ValidationError`` says what is wrong."""
    team_state.validate_key_part(agent, "Agent")
    rate = config.sample_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or math.isnan(rate) or not 0 <= rate <= 1:
        raise ValidationError(f"Sample rate {rate!r} is outside 0–1: give the share of traces to score, "
                              "e.g. 0.1 for one trace in ten.")
    if not config.scorers:
        raise ValidationError("Pick at least one scorer.")
    offered = {c.name: c for c in catalog(settings, environ)}
    for name in config.scorers:
        if name in NEEDS_EXPECTATIONS:
            raise ValidationError(f"Scorer {name!r} compares answers with expectations, which live traces do not "
                                  f"have; run it in an offline evaluation. Live scorers: {', '.join(offered)}.")
        if name not in offered:
            raise ValidationError(f"Unknown scorer {name!r}. Live scorers: {', '.join(offered)}.")
        if not offered[name].available:
            raise ValidationError(f"{offered[name].label} cannot run: {offered[name].reason}")
    if len(set(config.scorers)) != len(config.scorers):
        raise ValidationError("A scorer is listed twice.")
    if config.latency_budget_ms <= 0 or config.cost_budget_usd < 0:
        raise ValidationError("Budgets must be positive: latency in ms > 0, cost in USD ≥ 0.")
    if "guidelines" in config.scorers and not [g for g in config.guidelines if g.strip()]:
        raise ValidationError("The Guidelines judge needs at least one guideline.")
    filter_string = (config.filter_string or "").strip()
    if filter_string:
        from mlflow.exceptions import MlflowException
        from mlflow.utils.search_utils import SearchTraceUtils

        try:
            SearchTraceUtils.parse_search_filter_for_search_traces(filter_string)
        except MlflowException as exc:
            raise ValidationError(f"MLflow cannot parse the trace filter {filter_string!r}: {exc.message} "
                                  "Example: tag.`agentops.arm` = 'b' or metadata.`mlflow.modelId` = 'm-…'.") from None
    return LiveScoringConfig(**{**asdict(config), "filter_string": filter_string,
                                "scorers": tuple(config.scorers), "forbidden_terms": tuple(t for t in config.forbidden_terms if t.strip()),
                                "guidelines": tuple(g for g in config.guidelines if g.strip())})


def _key(agent: str) -> str:
    return KEY_PREFIX + agent


def load_all(settings: Settings) -> dict[str, tuple[LiveScoringConfig, int]]:
    """Every agent's live-scoring configuration with its stored version."""
    return {key[len(KEY_PREFIX):]: (LiveScoringConfig.from_record(r.value), r.version)
            for key, r in team_state.read_all(settings, KEY_PREFIX).items() if r.value}


def load_config(agent: str, settings: Settings) -> tuple[LiveScoringConfig | None, int]:
    """One agent's configuration (None when never configured or deleted) and its stored version."""
    record = team_state.read(_key(agent), settings)
    if record is None or not record.value:
        return None, record.version if record else 0
    return LiveScoringConfig.from_record(record.value), record.version


def configured(agent: str, settings: Settings) -> bool:
    """Readiness item "live scorers configured": the agent has live scoring on, with a sample rate above 0."""
    config, _ = load_config(agent, settings)
    return bool(config and config.enabled and config.scorers and config.sample_rate > 0)


def save_config(agent: str, config: LiveScoringConfig, *, identity: Any, settings: Settings,
                expected_version: int | None = None, environ: Mapping[str, str] | None = None) -> LiveScoringConfig:
    """Validate, check the operator role, apply on Databricks, and store the configuration (audited)."""
    config = validate(agent, config, settings, environ)
    roles.enforce(identity, roles.Action.MANAGE_LIVE_SCORING, settings)
    current, version = load_config(agent, settings)
    if expected_version is not None and expected_version != version:
        raise ConflictError(f"The live scoring of {agent} changed meanwhile (version {version}, you edited "
                            f"{expected_version}). Nothing was saved; reload and redo your change.")
    _apply_on_platform(agent, config, current, settings, environ)
    team_state.write(_key(agent), config.to_record(), expected_version=version,
                     user=getattr(identity, "user", None) or "unknown", settings=settings,
                     note=f"live scoring of {agent}: {', '.join(config.scorers)} at {config.sample_rate:g}"
                          + (f" where {config.filter_string}" if config.filter_string else "")
                          + ("" if config.enabled else " (paused)"))
    return config


def delete_config(agent: str, *, identity: Any, settings: Settings) -> None:
    """Stop live scoring of an agent (operator role, audited); its past assessments stay."""
    team_state.validate_key_part(agent, "Agent")
    roles.enforce(identity, roles.Action.MANAGE_LIVE_SCORING, settings)
    current, version = load_config(agent, settings)
    if current is None:
        return
    _apply_on_platform(agent, None, current, settings)
    team_state.write(_key(agent), {}, expected_version=version, user=getattr(identity, "user", None) or "unknown",
                     settings=settings, note=f"live scoring of {agent} removed")


def _apply_on_platform(agent: str, config: LiveScoringConfig | None, previous: LiveScoringConfig | None,
                       settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """Register/start/update/stop/delete, where the platform runs them, the judges it runs."""
    if settings.backend is Backend.LOCAL:
        return []
    databricks = settings.backend is Backend.DATABRICKS
    mine = replace(config, scorers=server_judges(config, settings, environ)) if config else None
    # Every judge of the previous configuration may be registered (the judge model may have changed
    # since); ``apply_registered`` deletes only those it finds.
    before = replace(previous, scorers=tuple(n for n in previous.scorers if n in LIVE_JUDGES)) if previous else None
    if not (mine and mine.scorers) and not (before and before.scorers):
        return []
    where = "Databricks production monitoring" if databricks else "the mlflow server's online scoring"
    return apply_registered(agent_experiments(agent, settings), mine, before, environ,
                            databricks=databricks, where=where)


def agent_experiments(agent: str, settings: Settings) -> list[str]:
    """The experiments an agent's traces land in (where its live scorers run)."""
    _, experiments = registry.agent_links(agent, settings)
    return experiments


def live_scorers(config: LiveScoringConfig, environ: Mapping[str, str] | None = None,
                 *, databricks: bool = False) -> list[Any]:
    """MLflow scorer objects of a configuration, each named ``live_<scorer>``."""
    from mlflow.genai.scorers import Scorer

    return [Scorer.model_validate_json(s) for s in _serialized(config, environ, databricks=databricks).values()]


def _serialized(config: LiveScoringConfig, environ: Mapping[str, str] | None = None,
                *, databricks: bool = False) -> dict[str, str]:
    from services import scorers

    out: dict[str, str] = {}
    for name in config.scorers:
        if name in LIVE_CODE_SCORERS:
            out[live_name(name)] = serialized_code_scorer(name, config.options(name))
        else:
            options = scorers.ScorerOptions(guidelines=tuple(config.guidelines))
            built = scorers.build_scorers([name], options, databricks=databricks, environ=environ)[0]
            out[live_name(name)] = serialized_judge(name, built)
    return out


def apply_registered(experiments: Sequence[str], config: LiveScoringConfig | None,
                     previous: LiveScoringConfig | None, environ: Mapping[str, str] | None = None, *,
                     databricks: bool = True, where: str = "Databricks production monitoring") -> list[str]:
    """Make each experiment's registered scorers match ``config`` through MLflow's client.

    Used where the platform runs registered scorers itself (Databricks production monitoring, and
    an ``mlflow server``'s online scoring for judges on its AI Gateway; ``where`` names it in errors):
    a scorer not registered yet (or whose definition changed) is registered (``Scorer.register``),
    then started (``start``) or, when already running, updated (``update``) with the sample rate and
    filter; a paused configuration stops them (``stop``); scorers of ``previous`` no longer in
    ``config`` (all of them when ``config`` is None) are deleted (``delete_scorer``) — their past
    assessments stay. Refusals become the app's typed errors naming the experiment. Returns what was done.
    """
    from mlflow.genai.scorers import ScorerSamplingConfig, delete_scorer

    done: list[str] = []
    wanted = live_scorers(config, environ, databricks=databricks) if config and config.scorers else []
    running = bool(config and config.enabled and config.sample_rate > 0)
    ours = {live_name(n) for n in (previous.scorers if previous else ())}
    for experiment_id in experiments:
        with translate_errors(f"{where} (experiment {experiment_id})"):
            for scorer in wanted:
                current = _registered(scorer.name, experiment_id)
                registered = current
                if current is None or _definition(current) != _definition(scorer):
                    # start/update/stop act on the registered copy (MLflow's tracking store refuses
                    # them on an object that was not returned by register or get_scorer).
                    registered = scorer.register(name=scorer.name, experiment_id=experiment_id)
                    done.append(f"registered {scorer.name} in {experiment_id}")
                was_running = bool(current is not None and (current.sample_rate or 0) > 0)
                if running:
                    assert config is not None
                    # An empty filter clears an earlier one (None would leave it as it was).
                    filter_string = config.filter_string or ("" if current is not None and current.filter_string else None)
                    sampling = ScorerSamplingConfig(sample_rate=config.sample_rate, filter_string=filter_string)
                    if was_running:
                        registered.update(name=scorer.name, experiment_id=experiment_id, sampling_config=sampling)
                        done.append(f"updated {scorer.name} to {config.sample_rate:g} in {experiment_id}")
                    else:
                        registered.start(name=scorer.name, experiment_id=experiment_id, sampling_config=sampling)
                        done.append(f"started {scorer.name} at {config.sample_rate:g} in {experiment_id}")
                elif was_running:
                    registered.stop(name=scorer.name, experiment_id=experiment_id)
                    done.append(f"stopped {scorer.name} in {experiment_id}")
            for name in sorted(ours - {s.name for s in wanted}):
                if _registered(name, experiment_id) is not None:
                    delete_scorer(name=name, experiment_id=experiment_id, version="all")
                    done.append(f"deleted {name} in {experiment_id}")
    return done


def _registered(name: str, experiment_id: str) -> Any:
    """The scorer registered under ``name`` in the experiment, or None.

    One name at a time (not ``list_scorers``): listing deserializes every scorer of the experiment,
    and one another team registered that cannot be loaded here must not block this change.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.genai.scorers import get_scorer

    try:
        return get_scorer(name=name, experiment_id=experiment_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return None
        raise


def _definition(scorer: Any) -> str:
    """A scorer's serialized definition, without what registration adds (for "has it changed?")."""
    return json.dumps(scorer.model_dump(), sort_keys=True, default=str)


# --- the worker's task -----------------------------------------------------------------------------


@dataclass
class WorkerStatus:
    """What the live-scoring task did last: shown on the Live scoring section."""

    last_run: str | None = None
    last_duration_s: float = 0.0
    traces_scored_last: int = 0
    traces_scored_total: int = 0
    assessments_total: int = 0
    lag_seconds: float | None = None
    experiments: int = 0
    errors: list[str] = field(default_factory=list)
    path: str = ""
    pid: int | None = None


def status_path(settings: Settings) -> Path:
    return settings.data_dir / STATUS_FILE


def read_status(settings: Settings) -> WorkerStatus | None:
    """The worker's last report, or None when no worker has run on this data folder."""
    try:
        data = json.loads(status_path(settings).read_text())
    except (OSError, ValueError):
        return None
    known = set(WorkerStatus.__dataclass_fields__)
    return WorkerStatus(**{k: v for k, v in data.items() if k in known})


def _write_status(settings: Settings, status: WorkerStatus) -> None:
    path = status_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(status), indent=1))
    os.replace(tmp, path)


def scorers_by_experiment(settings: Settings) -> dict[str, list[Any]]:
    """The live scorers the worker runs per experiment, from every agent's configuration.

    Two agents sharing an experiment share its checkpoint: their scorers run together, and the same
    scorer configured twice runs once, at the higher sample rate. Scorers the ``mlflow server`` runs
    itself (:func:`running_in_server`) are left to it.
    """
    from services._mlflow_internal.online_scoring import LiveScorer

    merged: dict[str, dict[str, LiveScorer]] = {}
    for agent, (config, _) in sorted(load_all(settings).items()):
        if not config.enabled or config.sample_rate <= 0:
            continue
        for experiment_id in agent_experiments(agent, settings):
            skip = running_in_server(config, experiment_id, settings)
            rest = replace(config, scorers=tuple(n for n in config.scorers if live_name(n) not in skip))
            slot = merged.setdefault(experiment_id, {})
            for name, text in _serialized(rest).items():
                old = slot.get(name)
                if old is None or old.sample_rate < config.sample_rate:
                    slot[name] = LiveScorer(name, text, config.sample_rate, config.filter_string or None)
    return {e: list(s.values()) for e, s in merged.items() if s}


def running_in_server(config: LiveScoringConfig, experiment_id: str, settings: Settings) -> set[str]:
    """Live names of the judges of ``config`` registered and started in the ``mlflow server``'s experiment.

    The server's answer, not the worker's environment: a judge counts when the server holds it with a
    sample rate above 0 (MLflow starts only judges on its AI Gateway, see :func:`server_judges`).
    """
    if settings.backend is not Backend.MLFLOW:
        return set()
    running = set()
    for name in config.scorers:
        if name in LIVE_JUDGES:
            current = _registered(live_name(name), experiment_id)
            if current is not None and (current.sample_rate or 0) > 0:
                running.add(live_name(name))
    return running


def run_pass(settings: Settings, *, batch_size: int = 50) -> WorkerStatus:
    """One pass of the live-scoring task: score up to ``batch_size`` new traces per experiment."""
    from services._mlflow_internal import online_scoring

    started = time.monotonic()
    previous = read_status(settings) or WorkerStatus()
    status = WorkerStatus(traces_scored_total=previous.traces_scored_total,
                          assessments_total=previous.assessments_total, pid=os.getpid())
    client = mlflow_client(settings)
    lags = []
    try:
        plan = scorers_by_experiment(settings)
    except Exception as exc:  # noqa: BLE001 - reported, retried next pass
        plan = {}
        status.errors.append(f"reading the configuration: {exc}")
    for experiment_id, scorers in plan.items():
        try:
            report = online_scoring.score_new_traces(client, experiment_id, scorers, batch_size=batch_size)
        except Exception as exc:  # noqa: BLE001 - one experiment's failure does not stop the others
            status.errors.append(f"experiment {experiment_id}: {exc}")
            continue
        status.path = report.path
        status.traces_scored_last += report.traces_scored
        status.assessments_total += report.assessments
        if report.checkpoint_ms:
            lags.append(max(0.0, time.time() - report.checkpoint_ms / 1000))
    status.experiments = len(plan)
    status.traces_scored_total += status.traces_scored_last
    status.lag_seconds = round(max(lags), 1) if lags else None
    status.last_run = datetime.now(tz=timezone.utc).isoformat(timespec="seconds")
    status.last_duration_s = round(time.monotonic() - started, 3)
    _write_status(settings, status)
    return status
