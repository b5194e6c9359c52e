"""The layering of shared/STYLE.md, checked on the import graph of every package (function-level
imports included): imports point down, pipelines/ and services/ never import each other, no cycles."""

from __future__ import annotations

import pytest

from tests._imports import RANK, import_graph


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, deps in graph.items():
        a = src.split(".")[0]
        for dst in deps:
            b = dst.split(".")[0]
            if a != b and (RANK[b] > RANK[a] or RANK[b] == RANK[a]):
                bad.append(f"{src} -> {dst}")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

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
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checks_catch_what_they_look_for() -> None:
    # The checks themselves, on a hand-built graph: an upward import, a peer import and a cycle.
    toy = {
        "components.a": {"artifacts.b"},
        "artifacts.b": {"components.a"},
        "services.s": {"pipelines.p"},
        "pipelines.p": {"artifacts.b"},
    }
    assert wrong_way(toy) == ["components.a -> artifacts.b", "services.s -> pipelines.p"]
    assert cycles(toy) == [["artifacts.b", "components.a"]]


def test_the_graph_sees_function_level_and_relative_imports(graph) -> None:
    # pipelines/lifecycle.py imports its steps inside functions; the graph must see them.
    assert "pipelines.gate" in graph["pipelines.lifecycle"]
    assert "artifacts.paths" in graph["pipelines.common"]


def test_imports_point_down(graph) -> None:
    assert wrong_way(graph) == []


def test_no_import_cycles(graph) -> None:
    assert cycles(graph) == []
