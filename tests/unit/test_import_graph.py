"""The import graph of ``framework`` (read with ``ast``; lazy imports inside functions count): no circles, and the
layers import downwards only (data never imports trainers, jobs or evaluation)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

LOWER_LAYERS_MUST_NOT_IMPORT = {
    "framework.data": ("framework.trainers", "framework.jobs", "framework.evaluation", "framework.distributed"),
    "framework.io": ("framework.",),
    "framework.models": ("framework.trainers", "framework.jobs", "framework.data"),
}
"""Importer prefix -> prefixes it may not import."""


def module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(tree: ast.Module, known: set[str]) -> set[str]:
    """The ``known`` modules a source imports (``from pkg import mod`` resolves to ``pkg.mod`` when that exists)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return {m for m in out if m in known}


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` (a directory; names relative to its parent) it imports."""
    paths = sorted(package.rglob("*.py"))
    known = {module_name(p, package.parent) for p in paths}
    graph = {
        module_name(p, package.parent): imports_of(ast.parse(p.read_text(), filename=str(p)), known) for p in paths
    }
    for mod, deps in graph.items():
        deps.discard(mod)
        # importing a package runs its __init__, but a package's own submodules importing it is not a circle
        deps.difference_update(d for d in list(deps) if mod.startswith(d + "."))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, ..., a]``, or None (iterative DFS, white/grey/black colouring)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        state[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                state[node] = 2
                stack.pop()
                continue
            nxt = todo.pop()
            if state.get(nxt) == 1:
                path = [n for n, _ in stack]
                return path[path.index(nxt) :] + [nxt]
            if not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, sorted(graph.get(nxt, ()))))
    return None


def test_find_cycle_sees_a_circle_and_a_lazy_import(tmp_path: Path) -> None:
    pkg = tmp_path / "framework"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("from framework.a.y import f\n")
    (pkg / "a" / "y.py").write_text("def f():\n    from framework.a import x\n")  # lazy, inside a function
    assert find_cycle(import_graph(pkg)) in (["framework.a.x", "framework.a.y", "framework.a.x"],
                                 ["framework.a.y", "framework.a.x", "framework.a.y"])  # fmt: skip
    (pkg / "a" / "y.py").write_text("def f():\n    pass\n")
    assert find_cycle(import_graph(pkg)) is None


def test_framework_has_no_import_circle() -> None:
    cycle = find_cycle(import_graph(REPO / "framework"))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("importer", sorted(LOWER_LAYERS_MUST_NOT_IMPORT))
def test_layers_import_downwards(importer: str) -> None:
    graph = import_graph(REPO / "framework")
    banned = LOWER_LAYERS_MUST_NOT_IMPORT[importer]
    bad = sorted(
        f"{mod} imports {dep}"
        for mod, deps in graph.items()
        if mod == importer or mod.startswith(importer + ".")
        for dep in deps
        if dep.startswith(banned)
    )
    assert not bad, bad
