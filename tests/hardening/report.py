"""Render ``docs/reliability.md`` from the records the hardening tests wrote (see ``reliability.py``).

``python -m tests.hardening.report --records DIR --out docs/reliability.md`` (``scripts/reliability``
runs the tests first). Known sections get a title and an explanation; a section this file does not
know yet is rendered the same way under its own name, so fault and load tests only write records.
"""

from __future__ import annotations

import argparse
import subprocess
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tests.hardening.reliability import ROOT, read_records, records_dir

# section -> (title, what the figures mean); the order is the document's order.
SECTIONS: dict[str, tuple[str, str]] = {
    "bad_input": (
        "Bad input",
        "Property-based tests (hypothesis) feed every service entry point that takes user input names, aliases, "
        "versions, splits, uploads, filters, windows, feedback values and specs, valid and broken. *Typed errors* "
        "are refusals as a subclass of `AgentOpsError` with a message; *state checks* compare every row of every "
        "table of the SQLite store and every file of the data folder before and after a refusal (or a read). An "
        "untyped exception, a refusal that changed state, or an accepted input that broke an invariant fails the "
        "test.",
    ),
    "untrusted_content": (
        "Untrusted content",
        "Script, HTML and markdown payloads in trace inputs/outputs, span names/attributes/errors, trace tags, "
        "reviewer comments and registry fields, rendered by the real app in headless Chromium. *Scripts run / "
        "dialogs* counts payload code that executed or opened a dialog; *payload requests* counts requests the page "
        "made to the payload's URLs (an injected image loading); *injected links* and *images* count payload links "
        "and images in the DOM; *shown as text* says whether the payload's markup is visible as typed. Pages with a "
        "\"no\" are listed under known open findings.",
    ),
    "sessions": (
        "Sessions",
        "Several users at once, each with their own forwarded identity headers: AppTest sessions from a thread pool "
        "over one store and one set of caches, and separate Chromium contexts against the served app.",
    ),
    "faults": (
        "Faults",
        "The MLflow server stopped in the middle of a promotion, a traffic change, an evaluation run and a review "
        "submission; the gateway restarted during traffic. Figures: faults injected, actions retried, completed "
        "exactly once, disagreements between registry, endpoint config and audit trail.",
    ),
    "gateway_load": (
        "Gateway under load",
        "The local gateway under bounded concurrent load. Figures: clients, requests sent, answered, traces kept, "
        "largest deviation of an arm's share from its configured split.",
    ),
    "rollout statistics": (
        "Rollout statistics",
        "Simulated guarded rollouts with constructed arms and fixed seeds (`tests/services/test_rollout_statistics.py`): "
        "each looks at its arms after every 50 requests per arm, up to 6,000, and stops at the first rollback or "
        "promotion. Decisions use the normal-mixture sequential test and its always-valid confidence sequence "
        "(`services/sequential.py`), alpha shared equally between guardrails. *Rolled back* with equal arms is the "
        "false-rollback rate, to be compared with alpha; with a degraded challenger, the median requests per arm "
        "to roll back is compared with the normal-theory expectation. The naive z-test row shows why a fixed-horizon "
        "test repeated at every look is not used.",
    ),
}


def _junit(folder: Path) -> dict[str, Any]:
    """Outcome counts and strict-xfail reasons from pytest's junit XML, when the run wrote one."""
    path = folder / "junit.xml"
    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    outcome = {"passed": 0, "failed": 0, "xfailed": 0, "skipped": 0}
    xfails: list[tuple[str, str]] = []
    failures: list[str] = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name', '')}"
        skipped = case.find("skipped")
        if case.find("failure") is not None or case.find("error") is not None:
            outcome["failed"] += 1
            failures.append(name)
        elif skipped is not None and (skipped.get("type") or "").endswith("xfail"):
            outcome["xfailed"] += 1
            xfails.append((name, skipped.get("message") or ""))
        elif skipped is not None:
            outcome["skipped"] += 1
        else:
            outcome["passed"] += 1
    return {"outcome": outcome, "xfails": xfails, "failures": failures,
            "seconds": float(root.find("testsuite").get("time", 0)) if root.find("testsuite") is not None else 0.0}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".") if value != int(value) else f"{int(value):,}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(records: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for record in records:
        columns += [c for c in record.get("figures", {}) if c not in columns]
    numeric = [c for c in columns if all(isinstance(r.get("figures", {}).get(c, 0), (int, float)) for r in records)]
    with_detail = any(r.get("detail") for r in records) and all(
        all(isinstance(v, (int, float)) for v in (r.get("detail") or {}).values()) for r in records)
    header = ["what", *columns] + (["by kind"] if with_detail else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record in records:
        figures = record.get("figures", {})
        row = [_cell(record.get("name", "")), *(_cell(figures.get(c, "")) for c in columns)]
        if with_detail:
            row.append(", ".join(f"{k} {v}" for k, v in (record.get("detail") or {}).items()) or "—")
        lines.append("| " + " | ".join(row) + " |")
    summable = [c for c in numeric if "seconds" not in c and "(s)" not in c and "share" not in c]
    if len(records) > 1 and summable:
        total = ["**total**", *(f"**{_cell(sum(r.get('figures', {}).get(c, 0) for r in records))}**"
                                if c in summable else "" for c in columns)]
        lines.append("| " + " | ".join(total + ([""] if with_detail else [])) + " |")
    return lines


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render(folder: Path) -> str:
    records = read_records(folder)
    run = _junit(folder)
    by_section: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_section.setdefault(record.get("section", "other"), []).append(record)
    lines = [
        "# Reliability",
        "",
        "Figures produced by the hardening tests. Regenerate with `scripts/reliability` (runs the tests listed in "
        "`tests/hardening/RELIABILITY_TESTS`, then rewrites this file from the records they wrote); do not edit by "
        "hand.",
        "",
        f"Generated {datetime.now(tz=timezone.utc):%Y-%m-%d %H:%M} UTC at commit `{_commit()}`.",
    ]
    if run:
        o = run["outcome"]
        lines += ["", f"Test run: {o['passed']} passed, {o['failed']} failed, {o['xfailed']} known open findings "
                      f"(strict xfail), {o['skipped']} skipped, in {run['seconds']:.0f} s."]
        if run["failures"]:
            lines += ["", "**Failing:** " + ", ".join(f"`{f}`" for f in run["failures"])]
    lines += ["", "Entry points and pages are named after the service function or page they exercise; the tests "
                  "are in `tests/hardening/` and `tests/e2e/`."]
    for section in [*SECTIONS, *sorted(set(by_section) - set(SECTIONS))]:
        title, about = SECTIONS.get(section, (section.replace("_", " ").capitalize(), ""))
        lines += ["", f"## {title}", ""]
        if about:
            lines += [about, ""]
        if section not in by_section:
            lines.append("_No records yet: the tests for this part have not landed or did not run._")
            continue
        # Faults named "<action>: <fault point>" or "<action> (<variant>)" get one table per action.
        groups: dict[str, list[dict[str, Any]]] = {}
        for record in by_section[section]:
            name = str(record.get("name", ""))
            action = (name.partition(": ")[0] if ": " in name else name.partition(" (")[0]) if section == "faults" else ""
            groups.setdefault(action, []).append(record)
        for action, records in groups.items():
            if action:
                lines += [f"### {action[:1].upper()}{action[1:]}", ""]
            lines += _table(records)
            notes = [f"- {r['name']}: {r['notes']}" for r in records if r.get("notes")]
            shared = {r["notes"] for r in records if r.get("notes")}
            if len(shared) == 1 and len(notes) > 1:
                notes = [shared.pop()]
            if notes:
                lines += ["", *notes]
            if action:
                lines.append("")
    if run and run["xfails"]:
        lines += ["", "## Known open findings", "",
                  "Each is a strict xfail: it fails the run as soon as the code is fixed, so the mark gets removed.", ""]
        grouped: dict[tuple[str, str], list[str]] = {}
        for name, reason in run["xfails"]:
            test, _, case = name.partition("[")
            grouped.setdefault((test, reason.removeprefix("reason: ")), []).append(case.rstrip("]"))
        for (test, reason), cases in grouped.items():
            shown = [c for c in cases if c]
            label = f"`{test}`" + (f" ({len(shown)} cases)" if shown else "")
            lines.append(f"- {label}: {reason.replace('<', '&lt;').replace('>', '&gt;')}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path, default=records_dir())
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(args.records), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
