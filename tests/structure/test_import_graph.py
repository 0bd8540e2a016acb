"""The import graph of ``ml/`` and ``app/`` has no cycle, counting every import (function-level and
TYPE_CHECKING ones too: a deferred import hides a cycle, it does not remove it), and ``ml`` never
imports ``app``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ml", "app")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                # The module itself, or its nearest enclosing project module.
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name and not name.startswith(t + "."):
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_finder_sees_a_cycle_through_a_deferred_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_ml_and_app_import_each_other_without_a_cycle() -> None:
    graph = import_graph()
    assert graph["ml.lens.estimator"] >= {"ml.lens.selection", "ml.lens.train", "ml.lens.config"}  # it sees imports
    assert cycles(graph) == []


def test_ml_never_imports_app() -> None:
    graph = import_graph()
    assert sorted((m, t) for m, ts in graph.items() if m.startswith("ml") for t in ts if t.startswith("app")) == []


def test_the_lens_depends_one_way() -> None:
    graph = import_graph()
    order = [
        "ml.lens.estimator",
        "ml.lens.selection",
        "ml.lens.train",
        "ml.lens.checkpoint",
        "ml.lens.model",
        "ml.lens.config",
    ]
    for i, module in enumerate(order):
        later = set(order[:i])
        assert not graph[module] & later, f"{module} imports {graph[module] & later}"
    assert not graph["ml.acquisition"] & {m for m in graph if m.startswith("ml.lens")}
    assert not {m for m in graph["ml.lens.estimator"] if m == "ml.acquisition"}
    assert "ml.lens.estimator" not in graph["ml.jlvm"] and "ml.lens" not in graph["ml.jlvm"]


def test_no_route_module_calls_another() -> None:
    # The HTML pages and the REST API share services (app/services), never each other's route functions.
    graph = import_graph()
    routes = {m for m in graph if m.startswith("app.routes.")}
    assert sorted((m, t) for m in routes for t in graph[m] if t in routes) == []
