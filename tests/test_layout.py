"""flows/ stays layered: no import circle between its modules or its sub-packages (imports inside
functions and under TYPE_CHECKING count too), and no module longer than MAX_LINES."""

from __future__ import annotations

import ast
from pathlib import Path

FLOWS = Path(__file__).resolve().parent.parent / "flows"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(FLOWS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(FLOWS.rglob("*.py"))}


def imported(name: str) -> set[str]:
    """The flows modules `name` imports anywhere in its file; `from flows.x import y` counts as
    flows.x.y when that is a module, else as flows.x."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package `level - 1` steps up
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                      for alias in node.names}
    return {module for module in found if module in MODULES and module != name}


def graph(group=lambda module: module) -> dict[str, set[str]]:
    """Who imports whom, after mapping each module to its `group`; package __init__ files (which
    only document their package) and the root package are left out."""
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        if path.name == "__init__.py":
            continue
        edges.setdefault(group(name), set())
        for target in imported(name):
            if MODULES[target].name != "__init__.py" and group(target) != group(name):
                edges[group(name)].add(group(target))
    return edges


def circle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle in `edges`, as the path around it, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if found := visit(target):
                return found
        path.pop()
        done.add(node)
        return None

    for node in sorted(edges):
        if found := visit(node):
            return found
    return None


def layer(name: str) -> str:
    """A sub-package (flows.record, ...) as one node; the modules at the top of flows/ each alone."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else name


def test_the_checks_see_a_circle():
    assert circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_is_read_from_every_module():
    edges = graph()
    assert "flows.record.registry" in edges["flows.compress"]
    assert "flows.compress" in edges["flows.stack.deployments"]  # a function-level import
    assert "flows.record.gated" in edges["flows.record.report"]  # under TYPE_CHECKING


def test_no_import_circle_between_flows_modules():
    assert circle(graph()) is None


def test_the_sub_packages_form_layers():
    assert circle(graph(layer)) is None


def test_sub_packages_only_document_themselves():
    """Importing one module of a sub-package runs its __init__: it imports nothing (the stack's
    servers module must stay free of Prefect, see test_cli)."""
    for name, path in MODULES.items():
        if path.name == "__init__.py" and name != "flows":
            body = ast.parse(path.read_text()).body
            assert len(body) == 1 and isinstance(body[0].value, ast.Constant), name


def test_no_flows_module_is_too_long():
    lengths = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}
