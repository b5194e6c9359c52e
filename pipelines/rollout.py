"""rollout: take the gated challenger through the charter's plan (shadow -> canary steps -> full) on the live service.

State: <root>/reports/rollout/<domain>/state.json (written atomically; the service routes by it, so a
restarted service or a restarted rollout resumes the same phase, step and arm assignment).
Audit:  <root>/reports/rollout/<domain>/audit.jsonl, one line per state change: who or what, when,
        from version, to version, why.
Logs:   requests.jsonl (the service: per scored request, arm, version, latency, error, top items) and
        feedback.jsonl (the replay simulator or production: per response, the online success signal).

Each phase replays traffic in batches (pipelines/replay.py) and evaluates the charter's criteria on
that phase's logs after each batch (components/rollout.evaluate_guardrails): advance, hold, or roll
back. A rollback sends all traffic to the champion, tags the challenger version `rollout_status =
rejected` with the reason and drops its `challenger` alias. Full moves the `champion` alias to the
challenger in one registry call; `rollback` afterwards moves it back to the previous champion.

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
from pathlib import Path
from typing import Any

from components import rollout as ro
from components.charter import Charter
from components.config_rollout import RolloutParams
from pipelines.common import Paths, write_json

log = logging.getLogger(__name__)

STEP = "rollout"
CHAMPION, CHALLENGER = "champion", "challenger"
STATUS_TAG, REASON_TAG = "rollout_status", "rollout_reason"


def rollout_dir(paths: Paths, domain: str) -> Path:
    return paths.reports / "rollout" / domain


def load_state(paths: Paths, domain: str) -> ro.RolloutState:
    path = rollout_dir(paths, domain) / "state.json"
    return ro.RolloutState.from_dict(json.loads(path.read_text())) if path.exists() else ro.RolloutState(domain=domain)


def save(paths: Paths, state: ro.RolloutState, entry: ro.AuditEntry) -> ro.RolloutState:
    """Append the audit entry (fsynced), then replace the state file in one rename."""
    folder = rollout_dir(paths, state.domain)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "audit.jsonl").open("a") as fh:
        fh.write(json.dumps(entry.to_dict(), default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    write_json(folder / "state.json", state.to_dict())
    log.info("%s: %s -> %s (%s)", state.domain, entry.from_phase, entry.to_phase, entry.reason)
    return state


def read_audit(paths: Paths, domain: str) -> list[dict[str, Any]]:
    path = rollout_dir(paths, domain) / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# --- registry --------------------------------------------------------------------------------------
class Registry:
    """The MLflow registry moves of a rollout; refs that are local folders (no registry) are left alone."""

    def __init__(self, paths: Paths, name: str) -> None:
        self.paths, self.name = paths, name

    def _client(self):
        from pipelines.gate import _client

        return _client(self.paths)

    def ref(self, alias: str) -> ro.ModelRef | None:
        from pipelines.gate import alias_version

        v = alias_version(self._client(), self.name, alias)
        return ro.ModelRef(version=str(v.version), uri=f"models:/{self.name}/{v.version}") if v else None

    def _registered(self, ref: ro.ModelRef | None) -> bool:
        return ref is not None and ref.uri.startswith(f"models:/{self.name}/")

    def promote(self, new: ro.ModelRef, old: ro.ModelRef | None, reason: str) -> None:
        if not self._registered(new):
            return
        client = self._client()
        client.set_registered_model_alias(self.name, CHAMPION, new.version)  # one call: atomic for readers
        client.set_model_version_tag(self.name, new.version, STATUS_TAG, "champion")
        client.set_model_version_tag(self.name, new.version, REASON_TAG, reason[:500])
        if self._registered(old):
            client.set_model_version_tag(self.name, old.version, STATUS_TAG, "previous_champion")
        self._drop_challenger(client, new.version)

    def reject(self, challenger: ro.ModelRef, reason: str) -> None:
        if not self._registered(challenger):
            return
        client = self._client()
        client.set_model_version_tag(self.name, challenger.version, STATUS_TAG, "rejected")
        client.set_model_version_tag(self.name, challenger.version, REASON_TAG, reason[:500])
        self._drop_challenger(client, challenger.version)

    def _drop_challenger(self, client, version: str) -> None:
        from pipelines.gate import alias_version

        current = alias_version(client, self.name, CHALLENGER)
        if current is not None and str(current.version) == str(version):
            client.delete_registered_model_alias(self.name, CHALLENGER)


# --- statistics from the logs ------------------------------------------------------------------------
def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            continue
    return out


def phase_stats(paths: Paths, state: ro.RolloutState) -> tuple[ro.ArmStats, ro.ArmStats, dict[str, Any]]:
    """(champion, challenger) ArmStats and shadow agreement of the current phase/step, from the logs."""
    folder = rollout_dir(paths, state.domain)
    phase = state.routing_phase
    mine = [
        r
        for r in _lines(folder / "requests.jsonl")
        if r.get("rollout_id") == state.rollout_id and r.get("phase") == phase and r.get("step") == state.step
    ]
    feedback = {f["request_id"]: f for f in _lines(folder / "feedback.jsonl") if f.get("request_id")}
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
    save(paths, new, entry)  # traffic back on the champion first; the registry tag follows
    reg = Registry(paths, charter.registered_model)
    if state.phase == "full":
        reg.promote(new.champion, state.champion, f"rolled back by {actor}: {reason}")
    elif rejected is not None:
        reg.reject(rejected, reason)
    return new


def do_promote(paths: Paths, charter: Charter, state: ro.RolloutState, reason: str, actor: str) -> ro.RolloutState:
    new, entry = ro.complete(state, time.time(), actor, reason)
    Registry(paths, charter.registered_model).promote(new.champion, state.champion, reason)
    return save(paths, new, entry)


def advance(paths: Paths, charter: Charter, state: ro.RolloutState, reason: str, actor: str) -> ro.RolloutState:
    steps = charter.rollout.canary
    nxt = 0 if state.routing_phase == "shadow" else state.step + 1
    if nxt >= len(steps):
        return do_promote(paths, charter, state, reason, actor)
    new, entry = ro.enter_canary_step(state, nxt, steps[nxt].traffic_share, time.time(), actor, reason)
    return save(paths, new, entry)


def begin(paths: Paths, charter: Charter, actor: str) -> ro.RolloutState:
    """Start (or resume) the rollout of the registry's challenger; the first model becomes champion directly."""
    reg = Registry(paths, charter.registered_model)
    state = load_state(paths, charter.domain)
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
        return save(paths, new, entry)
    if state.champion is None:
        state, entry = ro.set_champion(state, champion, time.time(), actor, "champion from the registry alias")
        save(paths, state, entry)
    new, entry = ro.start_shadow(
        state,
        challenger,
        charter.rollout.shadow.traffic_share,
        time.time(),
        actor,
        f"gated challenger v{challenger.version} against champion v{champion.version}",
    )
    return save(paths, new, entry)


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

    state = load_state(paths, charter.domain)
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
                paths.root,
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
            _append_report(paths, charter.domain, report)
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
                state = save(paths, new, entry)
    finally:
        if own:
            client.close()
    return state


def _append_report(paths: Paths, domain: str, report: dict[str, Any]) -> None:
    path = rollout_dir(paths, domain) / "evaluations.jsonl"
    with path.open("a") as fh:
        fh.write(json.dumps(report, default=str) + "\n")


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
    write_json(paths.reports / "rollout" / f"{charter.domain}.json", result)
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
    state = load_state(paths, charter.domain)
    if args.command == "status":
        print(
            json.dumps(
                {"state": state.to_dict(), "audit": read_audit(paths, charter.domain)[-10:]}, indent=2, default=str
            )
        )
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
            new = save(paths, *ro.pause(state, time.time(), args.actor, args.reason))
        else:
            new = save(paths, *ro.resume(state, time.time(), args.actor, args.reason))
    except ro.RolloutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(new.to_dict(), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
