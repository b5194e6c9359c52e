"""`dvc repro` of the data stages in a scratch copy of the project: runs, then a rerun is a no-op,
then a change to one component reruns only what imports it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from artifacts.paths import REPO_ROOT
from tests.pipelines.data_slices import SMALL_CHECKS, write_mini_datasets

DATA_STAGES = ("ingest", "validate", "split")


def _dvc(workdir: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("HATCHERY_HOME", "HATCHERY_DATA_DIR")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
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
    for folder in ("components", "artifacts", "pipelines"):
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
    assert all(f"Running stage '{s}'" in first for s in DATA_STAGES)
    assert (project / "data" / "split" / "search" / "test.parquet").exists()

    second = _dvc(project, "repro", "split")
    assert "Running stage" not in second and "up to date" in second

    splits = project / "components" / "splits.py"
    splits.write_text(splits.read_text() + "\n# a change to a component the split step imports\n")
    third = _dvc(project, "repro", "split")
    assert "Running stage 'split'" in third
    assert "Running stage 'ingest'" not in third and "Running stage 'validate'" not in third
