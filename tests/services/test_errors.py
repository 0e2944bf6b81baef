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


def test_the_agents_child_reads_an_endpoint_mid_update_as_a_conflict_whatever_class_it_came_as():
    from services.serving.agents_child import _child_error

    updating = "Endpoint agents_x is currently updating; wait and retry."
    for error, code, status in (("BadRequest", "BAD_REQUEST", 400), ("InvalidState", "INVALID_STATE", 400),
                                ("DatabricksError", "", None)):
        answer = {"error": error, "error_code": code, "status": status, "message": updating}
        assert isinstance(_child_error(answer, "deploy"), ConflictError), error
    refused = {"error": "PermissionDenied", "error_code": "PERMISSION_DENIED", "status": 403, "message": updating}
    assert isinstance(_child_error(refused, "deploy"), PermissionDeniedError)
    bad = {"error": "BadRequest", "error_code": "BAD_REQUEST", "status": 400, "message": "name is invalid"}
    assert isinstance(_child_error(bad, "deploy"), ValidationError)
