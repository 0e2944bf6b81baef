"""Readiness checks of one version's logged model: signature, input example, pinned requirements,
and the load-and-predict check.

The load-and-predict check runs in a separate Python process with a timeout, so a model that
crashes, hangs or exhausts memory while loading cannot take the app down. The checklist that
uses these checks is ``services.readiness``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Callable, Sequence

from services import versions
from services._clients import LOCAL_MLFLOW_DEFAULTS, configure_mlflow, mlflow_client
from services.errors import ValidationError
from services.settings import Settings

LOAD_TIMEOUT_S = 180.0

Progress = Callable[[str], None]


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    UNKNOWN = "unknown"


class Item(StrEnum):
    SIGNATURE = "signature"
    INPUT_EXAMPLE = "input_example"
    REQUIREMENTS = "requirements_pinned"
    TRACES = "traces"
    DATASETS = "eval_datasets"
    GATE = "gate"
    LOADS = "loads_and_predicts"
    UNITY_CATALOG = "unity_catalog"
    SERVED = "served_challenger"
    ALERTS = "alert_thresholds"
    LIVE_SCORERS = "live_scorers"


TITLES = {
    Item.SIGNATURE: "Model signature",
    Item.INPUT_EXAMPLE: "Input example",
    Item.REQUIREMENTS: "Pinned requirements",
    Item.TRACES: "Live traces exist",
    Item.DATASETS: "Evaluation dataset size & diversity",
    Item.GATE: "Latest evaluation passes the gate",
    Item.LOADS: "Loads and answers its input example",
    Item.UNITY_CATALOG: "Unity Catalog three-level name",
    Item.SERVED: "Served behind challenger / staging traffic",
    Item.ALERTS: "Alerts watch the agent",
    Item.LIVE_SCORERS: "Live scorers configured",
}
@dataclass(frozen=True)
class LoadCheckResult:
    """Outcome of loading ``models:/NAME/N`` in a separate process and predicting its input example."""

    ok: bool
    stage: str  # "load", "input_example", "predict", "timeout", "process" or "done"
    error: str
    seconds: float
    output_preview: str = ""


# --- the load check (separate process) ------------------------------------------------------

_LOAD_SCRIPT = r"""
import json, sys, time
def result(**kw):
    print("RESULT " + json.dumps(kw), flush=True)
    sys.exit(0)
uri = sys.argv[1]
print("STAGE Importing MLflow", flush=True)
import mlflow
try:
    import mlflow.tracing
    mlflow.tracing.disable()  # the check must not create traces that count as real traffic
except Exception:
    pass
print("STAGE Loading " + uri, flush=True)
try:
    model = mlflow.pyfunc.load_model(uri)
except BaseException as exc:
    result(ok=False, stage="load", error=f"{type(exc).__name__}: {exc}")
try:
    example = model.input_example
except BaseException as exc:
    result(ok=False, stage="input_example", error=f"cannot read the saved input example: {type(exc).__name__}: {exc}")
if example is None:
    result(ok=False, stage="input_example", error="the model has no saved input example to answer")
print("STAGE Predicting its input example", flush=True)
try:
    output = model.predict(example)
except BaseException as exc:
    result(ok=False, stage="predict", error=f"{type(exc).__name__}: {exc}")
result(ok=True, stage="done", error="", output=repr(output)[:300])
"""


def _subprocess_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in LOCAL_MLFLOW_DEFAULTS.items():
        env.setdefault(key, value)
    env["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    env["MLFLOW_REGISTRY_URI"] = settings.registry_uri
    env["MLFLOW_TRACING_ENABLED"] = "false"
    return env


def check_load(
    agent: str, version: str | int, settings: Settings | None = None, *,
    timeout: float = LOAD_TIMEOUT_S, progress: Progress | None = None,
) -> LoadCheckResult:
    """Load ``models:/agent/version`` in a separate process and predict its saved input example."""
    agent = versions.check_agent_name(agent)
    number = versions.check_version(version)
    if timeout <= 0:
        raise ValidationError("The load check timeout must be positive (seconds).")
    settings = configure_mlflow(settings)
    versions.require_version_exists(mlflow_client(settings), agent, number)
    uri = f"models:/{agent}/{number}"
    started = time.monotonic()
    say = progress or (lambda _msg: None)
    say(f"Starting a separate process for {uri}")
    process = subprocess.Popen(
        [sys.executable, "-c", _LOAD_SCRIPT, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=_subprocess_env(settings), cwd=str(settings.data_dir if settings.data_dir.exists() else os.getcwd()),
    )
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        process.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(process.stderr), daemon=True)
    reader.start()
    outcome: dict[str, Any] | None = None
    try:
        for line in process.stdout:
            if line.startswith("STAGE "):
                say(line.removeprefix("STAGE ").strip())
            elif line.startswith("RESULT "):
                outcome = json.loads(line.removeprefix("RESULT "))
        process.wait()
    finally:
        timer.cancel()
        reader.join(timeout=5)
    seconds = time.monotonic() - started
    if timed_out.is_set() and outcome is None:
        return LoadCheckResult(False, "timeout", f"no answer within {timeout:g} s; the process was stopped", seconds)
    if outcome is None:
        tail = "".join(stderr_lines).strip().splitlines()[-3:]
        return LoadCheckResult(False, "process", f"the check process exited with code {process.returncode}: "
                               + (" | ".join(tail) or "no output"), seconds)
    say("Done" if outcome.get("ok") else f"Failed at {outcome.get('stage')}")
    return LoadCheckResult(bool(outcome.get("ok")), str(outcome.get("stage")), str(outcome.get("error") or ""),
                           seconds, str(outcome.get("output") or ""))


# --- checks of the logged model ----------------------------------------------------------------

def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def model_checks(uri: str) -> list[tuple[Item, Verdict, str, str]]:
    from mlflow.models import get_model_info

    try:
        info = get_model_info(uri)
    except Exception as exc:  # noqa: BLE001 - reported as unknown with the reason
        why = f"cannot read the MLmodel file of {uri}: {first_line(exc)}"
        fix = "Check that the version's artifacts are readable from here."
        return [(Item.SIGNATURE, Verdict.UNKNOWN, why, fix), (Item.INPUT_EXAMPLE, Verdict.UNKNOWN, why, fix)]
    out = []
    signature = info.signature
    if signature is None:
        out.append((Item.SIGNATURE, Verdict.FAIL, "the logged model has no signature",
                    "Re-log the model with input_example=... (MLflow infers the signature) or signature=..."))
    else:
        # Unnamed (tensor/column-index) inputs are numbered: ints, shown as text.
        names = ", ".join(str(n) for n in getattr(signature.inputs, "input_names", lambda: [])() or []) or "unnamed inputs"
        out.append((Item.SIGNATURE, Verdict.PASS, f"signature with inputs: {names}"[:200], ""))
    example = info.saved_input_example_info
    if not example:
        out.append((Item.INPUT_EXAMPLE, Verdict.FAIL, "no input example was saved with the model",
                    "Re-log the model with input_example=... so it can be smoke-tested and served."))
    else:
        out.append((Item.INPUT_EXAMPLE, Verdict.PASS, f"saved input example ({example.get('type', 'json')})", ""))
    return out


def unpinned_requirements(lines: Sequence[str]) -> list[str]:
    """Requirement lines that do not pin one exact version (``==`` / ``===``, a URL or a wheel file)."""
    loose = []
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith(("-r ", "-c ", "--")):
            continue
        spec = line.split(";", 1)[0].strip()
        if "==" in spec or " @ " in spec or spec.endswith(".whl") or "://" in spec:
            continue
        loose.append(spec)
    return loose


def requirements_check(uri: str) -> tuple[Item, Verdict, str, str]:
    import mlflow.pyfunc

    try:
        path = mlflow.pyfunc.get_model_dependencies(uri)
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except Exception as exc:  # noqa: BLE001
        return (Item.REQUIREMENTS, Verdict.UNKNOWN, f"cannot read requirements.txt: {first_line(exc)}",
                "Check that the version's artifacts are readable from here.")
    loose = unpinned_requirements(lines)
    if loose:
        return (Item.REQUIREMENTS, Verdict.FAIL, f"not pinned to one version: {', '.join(loose)[:300]}",
                "Re-log with pip_requirements pinned exactly, e.g. mlflow==3.17.2.")
    real = [line for line in lines if line.split('#', 1)[0].strip()]
    return (Item.REQUIREMENTS, Verdict.PASS, f"all {len(real)} requirement(s) pinned", "")


def load_item(load: LoadCheckResult | None) -> tuple[Item, Verdict, str, str]:
    if load is None:
        return (Item.LOADS, Verdict.UNKNOWN, "not run yet", "Run the load check (it runs in a separate process).")
    if load.ok:
        return (Item.LOADS, Verdict.PASS, f"loaded and answered its input example in {load.seconds:.1f} s", "")
    fixes = {
        "input_example": "Re-log the model with input_example=... so it can be smoke-tested.",
        "timeout": "Make loading and the first prediction faster, or run the check with a longer timeout.",
        "predict": "Fix the model's predict code for its own input example (see the error) and log a new version.",
    }
    return (Item.LOADS, Verdict.FAIL, f"failed at {load.stage}: {load.error}"[:500],
            fixes.get(load.stage, "Fix the model's loading code (see the error) and log a new version."))
