"""One reading of a backend's error for every caller: MLflow, the Databricks SDK, REST answers, child reports."""

from __future__ import annotations

import pytest
from databricks.sdk import errors as dbx_errors
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST

from services._clients import classify_error
from services.errors import (
    BackendUnavailableError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
    error_class,
)


@pytest.mark.parametrize(("reading", "expected"), [
    ({"code": "RESOURCE_DOES_NOT_EXIST"}, NotFoundError),
    ({"code": "UNAUTHENTICATED", "status": 404}, PermissionDeniedError),  # the code wins over the status
    ({"names": ("InvalidParameterValue", "BadRequest")}, ValidationError),
    ({"names": ("Aborted", "ResourceConflict")}, ConflictError),
    ({"status": 403}, PermissionDeniedError),
    ({"status": 409}, ConflictError),
    ({"code": "INTERNAL_ERROR", "status": 500}, None),
    ({}, None),
])
def test_error_class_reads_code_then_class_names_then_status(reading, expected):
    assert error_class(**reading) is expected


@pytest.mark.parametrize(("exc", "expected", "text"), [
    (MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST), NotFoundError, "Not found in the store"),
    (MlflowException("taken", error_code=RESOURCE_ALREADY_EXISTS), ConflictError, "taken"),
    (dbx_errors.ResourceDoesNotExist("no endpoint"), NotFoundError, "Not found in the store: no endpoint"),
    (dbx_errors.PermissionDenied("needs CAN_MANAGE"), PermissionDeniedError, "the store refused the call"),
    (dbx_errors.InvalidParameterValue("bad split"), ValidationError, "bad split"),
    (dbx_errors.InternalError("boom"), BackendUnavailableError, "Could not read the store: boom"),
    (ValueError("odd"), BackendUnavailableError, "Could not read the store: odd"),  # not a backend's error
])
def test_classify_error_gives_mlflow_and_sdk_errors_the_same_types(exc, expected, text):
    error = classify_error(exc, "the store")
    assert type(error) is expected and text in str(error)
