"""The package's shape: import-linter's contracts (pyproject.toml), no import cycle, and the
glue between the layers that only end-to-end runs exercised before."""

from __future__ import annotations

import grimp
from importlinter.cli import lint_imports


def test_import_contracts_are_kept():
    assert lint_imports(no_cache=True) == 0  # prints which contract broke, and where


def _cycles(graph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in graph.find_modules_directly_imported_by(module):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_between_modules():
    # Every import counts, in-function ones too: none may hide a cycle.
    graph = grimp.build_graph("tfsubmit", exclude_type_checking_imports=True)
    assert _cycles(graph) == []


def test_no_module_or_class_defines_a_name_twice():
    """A second `def` of a name replaces the first for every caller in the module (ruff's
    F811 passes it when the first was used): `tfsubmit runs` once printed nothing because
    a helper for another command took its `_where`'s name. In tests, a test of the same
    name as another would never run."""
    import ast
    from pathlib import Path

    import tfsubmit

    twice = []
    for path in sorted([*Path(tfsubmit.__file__).parent.rglob("*.py"),
                        *Path(__file__).parent.glob("*.py"),
                        *Path(__file__).parent.parent.joinpath("benchmarks").glob("*.py")]):
        tree = ast.parse(path.read_text(), str(path))
        for body, where in [(tree.body, path.name)] + [
                (node.body, f"{path.name}:{node.name}") for node in ast.walk(tree)
                if isinstance(node, ast.ClassDef)]:
            seen: set[str] = set()
            for node in body:
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    if node.name in seen and not any(
                            isinstance(d, ast.Attribute) and d.attr == "setter"
                            for d in node.decorator_list):
                        twice.append(f"{where}: {node.name}")
                    seen.add(node.name)
    assert twice == []
