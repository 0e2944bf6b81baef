"""Evaluation datasets: MLflow's evaluation datasets and validated uploads (CSV / JSON / JSONL).

Rows use MLflow's shape: ``{"inputs": {"question": ...}, "expectations": {...}}``. Uploads are
parsed and validated completely before anything is stored or run; a bad row raises
``ValidationError`` naming the row (1-based, as the user counts them) and the column.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

from services.filter_strings import escape
from services._clients import classify_error, configure_mlflow, mlflow_client, translate_errors
from services.errors import AgentOpsError, BackendUnavailableError, ConflictError, NotFoundError, ValidationError
from services.settings import Backend, Settings

MAX_ROWS = 5000
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
ALLOWED_COLUMNS = ("inputs", "expectations", "tags")
LIST_EXPECTATIONS = ("expected_facts", "required_tools", "forbidden_content")
UPLOAD_FORMATS = ("csv", "json", "jsonl")
MAX_NAME = 200
# How far this app's save of a dataset got: "pending:<what>" until all its rows are stored, then
# "done:<what>" (one tag, rewritten in one call). <what> fingerprints the save (rows and experiment), or
# is CURATION for a dataset curation created. Pending datasets are not listed.
SAVE_TAG = "agentops.dataset.save"
PENDING = "pending"
DONE = "done"
CURATION = "curation"


@dataclass(frozen=True)
class EvalDataset:
    """An MLflow evaluation dataset."""

    dataset_id: str
    name: str
    experiment_ids: tuple[str, ...]
    updated_at: datetime | None


@dataclass(frozen=True)
class DatasetListing:
    """The datasets found, or ``supported=False`` with the reason when the backend has none."""

    datasets: tuple[EvalDataset, ...]
    supported: bool
    reason: str = ""


def list_datasets(experiment_ids: Sequence[str], settings: Settings | None = None) -> DatasetListing:
    """MLflow evaluation datasets linked to the given experiments, by name (unfinished saves left out)."""
    configure_mlflow(settings)
    if not experiment_ids:
        return DatasetListing((), True)
    try:
        from mlflow.genai.datasets import search_datasets

        found = search_datasets(experiment_ids=list(experiment_ids), max_results=1000)
    except Exception as exc:  # noqa: BLE001 - some backends have no dataset API
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return DatasetListing((), False, f"This backend does not support MLflow evaluation datasets ({first}). Upload a file instead.")
    datasets = []
    for item in found:
        if _pending(item):
            continue  # a save that has not stored all its rows yet (or was interrupted): not usable
        updated = getattr(item, "last_update_time", None)
        datasets.append(
            EvalDataset(
                dataset_id=str(item.dataset_id),
                name=str(item.name),
                experiment_ids=tuple(str(e) for e in (getattr(item, "experiment_ids", None) or ())),
                updated_at=datetime.fromtimestamp(updated / 1000, tz=timezone.utc) if updated else None,
            )
        )
    return DatasetListing(tuple(sorted(datasets, key=lambda d: d.name)), True)


def load_dataset_rows(name: str, settings: Settings | None = None) -> list[dict[str, Any]]:
    """The rows of an MLflow evaluation dataset, in inputs/expectations shape."""
    configure_mlflow(settings)
    from mlflow.genai.datasets import get_dataset

    with translate_errors(f"evaluation dataset {name!r}"):
        frame = get_dataset(name=name).to_df()
    rows = []
    for record in frame.to_dict(orient="records"):
        row = {"inputs": record.get("inputs") or {}}
        if isinstance(record.get("expectations"), dict):
            row["expectations"] = record["expectations"]
        rows.append(row)
    return rows


def _require_experiment(client: Any, experiment_id: str) -> None:
    with translate_errors(f"experiment {experiment_id}"):
        try:
            experiment = client.get_experiment(experiment_id)
        except Exception as exc:  # noqa: BLE001 - an id that is not a number is "not found" too
            if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                experiment = None
            else:
                raise
    if experiment is None or experiment.lifecycle_stage == "deleted":
        raise NotFoundError(f"Experiment {experiment_id} does not exist; pick the agent's experiment.")


def _fingerprint(rows: list[dict[str, Any]], experiment_id: str) -> str:
    text = json.dumps({"experiment": experiment_id, "rows": rows}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _tags_of(dataset: Any) -> dict[str, Any]:
    try:
        return dict(dataset.tags or {})
    except NotImplementedError:  # Databricks (Unity Catalog) datasets have no MLflow tags
        return {}


def _save_state(dataset: Any) -> tuple[str | None, str | None]:
    """(``PENDING`` or ``DONE``, what was saved) from the dataset's save tag; (None, None) without one."""
    state, _, what = str(_tags_of(dataset).get(SAVE_TAG) or "").partition(":")
    return (state, what) if state in (PENDING, DONE) and what else (None, None)


def _pending(dataset: Any) -> str | None:
    """What an unfinished save of the dataset was saving (None once its rows are all stored)."""
    state, what = _save_state(dataset)
    return what if state == PENDING else None


def _named(name: str) -> list[Any]:
    """The datasets called exactly ``name`` (MLflow does not keep names unique)."""
    from mlflow.genai.datasets import search_datasets

    with translate_errors(f"evaluation dataset {name!r}"):
        return [d for d in search_datasets(filter_string=f"name = '{escape(name)}'", max_results=10) if d.name == name]


def _is_empty(dataset: Any, name: str) -> bool:
    with translate_errors(f"evaluation dataset {name!r}"):
        return len(dataset.to_df()) == 0


def _markers(settings: Settings) -> bool:
    """Whether datasets carry the unfinished-save marker (MLflow tags; Unity Catalog datasets have none)."""
    return settings.backend is not Backend.DATABRICKS


def _interrupted(name: str, exc: Exception, retry: str) -> BackendUnavailableError:
    cause = " ".join(str(exc).split())
    cause = cause if len(cause) <= 240 else cause[:239] + "…"
    return BackendUnavailableError(
        f"The evaluation dataset {name!r} was created, but its rows may not all be stored: the tracking store "
        f"stopped answering ({cause}). {retry} once the store is back: that finishes this dataset instead of "
        "making a second one, and rows already stored are not added twice."
    )


def _merge_and_finish(dataset: Any, rows: list[dict[str, Any]], name: str, marker: str | None) -> None:
    """Merge the rows (an upsert keyed by inputs: merging the same rows again adds none), then mark the save done."""
    from mlflow.genai.datasets import set_dataset_tags

    what = f"evaluation dataset {name!r}"
    with translate_errors(what):
        try:
            # merge_records adds keys to the records it is given: hand it a copy.
            dataset.merge_records(copy.deepcopy(rows))
        except Exception as exc:
            # MLflow reports any failure to read the dataset first (a dead server too) as "Dataset not
            # found" (INVALID_PARAMETER_VALUE); the cause says what really happened.
            cause = exc.__cause__
            if isinstance(cause, Exception) and isinstance(classify_error(cause, what), BackendUnavailableError):
                raise classify_error(cause, what) from exc
            raise
        if marker is not None:
            set_dataset_tags(dataset_id=dataset.dataset_id, tags={SAVE_TAG: f"{DONE}:{marker}"})


def save_dataset(name: str, rows: list[dict[str, Any]], experiment_id: str, settings: Settings | None = None) -> str:
    """Store validated rows as a new MLflow evaluation dataset; returns its id.

    Refuses a name another dataset already has (``ConflictError``: a name must pick one dataset)
    and an experiment that does not exist (``NotFoundError``). If the store refuses the rows, the
    half-made dataset is deleted again, so a refusal leaves nothing behind.

    Until its rows are stored the dataset's ``SAVE_TAG`` says so (with a fingerprint of the rows
    and experiment) and it is not listed. When the store stops answering part-way
    (``BackendUnavailableError``), saving the same rows under the same name again finishes that
    dataset: no second dataset, no duplicate rows; once finished, the same save again returns it
    unchanged. An empty dataset of that name (a save interrupted where no tag can be written, on
    Databricks) is filled the same way.
    """
    name = (name or "").strip()
    if not name:
        raise ValidationError("Give the dataset a name.")
    if len(name) > MAX_NAME or any(not ch.isprintable() for ch in name):
        raise ValidationError(f"A dataset name is one line of at most {MAX_NAME} printable characters.")
    validate_rows(rows)
    experiment_id = str(experiment_id or "").strip()
    if not experiment_id:
        raise ValidationError("Pick the experiment the dataset belongs to.")
    settings = configure_mlflow(settings)
    from mlflow.genai.datasets import delete_dataset

    _require_experiment(mlflow_client(settings), experiment_id)
    fingerprint = _fingerprint(rows, experiment_id)
    marker = fingerprint if _markers(settings) else None
    taken = _named(name)
    dataset = None
    if len(taken) == 1 and _save_state(taken[0]) == (DONE, fingerprint):
        return str(taken[0].dataset_id)  # this very save already happened (its answer may have been lost)
    if len(taken) == 1 and (_pending(taken[0]) == fingerprint
                            or (_save_state(taken[0]) == (None, None) and _is_empty(taken[0], name))):
        dataset = taken[0]  # what an interrupted save of these rows left: finish it
    elif taken and any(_pending(d) for d in taken):
        raise ConflictError(f"A dataset named {name!r} is unfinished: a save with other rows was interrupted (or is "
                            "running right now). Save those same rows again to finish it, or pick another name.")
    elif taken:
        raise ConflictError(f"A dataset named {name!r} already exists; pick another name.")
    created = dataset is None
    if created:
        dataset = _create(name, experiment_id, marker)
    try:
        _merge_and_finish(dataset, rows, name, marker)
    except BackendUnavailableError as exc:
        raise _interrupted(name, exc, "Save the same rows under the same name again") from exc
    except AgentOpsError:
        if created:
            # The store refused the rows: take the half-made dataset away again (its error is the one to show).
            try:
                with translate_errors(f"evaluation dataset {name!r}"):
                    delete_dataset(dataset_id=dataset.dataset_id)
            except AgentOpsError:
                pass
        raise
    return str(dataset.dataset_id)


def add_rows(name: str, rows: list[dict[str, Any]], experiment_id: str, settings: Settings | None = None) -> str:
    """Merge validated rows into the dataset called ``name``, creating it when missing; returns its id.

    Rows are keyed by their inputs, so adding the same rows again changes nothing; a retry after
    an interruption (``BackendUnavailableError``) reuses the dataset the first attempt created.
    The caller checks the experiment exists.
    """
    name = (name or "").strip()
    if not name:
        raise ValidationError("Give the evaluation dataset a name.")
    validate_rows(rows)
    settings = configure_mlflow(settings)
    taken = _named(name)
    if len(taken) > 1:
        raise ConflictError(f"{len(taken)} datasets are named {name!r}; rename one so the name picks one dataset.")
    if taken:
        dataset = taken[0]
        # Only an interrupted curation is marked done here; an unfinished upload stays unfinished.
        marker = CURATION if _pending(dataset) == CURATION else None
    else:
        marker = CURATION if _markers(settings) else None
        dataset = _create(name, experiment_id, marker)
    try:
        _merge_and_finish(dataset, rows, name, marker)
    except BackendUnavailableError as exc:
        raise _interrupted(name, exc, "Add the same traces to the same dataset again") from exc
    return str(dataset.dataset_id)


def _create(name: str, experiment_id: str, marker: str | None) -> Any:
    """A new evaluation dataset; with ``marker``, tagged pending until its rows are merged."""
    from mlflow.genai.datasets import create_dataset

    with translate_errors(f"evaluation dataset {name!r}"):
        return create_dataset(name=name, experiment_id=[experiment_id],
                              tags={SAVE_TAG: f"{PENDING}:{marker}"} if marker else None)


def _fail(row: int, column: str, problem: str) -> ValidationError:
    return ValidationError(f"Row {row}, column '{column}': {problem}")


def validate_rows(rows: Any) -> list[dict[str, Any]]:
    """Check rows are MLflow evaluation records with a non-empty ``inputs.question``; return them."""
    if not isinstance(rows, list):
        raise ValidationError("The dataset must be a list of rows (objects with 'inputs' and 'expectations').")
    if not rows:
        raise ValidationError("The dataset has no rows.")
    if len(rows) > MAX_ROWS:
        raise ValidationError(f"The dataset has {len(rows):,} rows; at most {MAX_ROWS:,} can be evaluated at once.")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ValidationError(f"Row {number}: expected an object with 'inputs' and 'expectations', got {type(row).__name__}.")
        extra = [key for key in row if key not in ALLOWED_COLUMNS]
        if extra:
            raise _fail(number, extra[0], f"unknown column; allowed columns are {', '.join(ALLOWED_COLUMNS)}.")
        inputs = row.get("inputs")
        if not isinstance(inputs, dict):
            raise _fail(number, "inputs", "missing or not an object; expected {\"question\": \"...\"}.")
        question = inputs.get("question")
        if not isinstance(question, str) or not question.strip():
            raise _fail(number, "inputs.question", "missing or empty; every row needs the question to ask the agent.")
        if any(not isinstance(key, str) for key in inputs):
            raise _fail(number, "inputs", "keys must be text.")
        tags = row.get("tags")
        if tags is not None and not (isinstance(tags, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                                    for k, v in tags.items())):
            raise _fail(number, "tags", "must be an object of text values such as {\"topic\": \"billing\"}.")
        expectations = row.get("expectations", {})
        if expectations is None:
            continue
        if not isinstance(expectations, dict):
            raise _fail(number, "expectations", "must be an object such as {\"expected_facts\": [...]}.")
        for key in LIST_EXPECTATIONS:
            value = expectations.get(key)
            if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise _fail(number, f"expectations.{key}", "must be a list of strings.")
        response = expectations.get("expected_response")
        if response is not None and not isinstance(response, str):
            raise _fail(number, "expectations.expected_response", "must be a string.")
    return rows


def _format_of(filename: str) -> str:
    suffix = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if suffix not in UPLOAD_FORMATS:
        raise ValidationError(f"Cannot read '{filename}': upload a .csv, .json or .jsonl file.")
    return suffix


def _loads(text: str) -> Any:
    """``json.loads`` whose every failure is a ``ValueError`` (deep nesting, huge integers included)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except json.JSONDecodeError:
        raise
    except ValueError:
        # The only other refusal: an integer literal longer than Python converts (4,300 digits).
        raise ValueError("a number has too many digits") from None


def _cell(value: str, row: int, column: str) -> Any:
    text = value.strip()
    if text == "":
        return None
    if text[0] in "[{\"" or text in ("true", "false", "null"):
        try:
            return _loads(text)
        except json.JSONDecodeError as exc:
            raise _fail(row, column, f"looks like JSON but does not parse ({exc.msg} at char {exc.pos}).") from None
        except ValueError as exc:
            raise _fail(row, column, f"looks like JSON but cannot be read ({exc}).") from None
    return text


def _csv_rows(text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        columns = reader.fieldnames or []
    except csv.Error as exc:
        raise ValidationError(f"The CSV header cannot be read ({exc}).") from None
    if not columns:
        raise ValidationError("The CSV file has no header row.")
    seen: set[str] = set()
    for column in columns:
        head = column.split(".", 1)[0]
        if head not in ALLOWED_COLUMNS:
            raise ValidationError(
                f"Column '{column}': unknown. Use 'inputs' and 'expectations' (JSON objects), or "
                "'inputs.question', 'expectations.expected_facts', ... (values; lists as JSON)."
            )
        if column in seen:
            raise ValidationError(f"Column '{column}' appears twice in the header; keep one.")
        seen.add(column)
    for column in columns:
        # "inputs" as a JSON object and "inputs.question" beside it would overwrite each other.
        if "." in column and column.split(".", 1)[0] in seen:
            raise ValidationError(
                f"Columns '{column.split('.', 1)[0]}' and '{column}' both give {column.split('.', 1)[0]}; "
                "use either the JSON column or the dotted columns."
            )
    rows = []
    number = 0
    try:
        for number, record in enumerate(reader, start=1):
            if None in record:
                raise _fail(number, "(extra)", "has more cells than the header.")
            row: dict[str, Any] = {}
            for column, raw in record.items():
                value = _cell(raw or "", number, column)
                if "." in column:
                    head, key = column.split(".", 1)
                    if value is not None:
                        row.setdefault(head, {})[key] = value
                elif value is not None:
                    row[column] = value
            rows.append(row)
    except csv.Error as exc:
        raise _fail(number + 1, "(row)", f"cannot be read as CSV ({exc}).") from None
    return rows


def parse_upload(filename: str, content: bytes) -> list[dict[str, Any]]:
    """Parse and validate an uploaded dataset; nothing is stored."""
    fmt = _format_of(filename)
    if len(content) > MAX_UPLOAD_BYTES:
        raise ValidationError(f"'{filename}' is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB.")
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValidationError(f"'{filename}' is not UTF-8 text.") from None
    if fmt == "csv":
        rows = _csv_rows(text)
    elif fmt == "json":
        try:
            rows = _loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"'{filename}' is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).") from None
        except ValueError as exc:
            raise ValidationError(f"'{filename}' cannot be read as JSON ({exc}).") from None
        if isinstance(rows, dict) and isinstance(rows.get("records"), list):
            rows = rows["records"]
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(_loads(line))
            except json.JSONDecodeError as exc:
                raise ValidationError(f"Row {len(rows) + 1} (line {number}): not valid JSON ({exc.msg}).") from None
            except ValueError as exc:
                raise ValidationError(f"Row {len(rows) + 1} (line {number}): cannot be read as JSON ({exc}).") from None
    return validate_rows(rows)
