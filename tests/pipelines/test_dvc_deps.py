"""dvc.yaml lists, for every stage, exactly the project code its step runs: the step's module and
every project module it imports, directly or not. A missing file would let DVC reuse an output
built by old code; an extra one reruns a stage for nothing."""

from __future__ import annotations

import ast

import yaml

from tests._imports import REPO, closure, import_graph, project_modules


def code_deps(module: str) -> set[str]:
    """Repository-relative .py files of `module`'s import closure (empty package __init__ files left out)."""
    modules = project_modules()
    out = set()
    for name in closure(import_graph(), module):
        path = modules[name]
        tree = ast.parse(path.read_text())
        if path.name == "__init__.py" and not any(isinstance(n, ast.Import | ast.ImportFrom) for n in tree.body):
            continue
        out.add(str(path.relative_to(REPO)))
    return out


def test_every_stage_depends_on_exactly_the_code_it_runs() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    problems = []
    for name, stage in stages.items():
        module = stage["cmd"].split()[2]  # python -m pipelines.<step> [args]
        listed = {d for d in stage.get("deps", []) if isinstance(d, str) and d.endswith(".py")}
        wanted = code_deps(module)
        if missing := sorted(wanted - listed):
            problems.append(f"{name}: missing {missing}")
        if extra := sorted(listed - wanted):
            problems.append(f"{name}: not imported {extra}")
    assert not problems, "\n".join(problems)


def test_the_closure_follows_imports_inside_functions() -> None:
    # evaluate_search loads the bundle inside run(): the bundle format must be among its deps.
    assert "artifacts/search_bundle.py" in code_deps("pipelines.evaluate_search")
