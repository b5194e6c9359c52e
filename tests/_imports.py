"""The project's import graph (function-level and relative imports included), for the layering and
DVC-dependency tests."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Lower ranks are imported by higher ones, never the other way; equal ranks of different packages are
# peers that must not import each other.
RANK = {"components": 0, "artifacts": 1, "pipelines": 2, "services": 2, "bench": 3, "dags": 3, "infra": 3}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in RANK for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `path` imports anywhere in its body (resolving `from pkg import module`)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            # the longest project module the name points into (components.rollout.state -> itself)
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != me:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    """`start` and every project module it imports, directly or not."""
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += sorted(graph.get(m, ()))
    return seen
