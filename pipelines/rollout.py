"""rollout: take the gated challenger through the charter's plan (shadow -> canary steps -> full) on the live service.

The rollout store (artifacts/rollout_store.py, <root>/reports/rollout/<domain>/) holds the state the
service routes by (so a restarted service or a restarted rollout resumes the same phase, step and arm
assignment), the audit trail (one line per state change: who or what, when, from version, to version,
why), the service's request log, the replay's feedback log and this step's evaluations.

Each phase replays traffic in batches (pipelines/replay.py) and evaluates the charter's criteria on
that phase's logs after each batch (components/rollout/guardrails.py): advance, hold, or roll
back. A rollback sends all traffic to the champion, tags the challenger version `rollout_status =
rejected` with the reason and drops its `challenger` alias. Full moves the `champion` alias to the
challenger in one registry call (artifacts/registry.py); `rollback` afterwards moves it back to the
previous champion. The result goes to <root>/reports/rollout/<domain>.json.

Usage:
  python -m pipelines.rollout run semantic_search --url http://127.0.0.1:3000
  python -m pipelines.rollout status semantic_search
  python -m pipelines.rollout promote|pause|resume|rollback semantic_search --reason "..." [--actor alice]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from artifacts.files import write_json
from artifacts.paths import Paths
from artifacts.registry import CHALLENGER, CHAMPION, Registry
from artifacts.rollout_store import RolloutStore
from components import rollout as ro
from components.charter import Charter
from components.config_rollout import RolloutParams

log = logging.getLogger(__name__)

STEP = "rollout"


# --- statistics from the logs ------------------------------------------------------------------------
def phase_stats(paths: Paths, state: ro.RolloutState) -> tuple[ro.ArmStats, ro.ArmStats, dict[str, Any]]:
    """(champion, challenger) ArmStats and shadow agreement of the current phase/step, from the logs."""
    store = RolloutStore(paths, state.domain)
    phase = state.routing_phase
    mine = [
        r
        for r in store.requests()
        if r.get("rollout_id") == state.rollout_id and r.get("phase") == phase and r.get("step") == state.step
    ]
    feedback = {f["request_id"]: f for f in store.feedback() if f.get("request_id")}
    role = "shadow" if phase == "shadow" else "answer"

    def arm(name: str, role_: str) -> ro.ArmStats:
        rows = [r for r in mine if r["arm"] == name and r["role"] == role_]
        answered = [r for r in mine if r["role"] == "answer" and r["error"] is None]
        fb = [feedback[r["request_id"]] for r in answered if r["request_id"] in feedback]
        fb = [f for f in fb if f.get("arm") == name and f.get("status") == 200]
        return ro.ArmStats(
            requests=len(rows),
            errors=sum(r["error"] is not None for r in rows),
            latencies_ms=tuple(r["latency_ms"] for r in rows),
            impressions=len(fb),
            successes=sum(bool(f["success"]) for f in fb),
        )

    champion, challenger = arm(ro.CHAMPION, "answer"), arm(ro.CHALLENGER, role)
    agreement: dict[str, Any] = {}
    if phase == "shadow":
        answers = {r["request_id"]: r["items"] for r in mine if r["role"] == "answer" and r["arm"] == ro.CHAMPION}
        pairs = [
            (answers[r["request_id"]], r["items"])
            for r in mine
            if r["role"] == "shadow" and r["error"] is None and r["request_id"] in answers
        ]
        agreement = ro.agreement(pairs, k=10)
    return champion, challenger, agreement


def criteria_for(charter: Charter, state: ro.RolloutState):
    plan = charter.rollout
    return plan.shadow.exit if state.routing_phase == "shadow" else plan.canary[state.step].success


# --- transitions with their side effects ---------------------------------------------------------------
def do_rollback(paths: Paths, charter: Charter, state: ro.RolloutState, reason: str, actor: str) -> ro.RolloutState:
    rejected = state.challenger
    new, entry = ro.roll_back(state, time.time(), actor, reason)
    RolloutStore(paths, state.domain).save(new, entry)  # traffic back on the champion first; the registry follows
    reg = Registry(charter.registered_model, paths)
    if state.phase == "full":
        reg.promote(new.champion, state.champion, f"rolled back by {actor}: {reason}")
    elif rejected is not None:
        reg.reject(rejected, reason)
    return new


def do_promote(paths: Paths, charter: Charter, state: ro.RolloutState, reason: str, actor: str) -> ro.RolloutState:
    new, entry = ro.complete(state, time.time(), actor, reason)
    Registry(charter.registered_model, paths).promote(new.champion, state.champion, reason)
    return RolloutStore(paths, state.domain).save(new, entry)


def advance(paths: Paths, charter: Charter, state: ro.RolloutState, reason: str, actor: str) -> ro.RolloutState:
    steps = charter.rollout.canary
    nxt = 0 if state.routing_phase == "shadow" else state.step + 1
    if nxt >= len(steps):
        return do_promote(paths, charter, state, reason, actor)
    new, entry = ro.enter_canary_step(state, nxt, steps[nxt].traffic_share, time.time(), actor, reason)
    return RolloutStore(paths, state.domain).save(new, entry)


def begin(paths: Paths, charter: Charter, actor: str) -> ro.RolloutState:
    """Start (or resume) the rollout of the registry's challenger; the first model becomes champion directly."""
    reg, store = Registry(charter.registered_model, paths), RolloutStore(paths, charter.domain)
    state = store.load()
    if state.phase in (*ro.ACTIVE, "paused"):
        log.info("resuming the %s rollout of v%s", state.routing_phase, state.challenger.version)
        return state
    challenger = reg.ref(CHALLENGER)
    if challenger is None:
        raise RuntimeError(f"{charter.registered_model} has no `challenger` alias: run the gate first")
    champion = state.champion or reg.ref(CHAMPION)
    if champion is None:
        # The first incubation: nothing serves yet, so there is nothing to shadow or canary against.
        new, entry = ro.set_champion(
            state, challenger, time.time(), actor, "first champion: no model served before, nothing to compare against"
        )
        reg.promote(challenger, None, entry.reason)
        return store.save(new, entry)
    if state.champion is None:
        state, entry = ro.set_champion(state, champion, time.time(), actor, "champion from the registry alias")
        store.save(state, entry)
    new, entry = ro.start_shadow(
        state,
        challenger,
        charter.rollout.shadow.traffic_share,
        time.time(),
        actor,
        f"gated challenger v{challenger.version} against champion v{champion.version}",
    )
    return store.save(new, entry)


def wait_for_service(status, state: ro.RolloutState, timeout_s: float = 120.0) -> None:
    """Block until the service routes by `state` (its challenger loaded), so replayed traffic counts."""
    deadline = time.monotonic() + timeout_s
    want = state.challenger.version if state.challenger and state.routing_phase in ro.ACTIVE else None
    while time.monotonic() < deadline:
        seen = status().get(state.domain, {})
        st = seen.get("state") or {}
        if st.get("updated") == state.updated and seen.get("challenger") == want:
            return
        time.sleep(0.2)
    raise TimeoutError(f"the service did not pick up the {state.phase} state within {timeout_s:.0f} s")


def drive(
    paths: Paths,
    charter: Charter,
    url: str,
    rp: RolloutParams,
    source=None,
    client=None,
    seed: int = 0,
    actor: str = "pipelines.rollout",
) -> ro.RolloutState:
    """Replay batches and evaluate after each until the rollout is full, rolled back or paused."""
    from pipelines.replay import make_source, replay

    store = RolloutStore(paths, charter.domain)
    state = store.load()
    source = source or make_source(charter.domain, paths, rp.click_model, rp.sessions)
    own = client is None
    if own:
        import httpx

        client = httpx.Client(base_url=url, timeout=rp.timeout_s)

    def status() -> dict[str, Any]:
        return client.post("/rollout_status", json={}).json()

    batches, batch_seed = 0, seed
    try:
        while state.phase in ro.ACTIVE:
            wait_for_service(status, state)
            counts = replay(
                source,
                str(client.base_url),
                rp.batch_requests,
                paths,
                batch_seed,
                rp.concurrency,
                rp.timeout_s,
                client=client,
            )
            batch_seed, batches = batch_seed + 1, batches + 1
            time.sleep(0.2)  # let the last shadow scorings land in the log
            champion, challenger, agreement = phase_stats(paths, state)
            decision = ro.evaluate_guardrails(
                champion,
                challenger,
                criteria_for(charter, state),
                (time.time() - state.phase_started) / 3600.0,
                rp.request_scale,
                rp.hours_scale,
            )
            report = {
                "phase": state.phase,
                "step": state.step,
                "batch": batches,
                "replay": counts,
                "decision": decision.action,
                "reasons": list(decision.reasons),
                "agreement": agreement,
                **decision.numbers,
            }
            store.append_evaluation(report)
            log.info(
                "%s step %d batch %d: %s (%s)",
                state.phase,
                state.step,
                batches,
                decision.action,
                "; ".join(decision.reasons),
            )
            if decision.action == "rollback":
                state = do_rollback(paths, charter, state, "guardrail breached: " + "; ".join(decision.reasons), actor)
            elif decision.action == "advance":
                why = "exit criteria met" + (f" (agreement {json.dumps(agreement)})" if agreement else "")
                state, batches = advance(paths, charter, state, why, actor), 0
            elif batches >= rp.max_batches:
                new, entry = ro.pause(
                    state,
                    time.time(),
                    actor,
                    f"not enough traffic after {batches} batches: " + "; ".join(decision.reasons),
                )
                state = store.save(new, entry)
    finally:
        if own:
            client.close()
    return state


def run(
    charter: Charter,
    paths: Paths,
    url: str,
    rp: RolloutParams | None = None,
    seed: int = 0,
    actor: str = "pipelines.rollout",
) -> dict[str, Any]:
    """The DAG's rollout stage: begin (or resume) and drive to the end; writes reports/rollout/<domain>.json."""
    rp = rp or RolloutParams()
    state = begin(paths, charter, actor)
    if state.phase in ro.ACTIVE:
        state = drive(paths, charter, url, rp, seed=seed, actor=actor)
    result = {
        "domain": charter.domain,
        "phase": state.phase,
        "champion": state.champion.version if state.champion else None,
        "previous_champion": state.previous_champion.version if state.previous_champion else None,
        "reason": state.reason,
    }
    write_json(paths.rollout_summary(charter.domain), result)
    return result


def main(argv: list[str] | None = None) -> int:
    from pipelines.common import configure_logging
    from pipelines.requirements import load_charter

    configure_logging()
    ap = argparse.ArgumentParser(prog="python -m pipelines.rollout", description="Staged rollout of a challenger.")
    ap.add_argument("command", choices=["run", "status", "promote", "pause", "resume", "rollback"])
    ap.add_argument("charter", help="charters/<name>.yaml")
    ap.add_argument("--url", default=os.environ.get("HATCHERY_SERVICE_URL", "http://127.0.0.1:3000"))
    ap.add_argument("--reason", default="by hand")
    ap.add_argument("--actor", default=os.environ.get("USER", "operator"))
    args = ap.parse_args(argv)
    charter, paths = load_charter(args.charter), Paths()
    store = RolloutStore(paths, charter.domain)
    state = store.load()
    if args.command == "status":
        print(json.dumps({"state": state.to_dict(), "audit": store.audit()[-10:]}, indent=2, default=str))
        return 0
    if args.command == "run":
        print(json.dumps(run(charter, paths, args.url, actor="pipelines.rollout")))
        return 0
    try:
        if args.command == "promote":
            new = do_promote(paths, charter, state, f"promoted by hand: {args.reason}", args.actor)
        elif args.command == "rollback":
            new = do_rollback(paths, charter, state, f"rolled back by hand: {args.reason}", args.actor)
        elif args.command == "pause":
            new = store.save(*ro.pause(state, time.time(), args.actor, args.reason))
        else:
            new = store.save(*ro.resume(state, time.time(), args.actor, args.reason))
    except ro.RolloutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(new.to_dict(), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
