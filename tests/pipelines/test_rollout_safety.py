"""Rollout state under faults: an operator during a running driver, a process killed between the registry
calls and the state writes of promote / rollback, two drivers at once, concurrent writers.

The driver runs the shipped semantic_search charter against tests/pipelines/_mini_service.py (the real
DomainRuntime over fake models: fast, no BentoML), with the registry in a temporary MLflow store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from artifacts.paths import REPO_ROOT, Paths
from artifacts.registry import Registry
from artifacts.rollout_store import RolloutBusy, RolloutStore, StaleState
from components import rollout as ro
from components.config_rollout import RolloutParams
from tests.pipelines._mini_service import NAME, MiniService, judgments, register

CHARTER = "semantic_search"
# The replay's settings for a few-second rollout: the charter's criteria as shipped, its traffic minimums scaled.
# max_batches: room for a phase to reach its planned sample whatever arms the rollout's random salt draws
# (at 40, one run in a few paused for traffic with the plan 60 % reached).
RP = RolloutParams(request_scale=0.002, batch_requests=100, max_batches=80, concurrency=1, sessions=400)


@pytest.fixture
def charter():
    from pipelines.requirements import load_charter

    return load_charter(CHARTER)


@pytest.fixture
def world(paths: Paths, monkeypatch):
    """v1 (good) is the champion, v2 (good) the gated challenger.

    Hand-registered fake bundles carry no integrity digest (artifacts/integrity.py, not what these tests
    check): dev mode loads them unverified.
    """
    monkeypatch.setenv("HATCHERY_ENV", "dev")
    v1 = register(paths, "good", "champion")
    v2 = register(paths, "good", "challenger")
    return {"paths": paths, "v1": v1, "v2": v2, "registry": Registry(NAME, paths)}


def _source():
    from pipelines.replay import SearchReplay

    return SearchReplay(judgments(), sessions=RP.sessions)


def _drive(paths, charter, service, **kw):
    from pipelines import rollout

    return rollout.drive(paths, charter, service.base_url, RP, source=_source(), client=service, actor="driver", **kw)


def _aliases(world) -> dict[str, str | None]:
    reg = world["registry"]
    return {a: (str(v.version) if (v := reg.version(a)) else None) for a in ("champion", "challenger")}


def _agree(world) -> None:
    """The champion alias and the state's champion name the same version; no intent is left pending."""
    state = RolloutStore(world["paths"], "search").load()
    assert state.pending is None, state.pending
    assert world["registry"].disagreement(state.champion) is None


def _versions_are_a_chain(paths: Paths) -> None:
    """Every write got the next version: none lost, none written twice."""
    versions = [a["details"]["state_version"] for a in RolloutStore(paths, "search").audit()]
    assert versions == list(range(1, len(versions) + 1)), versions


# --- the store ------------------------------------------------------------------------------------------------
def test_compare_and_swap_refuses_a_stale_writer_and_concurrent_writers_lose_nothing(paths) -> None:
    store = RolloutStore(paths, "search")
    first = store.save(*ro.set_champion(ro.RolloutState(domain="search"), ro.ModelRef("1", "x"), 0, "t", "first"))
    assert first.version == 1
    store.transact(lambda cur: ro.set_champion(cur, ro.ModelRef("2", "x"), 1, "t", "second"))
    with pytest.raises(StaleState, match="moved on to version 2"):
        store.save(*ro.set_champion(first, ro.ModelRef("3", "x"), 2, "t", "stale"), expected=first.version)

    def bump(i: int) -> None:
        for j in range(10):
            store.transact(lambda cur, j=j: ro.set_champion(cur, ro.ModelRef(f"{i}.{j}", "x"), 3, f"w{i}", "race"))

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.load().version == 2 + 60
    _versions_are_a_chain(paths)


# --- an operator wins over a running driver ---------------------------------------------------------------------
@pytest.mark.slow
def test_an_operators_pause_during_a_batch_wins_and_resume_continues_to_full(world, charter) -> None:
    from pipelines import rollout

    paths = world["paths"]

    def operator(n: int) -> None:
        if n == 50:  # mid-way through the shadow phase's first batch, whose evaluation will say advance
            assert rollout.main(["pause", CHARTER, "--reason", "checking a dashboard", "--actor", "alice"]) == 0

    rollout.begin(paths, charter, "driver")
    service = MiniService(paths, operator)
    try:
        paused = _drive(paths, charter, service)
        assert paused.phase == "paused" and paused.paused_phase == "shadow", paused.reason
        audit = RolloutStore(paths, "search").audit()
        assert [a["action"] for a in audit][-2:] == ["start_shadow", "pause"] and audit[-1]["actor"] == "alice"
        last = RolloutStore(paths, "search").evaluations()[-1]
        assert last["decision"] == "advance" and "an operator wins" in last["discarded"]

        assert rollout.main(["resume", CHARTER, "--reason", "fine", "--actor", "alice"]) == 0
        service.on_request = None
        final = _drive(paths, charter, service)
    finally:
        service.close()
    assert final.phase == "full" and final.champion.version == world["v2"], final.reason
    assert _aliases(world) == {"champion": world["v2"], "challenger": None}
    _agree(world)
    _versions_are_a_chain(paths)


@pytest.mark.slow
def test_an_operators_rollback_during_the_last_step_stops_the_promotion(world, charter) -> None:
    from pipelines import rollout

    paths = world["paths"]
    store = RolloutStore(paths, "search")

    def operator(n: int) -> None:
        state = store.load()
        if state.phase == "canary" and state.step == 2 and not getattr(operator, "done", False):
            operator.done = True
            assert rollout.main(["rollback", CHARTER, "--reason", "complaints", "--actor", "bob"]) == 0

    rollout.begin(paths, charter, "driver")
    service = MiniService(paths, operator)
    try:
        final = _drive(paths, charter, service)
    finally:
        service.close()
    assert final.phase == "rolled_back" and "complaints" in final.reason
    assert _aliases(world) == {"champion": world["v1"], "challenger": None}
    tags = world["registry"].get(world["v2"]).tags
    assert tags["rollout_status"] == "rejected" and "complaints" in tags["rollout_reason"]
    assert "promote" not in [a["action"] for a in store.audit()]
    _agree(world)
    _versions_are_a_chain(paths)


# --- a process killed between the registry calls and the state writes ----------------------------------------
class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not an Exception, so no handler catches it)."""


WRITES = (
    "set_registered_model_alias",
    "set_model_version_tag",
    "delete_registered_model_alias",
    "delete_model_version_tag",
)


def _kill_after(monkeypatch, calls: int) -> list[str]:
    """Registry writes are logged; the one after `calls` writes, or else the state write that clears the
    intent, kills the process instead."""
    from mlflow import MlflowClient

    done: list[str] = []
    for name in WRITES:
        real = getattr(MlflowClient, name)

        def wrapper(self, *args, _real=real, _name=name, **kwargs):
            if len(done) == calls:
                raise Killed(f"killed before registry call {calls + 1} ({_name})")
            done.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, name, wrapper)
    real_transact = RolloutStore.transact

    def transact(self, change, expected=None):
        if getattr(change, "__name__", "") == "clear" and len(done) == calls:
            raise Killed(f"killed after all {calls} registry calls, before the state write that clears the intent")
        return real_transact(self, change, expected)

    monkeypatch.setattr(RolloutStore, "transact", transact)
    return done


def _at_last_step(world, charter) -> ro.RolloutState:
    from pipelines import rollout

    rollout.begin(world["paths"], charter, "driver")
    store = RolloutStore(world["paths"], "search")
    for step in range(len(charter.rollout.canary)):
        share = charter.rollout.ab_share(step)
        store.transact(lambda cur, step=step, share=share: ro.enter_canary_step(cur, step, share, 1, "t", ""))
    return store.load()


# Registry writes of each move (artifacts/registry.py): promote = champion alias, 2 tags on the new champion, 1 on
# the old, challenger alias dropped; reject = 2 tags, alias dropped, gate pass dropped; restore (rollback after
# full) = alias, 2 tags, 1 on the other.
MOVES = {"promote": 5, "reject": 4, "restore": 4}


@pytest.mark.slow
@pytest.mark.parametrize(("action", "calls"), [(a, c) for a, n in MOVES.items() for c in range(n + 1)])
def test_a_kill_between_any_registry_call_and_the_state_write_is_reconciled_on_restart(
    world, charter, monkeypatch, action, calls
) -> None:
    from pipelines import rollout

    paths, v1, v2 = world["paths"], world["v1"], world["v2"]
    _at_last_step(world, charter)
    if action == "restore":
        rollout.do_promote(paths, charter, "promoted", "driver")
    done = _kill_after(monkeypatch, calls)
    with pytest.raises(Killed):
        if action == "promote":
            rollout.do_promote(paths, charter, "good enough", "driver")
        else:
            rollout.do_rollback(paths, charter, "not good enough", "operator")
    assert len(done) == calls
    assert RolloutStore(paths, "search").load().pending["action"] == action  # the intent came first
    monkeypatch.undo()

    restarted = rollout.reconcile(paths, charter, "restart")  # the next start
    _agree(world)
    champion = {"promote": v2, "reject": v1, "restore": v1}[action]
    assert restarted.champion.version == champion
    assert _aliases(world) == {"champion": champion, "challenger": None}
    tags = {v: world["registry"].get(v).tags.get("rollout_status") for v in (v1, v2)}
    assert (
        tags
        == {
            "promote": {v1: "previous_champion", v2: "champion"},
            "reject": {v1: None, v2: "rejected"},
            "restore": {v1: "champion", v2: "previous_champion"},
        }[action]
    )
    assert RolloutStore(paths, "search").audit()[-1]["action"] == "registry"
    _versions_are_a_chain(paths)


KILLED_PROMOTION = """
import os, signal, sys
from mlflow import MlflowClient
from artifacts.paths import Paths
from pipelines import rollout
from pipelines.requirements import load_charter

real, seen = MlflowClient.set_model_version_tag, []
def dying(self, *args, **kwargs):
    seen.append(1)
    if len(seen) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *args, **kwargs)
MlflowClient.set_model_version_tag = dying
rollout.do_promote(Paths(), load_charter("semantic_search"), "good enough", "doomed")
"""


@pytest.mark.slow
def test_a_real_sigkill_mid_promotion_is_finished_by_the_next_start(world, charter) -> None:
    from pipelines import rollout

    paths = world["paths"]
    _at_last_step(world, charter)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILLED_PROMOTION], cwd=REPO_ROOT, env=env, timeout=300)
    assert proc.returncode == -9
    state = RolloutStore(paths, "search").load()
    assert state.phase == "full" and state.pending["action"] == "promote"
    assert _aliases(world)["challenger"] == world["v2"]  # the kill came before the alias was dropped
    rollout.reconcile(paths, charter, "restart")
    _agree(world)
    assert _aliases(world) == {"champion": world["v2"], "challenger": None}


# --- two drivers at once ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_driver_refuses_or_waits_and_nothing_is_lost(world, charter) -> None:
    from pipelines import rollout

    paths = world["paths"]
    started = threading.Event()

    def slow(n: int) -> None:
        started.set()
        time.sleep(0.002)

    service = MiniService(paths, slow)
    results: dict[str, object] = {}

    def first() -> None:
        results["first"] = rollout.run(
            charter, paths, service.base_url, RP, actor="run-1", source=_source(), client=service
        )

    def waiting() -> None:
        results["waiting"] = rollout.run(
            charter, paths, service.base_url, RP, actor="run-3", lease_wait_s=120, track=False, client=service
        )  # no source needed: it finds the work done

    a = threading.Thread(target=first)
    a.start()
    assert started.wait(60)
    with pytest.raises(RolloutBusy, match=r"another rollout driver holds search .*run-1"):
        rollout.run(charter, paths, service.base_url, RP, actor="run-2", track=False, source=_source(), client=service)
    c = threading.Thread(target=waiting)
    c.start()
    a.join(300)
    c.join(300)
    service.close()
    assert results["first"]["phase"] == "full" and results["first"]["champion"] == world["v2"]
    assert results["waiting"]["phase"] == "full" and "nothing to roll out" in results["waiting"]["reason"]
    assert [a["actor"] for a in RolloutStore(paths, "search").audit() if a["actor"] in ("run-2", "run-3")] == []
    _agree(world)
    _versions_are_a_chain(paths)
    phases = results["first"]["phases"]
    assert [(p["phase"], p["step"]) for p in phases] == [("shadow", -1), ("canary", 0), ("canary", 1), ("canary", 2)]
    assert all(p["decision"] == "advance" for p in phases)
    assert all(p["quality"]["verdict"] in ("non_inferior", "no_harm") for p in phases[1:])
    assert all(p["interleaving"]["sessions"] > 0 for p in phases[1:])  # its verdict sits beside the A/B test
    assert phases[-1]["quality"]["step_impressions"][0] >= 30  # the last step measured its champion holdback
    assert json.loads(paths.rollout_summary("search").read_text())["reason"].endswith("nothing to roll out")
    # ... and the same numbers and the audit trail in MLflow
    run = world["registry"].client.get_run(results["first"]["mlflow_run_id"])
    assert run.data.tags["outcome"] == "full" and run.data.metrics["canary0.lower"] == phases[1]["quality"]["lower"]
    assert {"canary2.power", "canary2.impressions", "canary0.interleaving_mean"} <= set(run.data.metrics)
    artifacts = {a.path for a in world["registry"].client.list_artifacts(run.info.run_id, "rollout")}
    assert artifacts == {"rollout/summary.json", "rollout/audit.jsonl"}
