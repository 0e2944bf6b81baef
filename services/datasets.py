"""Evaluation datasets: MLflow's evaluation datasets and validated uploads (CSV / JSON / JSONL).

Rows use MLflow's shape: ``{"inputs": {"question": ...}, "expectations": {...}}``. Uploads are
parsed and validated completely before anything is stored or run; a bad row raises
``ValidationError`` naming the row (1-based, as the user counts them) and the column.
"""

from __future__ import annotations

import copy
import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

from services._clients import translate_errors
from services.errors import ConflictError, NotFoundError, ValidationError
from services.settings import Settings

MAX_ROWS = 5000
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
ALLOWED_COLUMNS = ("inputs", "expectations", "tags")
LIST_EXPECTATIONS = ("expected_facts", "required_tools", "forbidden_content")
UPLOAD_FORMATS = ("csv", "json", "jsonl")
MAX_NAME = 200


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
    """MLflow evaluation datasets linked to the given experiments, by name."""
    from services._clients import configure_mlflow

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
    from services._clients import configure_mlflow

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


def save_dataset(name: str, rows: list[dict[str, Any]], experiment_id: str, settings: Settings | None = None) -> str:
    """Store validated rows as a new MLflow evaluation dataset; returns its id.

    Refuses a name another dataset already has (``ConflictError``: a name must pick one dataset)
    and an experiment that does not exist (``NotFoundError``). If storing the rows fails, the
    half-made dataset is deleted again, so a refusal leaves nothing behind.
    """
    from services._clients import configure_mlflow, mlflow_client

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
    from mlflow.genai.datasets import create_dataset, delete_dataset, search_datasets

    client = mlflow_client(settings)
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
    with translate_errors(f"evaluation dataset {name!r}"):
        quoted = name.replace("\\", "\\\\").replace("'", "\\'")
        taken = [d for d in search_datasets(filter_string=f"name = '{quoted}'", max_results=10) if d.name == name]
    if taken:
        raise ConflictError(f"A dataset named {name!r} already exists; pick another name.")
    with translate_errors(f"evaluation dataset {name!r}"):
        dataset = create_dataset(name=name, experiment_id=[experiment_id])
        try:
            # merge_records adds keys to the records it is given: hand it a copy.
            dataset.merge_records(copy.deepcopy(rows))
        except Exception:
            delete_dataset(dataset_id=dataset.dataset_id)
            raise
    return str(dataset.dataset_id)


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
