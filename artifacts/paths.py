"""Every location Hatchery reads or writes, relative to one outputs root: the one home of paths.

Standard library only, so dags/ and infra/ can import it without the ML stack.

Environment (all optional; the defaults work on one laptop with no servers):
    HATCHERY_HOME            where outputs live (default: the repository root)
    HATCHERY_DATA_DIR        folder with homedepot/ and online_retail/ (default ../shared/datasets), for
                             the tests and the replay; ingest reads params.yaml's data.<domain>.path
    HATCHERY_PSEUDONYM_SALT  salt for user-id pseudonyms: required, except in dev mode
    HATCHERY_DATA_ROOTS      folders (os.pathsep-separated) every data.<domain>.path must lie under (unset: any
                             folder but a system one)
    HATCHERY_ENV             `dev`: the development defaults are allowed (the public development salt,
                             a registry version with no recorded bundle digest loaded unverified), each
                             with a warning; anything else (the default): they are errors
    MLFLOW_TRACKING_URI      default sqlite:///<HATCHERY_HOME>/mlflow.db, artifacts in mlartifacts/
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DOMAINS = ("search", "recommend")
DEV_SALT = "hatchery-development-salt"
DEV_ENV = "dev"
# The evaluation steps' per-unit tables: one row per test query / test user.
PER_UNIT_FILE = {"search": "per_query.parquet", "recommend": "per_user.parquet"}


def _home() -> Path:
    return Path(os.environ.get("HATCHERY_HOME", REPO_ROOT))


def _domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}: expected one of {DOMAINS}")
    return domain


def run_key(run_id: str | None, charter: str) -> str:
    """The folder name of one lifecycle run: charter + sanitised Airflow run id."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id or "manual")
    return f"{charter}__{safe}"


@dataclass(frozen=True)
class Paths:
    """Every location under one outputs root (HATCHERY_HOME, default the repository)."""

    root: Path = field(default_factory=_home)

    # --- data ---------------------------------------------------------------------------------------
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
    def feedback_data(self) -> Path:
        """What served traffic becomes (pipelines/implicit_judgments.py): training tables and summary.json."""
        return self.data / "feedback"

    @property
    def feedback_judgments(self) -> Path:
        """Implicit search judgments: canonical judgments columns + confidence (train queries only)."""
        return self.feedback_data / "search_judgments.parquet"

    @property
    def feedback_events(self) -> Path:
        """Recommendation feedback as canonical events + weight (before the test cutoff only)."""
        return self.feedback_data / "recommend_events.parquet"

    # --- models, per domain -----------------------------------------------------------------------
    @property
    def models(self) -> Path:
        return self.root / "models"

    def domain(self, domain: str) -> Path:
        return self.models / _domain(domain)

    def bundle(self, domain: str) -> Path:
        """The servable bundle a training step writes (artifacts/<domain>_bundle.py)."""
        return self.domain(domain) / "bundle"

    def eval(self, domain: str) -> Path:
        return self.domain(domain) / "eval"

    def plots(self, domain: str) -> Path:
        """The evaluation's plots: files of their own, not inside eval/ (dvc.yaml declares each one as a
        stage plot; a top-level plot inside a directory output breaks `dvc exp run` on a fresh clone)."""
        return self.domain(domain) / "plots"

    def per_unit(self, domain: str) -> Path:
        """The evaluation's per-unit table: slice columns and one `<model>__<metric>` column each."""
        return self.eval(domain) / PER_UNIT_FILE[_domain(domain)]

    def registered(self, domain: str) -> Path:
        """The register step's record: {"name", "version", "bundle_hash", "created", "run_id"}."""
        return self.domain(domain) / "registered.json"

    @property
    def embeddings(self) -> Path:
        """Pretrained catalog embeddings, cached per encoder and title text (embed_catalog)."""
        return self.domain("search") / "embeddings"

    @property
    def encoder(self) -> Path:
        return self.domain("search") / "encoder"

    @property
    def checkpoints(self) -> Path:
        return self.domain("search") / "checkpoints"

    @property
    def index(self) -> Path:
        return self.domain("search") / "index"

    @property
    def ranker_meta(self) -> Path:
        return self.domain("search") / "ranker" / "meta.json"

    @property
    def selection(self) -> Path:
        """The recommendation step's chosen hyper-parameters and valid-fold numbers."""
        return self.domain("recommend") / "selection.json"

    # --- metrics and reports ------------------------------------------------------------------------
    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    def metrics_file(self, domain: str) -> Path:
        return self.metrics / f"{_domain(domain)}.json"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def data_checks(self, name: str) -> Path:
        """Great Expectations reports: `tables`, `search_split`, `recommend_split`."""
        return self.reports / "data_checks" / name

    def gate_report(self, domain: str, ext: str = "json") -> Path:
        return self.reports / "gates" / f"{_domain(domain)}.{ext}"

    def package_report(self, domain: str) -> Path:
        return self.reports / "package" / f"{_domain(domain)}.json"

    def rollout(self, domain: str) -> Path:
        """The rollout store of one domain: state, audit trail, request/feedback/evaluation logs."""
        return self.reports / "rollout" / _domain(domain)

    def rollout_summary(self, domain: str) -> Path:
        return self.reports / "rollout" / f"{_domain(domain)}.json"

    def incubation_run(self, run_id: str | None, charter: str) -> Path:
        """One lifecycle run's ledger and report."""
        return self.reports / "incubation" / run_key(run_id, charter)

    def monitor(self, name: str = "") -> Path:
        """The drift monitor's files (pipelines/monitor.py): `<charter>.json` / `.html` (the latest report of
        that charter, which the service's /metrics gauges read) and `state.json` (the last trigger per charter);
        no name: their folder."""
        return self.reports / "monitor" / name

    def bench(self, name: str) -> Path:
        return self.reports / "bench" / f"{name}.json"

    # --- stores -----------------------------------------------------------------------------------
    @property
    def serving_cache(self) -> Path:
        """Registry bundles the service downloaded, one folder per <model name>/<version>."""
        return self.root / "serving_cache"

    @property
    def feedback_store(self) -> Path:
        """The embedded feedback store (impressions and events, SQLite; artifacts/feedback_store.py).

        HATCHERY_FEEDBACK_DB names it outright: a DVC stage runs in a run's workspace (its HATCHERY_HOME)
        but reads the store the service writes, under the base outputs root (pipelines/dvc_stage.stage_env).
        """
        named = os.environ.get("HATCHERY_FEEDBACK_DB")
        return Path(named) if named else self.root / "feedback" / "feedback.sqlite"

    @property
    def workspaces(self) -> Path:
        """Mirror DVC workspaces of lifecycle runs with overrides (pipelines/dvc_stage.py)."""
        return self.root / "workspaces"

    @property
    def bentoml_home(self) -> Path:
        return self.root / "bentoml_home"


def datasets_dir(override: str | None = None) -> Path:
    """The folder of the shared real datasets, or a clear error saying what to set.

    Precedence: `override`, then HATCHERY_DATA_DIR, then ../shared/datasets. (Ingest reads the folder
    params.yaml's data.<domain>.path names: DVC tracks it.)
    """
    candidates = (
        [override] if override else [os.environ.get("HATCHERY_DATA_DIR"), str(REPO_ROOT.parent / "shared" / "datasets")]
    )
    for c in candidates:
        if c and Path(c).expanduser().is_dir():
            return Path(c).expanduser()
    raise FileNotFoundError(
        "real datasets not found: set HATCHERY_DATA_DIR to the folder holding homedepot/train.csv.zip "
        "and online_retail/online_retail.parquet (tried: "
        + ", ".join(str(c) for c in candidates if c)
        + "), or set data.<domain>.source: canonical with data.<domain>.path in params.yaml"
    )


# Folders that are never a dataset: pointing data.<domain>.path at one would make DVC hash (and ingest
# walk) a whole system tree.
SYSTEM_DIRS = frozenset(
    ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root", "/run", "/sbin",
     "/srv", "/sys", "/tmp", "/usr", "/var")
)  # fmt: skip


def check_data_path(path: str | Path, key: str, base: Path = REPO_ROOT) -> Path:
    """The resolved folder `key` (e.g. data.search.path) names, or ValueError saying what to change.

    Refused: a system folder itself (`/`, `/etc`, ...); with HATCHERY_DATA_ROOTS set (folders separated
    by the OS path separator), anything outside those roots. Relative paths are taken from `base`.
    """
    folder = Path(path).expanduser()
    resolved = (folder if folder.is_absolute() else base / folder).resolve()
    if str(resolved) in SYSTEM_DIRS:
        raise ValueError(
            f"{key}: {path} is the system folder {resolved}, not a dataset folder: set {key} to the folder holding "
            "your tables"
        )
    roots = [Path(r).expanduser().resolve() for r in os.environ.get("HATCHERY_DATA_ROOTS", "").split(os.pathsep) if r]
    if roots and not any(resolved == r or r in resolved.parents for r in roots):
        raise ValueError(
            f"{key}: {resolved} is outside HATCHERY_DATA_ROOTS ({os.pathsep.join(map(str, roots))}): move the data "
            "under one of them or add its folder there"
        )
    return resolved


def tracking_uri(paths: Paths | None = None) -> str:
    """MLFLOW_TRACKING_URI, else an SQLite store beside the outputs."""
    paths = paths or Paths()
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.root / 'mlflow.db'}"


def default_artifact_location(paths: Paths | None = None) -> str | None:
    """Where a local (SQLite) store keeps artifacts: <root>/mlartifacts, never the working directory's
    mlruns/ (MLflow's default); None lets a tracking server decide."""
    paths = paths or Paths()
    if not tracking_uri(paths).startswith("sqlite:"):
        return None
    return (paths.root / "mlartifacts").as_uri()


def dev_mode() -> bool:
    """HATCHERY_ENV=dev: the embedded development defaults may stand in for secrets (make run/test/bench)."""
    return os.environ.get("HATCHERY_ENV", "").strip().lower() == DEV_ENV


def pseudonym_salt() -> str:
    """HATCHERY_PSEUDONYM_SALT; in dev mode, the public development salt with a warning; else an error.

    The development salt is in this file for anyone to read: pseudonyms made with it can be reversed by
    hashing candidate ids, so outside dev mode a missing salt must stop the step, not fall back.
    """
    salt = os.environ.get("HATCHERY_PSEUDONYM_SALT")
    if salt:
        return salt
    if dev_mode():
        log.warning("HATCHERY_PSEUDONYM_SALT is not set; using the public development salt (HATCHERY_ENV=dev)")
        return DEV_SALT
    raise RuntimeError(
        "HATCHERY_PSEUDONYM_SALT is not set: set it to a long random secret (e.g. `export "
        "HATCHERY_PSEUDONYM_SALT=$(openssl rand -hex 32)`), the same for ingestion and serving; or set "
        "HATCHERY_ENV=dev to use the public development salt (make run, make test and make bench do)"
    )
