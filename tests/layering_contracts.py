"""An import-linter contract type for what ``acyclic_siblings`` does not see: a cycle between modules.

``acyclic_siblings`` squashes each package's children and compares siblings, so it misses a module
importing its own package (``services.serving.local`` -> ``services.serving``, whose ``__init__``
imports ``local``) and it does not look outside the packages it is given. ``module_acyclic`` takes
the import graph module by module (function-level imports included, as grimp reads every import
statement) and fails on any cycle among the modules of ``containers``, naming each import in it.
Registered in ``.importlinter`` with ``contract_types``; run by ``tests/test_layering.py``.
"""

from __future__ import annotations

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def module_cycles(graph: ImportGraph, containers: set[str]) -> list[list[str]]:
    """Every strongly connected set of more than one module inside ``containers`` (Tarjan, iterative)."""
    inside = sorted(m for m in graph.modules if m.split(".")[0] in containers)
    members = set(inside)
    edges = {m: sorted(w for w in graph.find_modules_directly_imported_by(m) if w in members) for m in inside}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in inside:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, next_edge = work.pop()
            if next_edge == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            targets = edges[node]
            while next_edge < len(targets):
                target = targets[next_edge]
                next_edge += 1
                if target not in index:
                    work.append((node, next_edge))
                    work.append((target, 0))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
    return sorted(cycles)


class ModuleAcyclicContract(Contract):
    """No import cycle among the modules of ``containers`` (top-level packages)."""

    type_name = "module_acyclic"
    containers = fields.ListField(subfield=fields.StringField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        containers = set(self.containers)  # type: ignore[arg-type]
        cycles = module_cycles(graph, containers)
        details: list[list[tuple[str, str, list[int]]]] = []
        for cycle in cycles:
            members = set(cycle)
            imports = []
            for importer in cycle:
                for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
                    lines = [d["line_number"] for d in graph.get_import_details(importer=importer, imported=imported)]
                    imports.append((importer, imported, lines))
            details.append(imports)
        return ContractCheck(kept=not cycles, metadata={"cycles": details})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for imports in check.metadata["cycles"]:
            modules = sorted({importer for importer, _, _ in imports})
            output.print_error(f"These modules import each other in a cycle: {', '.join(modules)}")
            for importer, imported, lines in imports:
                output.print(f"- {importer} -> {imported} (line {', '.join(map(str, lines))})")
            output.new_line()

