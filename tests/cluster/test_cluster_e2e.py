"""The incubation DAG on the cluster profile (infra/cluster/cluster.py): CeleryExecutor, PostgreSQL metadata DB,
Redis broker, an MLflow server over PostgreSQL with proxied artifacts, a DVC remote over SSH, two Celery
workers with working copies of their own, rollout state in PostgreSQL and two service replicas.

One module-scoped cluster (unique databases, Redis key prefix, free ports, a tmp home; all removed after)
backs the tests, on the tiny slice of tests/dags/test_incubation_e2e.py:

  1. semantic_search and personalised_recommendations triggered at once: both green, their tasks overlap
     in time, and task instances ran on both workers (the hostname of each), the GPU stage on the `gpu`
     queue (served by worker-b: HATCHERY_GPU_ON_CPU);
  2. the two service replicas route every unit to the same arm and see a state change within a second;
  3. during those runs, a Celery worker running only retriable tasks is SIGKILLed mid-task: the task is
     retried on the other worker (after the heartbeat timeout, 30 s here) and the runs finish.

Skipped (with the reason) when PostgreSQL or Redis is unreachable; CI has both, so it runs there.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from infra.cluster import servers
from tests.dags._lifecycle_slice import write_slice
from tests.dags.test_incubation_e2e import TINY

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 1800
# Tiny recommendation settings (the search ones are TINY's).
TINY_RECOMMEND = {"recommend.profiles.cpu.mf.epochs": 2, "recommend.profiles.cpu.user_encoder.epochs": 1}
UP_TO_GATE = ("requirements.", "training.")


def _free_port_block(n: int) -> int:
    """A first port p with p..p+n-1 all free."""
    while True:
        base = servers.free_port()
        if base + n < 65000 and all(_port_free(base + i) for i in range(n)):
            return base


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _follow(api, run_ids: dict[str, str], timeout_s: float = RUN_TIMEOUT_S, on_poll=None) -> dict[str, str]:
    deadline, final = time.time() + timeout_s, {}
    while len(final) < len(run_ids):
        assert time.time() < deadline, f"runs not finished in {timeout_s} s: {run_ids}"
        for name, run_id in run_ids.items():
            state = api.get(f"/api/v2/dags/incubation/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                final[name] = state
        if on_poll:
            on_poll()
        time.sleep(3)
    return final


def _tis(api, run_id: str) -> list[dict]:
    return api.get(f"/api/v2/dags/incubation/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]


def _failures(cluster, run_id: str) -> str:
    """What failed, for the assertion message: the ledger entries of failed stages."""
    from artifacts.paths import Paths

    out = []
    for charter in ("semantic_search", "personalised_recommendations"):
        folder = Paths(root=Path(cluster.env["HATCHERY_HOME"])).incubation_run(run_id, charter) / "stages"
        for p in folder.glob("*.json") if folder.is_dir() else []:
            entry = json.loads(p.read_text())
            if entry.get("status") != "success":
                out.append(f"{p.stem}: {entry.get('reason', '')[-1500:]}")
    return "\n".join(out)


@pytest.fixture(scope="module")
def cluster(homedepot_raw: pd.DataFrame, online_retail_raw: pd.DataFrame, tmp_path_factory):
    from infra.cluster import cluster as cl

    if reason := servers.postgres_unreachable() or servers.redis_unreachable():
        pytest.skip(f"the cluster profile needs PostgreSQL and Redis: {reason}")
    root = tmp_path_factory.mktemp("cluster")
    tag = os.urandom(4).hex()
    port = _free_port_block(4)
    overrides = {
        "HATCHERY_CLUSTER_HOME": str(root / "home"),
        "HATCHERY_AIRFLOW_DB": f"hatchery_test_airflow_{tag}",
        "HATCHERY_MLFLOW_DB": f"hatchery_test_mlflow_{tag}",
        "HATCHERY_STATE_DB": f"hatchery_test_state_{tag}",
        "HATCHERY_CELERY_PREFIX": f"hatchery-test-{tag}",
        "AIRFLOW_PORT": str(port),
        "MLFLOW_PORT": str(port + 1),
        "HATCHERY_SERVICE_PORT": str(port + 2),  # and port + 3: the second replica
        "HATCHERY_PSEUDONYM_SALT": "test-salt",
        "HATCHERY_DVC_REMOTE_KIND": "local" if servers.sshd_available() else "ssh",
        # a killed worker's task is failed (then retried) after this many seconds without a heartbeat
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        # Only the lifecycle runs here: scheduled DAGs (the feedback loop) stay paused and add no work.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    }
    cluster = cl.cluster_env(overrides)
    for key in ("HATCHERY_SEARCH_BUNDLE", "HATCHERY_RECOMMEND_BUNDLE", "HATCHERY_CHARTERS_DIR", "HATCHERY_WORKSPACES"):
        cluster.env.pop(key, None)
    try:
        data = write_slice(homedepot_raw, online_retail_raw, root / "data")
        cl.up(cluster)  # unpauses the incubation DAG only
        yield {"cluster": cluster, "data": data, "cl": cl}
    finally:
        cl.down(cluster)
        time.sleep(2)
        for key in ("HATCHERY_AIRFLOW_DB", "HATCHERY_MLFLOW_DB", "HATCHERY_STATE_DB"):
            servers.drop_database(overrides[key])
        import redis

        client = redis.Redis.from_url(servers.redis_url())
        for key in client.scan_iter(match=f"{overrides['HATCHERY_CELERY_PREFIX']}:*"):
            client.delete(key)


def _conf(data: Path, extra: dict | None = None) -> dict:
    return {"data.search.path": str(data), "data.recommend.path": str(data), **TINY, **TINY_RECOMMEND, **(extra or {})}


RETRIABLE = ("requirements.ingest", "requirements.validate", "requirements.split", "training.train_stage")


class WorkerKiller:
    """SIGKILLs one Celery worker once, while it runs only retriable default-queue tasks (one of them for a few
    seconds already), and restarts it once the killed task runs again elsewhere (so both workers serve on)."""

    def __init__(self, cluster, cl, api, run_ids: dict[str, str]) -> None:
        self.c, self.cl, self.api, self.run_ids = cluster, cl, api, run_ids
        self.killed: dict = {}
        self.restarted = False

    def _running(self) -> list[dict]:
        return [
            {**ti, "run_id": run_id}
            for run_id in self.run_ids.values()
            for ti in _tis(self.api, run_id)
            if ti["state"] == "running"
        ]

    def __call__(self) -> None:
        if self.restarted:
            return
        running = self._running()
        if not self.killed:
            for ti in running:
                host = ti.get("hostname")
                on_host = [t for t in running if t.get("hostname") == host]
                safe = all(t["task_id"] in RETRIABLE and t.get("queue") == "default" for t in on_host)
                started = pd.Timestamp(ti["start_date"]) if ti.get("start_date") else None
                if host in self.c.workers and safe and started is not None:
                    if (pd.Timestamp.now(tz="UTC") - started).total_seconds() < 5:
                        continue  # mid-task, not at its first line
                    os.killpg(int((self.c.home / "pids" / f"{host}.pid").read_text()), signal.SIGKILL)
                    self.killed.update(ti=ti, worker=host)
                    return
            return
        ti = self.killed["ti"]
        for t in running:
            same = (t["run_id"], t["task_id"], t["map_index"]) == (ti["run_id"], ti["task_id"], ti["map_index"])
            if same and t["try_number"] > ti["try_number"]:
                self.cl.start_worker(self.c, self.killed["worker"])
                self.restarted = True


@pytest.fixture(scope="module")
def two_charters(cluster) -> dict:
    c, cl = cluster["cluster"], cluster["cl"]
    api = c.api
    conf = _conf(cluster["data"])
    run_ids = {ch: cl.rl.trigger(api, ch, conf) for ch in ("semantic_search", "personalised_recommendations")}
    killer = WorkerKiller(c, cl, api, run_ids)
    final = _follow(api, run_ids, on_poll=killer)
    if killer.killed and not killer.restarted:
        cl.start_worker(c, killer.killed["worker"])
    return {
        "run_ids": run_ids,
        "final": final,
        "tis": {ch: _tis(api, r) for ch, r in run_ids.items()},
        "killed": killer.killed,
    }


def _green_up_to_the_gate(c, run_id: str, tis: list[dict], final: str) -> None:
    """Every task up to the gate succeeded; the run is green unless the gate (not fixed on a tiny slice) said no."""
    states = {(ti["task_id"], ti["map_index"]): ti["state"] for ti in tis}
    early = {k: v for k, v in states.items() if k[0].startswith(UP_TO_GATE)}
    assert early and set(early.values()) == {"success"}, (early, _failures(c, run_id))
    gate = states[("validation.gate", -1)]
    assert gate in ("success", "failed"), states
    if gate == "success":
        assert final == "success", (states, _failures(c, run_id))


def test_two_charters_at_once_both_green_on_both_workers(cluster, two_charters):
    c = cluster["cluster"]
    for charter, state in two_charters["final"].items():
        _green_up_to_the_gate(c, two_charters["run_ids"][charter], two_charters["tis"][charter], state)
    hosts = {ti["hostname"] for tis in two_charters["tis"].values() for ti in tis if ti.get("hostname")}
    assert hosts == {"worker-a", "worker-b"}, hosts
    search = two_charters["tis"]["semantic_search"]
    encoder = [
        ti
        for ti in search
        if ti["task_id"] == "training.train_stage" and ti.get("rendered_map_index") == "train_encoder"
    ]
    assert encoder and encoder[0]["queue"] == "gpu" and encoder[0]["hostname"] == "worker-b", encoder
    others = [
        ti
        for ti in search
        if ti["task_id"] == "training.train_stage" and ti.get("rendered_map_index") != "train_encoder"
    ]
    assert others and {ti["queue"] for ti in others} == {"default"}
    # They did not queue behind one another: some task of one ran while a task of the other ran.
    spans = {
        ch: [
            (pd.Timestamp(ti["start_date"]), pd.Timestamp(ti["end_date"]))
            for ti in tis
            if ti.get("start_date") and ti.get("end_date")
        ]
        for ch, tis in two_charters["tis"].items()
    }
    overlap = any(
        a0 < b1 and b0 < a1 for a0, a1 in spans["semantic_search"] for b0, b1 in spans["personalised_recommendations"]
    )
    assert overlap, "the two runs' tasks never overlapped"


def test_service_replicas_share_one_state(cluster, two_charters):
    import httpx

    from artifacts.paths import Paths
    from artifacts.rollout_store import RolloutStore

    c = cluster["cluster"]
    urls = c.service_urls()
    assert len(urls) == 2
    os.environ["HATCHERY_STATE_URL"] = c.env["HATCHERY_STATE_URL"]
    try:
        store = RolloutStore(Paths(root=Path(c.env["HATCHERY_HOME"])), "search")
        state = store.read()
        if state is None:
            pytest.skip("the gate stopped the search challenger on this slice: nothing was rolled out")
        assert state.phase == "full" and state.champion is not None, state
        with httpx.Client(timeout=120) as http:
            for url in urls:  # both replicas serve the rolled-out champion
                status = http.post(f"{url}/rollout_status", json={}).json()["search"]
                assert status["champion"] == state.champion.version, (url, status)
            # A canary of the champion against itself (no model to load): routing only.
            canary = dataclasses.replace(
                state,
                phase="canary",
                challenger=state.champion,
                step=0,
                share=0.5,
                rollout_id="replicas",
                salt="s3cret",
            )
            entry = __import__("components.rollout", fromlist=["AuditEntry"]).AuditEntry(
                when=time.time(), actor="test", action="test", from_phase="full", to_phase="canary",
                from_version=None, to_version=None, reason="replica test",
            )  # fmt: skip
            written = store.save(canary, entry, expected=state.version)
            changed = time.monotonic()

            def sees_canary(url: str) -> float:  # each replica asked on its own, never waiting behind the other
                while time.monotonic() - changed < 10:
                    if _phase(http, url) == "canary":
                        return time.monotonic() - changed
                    time.sleep(0.05)
                return float("inf")

            with ThreadPoolExecutor(len(urls)) as pool:
                seen = dict(zip(urls, pool.map(sees_canary, urls), strict=True))
            assert max(seen.values()) <= 1.0, seen
            arms = {}
            for unit in range(24):
                answers = [
                    http.post(f"{u}/search", json={"query": "drill", "k": 3, "session_id": f"u{unit}"}).json()
                    for u in urls
                ]
                assert answers[0]["arm"] == answers[1]["arm"], (unit, answers)
                arms[unit] = answers[0]["arm"]
            assert set(arms.values()) == {"champion", "challenger"}, arms
            store.save(
                dataclasses.replace(written, phase="full", challenger=None, step=-1, share=0.0), entry, written.version
            )
    finally:
        os.environ.pop("HATCHERY_STATE_URL", None)


def _phase(http, url: str) -> str:
    return http.post(f"{url}/rollout_status", json={}).json()["search"]["state"]["phase"]


def test_killed_worker_task_retried_on_the_other_worker(cluster, two_charters):
    """A Celery worker SIGKILLed mid-task (during the two runs above): the task is retried on the other one."""
    c, killed = cluster["cluster"], two_charters["killed"]
    assert killed, "no worker ran only retriable tasks at any poll: nothing was killed"
    ti = killed["ti"]
    charter = next(ch for ch, r in two_charters["run_ids"].items() if r == ti["run_id"])
    after = [
        t for t in two_charters["tis"][charter] if (t["task_id"], t["map_index"]) == (ti["task_id"], ti["map_index"])
    ]
    other = next(w for w in c.workers if w != killed["worker"])
    assert after and after[0]["state"] == "success", (killed, after)
    assert after[0]["try_number"] > ti["try_number"] and after[0]["hostname"] == other, (killed, after)
