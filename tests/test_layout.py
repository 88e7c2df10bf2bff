"""The tree stays layered: tasks/ (compute) imports neither flows/ nor the tools the flow layer
owns, no import circle anywhere (imports inside functions and under TYPE_CHECKING count too), the
sub-packages of flows/ form layers, and no module is longer than MAX_LINES unless its docstring
says why."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tasks", "flows")
MAX_LINES = 400
# Said in the docstring of a module allowed to be longer: `Longer than 400 lines: <why>`
LONG_REASON = f"Longer than {MAX_LINES} lines:"
FLOW_TOOLS = ("prefect", "prefect_dask", "mlflow", "dvc", "optuna", "dask", "distributed")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for package in PACKAGES
           for path in sorted((ROOT / package).rglob("*.py"))}


def imports(name: str) -> set[str]:
    """Every module `name` imports anywhere in its file, as written, relative imports resolved;
    `from a.b import c` counts as a.b.c when that is one of ours, else as a.b."""
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
    return found


def imported(name: str) -> set[str]:
    """The modules of ours that `name` imports."""
    return {module for module in imports(name) if module in MODULES and module != name}


def graph(group=lambda module: module) -> dict[str, set[str]]:
    """Who imports whom, after mapping each module to its `group`; package __init__ files (which
    only document their package, or set the environment first) are left out."""
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
    """A sub-package of flows (flows.record, ...) as one node; every other module alone."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "flows" and len(parts) > 2 else name


def test_the_checks_see_a_circle():
    assert circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_is_read_from_every_module():
    edges = graph()
    assert "flows.record.registry" in edges["flows.compress"]
    assert "flows.compress" in edges["flows.stack.deployments"]  # a function-level import
    assert "flows.record.gated" in edges["flows.record.report"]  # under TYPE_CHECKING
    assert "tasks.quantize" in edges["tasks.evaluate"]  # a function-level import in tasks/


def test_no_import_circle_anywhere():
    assert circle(graph()) is None


def test_the_sub_packages_form_layers():
    assert circle(graph(layer)) is None


def test_the_compute_layer_knows_no_flow_and_no_tool_of_the_flows():
    """tasks/ is plain functions: Prefect tasks, MLflow runs, DVC and the search's Optuna study
    on Dask are made in flows/."""
    reaching = {name: sorted(module for module in imports(name)
                             if module.split(".")[0] in ("flows", *FLOW_TOOLS))
                for name in MODULES if name.startswith("tasks")}
    assert {name: found for name, found in reaching.items() if found} == {}


def test_sub_packages_only_document_themselves():
    """Importing one module of a sub-package runs its __init__: it imports nothing (the stack's
    servers module must stay free of Prefect, see test_cli)."""
    for name, path in MODULES.items():
        if path.name == "__init__.py" and name not in PACKAGES:
            body = ast.parse(path.read_text()).body
            assert len(body) == 1 and isinstance(body[0].value, ast.Constant), name


def test_no_module_is_too_long_without_a_reason():
    def too_long(path: Path) -> bool:
        text = path.read_text()
        docstring = ast.get_docstring(ast.parse(text)) or ""
        return len(text.splitlines()) > MAX_LINES and LONG_REASON not in docstring

    assert [name for name, path in MODULES.items() if too_long(path)] == []
