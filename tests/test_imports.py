"""The import graph of the core package, read from the source with ``ast``: no cycles, a leaf
where the design says so, and no core module reaching into a plugin or an exporter.

Every import counts wherever it is written (module level, inside a function or method, or as
``importlib.import_module("...")`` with a literal name): an import inside a function only delays
a cycle to the first call. Imports under ``if TYPE_CHECKING:`` never run and are left out.
Importing ``pkg.mod`` also runs ``pkg/__init__.py``, so it is an edge to ``pkg`` as well, except
from a module inside ``pkg`` (whose package is already being imported when it runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nas2deploy

CORE = Path(nas2deploy.__file__).resolve().parent
OUTSIDE_CORE = ("nas2deploy_plugins", "nas2deploy_exporters")


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package at ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST, *, type_checking: bool):
    """Import/ImportFrom nodes and ``import_module``/``__import__`` calls with a literal name,
    anywhere in ``tree``; those under ``if TYPE_CHECKING:`` only if ``type_checking``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_checking:
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name)
                       and node.func.id in ("import_module", "__import__")))):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _imported(module: str, is_package: bool, node) -> list[tuple[str, list[str]]]:
    """(base, names) pairs: ``from base import names``; plain imports have no names."""
    if isinstance(node, ast.Call):
        return [(node.args[0].value, [])]
    if isinstance(node, ast.Import):
        return [(alias.name, []) for alias in node.names]
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = package[:len(package) - node.level + 1]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module
    return [(name, [alias.name for alias in node.names])]


def import_graph(root: Path, *, type_checking: bool = False) -> dict[str, set[str]]:
    """Module -> the modules of the package at ``root`` that importing it runs."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        deps: set[str] = set()
        for node in _import_nodes(tree, type_checking=type_checking):
            for base, names in _imported(module, path.name == "__init__.py", node):
                targets = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
                if not names or len(targets) < len(names):
                    targets.append(base)  # a name defined by base itself, or a plain import
                for target in targets:
                    parts = target.split(".")
                    for i in range(1, len(parts) + 1):
                        dep = ".".join(parts[:i])
                        inside = module == dep or module.startswith(dep + ".")
                        if dep in modules and dep != module and (i == len(parts) or not inside):
                            deps.add(dep)
        graph[module] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) through every strongly connected component with more than one
    module (Tarjan), each starting at its smallest name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    found = []
    for comp in components:
        start = min(comp)
        # shortest way back to start inside the component (breadth first)
        prev: dict[str, str] = {}
        frontier = [start]
        while start not in prev and frontier:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & comp):
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [start]
        while path[-1] != start or len(path) == 1:
            path.append(prev[path[-1]])
        found.append(path[::-1])
    return sorted(found)


def _describe(found: list[list[str]]) -> str:
    return "; ".join(" -> ".join(c) for c in found)


# --------------------------------------------------------------------------------------------
# the checker itself, on packages written here


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path):
    root = _package(tmp_path, {"a.py": "from .b import x\n",
                               "b.py": "def f():\n    from . import a\n"})
    assert cycles(import_graph(root)) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_importing_a_submodule_runs_its_package(tmp_path):
    root = _package(tmp_path, {"sub/__init__.py": "from .low import y\nfrom .high import z\n",
                               "sub/low.py": "y = 1\n",
                               "sub/high.py": "from ..user import u\n",
                               "user.py": "from .sub.low import y\nu = y\n"})
    graph = import_graph(root)
    assert graph["pkg.sub.low"] == set()  # its own package is already being imported
    assert "pkg.sub" in graph["pkg.user"]
    assert cycles(graph) == [["pkg.sub", "pkg.sub.high", "pkg.user", "pkg.sub"]]


def test_type_checking_imports_and_names_from_a_package(tmp_path):
    root = _package(tmp_path, {"__init__.py": "VERSION = 1\ndef f():\n    from .a import g\n",
                               "a.py": "from typing import TYPE_CHECKING\n"
                                       "if TYPE_CHECKING:\n    from .b import T\n"
                                       "def g():\n    return 1\n",
                               "b.py": "from . import VERSION, a\n"
                                       "import importlib\nimportlib.import_module('pkg.c')\n",
                               "c.py": ""})
    graph = import_graph(root)
    assert graph["pkg.a"] == set()
    assert graph["pkg.b"] == {"pkg", "pkg.a", "pkg.c"}
    assert "pkg.b" in import_graph(root, type_checking=True)["pkg.a"]
    assert cycles(graph) == []


# --------------------------------------------------------------------------------------------
# the core package


def test_core_has_no_import_cycle():
    found = cycles(import_graph(CORE))
    assert not found, f"import cycles in {CORE.name}: {_describe(found)}"


def test_latency_measure_is_a_leaf():
    """Timing imports nothing from nas2deploy, so every module can time without a cycle."""
    path = CORE / "latency" / "measure.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = [base for node in _import_nodes(tree, type_checking=True)
                for base, _ in _imported("nas2deploy.latency.measure", False, node)]
    assert imported and not [m for m in imported if m.split(".")[0] == CORE.name], imported


@pytest.mark.parametrize("outside", OUTSIDE_CORE)
def test_core_never_imports_a_plugin_or_an_exporter(outside):
    offenders = []
    for module, path in _modules(CORE).items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _import_nodes(tree, type_checking=True):
            for base, _ in _imported(module, path.name == "__init__.py", node):
                if base.split(".")[0] == outside:
                    offenders.append(f"{module} imports {base}")
    assert not offenders, "; ".join(offenders)
