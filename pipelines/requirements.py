"""requirements: validate an incubation charter and the run's parameter overrides, before anything runs.

A charter is charters/<name>.yaml (components/charter.py says what it holds). It fails here, naming
the field, when it is malformed, when it asks for a DVC stage dvc.yaml does not have, or when the
run's overrides are not valid params.yaml keys. Logged to MLflow as run `requirements` with the
charter file as an artifact.

Usage: python -m pipelines.requirements <charter name> [dotted.key=yaml_value ...]
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from artifacts.paths import REPO_ROOT, Paths, check_data_path
from components.charter import Charter, CharterError, check_stages, parse_charter
from pipelines.common import load_params, mlflow_run

log = logging.getLogger(__name__)

STEP = "requirements"


def charters_dir() -> Path:
    """HATCHERY_CHARTERS_DIR (your own charters), else the repository's charters/."""
    return Path(os.environ.get("HATCHERY_CHARTERS_DIR") or REPO_ROOT / "charters")


DATA_STAGES = ("ingest", "validate", "split")


def charter_names(folder: Path | None = None) -> list[str]:
    """The available charters (file stems), sorted."""
    return sorted(p.stem for p in Path(folder or charters_dir()).glob("*.yaml"))


def load_charter(name: str, folder: Path | None = None) -> Charter:
    """Read and validate <charters dir>/<name>.yaml; CharterError names the file and each bad field."""
    folder = Path(folder or charters_dir())
    path = folder / f"{name}.yaml"
    if not path.exists():
        raise CharterError(
            f"charter {name!r} not found: expected {path} (available: {', '.join(charter_names(folder))})"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CharterError(f"{path.name} is not valid YAML: {exc}") from None
    charter = parse_charter(raw, path.name)
    if charter.name != name:
        raise CharterError(f"{path.name}: name: {charter.name!r} must match the file name {name!r}")
    return charter


def run(charter_name: str, overrides: dict[str, Any] | None = None, paths: Paths | None = None) -> dict[str, Any]:
    """Validate charter + overrides; return the plan the lifecycle follows (small, XCom-safe)."""
    from pipelines.dvc_stage import stage_names, workspace_root

    paths = paths or Paths()
    charter = load_charter(charter_name)
    stages = stage_names(REPO_ROOT)
    check_stages(charter, stages)
    missing_data = [s for s in DATA_STAGES if s not in stages]
    if missing_data:
        raise CharterError(f"dvc.yaml lacks the data-check stages {missing_data}")
    params = load_params(overrides=overrides or {})  # ParamsError names a bad override key
    for domain in ("search", "recommend"):  # before DVC hashes the folder a path names
        if getattr(params.data, domain).path:
            check_data_path(getattr(params.data, domain).path, f"data.{domain}.path")
    plan = {
        "charter": charter.name,
        "domain": charter.domain,
        "registered_model": charter.registered_model,
        "stages": list(charter.stages),
        "data_stages": list(DATA_STAGES),
        "budget": charter.budget.model_dump(),
        "overrides": dict(overrides or {}),
        "workspace": str(workspace_root(overrides, paths)),
    }
    with mlflow_run(STEP, params, paths, sections=("data",)) as _:
        import mlflow

        mlflow.set_tags({"charter": charter.name, "domain": charter.domain})
        mlflow.log_dict(charter.model_dump(mode="json"), f"charter/{charter.name}.json")
        mlflow.log_dict(plan, "plan.json")
    log.info(
        "charter %s valid: %s; stages %s; workspace %s", charter.name, charter.title, charter.stages, plan["workspace"]
    )
    return plan


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    if len(sys.argv) < 2:
        sys.exit(f"usage: python -m pipelines.requirements <charter> [key=value ...]; charters: {charter_names()}")
    extra = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in sys.argv[2:])}
    print(json.dumps(run(sys.argv[1], extra), indent=2))
