"""Shared fixtures: tiny slices of the real shared datasets and an isolated output root."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from artifacts.paths import REPO_ROOT, Paths

SHARED = Path(os.environ.get("HATCHERY_DATA_DIR", REPO_ROOT.parent / "shared" / "datasets"))


# `make test` runs pytest-xdist with two workers (`-n 2 --dist loadgroup`) in two fixed lanes: the lifecycle
# on the Celery cluster profile (its own Airflow components, Celery workers, MLflow server and service
# replicas), then the feedback loop's end-to-end run, on one worker; the rest of the suite, in its usual
# order, on the other. Most of the suite keeps one core busy, so the second core takes the two longest
# end-to-end runs. The lanes are made here, by the scheduler hook xdist offers: xdist 3.8 marks
# `xdist_group` through `item._nodeid`, which pytest 9 no longer reads, so the marker alone groups nothing.
BESIDE_THE_SUITE = ("tests/cluster/test_cluster_e2e.py", "tests/dags/test_feedback_loop_e2e.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class BesideTheSuite(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "beside" if nodeid.startswith(BESIDE_THE_SUITE) else "suite"

    return BesideTheSuite(config, log)


def pytest_configure(config: pytest.Config) -> None:
    """Tests run in dev mode unless told otherwise (as `make test` does): the development salt and
    hand-made registry versions are allowed; tests of the non-dev behaviour unset it themselves."""
    os.environ.setdefault("HATCHERY_ENV", "dev")


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not (SHARED / "homedepot" / "train.csv.zip").exists():
        pytest.fail(f"shared datasets not found at {SHARED}: set HATCHERY_DATA_DIR")
    return SHARED


@pytest.fixture(scope="session")
def homedepot_raw(shared_datasets: Path) -> pd.DataFrame:
    return pd.read_csv(shared_datasets / "homedepot" / "train.csv.zip", encoding="latin-1")


@pytest.fixture(scope="session")
def online_retail_raw(shared_datasets: Path) -> pd.DataFrame:
    return pd.read_parquet(shared_datasets / "online_retail" / "online_retail.parquet")


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    """An output root in tmp_path, with MLflow pointed at a temporary SQLite store."""
    monkeypatch.setenv("HATCHERY_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HATCHERY_PSEUDONYM_SALT", "test-salt")
    return Paths(root=tmp_path)
