"""The PostgreSQL rollout store (HATCHERY_STATE_URL) keeps the file store's guarantees: compare-and-swap
versions, audit and state written together, one driver per domain, logs per rollout, and a database
restart survived (the connection is replaced; an unreachable database is an OSError, like a full disk).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading

import pytest

from artifacts.paths import REPO_ROOT, Paths
from artifacts.rollout_store import RolloutBusy, RolloutStore, StaleState
from artifacts.shared_state import LockfileStore, StoreUnavailable, merge_lockfiles
from components import rollout as ro


@pytest.fixture
def store(pg_database, tmp_path, monkeypatch):
    monkeypatch.setenv("HATCHERY_STATE_URL", pg_database)
    return RolloutStore(Paths(root=tmp_path), "search")


def _entry(action: str, from_phase: str = "idle", to_phase: str = "shadow") -> ro.AuditEntry:
    return ro.AuditEntry(
        when=1.0, actor="test", action=action, from_phase=from_phase, to_phase=to_phase,
        from_version=None, to_version="2", reason=action,
    )  # fmt: skip


def _shadow(version: int = 0) -> ro.RolloutState:
    champion, challenger = ro.ModelRef("1", "models:/m/1"), ro.ModelRef("2", "models:/m/2")
    return ro.RolloutState(
        domain="search", phase="shadow", champion=champion, challenger=challenger, rollout_id="r1", version=version
    )


def test_the_variable_alone_selects_the_postgres_backend(store, tmp_path, monkeypatch):
    from artifacts.rollout_store import PgRolloutStore

    assert type(store) is PgRolloutStore
    monkeypatch.delenv("HATCHERY_STATE_URL")
    assert type(RolloutStore(Paths(root=tmp_path), "search")) is RolloutStore


def test_versions_compare_and_swap_and_audit_travels_with_the_state(store):
    assert store.read() is None and store.load().version == 0 and store.mtime_ns() is None
    first = store.save(_shadow(), _entry("start"), expected=0)
    assert first.version == 1 and store.read() == first and store.mtime_ns() == 1
    with pytest.raises(StaleState, match="moved on to version 1"):
        store.save(_shadow(), _entry("late"), expected=0)  # a writer that read version 0
    assert [a["action"] for a in store.audit()] == ["start"]  # the refused write left no audit line
    paused = store.transact(lambda s: (dataclasses.replace(s, phase="paused"), _entry("pause")))
    assert paused.version == 2 and store.read().phase == "paused"
    assert [a["details"]["state_version"] for a in store.audit()] == [1, 2]
    assert store.audited_version() == 2
    assert store.transact(lambda s: None) == paused  # no change: nothing written
    assert len(store.audit()) == 2


def test_concurrent_writers_lose_no_update(store, tmp_path):
    store.save(_shadow(), _entry("start"))

    def bump(_: int) -> None:
        own = RolloutStore(Paths(root=tmp_path), "search")  # each thread its own store, like separate processes
        for _ in range(10):
            own.transact(lambda s: (dataclasses.replace(s, step=s.step + 1), _entry("step")))

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = store.read()
    assert state.step == -1 + 40 and state.version == 41
    assert [a["details"]["state_version"] for a in store.audit()] == list(range(1, 42))


def test_one_driver_per_domain_across_processes(store, pg_database):
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time; from artifacts.paths import Paths; from artifacts.rollout_store import RolloutStore\n"
            "with RolloutStore(Paths(), 'search').driver_lease('other-driver'):\n"
            "    print('held', flush=True); time.sleep(60)\n"
        )],
        cwd=REPO_ROOT, env={**__import__("os").environ, "HATCHERY_STATE_URL": pg_database},
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RolloutBusy, match="other-driver"):
            with store.driver_lease("me", wait_s=0.5, poll_s=0.1):
                pass
        with RolloutStore(Paths(root=store.folder), "recommend").driver_lease("me"):
            pass  # another domain is free
        holder.kill()  # a killed driver's session ends, and its lease with it
        holder.wait()
        with store.driver_lease("me", wait_s=10, poll_s=0.1):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_logs_are_read_per_rollout_in_order(store):
    for i in range(3):
        store.append_request({"rollout_id": "r1", "i": i})
    store.append_request({"rollout_id": "r2", "i": 9})
    store.append_feedback({"rollout_id": "r1", "clicked": True})
    store.append_evaluation({"batch": 1})
    assert [r["i"] for r in store.requests("r1")] == [0, 1, 2]
    assert [r["i"] for r in store.requests()] == [0, 1, 2, 9]
    assert store.feedback("r1") == [{"rollout_id": "r1", "clicked": True}] and store.feedback("r2") == []
    assert store.evaluations() == [{"batch": 1}]


def test_a_dropped_connection_is_replaced_and_a_dead_database_is_an_oserror(store, pg_database, tmp_path):
    import psycopg2

    store.save(_shadow(), _entry("start"))
    pid = store.db.run(lambda cur: (cur.execute("SELECT pg_backend_pid()"), cur.fetchone()[0])[1])
    admin = psycopg2.connect(pg_database)
    admin.autocommit = True
    with admin.cursor() as cur:  # what a server restart does to every open session
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    admin.close()
    assert store.read().version == 1  # reconnected once, transparently

    dead = pg_database.rsplit("@", 1)[0] + "@127.0.0.1:1/nothing"
    from artifacts.rollout_store import PgRolloutStore

    gone = PgRolloutStore(Paths(root=tmp_path), "search", url=dead)
    with pytest.raises(OSError, match="unreachable"):
        gone.append_request({"rollout_id": "r1"})
    with pytest.raises(StoreUnavailable):
        gone.audit()
    assert gone.mtime_ns() is None  # polled while down: the last value seen (none yet), no exception


def test_lockfile_store_merges_stages(pg_database, tmp_path):
    a = "schema: '2.0'\nstages:\n  ingest:\n    cmd: a\n"
    b = "schema: '2.0'\nstages:\n  split:\n    cmd: b\n"
    b2 = "schema: '2.0'\nstages:\n  split:\n    cmd: b2\n"
    assert "ingest" in merge_lockfiles(a, b) and "split" in merge_lockfiles(a, b)
    for locks in (LockfileStore(pg_database, tmp_path / "x.json"), LockfileStore(None, tmp_path / "locks.json")):
        assert locks.get("k") is None
        locks.merge("k", a)
        locks.merge("k", b)
        merged = locks.merge("k", b2)
        assert locks.get("k") == merged and "cmd: a" in merged and "cmd: b2" in merged and "cmd: b\n" not in merged
