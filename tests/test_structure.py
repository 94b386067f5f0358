"""The package's import graph has no cycles: read every module of src/masklm with ast and look for one.

An edge A → B means module A imports module B (at top level or inside a function: a lazy import still ties the
two together). `from masklm.x import y` counts as importing masklm.x and, when y is a module, masklm.x.y.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """Absolute names of everything `tree` (the module `name`) imports, relative imports resolved."""
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            out.add(origin)
            out.update(f"{origin}.{alias.name}" for alias in node.names)
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(p): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps = imported(tree, name, path.name == "__init__.py")
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None: a depth-first search that meets a module still on its path."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_finder_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_relative_imports_are_resolved() -> None:
    tree = ast.parse("from . import heads\nfrom ..errors import UserError\nfrom .base import Head")
    assert imported(tree, "masklm.model.io", is_package=False) >= {
        "masklm.model.heads", "masklm.errors", "masklm.model.base",
    }  # fmt: skip
    assert "masklm.model.heads" in imported(ast.parse("from . import heads"), "masklm.model", is_package=True)


def test_no_import_cycle_in_masklm() -> None:
    graph = import_graph(SRC / "masklm")
    assert "masklm.model.io" in graph and graph["masklm.model.io"]  # the graph was really read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
