"""Team configuration kept with the team's data: versioned records in the tracking store.

Endpoint configurations and splits, alert thresholds, the price table and roles are shared by
everyone on the same store: the embedded SQLite store, an ``mlflow server`` or a Databricks
workspace. They live in one named experiment (``AGENTOPS_STATE_EXPERIMENT``; on Databricks an
absolute path, ``/Shared/agentops-team-state`` by default) and are written only through MLflow's
public client API:

* a record is one experiment tag (its head: key, version, value, who and when), with values longer
  than one tag in chunk tags written *before* the head, so a reader always sees a whole version;
* a write names the version it was based on. It first claims ``version + 1`` by creating an
  experiment with a name unique to (record, version): the store refuses a second experiment of the
  same name, so of two concurrent edits of the same version exactly one gets the claim and the other
  gets a ``ConflictError`` (nothing is overwritten). The claim experiment is deleted afterwards
  (an ``mlflow server`` keeps the name taken; where a store frees it, the re-check of the head
  version after claiming catches the stale writer);
* every write also leaves a finished run in the experiment with who changed what (the audit trail
  of configuration changes).

Files of the embedded default (``endpoints.json``, ``alert_thresholds.json``, ``pricing.json``,
``roles.json`` in the data folder) are migrated once into the store, by the first read that finds no
record, and the migration is recorded like any other write.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from services._clients import artifact_location, mlflow_client, translate_errors
from services.errors import ConflictError, ValidationError
from services.settings import Backend, Settings
from services.filter_strings import escape

_logger = logging.getLogger(__name__)

HEAD_PREFIX = "agentops.state."
CHUNK_PREFIX = "agentops.state-chunk."
RECORD_KIND_TAG = "agentops.state.record"
MIGRATED_BY = "migration from the data folder"
# A claim whose version never landed belongs to a writer that died (or failed) between claiming and
# writing: once it is this old, the next writer claims the same version under a successor name.
STALE_CLAIM_SECONDS = 120.0
_CLAIM_SUCCESSORS = 20
# Databricks limits experiment tag values more tightly than an mlflow server (20,000 characters).
_CHUNK = 4000


@dataclass(frozen=True)
class Record:
    """One stored version of a configuration record."""

    key: str
    version: int
    value: Any
    updated_by: str
    updated_at: datetime | None


def state_experiment(settings: Settings) -> str:
    """The experiment holding the team's configuration records on this backend."""
    if settings.state_experiment:
        return settings.state_experiment
    return "/Shared/agentops-team-state" if settings.backend is Backend.DATABRICKS else "agentops-team-state"


def _slug(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


def _experiment(client: Any, settings: Settings, *, create: bool) -> Any:
    name = state_experiment(settings)
    experiment = client.get_experiment_by_name(name)
    if experiment is None and create:
        from mlflow.exceptions import MlflowException

        try:
            client.create_experiment(name, artifact_location=artifact_location(settings, name),
                                     tags={"agentops.state-about": "Agent Ops Console team configuration"})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # another process created it meanwhile
                raise
        experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted" and create:
        client.restore_experiment(experiment.experiment_id)
        experiment = client.get_experiment(experiment.experiment_id)
    return experiment


def _records(tags: dict[str, str]) -> dict[str, Record]:
    found: dict[str, Record] = {}
    for tag, text in tags.items():
        if not tag.startswith(HEAD_PREFIX) or tag.count(".") != 2:
            continue
        try:
            head = json.loads(text)
            if head.get("chunks"):
                text_value = "".join(tags[f"{CHUNK_PREFIX}{tag[len(HEAD_PREFIX):]}.{head['version']}.{i}"]
                                     for i in range(int(head["chunks"])))
            else:
                text_value = head["value"]
            value = json.loads(text_value)
            at = datetime.fromisoformat(head["at"]) if head.get("at") else None
            found[head["key"]] = Record(head["key"], int(head["version"]), value, head.get("by") or "", at)
        except (ValueError, KeyError, TypeError) as exc:
            _logger.warning("ignoring unreadable team-state tag %s: %s", tag, exc)
    return found


def read_all(settings: Settings, prefix: str = "") -> dict[str, Record]:
    """Every record whose key starts with ``prefix`` (one read of the state experiment)."""
    with translate_errors(f"the team configuration ({state_experiment(settings)})"):
        client = mlflow_client(settings)
        experiment = _experiment(client, settings, create=False)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        return {}
    return {k: r for k, r in _records(dict(experiment.tags or {})).items() if k.startswith(prefix)}


def read(key: str, settings: Settings) -> Record | None:
    """The current version of one record, or None when it was never written."""
    return read_all(settings, key).get(key)


def write(key: str, value: Any, *, expected_version: int, user: str, settings: Settings,
          note: str = "") -> Record:
    """Store ``value`` as version ``expected_version + 1`` of ``key``, unless someone wrote it meanwhile.

    Raises ``ConflictError`` when the record is no longer at ``expected_version`` (0: never written):
    the caller re-reads and lets the user redo the edit on top of the other one.
    """
    text = json.dumps(value, sort_keys=True)
    what = f"the team configuration ({state_experiment(settings)})"
    with translate_errors(what):
        client = mlflow_client(settings)
        experiment = _experiment(client, settings, create=True)
        _check_version(key, _records(dict(experiment.tags or {})).get(key), expected_version)
        claim_id = _claim(client, settings, key, expected_version + 1)
        try:
            fresh = client.get_experiment(experiment.experiment_id)
            _check_version(key, _records(dict(fresh.tags or {})).get(key), expected_version)
            version = expected_version + 1
            now = datetime.now(tz=timezone.utc)
            head: dict[str, Any] = {"key": key, "version": version, "by": user, "at": now.isoformat()}
            slug = _slug(key)
            if len(text) > _CHUNK:
                parts = [text[i:i + _CHUNK] for i in range(0, len(text), _CHUNK)]
                for index, part in enumerate(parts):
                    client.set_experiment_tag(experiment.experiment_id, f"{CHUNK_PREFIX}{slug}.{version}.{index}", part)
                head["chunks"] = len(parts)
            else:
                head["value"] = text
            client.set_experiment_tag(experiment.experiment_id, f"{HEAD_PREFIX}{slug}", json.dumps(head))
        finally:
            _quietly(lambda: client.delete_experiment(claim_id))
        _record_change(client, experiment.experiment_id, key, version, user, note)
        for tag in fresh.tags or {}:
            if tag.startswith(f"{CHUNK_PREFIX}{slug}.") and not tag.startswith(f"{CHUNK_PREFIX}{slug}.{version}."):
                _quietly(lambda tag=tag: client.delete_experiment_tag(experiment.experiment_id, tag))
    return Record(key, version, value, user, now)


def update(key: str, change: Callable[[Any], Any], *, user: str, settings: Settings, default: Any = None,
           note: str = "") -> Record:
    """Read-modify-write of one record against the version just read (a conflict means a concurrent edit)."""
    current = read(key, settings)
    base = current.value if current else default
    return write(key, change(base), expected_version=current.version if current else 0, user=user,
                 settings=settings, note=note)


def history(settings: Settings, key: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Recorded configuration changes, newest first: key, version, user, time, note."""
    with translate_errors(f"the team configuration ({state_experiment(settings)})"):
        client = mlflow_client(settings)
        experiment = _experiment(client, settings, create=False)
        if experiment is None:
            return []
        clause = f"tags.`{RECORD_KIND_TAG}` = '{escape(key)}'" if key else f"tags.`{RECORD_KIND_TAG}` != ''"
        runs = client.search_runs([experiment.experiment_id], clause, max_results=limit,
                                  order_by=["attributes.start_time DESC"])
    return [{"key": r.data.tags.get(RECORD_KIND_TAG), "version": int(r.data.tags.get("agentops.state.version", 0)),
             "user": r.data.tags.get("agentops.state.user"), "note": r.data.tags.get("agentops.state.note", ""),
             "at": datetime.fromtimestamp(r.info.start_time / 1000, tz=timezone.utc)} for r in runs]


def migrate_file(key: str, path: Path, parse: Callable[[Path], Any], settings: Settings) -> Record | None:
    """Move a data-folder file of the embedded store into record ``key`` once (recorded); None if there is none.

    Only on the embedded default: a teammate's own data folder must not overwrite a shared server's state.
    """
    if settings.backend is not Backend.LOCAL or not path.exists():
        return None
    value = parse(path)
    try:
        return write(key, value, expected_version=0, user=MIGRATED_BY, settings=settings,
                     note=f"migrated from {path}")
    except ConflictError:
        return read(key, settings)  # another process migrated it first


def _claim(client: Any, settings: Settings, key: str, version: int) -> str:
    """Claim ``version`` of ``key`` (an experiment only one writer can create); returns the claim's id.

    A store keeps an experiment's name taken after it is deleted, so a writer that died after claiming
    would hold the version for ever: a claim that was given up (deleted) or is older than
    ``STALE_CLAIM_SECONDS`` is followed by a successor name (``.r1``, ``.r2`` ...), again claimable by
    exactly one writer; the version re-check after claiming refuses a version that did land meanwhile.
    """
    from mlflow.exceptions import MlflowException

    base = f"{state_experiment(settings)}.claim.{_slug(key)}.v{version}"
    for attempt in range(_CLAIM_SUCCESSORS + 1):
        name = base if attempt == 0 else f"{base}.r{attempt}"
        try:
            return client.create_experiment(name, artifact_location=artifact_location(settings, name))
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_CONFLICT"):
                raise
        if not _abandoned(client, name):
            break
    raise ConflictError(
        f"{_describe(key)} is being changed by someone else right now (version {version} is taken). "
        "Nothing was saved; reload to see their change, then redo yours."
    )


def _abandoned(client: Any, claim: str) -> bool:
    """Whether a taken claim was given up (deleted) or is too old to belong to a writer still at work."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_experiment_by_name(claim)
    except MlflowException:
        return False
    if found is None or found.lifecycle_stage == "deleted":
        return True
    age = datetime.now(tz=timezone.utc).timestamp() - (found.creation_time or 0) / 1000
    return age > STALE_CLAIM_SECONDS


def _check_version(key: str, current: Record | None, expected: int) -> None:
    have = current.version if current else 0
    if have != expected:
        who = f" by {current.updated_by}" if current and current.updated_by else ""
        when = f" at {current.updated_at:%Y-%m-%d %H:%M} UTC" if current and current.updated_at else ""
        raise ConflictError(
            f"{_describe(key)} was changed{who}{when} since you loaded it (version {expected} → {have}). "
            "Nothing was saved; reload to see the current values, then redo your change."
        )


def _describe(key: str) -> str:
    kind, _, name = key.partition(":")
    labels = {"endpoint": "Endpoint", "thresholds": "Alert thresholds of", "prices": "The price table",
              "roles": "The roles table"}
    return f"{labels.get(kind, kind)} {name!r}".strip() if name else labels.get(kind, key)


def _record_change(client: Any, experiment_id: str, key: str, version: int, user: str, note: str) -> None:
    tags = {RECORD_KIND_TAG: key, "agentops.state.version": str(version), "agentops.state.user": user,
            "agentops.state.note": note[:500], "mlflow.user": user}
    run = client.create_run(experiment_id, tags=tags, run_name=f"{key} v{version}")
    client.update_run(run.info.run_id, status="FINISHED")


def _quietly(action: Callable[[], Any]) -> None:
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - clean-up only; the write itself succeeded or failed already
        _logger.info("team-state clean-up failed: %s", exc)


def validate_key_part(name: str, what: str) -> str:
    """A record key component (endpoint or agent name) must be non-empty, printable text."""
    if not isinstance(name, str) or not name.strip() or any(not c.isprintable() for c in name):
        raise ValidationError(f"{what} {name!r} is not a valid name.")
    return name
