"""Running one ``databricks-agents`` operation in a child process, as the user (token) or the app.

The child is ``python -m services.serving``; it reads one JSON request on stdin and prints one
result line. The operations it may run are listed in ``_CHILD_OPERATIONS``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
from typing import Any

from services.errors import (
    AgentOpsError,
    BackendUnavailableError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
    error_class,
)
from services.settings import PROJECT_ROOT, Settings

_RESULT_MARK = "AGENTOPS-AGENTS-RESULT "
# The operations a child may run ("module:function", each taking and returning JSON-able dicts).
_CHILD_OPERATIONS = {
    "deploy": "services.serving.deploy:_child_deploy",
    "labeling_session": "services.review_queue.review_app:child_labeling_session",
}
# Credentials the child must not inherit when it acts as the signed-in user.
_APP_CREDENTIALS = ("DATABRICKS_TOKEN", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET", "DATABRICKS_AUTH_TYPE",
                    "DATABRICKS_CONFIG_PROFILE")


def run_agents_call(operation: str, args: dict[str, Any], settings: Settings, *, user_token: str | None = None,
                    timeout_seconds: float = 600) -> dict[str, Any]:
    """Run one databricks-agents operation in a child process as the user (token) or the app.

    Returns the operation's JSON result; a failure comes back as the matching typed error.
    """
    if operation not in _CHILD_OPERATIONS:
        raise ValidationError(f"{operation!r} is not a databricks-agents operation this app runs.")
    env = {k: v for k, v in os.environ.items() if not (user_token and k in _APP_CREDENTIALS)}
    # ``mlflow.set_experiment`` in this process leaves MLFLOW_EXPERIMENT_ID behind; an id from
    # another tracking store makes databricks-agents refuse the deploy.
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    env.update({"DATABRICKS_HOST": settings.databricks_host or "", "MLFLOW_TRACKING_URI": "databricks",
                "MLFLOW_REGISTRY_URI": "databricks-uc", "PYTHONUNBUFFERED": "1"})
    # The token travels on stdin, not in the child's environment block (readable in /proc).
    request = json.dumps({"operation": operation, "args": args, "user_token": user_token})
    try:
        done = subprocess.run([sys.executable, "-m", "services.serving"], input=request, env=env, cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        raise BackendUnavailableError(f"databricks-agents did not finish {operation} within "
                                      f"{timeout_seconds:.0f} s; check the workspace, then try again.") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith(_RESULT_MARK)]
    if not lines:
        tail = (done.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise BackendUnavailableError(f"databricks-agents stopped during {operation} (exit {done.returncode}): {tail[0]}")
    answer = json.loads(lines[-1][len(_RESULT_MARK):])
    if answer.get("ok"):
        return answer.get("result") or {}
    raise _child_error(answer, operation)


def _child_error(answer: dict[str, Any], operation: str) -> AgentOpsError:
    name, message, code = answer.get("error", ""), answer.get("message", ""), answer.get("error_code") or ""
    what = "databricks.agents.deploy" if operation == "deploy" else "the Databricks Review App"
    kind = error_class(code=code, names=(name,), status=answer.get("status"))
    # An endpoint mid-update is a conflict to retry, whatever class the refusal came as (often a 400).
    if "currently updating" in message and kind not in (PermissionDeniedError, NotFoundError):
        kind = ConflictError
    elif kind is None and name == "ValueError":
        kind = ValidationError
    if kind is PermissionDeniedError:
        hint = (" Deploying needs CAN_MANAGE on the endpoint (or the right to create one) and EXECUTE on the model."
                if operation == "deploy" else "")
        return PermissionDeniedError(f"{what} was refused: {message}.{hint}")
    if kind is ValidationError:
        return ValidationError(f"{what} refused the request: {message}")
    if kind is not None:
        return kind(f"{what}: {message}")
    return BackendUnavailableError(f"{what} failed: {name}: {message}")


def child_main() -> int:
    """Child side of ``run_agents_call``: read the request on stdin, print one result line."""
    request = json.loads(sys.stdin.read())
    if request.get("user_token"):
        os.environ["DATABRICKS_TOKEN"] = request["user_token"]
        os.environ["DATABRICKS_AUTH_TYPE"] = "pat"
    module_name, _, function = _CHILD_OPERATIONS[request["operation"]].partition(":")
    out = sys.stdout
    try:
        # databricks-agents prints summaries; keep stdout for the one result line.
        with contextlib.redirect_stdout(sys.stderr):
            result = getattr(importlib.import_module(module_name), function)(request["args"])
        answer: dict[str, Any] = {"ok": True, "result": result}
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which classifies it
        answer = {"ok": False, "error": type(exc).__name__, **_describe(exc)}
    out.write(_RESULT_MARK + json.dumps(answer, default=str) + "\n")
    out.flush()
    return 0


def _describe(exc: Exception) -> dict[str, Any]:
    """Message, error code and HTTP status of a failure, preferring the service's own JSON error."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    code = getattr(exc, "error_code", None)
    text = str(exc).strip().splitlines()
    message = text[0] if text else type(exc).__name__
    if response is not None and status is not None:
        try:
            payload = response.json()
        except Exception:  # noqa: BLE001 - not JSON: keep the exception's text
            payload = None
        if isinstance(payload, dict) and payload.get("message"):
            message, code = str(payload["message"]), payload.get("error_code") or code
    return {"message": message[:1000], "error_code": str(code) if code is not None else None,
            "status": status if isinstance(status, int) else None}
