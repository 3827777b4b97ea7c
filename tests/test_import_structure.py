"""Code structure: no import cycle among the project's modules and no module over 400 lines.

The import graph is grimp's (import-linter's engine), built without imports that only run under
``TYPE_CHECKING``; function-level (lazy) imports count, since they run too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recfuse", "recfuse_serving")
SOURCE_DIRS = (ROOT / "recfuse", ROOT / "serving" / "recfuse_serving")
MAX_LINES = 400


def strongly_connected(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """The components of more than one module (Tarjan), each sorted; a module importing itself counts too."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_strongly_connected_finds_cycles_and_only_them() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": [], "e": ["e"], "f": ["d"]}
    assert strongly_connected(graph) == [["a", "b", "c"], ["e"]]
    assert strongly_connected({"a": ["b"], "b": []}) == []


def test_no_import_cycle_among_project_modules() -> None:
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True, cache_dir=None)
    ours = {m for m in graph.modules if m.split(".")[0] in PACKAGES}
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & ours) for m in ours}
    assert len(ours) > 100, f"expected the whole project in the graph, got {len(ours)} modules"
    cycles = strongly_connected(edges)
    assert not cycles, (
        "import cycles (each group imports itself through the others): "
        f"{cycles}; move what both sides need into a lower module both import"
    )


def test_no_module_over_400_lines() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for source in SOURCE_DIRS
        for path in sorted(source.rglob("*.py"))
    }
    assert len(sizes) > 100, f"expected the project's modules, found {len(sizes)}"
    long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}; split each into cohesive modules"
