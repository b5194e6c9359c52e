"""monitor: does recent traffic still look like the champion's training data, and should a new incubation start?

For one charter (its domain, its `monitor:` section): reads the window's answers and feedback from the
feedback store (artifacts/feedback_store.py) in hourly chunks, so a day at 100 requests/s never sits in
memory at once; compares them with the training data of the split in the Paths layout (the data the
champion was trained from, its held-out valid part as the no-drift baseline) through components/drift.py;
decides whether to trigger an incubation (drift, or enough new feedback since the champion was
registered, with a cooldown); writes

    reports/monitor/<charter>.json / .html   the latest report (the service's hatchery_drift_* gauges read the JSON)
    reports/monitor/state.json               per charter: the last trigger, the feedback counted since the champion

and logs to MLflow (run `monitor`: every check's value as a metric, both reports as artifacts).

The distribution checks (queries, users, items) run on a seeded uniform sample of at most
MAX_SAMPLE requests of the window (the bottom-k of a keyed hash of the request id, mergeable across
chunks: a share estimated on 100,000 requests is within ±0.3 points at 95 %), and on the feedback
events of those requests (their clicked or bought products); the online rates count every request.
A feedback event counts toward its answer's rates when it arrives within one chunk (an hour) of it.

Not a DVC stage: its input is the live store, which DVC cannot hash or cache, and its output is a
point-in-time reading, not a reproducible artifact; the `feedback` DAG runs it on a schedule.

Usage: python -m pipelines.monitor [<charter> ...]   (default: every charter)
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from artifacts.files import read_json, write_json
from artifacts.paths import Paths
from artifacts.reports import render
from components import drift
from components.charter import Charter
from components.config import Params
from components.feedback import records as rec
from components.schema import PRODUCT_ID, QUERY, QUERY_ID, USER_ID
from pipelines.common import load_params, mlflow_run

log = logging.getLogger(__name__)

STEP = "monitor"
CHUNK_S = 3600.0
MAX_SAMPLE = 100_000
HOUR_S = 3600.0


# --- the champion's training data ---------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """What the champion learned from (`train`), an unseen in-distribution sample (`holdout`) and what that
    sample is compared against (`holdout_reference`: `train` for search; the valid fold's own history for
    recommendations, since the champion's history already contains the valid window)."""

    train: drift.Sample
    holdout: drift.Sample | None
    holdout_reference: drift.Sample | None
    vocabulary_texts: list[str]
    source: str


def load_reference(paths: Paths, domain: str) -> Reference:
    """The training data of `domain` in the Paths layout (data/split, data/validated)."""
    from pipelines.io import read_fold, read_table

    if domain == "search":
        folder = paths.split / "search"
        train, valid = pd.read_parquet(folder / "train.parquet"), pd.read_parquet(folder / "valid.parquet")
        catalog = read_table(paths.validated, "catalog", required=False)

        def sample(part: pd.DataFrame) -> drift.Sample:
            queries = part.drop_duplicates(QUERY_ID)[QUERY].astype(str).tolist()
            return drift.Sample(queries=queries, items=part[PRODUCT_ID].astype(str).tolist())

        titles = [] if catalog is None else catalog["title"].astype(str).tolist()
        return Reference(sample(train), sample(valid), None, titles, str(folder))
    history, _ = read_fold(paths, "test", window=False)  # what the registered model trains on
    valid_history, valid_window = read_fold(paths, "valid")

    def events(part: pd.DataFrame) -> drift.Sample:
        return drift.Sample(users=part[USER_ID].astype(str).tolist(), items=part[PRODUCT_ID].astype(str).tolist())

    return Reference(events(history), events(valid_window), events(valid_history), [], str(paths.split / "recommend"))


# --- the window, streamed -------------------------------------------------------------------------------
@dataclass
class WindowScan:
    """What the monitor keeps of a window while it reads it chunk by chunk."""

    seed: int
    max_sample: int = MAX_SAMPLE
    requests: int = 0
    events: int = 0
    sample: pd.DataFrame | None = None  # request_id, query, user, h (the bottom-k by hash)
    sample_events: list[pd.DataFrame] = field(default_factory=list)
    per_version: dict[str, dict[str, int]] = field(default_factory=dict)
    _previous: pd.DataFrame | None = None  # the last chunk's request_id -> model_version
    _previous_hits: dict[str, set[str]] = field(default_factory=dict)

    def _hash(self, ids: pd.Series) -> np.ndarray:
        key = f"hatchery{self.seed:08d}"[-16:]
        return pd.util.hash_pandas_object(ids, index=False, hash_key=key).to_numpy()

    def add(self, answers: pd.DataFrame, feedback: pd.DataFrame) -> None:
        """One chunk: answers (one row per request, the store's items=False frame) and the events received in it."""
        self.requests += len(answers)
        self.events += len(feedback)
        versions = answers[[rec.REQUEST_ID, rec.MODEL_VERSION]]
        for v, n in versions[rec.MODEL_VERSION].value_counts().items():
            counts = self.per_version.setdefault(str(v), {"requests": 0, "click": 0, "purchase": 0})
            counts["requests"] += int(n)
        known = versions if self._previous is None else pd.concat([self._previous, versions], ignore_index=True)
        hits: dict[str, set[str]] = {}
        for event in ("click", "purchase"):
            ids = feedback.loc[feedback[rec.EVENT] == event, rec.REQUEST_ID].drop_duplicates()
            fresh = ids[~ids.isin(self._previous_hits.get(event, set()))]  # a request counts once
            hits[event] = set(ids)
            matched = known[known[rec.REQUEST_ID].isin(fresh)]
            for v, n in matched[rec.MODEL_VERSION].value_counts().items():
                self.per_version.setdefault(str(v), {"requests": 0, "click": 0, "purchase": 0})[event] += int(n)
        self._previous, self._previous_hits = versions, hits

        chunk = answers[[rec.REQUEST_ID, QUERY, rec.USER]].assign(h=self._hash(answers[rec.REQUEST_ID]))
        merged = chunk if self.sample is None else pd.concat([self.sample, chunk], ignore_index=True)
        self.sample = merged.nsmallest(self.max_sample, "h") if len(merged) > self.max_sample else merged
        kept = feedback[feedback[rec.REQUEST_ID].isin(self.sample[rec.REQUEST_ID])]
        if len(kept):
            self.sample_events.append(kept[[rec.REQUEST_ID, PRODUCT_ID]])

    def traffic(self) -> drift.Sample:
        """The sampled requests' queries and users, and the products their feedback events name."""
        if self.sample is None or self.sample.empty:
            return drift.Sample()
        events = pd.concat(self.sample_events, ignore_index=True) if self.sample_events else None
        items = [] if events is None else events.loc[events[rec.REQUEST_ID].isin(self.sample[rec.REQUEST_ID])]
        return drift.Sample(
            queries=self.sample[QUERY].dropna().astype(str).tolist(),
            users=self.sample[rec.USER].dropna().astype(str).tolist(),
            items=[] if events is None else items[PRODUCT_ID].astype(str).tolist(),
        )

    def rates(self) -> dict[str, dict[str, float]]:
        return {
            v: {
                "requests": c["requests"],
                "ctr": c["click"] / c["requests"],
                "purchase_rate": c["purchase"] / c["requests"],
            }
            for v, c in sorted(self.per_version.items())
            if c["requests"]
        }


def scan_window(store, domain: str, since: float, until: float, seed: int, max_sample: int = MAX_SAMPLE) -> WindowScan:
    """Read [since, until) from the store in CHUNK_S slices."""
    scan = WindowScan(seed=seed, max_sample=max_sample)
    t0 = since
    while t0 < until:
        t1 = min(t0 + CHUNK_S, until)
        scan.add(store.impressions(t0, t1, domain, items=False), store.feedback(t0, t1, domain))
        t0 = t1
    return scan


def count_feedback(store, domain: str, since: float, until: float) -> int:
    """Events received in [since, until), read in chunks."""
    total, t0 = 0, since
    while t0 < until:
        t1 = min(t0 + 24 * CHUNK_S, until)
        total += len(store.feedback(t0, t1, domain))
        t0 = t1
    return total


# --- the step -------------------------------------------------------------------------------------------
def _champion(charter: Charter, paths: Paths) -> tuple[str | None, float | None]:
    """(version, registration time in unix s) of the charter's champion, or (None, None)."""
    from artifacts.registry import CHAMPION, Registry

    version = Registry(charter.registered_model, paths).version(CHAMPION)
    if version is None:
        return None, None
    return str(version.version), float(version.creation_timestamp) / 1000.0


def _took_over(paths: Paths, domain: str, champion: str | None) -> float | None:
    """When `champion` began answering all of the domain's traffic: the start of the `full` phase of the rollout
    state that names it (None: no such state, e.g. a champion set in the registry by hand, or a rollout under way)."""
    from artifacts.rollout_store import RolloutStore

    if champion is None:
        return None
    state = RolloutStore(paths, domain).load()
    if state.phase == "full" and state.champion is not None and str(state.champion.version) == champion:
        return float(state.phase_started) or None
    return None


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _metric_name(name: str) -> str:
    return "drift_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def run(
    params: Params,
    paths: Paths,
    charter: Charter,
    now: float | None = None,
    store=None,
    log_mlflow: bool = True,
    data: Paths | None = None,
) -> dict[str, Any]:
    """Check the charter's window ending at `now` (default: the clock); write the reports; return the report.

    store: a FeedbackStore (default: the one of `paths`). data: where the training data lies (default `paths`).
    The trigger and the feedback count are recorded in reports/monitor/state.json, so a second run within the
    cooldown does not trigger again.
    """
    from artifacts.feedback_store import FeedbackStore

    started = time.perf_counter()
    now = time.time() if now is None else float(now)
    plan, domain, seed = charter.monitor, charter.domain, params.seed
    store = store if store is not None else FeedbackStore(paths=paths)
    champion, champion_ts = _champion(charter, paths)
    # The window never reaches back before the champion took all the traffic: what came before was answered by
    # (and, through its feedback, trained) the run that made it champion, so it must not start another one; the
    # rollout's own replayed requests stay out too.
    took_over = _took_over(paths, domain, champion)
    since = max(now - plan.window_hours * HOUR_S, took_over or 0.0)
    scan = scan_window(store, domain, since, now, seed)
    checks: list[drift.Check] = []
    reference = None
    if champion is not None:  # before the first champion there is no training data to compare with (yet)
        reference = load_reference(data or paths, domain)
        checks = drift.drift_checks(
            reference.train,
            scan.traffic(),
            plan.thresholds,
            holdout=reference.holdout,
            holdout_reference=reference.holdout_reference,
            extra_vocabulary=reference.vocabulary_texts,
            sample_requests=plan.sample_requests,
            permutations=plan.permutations,
            seed=seed,
        )
    rates = scan.rates()
    checks += drift.rate_checks(rates, plan.thresholds, plan.min_requests)

    # Feedback since the champion was registered, counted incrementally across runs (state.json).
    state_path = paths.monitor("state.json")
    state = read_json(state_path) if state_path.exists() else {}
    mine = dict(state.get(charter.name) or {})
    if "counted_until" not in mine or mine.get("champion") != champion:
        mine = {"champion": champion, "counted_until": champion_ts, "new_feedback": 0, "last_trigger": None}
    counted_until = mine.get("counted_until")
    if counted_until is None or counted_until <= since:
        # The window's events are counted already; add those between the last count and the window, if any.
        gap = count_feedback(store, domain, counted_until, since) if counted_until is not None else 0
        mine["new_feedback"] += gap + scan.events
    elif counted_until < now:
        mine["new_feedback"] += count_feedback(store, domain, counted_until, now)
    mine["counted_until"] = now
    hours_since = None if mine.get("last_trigger") is None else (now - mine["last_trigger"]) / HOUR_S
    if champion is None:
        decision = drift.Decision(False, "no champion yet: nothing to compare against", [], mine["new_feedback"])
    else:
        decision = drift.decide_retrain(checks, scan.requests, mine["new_feedback"], plan, hours_since)
    if decision.trigger:
        mine.update(last_trigger=now, new_feedback=0)
    state[charter.name] = mine

    report = {
        "charter": charter.name,
        "domain": domain,
        "champion": champion,
        "window": {
            "since": since,
            "until": now,
            "since_utc": _utc(since),
            "until_utc": _utc(now),
            "hours": plan.window_hours,
            "champion_took_over": took_over,
            "cut_at_takeover": bool(took_over and since == took_over),
        },
        "requests": scan.requests,
        "sampled_requests": 0 if scan.sample is None else len(scan.sample),
        "feedback_events": scan.events,
        "seed": seed,
        "reference": {
            "source": reference.source if reference else "none (no champion)",
            "queries": len(reference.train.queries) if reference else 0,
            "users": len(set(reference.train.users)) if reference else 0,
            "items": len(reference.train.items) if reference else 0,
        },
        "checks": [c.to_dict() for c in checks],
        "rates": rates,
        "decision": decision.to_dict(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(paths.monitor(f"{charter.name}.json"), report)
    paths.monitor(f"{charter.name}.html").write_text(render("monitor.html", report=report))
    write_json(state_path, state)
    if log_mlflow:
        with mlflow_run(STEP, params, paths, sections=("seed",)) as _:
            import mlflow

            mlflow.set_tags({"charter": charter.name, "domain": domain, "trigger": str(decision.trigger)})
            values = {_metric_name(c["name"]): c["value"] for c in report["checks"] if c["value"] is not None}
            mlflow.log_metrics(
                {**{k: float(v) for k, v in values.items() if np.isfinite(v)}, "requests": scan.requests}
            )
            mlflow.log_artifact(str(paths.monitor(f"{charter.name}.json")), "monitor")
            mlflow.log_artifact(str(paths.monitor(f"{charter.name}.html")), "monitor")
    log.info("monitor %s: %s (%d requests, %.1f s)", charter.name, decision.reason, scan.requests, report["seconds"])
    return report


def collect(paths: Paths | None = None, now: float | None = None, store=None) -> dict[str, Any]:
    """The `feedback` DAG's first task: apply the store's retention and size cap; say what it holds.

    The service writes impressions and events to the store as it answers, so there is nothing to copy:
    collecting is keeping the store inside its limits before the judgments and the monitor read it.
    """
    from artifacts.feedback_store import FeedbackStore

    store = store if store is not None else FeedbackStore(paths=paths or Paths())
    now = time.time() if now is None else float(now)
    deleted = store.maintain(now)
    out = {"store": repr(store), "deleted": deleted, "holds": store.counts(), "size_bytes": store.size_bytes()}
    log.info("feedback store %s holds %s (retention deleted %s)", store, out["holds"], deleted)
    return out


def run_all(
    paths: Paths | None = None,
    charters: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The `feedback` DAG's monitor task: every charter (or those named); returns the one retrain request.

    At most one charter triggers per call (the first by name among those whose decision says so; any other
    stays due and triggers at the next run, its cooldown untouched), so each asset event, and the
    incubation it starts, carries one charter. Small and XCom-safe: {"trigger", "charter", "reason",
    "overrides", "reports": {charter: reason}}.
    """
    from pipelines.dvc_stage import workspace_root
    from pipelines.requirements import charter_names, load_charter

    paths = paths or Paths()
    params = load_params(overrides=overrides or {})
    # The training data of a run with overrides lives in its workspace (pipelines/dvc_stage.py); the store,
    # the reports and MLflow stay in HATCHERY_HOME.
    data = Paths(root=workspace_root(overrides, paths))
    now = time.time() if now is None else now
    out: dict[str, Any] = {"trigger": False, "charter": None, "reason": "", "overrides": dict(overrides or {})}
    out["reports"] = {}
    for name in charters or charter_names():
        charter = load_charter(name)
        if out["trigger"]:
            out["reports"][name] = "not checked: another charter triggered in this run (checked at the next)"
            continue
        report = run(params, paths, charter, now=now, data=data)
        out["reports"][name] = report["decision"]["reason"]
        if report["decision"]["trigger"]:
            out.update(
                trigger=True,
                charter=name,
                reason=report["decision"]["reason"],
                report=str(paths.monitor(f"{name}.html")),
                monitor_until=now,
            )
    return out


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    print(json.dumps(run_all(charters=sys.argv[1:] or None), indent=2))
