"""No import cycle among this distribution's modules (``nemotron3_super/``, ``plugins/``, ``recipes/``).

Read from the source with ``ast`` (nothing is executed), so an import inside a function counts as much as
one at the top: a lazy import that closes a cycle is still a cycle in the design (the bridge once did
``from nemotron3_super.conversion.mapping import ...`` inside a method while that module imported the
bridge). ``if TYPE_CHECKING:`` blocks are skipped. Importing ``a.b.c`` is an edge to ``a.b.c`` only, not
to the ``a.b`` package it sits in.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# source folder -> installed package name (plugins/ and recipes/ install under nemotron3_super)
PACKAGES = {ROOT / "nemotron3_super": "nemotron3_super", ROOT / "plugins": "nemotron3_super.plugins",
            ROOT / "recipes": "nemotron3_super.recipes"}


def module_files(packages: dict[Path, str]) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` under each package folder."""
    out = {}
    for folder, name in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([name, *parts])] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name ``module`` imports; ``from a import b`` gives ``"a:b"`` (``b`` may be a module of
    ``a`` or a name defined in it: :func:`import_graph` decides)."""
    is_package = path.name == "__init__.py"
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                names.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolve against this module's package
                    package = module if is_package else module.rpartition(".")[0]
                    for _ in range(child.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                names.update(f"{base}:{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return names


def import_graph(packages: dict[Path, str]) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports (the longest known prefix of each name)."""
    files = module_files(packages)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(path, module):
            base, _, attr = name.partition(":")
            name = f"{base}.{attr}" if attr and f"{base}.{attr}" in files else base
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path ``a -> b -> a``) per strongly connected component of two or more
    modules (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return [_closed_path(graph, set(c)) for c in components]


def _closed_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself (breadth first)."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, node, start]
                if child not in previous:
                    previous[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")


def test_no_import_cycle() -> None:
    graph = import_graph(PACKAGES)
    assert "nemotron3_super.bridge" in graph and "nemotron3_super.recipes" in graph  # the walk saw the tree
    found = cycles(graph)
    assert not found, "import cycle(s): " + "; ".join(" -> ".join(c) for c in found)


def test_the_check_names_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    """The bridge <-> conversion cycle as it was: a lazy import inside a method closes it."""
    pkg = tmp_path / "pkg"
    (pkg / "conversion").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "conversion" / "__init__.py").write_text("")
    (pkg / "bridge.py").write_text("class B:\n    def f(self):\n        from pkg.conversion.mapping import check\n")
    (pkg / "conversion" / "mapping.py").write_text("from ..bridge import B\n")
    (pkg / "other.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.bridge\n")
    graph = import_graph({pkg: "pkg"})
    assert graph["pkg.conversion.mapping"] == {"pkg.bridge"} and graph["pkg.other"] == set()
    assert cycles(graph) == [["pkg.bridge", "pkg.conversion.mapping", "pkg.bridge"]]
