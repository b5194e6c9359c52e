"""`dvc repro` of the data stages in a scratch copy of the project: runs, then a rerun is a no-op,
then a change to one component reruns only what imports it; a shop's own folder needs no shipped
dataset beside the project, and `dvc exp run -S` works from a fresh clone without touching the rest
of params.yaml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from artifacts.paths import REPO_ROOT
from components import schema as s
from tests.pipelines.data_slices import SMALL_CHECKS, write_mini_datasets

DATA_STAGES = ("ingest", "validate", "split")


CODE = ("components", "artifacts", "pipelines")


def _dvc(workdir: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("HATCHERY_HOME", "HATCHERY_DATA_DIR")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for who in ("AUTHOR", "COMMITTER"):  # `dvc exp run` commits the experiment
        env.setdefault(f"GIT_{who}_NAME", "test")
        env.setdefault(f"GIT_{who}_EMAIL", "test@example.com")
    out = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


@pytest.mark.slow
def test_dvc_repro_runs_caches_and_reruns_only_what_changed(tmp_path, homedepot_raw, online_retail_raw, monkeypatch):
    # The stages name ../shared/datasets as deps, so the scratch project sits beside a mini "shared".
    write_mini_datasets(tmp_path / "shared" / "datasets", homedepot_raw, online_retail_raw)
    project = tmp_path / "project"
    project.mkdir()
    for folder in CODE:
        shutil.copytree(REPO_ROOT / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {k: stages[k] for k in DATA_STAGES}}))
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["checks"].update(SMALL_CHECKS)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HATCHERY_PSEUDONYM_SALT", "test-salt")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    _dvc(project, "init", "-q")

    first = _dvc(project, "repro", "split")
    assert all(f"Running stage '{stage}'" in first for stage in DATA_STAGES)
    assert (project / "data" / "split" / "search" / "test.parquet").exists()

    second = _dvc(project, "repro", "split")
    assert "Running stage" not in second and "up to date" in second

    splits = project / "components" / "splits.py"
    splits.write_text(splits.read_text() + "\n# a change to a component the split step imports\n")
    third = _dvc(project, "repro", "split")
    assert "Running stage 'split'" in third
    assert "Running stage 'ingest'" not in third and "Running stage 'validate'" not in third


def _project_with_data_stages(project: Path) -> None:
    """The data stages' dvc.yaml and the code they run, in a git + DVC project at `project`."""
    project.mkdir(parents=True)
    for folder in CODE:
        shutil.copytree(REPO_ROOT / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {k: stages[k] for k in DATA_STAGES}}))
    (project / ".gitignore").write_text("/data/\n/reports/\n/mlflow.db\n/mlartifacts/\n__pycache__/\n")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    _dvc(project, "init", "-q")


@pytest.mark.slow
def test_a_shops_own_folder_needs_no_shipped_data_and_exp_run_works_from_a_fresh_clone(tmp_path, monkeypatch):
    from dvc.utils.hydra import apply_overrides as dvc_set

    from tests.pipelines._byod_data import SCALE, write_byod_data

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HATCHERY_PSEUDONYM_SALT", "test-salt")
    shop_a = write_byod_data(tmp_path / "shop_a")
    shop_b = write_byod_data(tmp_path / "shop_b", n_users=70)
    project = tmp_path / "project"  # no ../shared/datasets beside it
    _project_with_data_stages(project)
    params = project / "params.yaml"
    params.write_text((REPO_ROOT / "params.yaml").read_text())
    dvc_set(
        params,
        [f"data.{d}.{k}={v}" for d in ("search", "recommend") for k, v in (("source", "canonical"), ("path", shop_a))]
        + [f"data.search.relevance.{k}={v}" for k, v in SCALE.items()]
        + ["data.recommend.test_cutoff=null", "data.recommend.valid_cutoff=null"],
    )
    _dvc(project, "repro", "ingest")  # its deps are the shop's folder: nothing under ../shared is looked for
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["ingest"]["deps"]
    assert [d["path"] for d in lock if not d["path"].endswith(".py")] == [str(shop_a), str(shop_a)]
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "shop a"], cwd=project, check=True, env={**os.environ, **_git_env()})

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    before = (clone / "params.yaml").read_text().splitlines()
    out = _dvc(clone, "exp", "run", "ingest", "-S", f"data.search.path={shop_b}", "-S", f"data.recommend.path={shop_b}")
    assert "Running stage 'ingest'" in out and "Ran experiment" in out
    after = (clone / "params.yaml").read_text().splitlines()
    # A path too long for one 80-column line sits on the line under its `path:` key: the value's line changes.
    changed = [
        (a.strip().removeprefix("path: "), b.strip().removeprefix("path: "))
        for a, b in zip(before, after, strict=True)
        if a != b
    ]
    assert len(before) == len(after) and changed == [(str(shop_a), str(shop_b))] * 2
    events = pd.read_parquet(clone / "data" / "ingested" / "recommend" / "events.parquet")
    assert events[s.USER_ID].nunique() == 70  # shop b's users: the experiment read the folder it was given


def _git_env() -> dict[str, str]:
    return {
        f"GIT_{w}_{k}": v for w in ("AUTHOR", "COMMITTER") for k, v in (("NAME", "test"), ("EMAIL", "t@example.com"))
    }


def test_no_top_level_plot_lies_inside_a_directory_output() -> None:
    """A top-level plot inside a directory output makes `dvc exp run` list that directory from the cache
    or the remote; on a fresh clone neither has it and the run fails after its stages ran
    ("failed to load directory ('models', 'search', 'eval')"). Plots are declared by their stages."""
    dvc_yaml = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    outs = [
        next(iter(o)) if isinstance(o, dict) else o
        for stage in dvc_yaml["stages"].values()
        for o in stage.get("outs", [])
    ]
    inside = [p for p in dvc_yaml.get("plots", []) for o in outs if str(p).startswith(f"{o}/")]
    assert not inside, inside


def test_a_mirror_workspace_keeps_relative_data_paths_pointing_where_the_repository_s_do(tmp_path):
    """Airflow runs with overrides repro in a mirror workspace elsewhere: a relative data.*.path (DVC's
    ingest deps) must still name the folder beside the repository, not one beside the mirror."""
    from artifacts.paths import Paths
    from pipelines.dvc_stage import prepare_workspace

    root = prepare_workspace({"data.recommend.path": "/elsewhere/retail"}, Paths(root=tmp_path))
    data = yaml.safe_load((root / "params.yaml").read_text())["data"]
    assert data["search"]["path"] == str((REPO_ROOT / "../shared/datasets/homedepot").resolve())
    assert data["recommend"]["path"] == "/elsewhere/retail"
    assert "${data.search.path}" in yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["ingest"]["deps"]
