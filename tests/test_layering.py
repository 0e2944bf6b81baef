"""The layering written down as import-linter contracts (`.importlinter`), checked with the tests."""

import configparser
import subprocess
import sys
from pathlib import Path

import grimp

from tests.layering_contracts import ModuleAcyclicContract, module_cycles

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    contracts = [s for s in config.sections() if s.startswith("importlinter:contract:")]
    assert len(contracts) >= 6
    assert result.stdout.count(" KEPT") == len(contracts), result.stdout[-2000:]


def _graph(*imports: tuple[str, str]) -> grimp.ImportGraph:
    graph = grimp.ImportGraph()
    for importer, imported in imports:
        graph.add_import(importer=importer, imported=imported, line_number=1, line_contents=f"import {imported}")
    return graph


def test_module_cycles_are_found_where_acyclic_siblings_does_not_look():
    # A package's __init__ imports a child that imports the package back: a cycle between modules
    # that no two siblings share; and a plain cycle between modules of two service packages.
    child_to_package = _graph(("services.serving", "services.serving.local"),
                              ("services.serving.local", "services.serving"),
                              ("services.serving.local", "services.settings"))
    assert module_cycles(child_to_package, {"services"}) == [["services.serving", "services.serving.local"]]
    siblings = _graph(("services.audit.trail", "services.serving.deploy"),
                      ("services.serving.deploy", "services.registry"),
                      ("services.registry", "services.audit.trail"),
                      ("gateway.core", "services.registry"))
    assert module_cycles(siblings, {"services", "gateway"}) == [
        ["services.audit.trail", "services.registry", "services.serving.deploy"]]
    assert module_cycles(siblings, {"gateway"}) == []  # only cycles inside the containers count
    contract = ModuleAcyclicContract("cycles", {}, {"containers": ["services"]})
    assert not contract.check(child_to_package, verbose=False).kept
    assert contract.check(_graph(("services.a", "services.b")), verbose=False).kept
