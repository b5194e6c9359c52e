"""Remote mode of pipelines/dvc_stage.py: a stage on worker B finds what worker A made through the shared
DVC remote (a real sshd on loopback) and the shared dvc.lock, not through a shared working directory;
each task's workspace is its own (no repository lock shared between tasks) and is removed afterwards.
"""

from __future__ import annotations

import pytest

from artifacts.paths import Paths
from infra.cluster import servers
from tests.dags._lifecycle_slice import write_slice

pytestmark = pytest.mark.slow

TINY = {"checks.min_products": 10, "checks.min_queries": 10, "checks.min_judgments": 10, "checks.min_events": 10,
        "checks.min_users": 10}  # fmt: skip


@pytest.fixture
def ssh_remote(tmp_path):
    reason = servers.sshd_available()
    if reason:
        pytest.skip(f"no SSH server for the DVC remote: {reason}")
    proc, remote = servers.start_sshd(tmp_path / "sshd", tmp_path / "sshd.log")
    try:
        yield remote
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_worker_b_pulls_what_worker_a_pushed(ssh_remote, pg_database, homedepot_raw, online_retail_raw, tmp_path,
                                             monkeypatch):  # fmt: skip
    from pipelines.dvc_stage import run_stage

    data = write_slice(homedepot_raw, online_retail_raw, tmp_path / "data", n_queries=60, n_customers=30)
    home = tmp_path / "home"
    monkeypatch.setenv("HATCHERY_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.setenv("HATCHERY_PSEUDONYM_SALT", "test-salt")
    monkeypatch.setenv("HATCHERY_STATE_URL", pg_database)
    monkeypatch.setenv("HATCHERY_DVC_REMOTE", ssh_remote["url"])
    monkeypatch.setenv("HATCHERY_DVC_REMOTE_KEYFILE", ssh_remote["keyfile"])
    overrides = {"data.search.path": str(data), "data.recommend.path": str(data), **TINY}
    base = Paths(root=home)

    monkeypatch.setenv("HATCHERY_WORKSPACES", str(tmp_path / "worker-a"))
    assert run_stage("ingest", overrides, base=base)["ran"] is True
    monkeypatch.setenv("HATCHERY_WORKSPACES", str(tmp_path / "worker-b"))
    # Worker B: ingest's outputs come from the remote (nothing recomputed), validate runs on them.
    assert run_stage("ingest", overrides, base=base)["ran"] is False
    assert run_stage("validate", overrides, base=base)["ran"] is True
    monkeypatch.setenv("HATCHERY_WORKSPACES", str(tmp_path / "worker-a"))
    assert run_stage("validate", overrides, base=base)["ran"] is False  # and back on A: B's work is found
    # the task workspaces are gone (their DVC repositories and data); each worker's DVC cache stays
    for worker in ("worker-a", "worker-b"):
        left = [p for p in (tmp_path / worker).rglob("*") if p.name in (".dvc", "data", "dvc.yaml")]
        assert left == [], left
        assert (tmp_path / worker / ".dvc-cache").is_dir()
    assert any((tmp_path / "sshd" / "remote").rglob("*")), "nothing reached the remote"
    assert not (home / "workspaces" / "default" / "data").exists()  # no shared working directory was used
