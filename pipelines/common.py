"""Shared I/O for the pipeline steps: paths, params, data location, atomic writes, MLflow runs.

Environment (all optional; defaults work on one laptop with no servers):
    HATCHERY_DATA_DIR        folder with homedepot/ and online_retail/ (default ../shared/datasets)
    HATCHERY_HOME            where outputs live (default: the repository root)
    HATCHERY_PSEUDONYM_SALT  salt for user-id pseudonyms (default: a development salt, with a warning)
    MLFLOW_TRACKING_URI      default sqlite:///<HATCHERY_HOME>/mlflow.db, artifacts in mlartifacts/
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.config import Params, apply_overrides, parse_params

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "hatchery"
DEV_SALT = "hatchery-development-salt"


@dataclass(frozen=True)
class Paths:
    """Every location a step reads or writes, relative to one root (the repo by default)."""

    root: Path = field(default_factory=lambda: Path(os.environ.get("HATCHERY_HOME", REPO_ROOT)))

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def ingested(self) -> Path:
        return self.data / "ingested"

    @property
    def validated(self) -> Path:
        return self.data / "validated"

    @property
    def split(self) -> Path:
        return self.data / "split"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def reports(self) -> Path:
        return self.root / "reports"


def load_params(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """params.yaml (default: the repo's) with optional dotted overrides, validated."""
    path = Path(path) if path else REPO_ROOT / "params.yaml"
    raw = yaml.safe_load(path.read_text()) if path.exists() else {}
    return parse_params(apply_overrides(raw or {}, overrides or {}))


def datasets_dir(override: str | None = None) -> Path:
    """The folder of the shared real datasets, or a clear error saying what to set.

    Precedence: the params path (data.<domain>.path), then HATCHERY_DATA_DIR, then ../shared/datasets.
    """
    candidates = [override] if override else [os.environ.get("HATCHERY_DATA_DIR"), str(REPO_ROOT.parent / "shared" / "datasets")]
    for c in candidates:
        if c and Path(c).expanduser().is_dir():
            return Path(c).expanduser()
    raise FileNotFoundError(
        "real datasets not found: set HATCHERY_DATA_DIR to the folder holding homedepot/train.csv.zip "
        "and online_retail/online_retail.parquet (tried: "
        + ", ".join(str(c) for c in candidates if c)
        + "), or set data.<domain>.source: canonical with data.<domain>.path in params.yaml"
    )


def pseudonym_salt() -> str:
    salt = os.environ.get("HATCHERY_PSEUDONYM_SALT")
    if not salt:
        log.warning("HATCHERY_PSEUDONYM_SALT is not set; using the development salt (set it in production)")
        return DEV_SALT
    return salt


# --- atomic outputs --------------------------------------------------------------------------------
@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh sibling folder; on success it replaces `target` in one rename, else it is dropped.

    A failed or interrupted step therefore never leaves a half-written output: the last good
    `target` stays as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    stage.chmod(0o755)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    stage.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


# --- versions --------------------------------------------------------------------------------------
def content_hash(*paths: Path) -> str:
    """md5 over the bytes of every file under the given paths (sorted), a data-version stamp."""
    digest = hashlib.md5()
    for root in paths:
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            if not f.exists():
                continue
            digest.update(str(f.relative_to(root.parent)).encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


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
def tracking_uri(paths: Paths | None = None) -> str:
    """MLFLOW_TRACKING_URI, else an SQLite store beside the outputs."""
    paths = paths or Paths()
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.root / 'mlflow.db'}"


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
        artifact_location = None
        if tracking_uri(paths).startswith("sqlite:") and "MLFLOW_TRACKING_URI" not in os.environ:
            artifact_location = (paths.root / "mlartifacts").as_uri()
        with contextlib.suppress(Exception):  # a concurrent step may have created it first
            mlflow.create_experiment(EXPERIMENT, artifact_location=artifact_location)
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
