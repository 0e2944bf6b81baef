"""``python -m agentops gate``: the release gate and readiness checklist, for CI/CD.

Evaluates the same gate rules (registered-model tag ``agentops.gate``) and readiness items
(``services.readiness``) the Versions page uses, prints a readable report, optionally writes
JSON and JUnit XML reports, and exits:

| code | meaning |
| --- | --- |
| 0 | the version may be promoted |
| 1 | blocked: a gate rule or a required readiness item fails |
| 2 | bad arguments or configuration, or the model/version does not exist |
| 3 | the backend could not be reached or read |

The backend is chosen by the usual environment variables (``AGENTOPS_BACKEND``,
``AGENTOPS_MLFLOW_URI``, ``DATABRICKS_HOST``, ...; see ``services/settings.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TextIO

EXIT_OK, EXIT_BLOCKED, EXIT_USAGE, EXIT_BACKEND = 0, 1, 2, 3
_MARK = {"pass": "PASS", "fail": "FAIL", "unknown": "????", "no data": "----"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agentops gate",
        description="Evaluate the release gate and readiness checklist of a registered agent version.",
    )
    parser.add_argument("--model", required=True, help="registered model name (catalog.schema.model on Databricks)")
    parser.add_argument("--version", required=True, help="version number to check, e.g. 7")
    parser.add_argument("--against", default="champion",
                        help="alias the version would be promoted to; its holder is the baseline (default: champion)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the machine-readable report as JSON")
    parser.add_argument("--junit", type=Path, metavar="PATH", help="write a JUnit XML report for CI systems")
    parser.add_argument("--skip-load", action="store_true",
                        help="do not load the model and predict its input example (the item stays unknown)")
    parser.add_argument("--load-timeout", type=float, default=180.0, metavar="SECONDS",
                        help="time limit of the load-and-predict check (default: 180)")
    parser.add_argument("--require", action="append", metavar="ITEM",
                        help="a readiness item that blocks when it fails (repeatable; replaces the agent's "
                             "agentops.readiness.required tag; default: gate, loads_and_predicts)")
    return parser


def main(argv: list[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the gate; returns the exit code."""
    out = out or sys.stdout
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed the problem
        return EXIT_OK if exc.code == 0 else EXIT_USAGE

    from services import readiness
    from services._clients import check_connection
    from services.errors import (
        AgentOpsError,
        BackendUnavailableError,
        ConfigurationError,
        NotFoundError,
        PermissionDeniedError,
        ValidationError,
    )
    from services.settings import load_settings

    try:
        settings = load_settings()
        check_connection(settings)

        def progress(message: str) -> None:
            print(f"… {message}", file=sys.stderr, flush=True)

        report = readiness.assess(
            args.model, args.version, settings, against=args.against, run_load=not args.skip_load,
            load_timeout=args.load_timeout, required=args.require, progress=progress,
        )
    except (ConfigurationError, ValidationError, NotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (BackendUnavailableError, PermissionDeniedError, AgentOpsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BACKEND

    data = report.to_dict()
    data["backend"] = settings.backend.value
    data["workspace"] = settings.workspace_label
    out.write(render_text(data))
    out.flush()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    if args.junit:
        args.junit.parent.mkdir(parents=True, exist_ok=True)
        args.junit.write_bytes(render_junit(data))
    return EXIT_BLOCKED if report.blocked else EXIT_OK


def render_text(data: dict) -> str:
    """The human-readable report."""
    current = f"v{data['current_version']}" if data.get("current_version") else "nothing"
    lines = [
        f"Release gate: {data['agent']} v{data['version']} as @{data['against']} (now {current}) "
        f"on {data.get('backend', '?')} {data.get('workspace', '')}".rstrip(),
        "",
        "Gate rules:",
    ]
    if data["gate"]:
        for check in data["gate"]:
            lines.append(f"  [{_MARK.get(check['status'], check['status'])}] {check['rule']} — {check['detail']}")
    else:
        lines.append("  (no gate rules are set for this agent)")
    lines += ["", "Readiness:"]
    for item in data["readiness"]:
        tag = " (required)" if item["required"] else ""
        lines.append(f"  [{_MARK[item['verdict']]}] {item['title']}{tag} — {item['reason']}")
        if item["fix"] and item["verdict"] != "pass":
            lines.append(f"         fix: {item['fix']}")
    lines.append("")
    if data["promotable"]:
        lines.append(f"RESULT: PROMOTABLE — v{data['version']} may become @{data['against']}.")
    else:
        why = []
        if data["blocked_by_gate"]:
            why.append("the gate fails")
        if data["failing_required_items"]:
            why.append("required items fail: " + ", ".join(data["failing_required_items"]))
        lines.append(f"RESULT: BLOCKED — {'; '.join(why)}.")
    return "\n".join(lines) + "\n"


def render_junit(data: dict) -> bytes:
    """A JUnit XML report: one test case per gate rule and per readiness item."""
    suite = ET.Element("testsuite", name=f"agentops gate {data['agent']} v{data['version']}")
    cases = failures = skipped = 0
    for check in data["gate"]:
        cases += 1
        case = ET.SubElement(suite, "testcase", classname="agentops.gate", name=check["rule"])
        if check["status"] == "fail":
            failures += 1
            ET.SubElement(case, "failure", message=check["detail"]).text = check["detail"]
        elif check["status"] != "pass":
            skipped += 1
            ET.SubElement(case, "skipped", message=check["detail"])
    for item in data["readiness"]:
        cases += 1
        case = ET.SubElement(suite, "testcase", classname="agentops.readiness", name=item["item"])
        message = f"{item['reason']}. Fix: {item['fix']}" if item["fix"] else item["reason"]
        if item["verdict"] == "fail" and item["required"]:
            failures += 1
            ET.SubElement(case, "failure", message=message).text = message
        elif item["verdict"] == "fail":
            ET.SubElement(case, "system-out").text = f"advisory (not required): {message}"
        elif item["verdict"] == "unknown":
            skipped += 1
            ET.SubElement(case, "skipped", message=message)
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", str(skipped))
    root = ET.Element("testsuites", name="agentops gate", tests=str(cases), failures=str(failures))
    root.append(suite)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
