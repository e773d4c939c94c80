"""Imports point down: segmenter knows nothing of tools, agent or evals; tools knows nothing of agent or
evals; and no module imports itself back through others. Every import statement counts, at module
level and inside functions (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from segmenter.backends import BACKENDS, backend_class
from segmenter.base import SegmenterBackend

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "tools", "segmenter", "evals")
# package -> the packages it must never import (the layers above it)
FORBIDDEN = {"segmenter": {"tools", "agent", "evals"}, "tools": {"agent", "evals"}}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def find_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """``from .x import y`` inside ``module`` -> the absolute name of ``.x``."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to: itself, or the nearest enclosing package that exists."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(node, module, path.name == "__init__.py")
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            else:
                continue
            edges.update(t for t in (_known(name, modules) for name in targets) if t and t != module)
        graph[module] = edges
    return graph


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        banned = FORBIDDEN.get(module.split(".")[0], set())
        found += [f"{module} -> {t}" for t in sorted(targets) if t.split(".")[0] in banned]
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other (directly or through others), each sorted."""
    reach = {module: reachable(graph, module) for module in graph}
    groups = {tuple(sorted(n for n in reach[m] if m in reach[n])) for m in graph if m in reach[m]}
    return sorted(list(group) for group in groups)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = find_modules(ROOT, PACKAGES)
    assert {"segmenter.facade", "tools.registry", "agent.graph", "evals.cli"} <= set(modules)
    return import_graph(modules)


def test_no_upward_imports(graph):
    assert upward_edges(graph) == []


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_the_walk_sees_lazy_relative_and_from_imports(graph):
    assert "segmenter.overlay" in graph["segmenter.cli"]  # imported inside main()
    assert "segmenter.facade" in graph["tools.context"]
    assert "segmenter.base" in graph["segmenter.backends"] and "segmenter.backends" in graph["segmenter.facade"]


def test_an_upward_edge_and_a_cycle_are_caught(tmp_path):
    """The checks themselves, on a tree drawn for the purpose."""
    files = {
        "segmenter/__init__.py": "",
        "segmenter/a.py": "def f():\n    from tools import b\n",  # lazy, and upward
        "segmenter/c.py": "from . import d\n",
        "segmenter/d.py": "import segmenter.c\n",  # c <-> d
        "tools/__init__.py": "",
        "tools/b.py": "from segmenter.a import f\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    drawn = import_graph(find_modules(tmp_path, ("segmenter", "tools")))
    assert upward_edges(drawn) == ["segmenter.a -> tools.b"]
    assert cycles(drawn) == [["segmenter.a", "tools.b"], ["segmenter.c", "segmenter.d"]]


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_in_the_table_is_a_segmenter_backend_of_the_segmenter_layer(name):
    # the table is read with importlib (heavy backends load only when chosen), out of the walk's sight
    assert BACKENDS[name].startswith("segmenter.")
    assert issubclass(backend_class(name), SegmenterBackend)


def test_an_unknown_backend_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown segmenter backend 'nope'; choose lite, sam3, remote"):
        backend_class("nope")
