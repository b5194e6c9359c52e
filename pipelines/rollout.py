"""rollout: take the gated challenger through the charter's plan (shadow -> canary steps -> full) on the live service.

The rollout store (artifacts/rollout_store.py, <root>/reports/rollout/<domain>/) holds the state the
service routes by (so a restarted service or a restarted rollout resumes the same phase, step and arm
assignment), the audit trail (one line per state change: who or what, when, from version, to version,
why), the service's request log, the replay's feedback log and this step's evaluations.

Each phase replays traffic in batches (pipelines/replay.py) and evaluates the charter's criteria on
the logs after each batch (components/rollout/guardrails.py): advance, hold, or roll back. Health
(errors, latency) is judged per phase; online quality by an always-valid test on the success rates
of the two arms, every canary step so far pooled (components/rollout/sequential.py), with the
charter's false-rollback rate, smallest harm and power. At a 100 % step the champion keeps the
charter's holdback of units, so the last step is measured too. In canary a share of search units
gets a team-draft interleaved list (components/rollout/interleaving.py); its verdict is reported
beside the A/B test's.

Safe state: one driver per domain (a lease; a second one waits or refuses), every write a
compare-and-swap on the state's version, so an operator's pause / resume / promote / rollback
during a batch always wins (the driver's decision on the old state is discarded). A promotion or
rollback is written to the state with its registry intent first, then the registry moves, then the
intent is cleared; a crash anywhere in between is finished on the next start (`reconcile`), so the
champion alias and the state agree. A rollback tags the challenger `rollout_status = rejected` with
the reason and drops its `challenger` alias; full moves the `champion` alias; `rollback` after full
moves it back. The result goes to <root>/reports/rollout/<domain>.json and to MLflow (run `rollout`).

Usage:
  python -m pipelines.rollout run semantic_search --url http://127.0.0.1:3000
  python -m pipelines.rollout status semantic_search
  python -m pipelines.rollout promote|pause|resume|rollback semantic_search --reason "..." [--actor alice]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from artifacts.files import write_json
from artifacts.paths import Paths
from artifacts.registry import CHALLENGER, CHAMPION, Registry
from artifacts.rollout_store import RolloutStore, StaleState
from components import rollout as ro
from components.charter import Charter
from components.config_rollout import RolloutParams
from components.rollout import sequential as sq

log = logging.getLogger(__name__)

STEP = "rollout"


# --- what the charter asks of the current phase ----------------------------------------------------------
def design_for(charter: Charter) -> sq.Design:
    q = charter.rollout.quality
    return sq.design(q.false_rollback_rate, q.smallest_harm, q.power)


def criteria_for(charter: Charter, state: ro.RolloutState):
    plan = charter.rollout
    return plan.shadow.exit if state.routing_phase == "shadow" else plan.canary[state.step].success


def test_for(charter: Charter, state: ro.RolloutState) -> str:
    if state.routing_phase == "shadow":
        return "none"
    return charter.rollout.canary[state.step].success.quality_test()


# --- statistics from the logs ------------------------------------------------------------------------
@dataclass(frozen=True)
class PhaseStats:
    """The current phase/step's arms, the earlier canary steps' quality counts, shadow agreement, interleaving."""

    champion: ro.ArmStats
    challenger: ro.ArmStats
    earlier: tuple[tuple[int, int, int, int], ...] = ()
    agreement: dict[str, Any] = field(default_factory=dict)
    interleaving: tuple[int, int, int] = (0, 0, 0)  # challenger wins, champion wins, sessions


def phase_stats(paths: Paths, state: ro.RolloutState) -> PhaseStats:
    """Arm statistics of the current phase/step (and the canary steps before it), from the logs.

    Quality counts go by the arm a unit was *assigned* (intention to treat: a challenger request the
    champion answered after a challenger failure still counts for the challenger); health counts by
    the model that scored. Client errors (unknown ids) are in neither.
    """
    store = RolloutStore(paths, state.domain)
    phase = state.routing_phase
    mine = store.requests(state.rollout_id)  # this rollout's lines: the log files it spans, not the history
    feedback = {f["request_id"]: f for f in store.feedback(state.rollout_id) if f.get("request_id")}

    def quality(rows: list[dict], arm: str) -> tuple[int, int]:
        answered = [r for r in rows if r["role"] == "answer" and r.get("assigned", r["arm"]) == arm]
        fb = [feedback[r["request_id"]] for r in answered if r["request_id"] in feedback]
        fb = [f for f in fb if f.get("status") == 200]
        return len(fb), sum(bool(f["success"]) for f in fb)

    def health(rows: list[dict], arm: str, roles: tuple[str, ...]) -> ro.ArmStats:
        scored = [r for r in rows if r["arm"] == arm and r["role"] in roles]
        impressions, successes = quality(rows, arm)
        return ro.ArmStats(
            requests=len(scored),
            errors=sum(r["error"] is not None for r in scored),
            latencies_ms=tuple(r["latency_ms"] for r in scored),
            impressions=impressions,
            successes=successes,
        )

    now = [r for r in mine if r.get("phase") == phase and r.get("step") == state.step]
    champion = health(now, ro.CHAMPION, ("answer",))
    challenger = health(now, ro.CHALLENGER, ("shadow",) if phase == "shadow" else ("answer", "interleave"))
    earlier = []
    if phase == "canary":
        for step in range(state.step):
            rows = [r for r in mine if r.get("phase") == "canary" and r.get("step") == step]
            earlier.append((*quality(rows, ro.CHAMPION), *quality(rows, ro.CHALLENGER)))
    agreement: dict[str, Any] = {}
    if phase == "shadow":
        answers = {r["request_id"]: r["items"] for r in now if r["role"] == "answer" and r["arm"] == ro.CHAMPION}
        pairs = [
            (answers[r["request_id"]], r["items"])
            for r in now
            if r["role"] == "shadow" and r["error"] is None and r["request_id"] in answers
        ]
        agreement = ro.agreement(pairs, k=10)
    wins = losses = sessions = 0
    for r in mine:  # interleaving pools every canary step too: the same two rankers throughout
        if r["role"] != "answer" or r["arm"] != ro.INTERLEAVED or r["request_id"] not in feedback:
            continue
        f = feedback[r["request_id"]]
        if f.get("status") != 200 or f.get("clicked") is None:
            continue
        ranks = [r["items"].index(c) for c in f["clicked"] if c in r["items"]]
        c = ro.credit(r["teams"], ranks)
        sessions, wins, losses = sessions + 1, wins + (c > 0), losses + (c < 0)
    return PhaseStats(champion, challenger, tuple(earlier), agreement, (wins, losses, sessions))


def evaluate(charter: Charter, state: ro.RolloutState, stats: PhaseStats, rp: RolloutParams, now: float) -> ro.Decision:
    return ro.evaluate_guardrails(
        stats.champion,
        stats.challenger,
        criteria_for(charter, state),
        (now - state.phase_started) / 3600.0,
        rp.request_scale,
        rp.hours_scale,
        test=test_for(charter, state),
        design=design_for(charter),
        earlier_steps=stats.earlier,
        share=state.share,
    )


# --- transitions with their side effects ---------------------------------------------------------------
def settle(paths: Paths, charter: Charter, state: ro.RolloutState, actor: str) -> ro.RolloutState:
    """Apply the state's pending registry intent (idempotent), then clear it; the state as it is after."""
    if not state.pending:
        return state
    return RolloutStore(paths, charter.domain).settle(state, Registry(charter.registered_model, paths), actor)


def reconcile(paths: Paths, charter: Charter, actor: str) -> ro.RolloutState:
    """On start: finish a registry move a crashed process left pending, so the registry agrees with the state."""
    state = RolloutStore(paths, charter.domain).load()
    if state.pending:
        log.warning(
            "%s: finishing the interrupted %s of %s (%s)",
            charter.domain,
            state.pending["action"],
            state.pending.get("champion") or state.pending.get("rejected"),
            state.pending.get("reason"),
        )
        state = settle(paths, charter, state, actor)
    return state


def do_rollback(
    paths: Paths, charter: Charter, reason: str, actor: str, expected: int | None = None
) -> ro.RolloutState:
    """Traffic back on the champion (shadow/canary/paused), or the previous champion back (full).

    expected: the state version the decision was based on (the driver); None acts on the current
    state (an operator). The state and its registry intent are written first, then the registry moves.
    """

    def change(cur: ro.RolloutState):
        new, entry = ro.roll_back(cur, time.time(), actor, reason)
        if cur.phase == "full":
            new = ro.intend(new, "restore", new.champion, cur.champion, None, reason, actor, entry.when)
        else:
            new = ro.intend(new, "reject", cur.champion, None, cur.challenger, reason, actor, entry.when)
        return new, entry

    new = RolloutStore(paths, charter.domain).transact(change, expected)
    return settle(paths, charter, new, actor)


def do_promote(paths: Paths, charter: Charter, reason: str, actor: str, expected: int | None = None) -> ro.RolloutState:
    """The challenger becomes the champion: state + intent, then the alias move, then the intent cleared."""

    def change(cur: ro.RolloutState):
        new, entry = ro.complete(cur, time.time(), actor, reason)
        return ro.intend(new, "promote", new.champion, cur.champion, None, reason, actor, entry.when), entry

    new = RolloutStore(paths, charter.domain).transact(change, expected)
    return settle(paths, charter, new, actor)


def advance(
    paths: Paths, charter: Charter, state: ro.RolloutState, reason: str, actor: str, expected: int | None = None
) -> ro.RolloutState:
    """The next canary step (the challenger's A/B share with the holdback kept), or full after the last."""
    steps = charter.rollout.canary
    nxt = 0 if state.routing_phase == "shadow" else state.step + 1
    if nxt >= len(steps):
        return do_promote(paths, charter, reason, actor, expected)
    share = charter.rollout.ab_share(nxt)
    return RolloutStore(paths, charter.domain).transact(
        lambda cur: ro.enter_canary_step(
            cur, nxt, share, time.time(), actor, reason, traffic_share=steps[nxt].traffic_share
        ),
        expected,
    )


def begin(paths: Paths, charter: Charter, actor: str) -> ro.RolloutState:
    """Start (or resume) the rollout of the registry's challenger; the first model becomes champion directly."""
    reg, store = Registry(charter.registered_model, paths), RolloutStore(paths, charter.domain)
    state = reconcile(paths, charter, actor)
    if state.phase in (*ro.ACTIVE, "paused"):
        log.info("resuming the %s rollout of v%s", state.routing_phase, state.challenger.version)
        return state
    challenger = reg.gated_challenger()  # an alias without the gate's pass for its bundle is refused
    if challenger is None:
        raise RuntimeError(f"{charter.registered_model} has no `challenger` alias: run the gate first")
    champion = state.champion or reg.ref(CHAMPION)
    if champion is None:
        # The first incubation: nothing serves yet, so there is nothing to shadow or canary against.
        why = "first champion: no model served before, nothing to compare against"

        def first(cur: ro.RolloutState):
            new, entry = ro.set_champion(cur, challenger, time.time(), actor, why)
            return ro.intend(new, "promote", challenger, None, None, why, actor, entry.when), entry

        return settle(paths, charter, store.transact(first), actor)
    if state.champion is None:
        store.transact(
            lambda cur: ro.set_champion(cur, champion, time.time(), actor, "champion from the registry alias")
        )
    plan = charter.rollout
    salt = secrets.token_hex(16)  # the arm assignment's secret: never leaves the server
    interleave = plan.interleaving_share if charter.domain == "search" else 0.0
    return store.transact(
        lambda cur: ro.start_shadow(
            cur,
            challenger,
            plan.shadow.traffic_share,
            time.time(),
            actor,
            f"gated challenger v{challenger.version} against champion v{champion.version}",
            salt=salt,
            interleave_share=interleave,
        )
    )


def wait_for_service(status, state: ro.RolloutState, timeout_s: float = 120.0) -> None:
    """Block until the service routes by `state` (its challenger loaded), so replayed traffic counts."""
    deadline = time.monotonic() + timeout_s
    want = state.challenger.version if state.challenger and state.routing_phase in ro.ACTIVE else None
    while time.monotonic() < deadline:
        seen = status().get(state.domain, {})
        st = seen.get("state") or {}
        if st.get("version") == state.version and seen.get("challenger") == want:
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
    lease: bool = True,
    lease_wait_s: float = 0.0,
    scale=None,
    data: Paths | None = None,
    users=None,
) -> ro.RolloutState:
    """Replay batches and evaluate after each until the rollout is full, rolled back or paused.

    scale: the judgment scale the simulated shoppers click by (default: params.yaml's data.search.relevance).
    data: the outputs root whose test split the shoppers replay (default: paths; a lifecycle run with
    overrides has its own, its workspace).
    users: the run's recommendation source (params data.recommend), whose raw user ids the replayed requests
    carry (default: params.yaml's).

    lease: take the domain's driver lease (False: the caller holds it); a second driver waits up to
    lease_wait_s, then RolloutBusy. Re-reads the state before every batch and writes with
    compare-and-swap, so an operator's command during a batch wins over this batch's decision.
    """
    store = RolloutStore(paths, charter.domain)
    with store.driver_lease(actor, lease_wait_s) if lease else contextlib.nullcontext():
        return _drive(paths, charter, url, rp, source, client, seed, actor, scale, data, users)


def _drive(paths, charter, url, rp, source, client, seed, actor, scale=None, data=None, users=None) -> ro.RolloutState:
    from pipelines.replay import make_source, replay

    store = RolloutStore(paths, charter.domain)
    state = reconcile(paths, charter, actor)
    if state.phase not in ro.ACTIVE:
        return state
    if source is None:
        if scale is None:
            from pipelines.common import load_params

            scale = load_params().data.search.relevance
        source = make_source(charter.domain, data or paths, rp.click_model, rp.sessions, scale, users)
    own = client is None
    if own:
        import httpx

        client = httpx.Client(base_url=url, timeout=rp.timeout_s)

    def status() -> dict[str, Any]:
        return client.post("/rollout_status", json={}).json()

    batches, batch_seed, where = 0, seed, None
    try:
        while True:
            state = store.load()  # what an operator did since the last batch counts
            if state.phase not in ro.ACTIVE:
                break
            if (state.rollout_id, state.routing_phase, state.step) != where:
                batches, where = 0, (state.rollout_id, state.routing_phase, state.step)
            wait_for_service(status, state)
            counts = replay(
                source, str(client.base_url), rp.batch_requests, paths, batch_seed, rp.concurrency, rp.timeout_s, client
            )
            batch_seed, batches = batch_seed + 1, batches + 1
            time.sleep(0.2)  # let the last shadow scorings land in the log
            stats = phase_stats(paths, state)
            decision = evaluate(charter, state, stats, rp, time.time())
            wins, losses, sessions = stats.interleaving
            report = {
                "ts": time.time(),
                "rollout_id": state.rollout_id,
                "state_version": state.version,
                "phase": state.routing_phase,
                "step": state.step,
                "share": state.share,
                "batch": batches,
                "replay": counts,
                "decision": decision.action,
                "reasons": list(decision.reasons),
                "agreement": stats.agreement,
                **decision.numbers,
            }
            if sessions:
                d = design_for(charter)
                report["interleaving"] = sq.preference(wins, losses, sessions, d.alpha, d.rho).to_dict()
            log.info(
                "%s step %d batch %d: %s (%s)",
                state.routing_phase,
                state.step,
                batches,
                decision.action,
                "; ".join(decision.reasons),
            )
            try:
                if decision.action == "rollback":
                    state = do_rollback(
                        paths, charter, "guardrail breached: " + "; ".join(decision.reasons), actor, state.version
                    )
                elif decision.action == "advance":
                    why = "; ".join(decision.reasons) + (
                        f" (agreement {json.dumps(stats.agreement)})" if stats.agreement else ""
                    )
                    state = advance(paths, charter, state, why, actor, state.version)
                elif batches >= rp.max_batches:
                    why = f"not enough traffic after {batches} batches: " + "; ".join(decision.reasons)
                    state = store.transact(lambda cur, why=why: ro.pause(cur, time.time(), actor, why), state.version)
            except StaleState as exc:
                report["discarded"] = f"not applied, the state changed during the batch (an operator wins): {exc}"
                log.warning("%s: %s", charter.domain, report["discarded"])
            store.append_evaluation(report)
    finally:
        if own:
            client.close()
    return store.load()


# --- the step -----------------------------------------------------------------------------------------------
def summarize(paths: Paths, charter: Charter, state: ro.RolloutState) -> dict[str, Any]:
    """The rollout's outcome, each phase's last evaluation (sample, interval, decision, power) and its audit."""
    store = RolloutStore(paths, charter.domain)
    evaluations = [e for e in store.evaluations() if state.rollout_id and e.get("rollout_id") == state.rollout_id]
    phases: dict[tuple, dict] = {}
    for e in evaluations:
        if e.get("discarded"):
            continue
        key = (e["phase"], e["step"])
        q = e.get("quality") or {}
        phases[key] = {
            "phase": e["phase"],
            "step": e["step"],
            "share": e.get("share"),
            "batches": e["batch"],
            "decision": e["decision"],
            "reasons": e["reasons"],
            "challenger_requests": e["challenger"]["requests"],
            "challenger_error_rate": e["challenger"]["error_rate"],
            "challenger_p99_ms": e["challenger"]["p99_ms"],
            "quality": q or None,
            "interleaving": e.get("interleaving"),
            "agreement": e.get("agreement") or None,
        }
    audit = [
        a for a in store.audit() if state.rollout_id and (a.get("details") or {}).get("rollout_id") == state.rollout_id
    ]
    return {
        "domain": charter.domain,
        "phase": state.phase,
        "champion": state.champion.version if state.champion else None,
        "challenger": state.challenger.version if state.challenger else None,
        "previous_champion": state.previous_champion.version if state.previous_champion else None,
        "reason": state.reason,
        "rollout_id": state.rollout_id,
        "design": design_for(charter).to_dict(),
        "phases": list(phases.values()),
        "audit": audit,
    }


def log_to_mlflow(paths: Paths, charter: Charter, result: dict[str, Any]) -> str:
    """One MLflow run `rollout`: outcome tags, each phase's numbers as metrics, summary and audit as artifacts."""
    import mlflow

    from pipelines.common import load_params, mlflow_run

    with mlflow_run(STEP, load_params(), paths, sections=("rollout",)) as mrun:
        mlflow.set_tags(
            {
                "charter": charter.name,
                "domain": charter.domain,
                "outcome": result["phase"],
                "champion": str(result["champion"]),
                "challenger": str(result["challenger"]),
            }
        )
        mlflow.log_params({f"quality.{k}": v for k, v in result["design"].items()})
        for p in result["phases"]:
            name = "shadow" if p["phase"] == "shadow" else f"canary{p['step']}"
            metrics = {
                f"{name}.challenger_requests": p["challenger_requests"],
                f"{name}.error_rate": p["challenger_error_rate"],
            }
            q = p.get("quality") or {}
            for k in ("diff", "lower", "upper", "power", "information"):
                if q.get(k) is not None:
                    metrics[f"{name}.{k}"] = q[k]
            if q:
                metrics[f"{name}.impressions"] = sum(q["total_impressions"])
            il = p.get("interleaving") or {}
            for k in ("mean", "lower", "upper", "sessions"):
                if il.get(k) is not None:
                    metrics[f"{name}.interleaving_{k}"] = il[k]
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.log_dict(result, "rollout/summary.json")
        mlflow.log_text("\n".join(json.dumps(a, default=str) for a in result["audit"]) + "\n", "rollout/audit.jsonl")
        return mrun.info.run_id


def nothing_to_roll_out(paths: Paths, charter: Charter) -> str | None:
    """Why there is nothing to do (no rollout in flight, the gated version already serves), else None."""
    state = RolloutStore(paths, charter.domain).load()
    if state.phase in (*ro.ACTIVE, "paused") or state.pending:
        return None
    reg = Registry(charter.registered_model, paths)
    challenger, champion = reg.ref(CHALLENGER), reg.ref(CHAMPION)
    if champion is not None and (challenger is None or challenger.version == champion.version):
        return f"v{champion.version} is already the champion: nothing to roll out"
    return None


def run(
    charter: Charter,
    paths: Paths,
    url: str,
    rp: RolloutParams | None = None,
    seed: int = 0,
    actor: str = "pipelines.rollout",
    lease_wait_s: float = 0.0,
    track: bool = True,
    source=None,
    client=None,
    scale=None,
    data: Paths | None = None,
    users=None,
) -> dict[str, Any]:
    """The DAG's rollout stage: begin (or resume) and drive to the end under the domain's driver lease.

    rp: the replay's settings (default: params.yaml `rollout`). lease_wait_s: how long to wait for
    another driver of the domain (then RolloutBusy); a run that waited finds its work done when the
    other one promoted the same version. source / client / scale / data / users: as for drive. Writes
    reports/rollout/<domain>.json and (track) an MLflow run; returns the summary.
    """
    if rp is None:
        from pipelines.common import load_params

        rp = load_params().rollout
    store = RolloutStore(paths, charter.domain)
    with store.driver_lease(actor, lease_wait_s):
        done = nothing_to_roll_out(paths, charter)
        if done:
            state = store.load()
            result = {**summarize(paths, charter, state), "reason": done, "phases": [], "audit": []}
            write_json(paths.rollout_summary(charter.domain), result)
            return result
        state = begin(paths, charter, actor)
        if state.phase in ro.ACTIVE:
            state = drive(paths, charter, url, rp, source, client, seed, actor, False, 0.0, scale, data, users)
        # still under the lease: a driver that waited for this one writes its summary after this one's
        result = summarize(paths, charter, state)
        if track:
            result["mlflow_run_id"] = log_to_mlflow(paths, charter, result)
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
    if args.command == "status":
        state = store.load()
        print(json.dumps({"state": state.public_dict(), "audit": store.audit()[-10:]}, indent=2, default=str))
        return 0
    if args.command == "run":
        print(json.dumps(run(charter, paths, args.url, actor="pipelines.rollout"), default=str))
        return 0
    # An operator's command acts on the current state under the store's lock, without the driver lease:
    # it wins over a running driver, whose next write finds the version moved and discards its decision.
    try:
        reconcile(paths, charter, args.actor)
        if args.command == "promote":
            new = do_promote(paths, charter, f"promoted by hand: {args.reason}", args.actor)
        elif args.command == "rollback":
            new = do_rollback(paths, charter, f"rolled back by hand: {args.reason}", args.actor)
        elif args.command == "pause":
            new = store.transact(lambda cur: ro.pause(cur, time.time(), args.actor, args.reason))
        else:
            new = store.transact(lambda cur: ro.resume(cur, time.time(), args.actor, args.reason))
    except ro.RolloutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(new.public_dict(), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
