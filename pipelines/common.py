"""What every pipeline step does around its work: load params, start its MLflow run, set up logging.

Locations, atomic writes and hashes are the shared layer's (artifacts/paths.py, artifacts/files.py).
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from artifacts.files import content_hash
from artifacts.paths import REPO_ROOT, Paths, default_artifact_location, tracking_uri
from components.config import Params, apply_overrides, parse_params

log = logging.getLogger(__name__)

EXPERIMENT = "hatchery"


def load_params(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """params.yaml (default: the repo's) with optional dotted overrides, validated."""
    path = Path(path) if path else REPO_ROOT / "params.yaml"
    raw = yaml.safe_load(path.read_text()) if path.exists() else {}
    return parse_params(apply_overrides(raw or {}, overrides or {}))


# --- versions --------------------------------------------------------------------------------------
def git_commit() -> str:
    """The current commit (with '-dirty' when the tree has changes), or 'unknown' outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --- tracking --------------------------------------------------------------------------------------
def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


@contextlib.contextmanager
def mlflow_run(
    step: str, params: Params, paths: Paths, inputs: list[Path] | None = None, sections: tuple[str, ...] = ()
) -> Iterator[Any]:
    """Start an MLflow run named after the step, logging params, git commit and data version.

    `sections` limits the logged params to those top-level params.yaml sections (default: all).

    The experiment's artifacts go to <root>/mlartifacts unless the tracking server decides.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(paths))
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        with contextlib.suppress(Exception):  # a concurrent step may have created it first
            mlflow.create_experiment(EXPERIMENT, artifact_location=default_artifact_location(paths))
    mlflow.set_experiment(EXPERIMENT)
    flat: dict[str, Any] = {}
    dumped = params.model_dump(mode="json")
    _flatten("", {k: v for k, v in dumped.items() if not sections or k in sections or k == "seed"}, flat)
    with mlflow.start_run(run_name=step) as run:
        mlflow.set_tags(
            {
                "step": step,
                "git_commit": git_commit(),
                "data_version": content_hash(*inputs) if inputs else "none",
                "python": sys.version.split()[0],
            }
        )
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        yield run


def configure_logging() -> None:
    """Entry points only: plain timestamped lines on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Great Expectations logs its internals at INFO; keep step logs readable.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
