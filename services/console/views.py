"""What each console page shows, computed from the loaded models, the rollout store and the reports on disk.

No HTTP here (services/console/app.py renders these dicts). `service` is the Hatchery instance, or
anything with `runtimes` ({domain: services.runtime.DomainRuntime}) and `salt`.

A preview calls the loaded champion and challenger models directly, never DomainRuntime.call: the
rollout's request log and the arms' counters only ever see real traffic.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from artifacts.paths import DOMAINS, Paths
from artifacts.registry import MODEL_NAMES
from artifacts.rollout_store import CorruptState, RolloutStore
from services.console.plots import Row, interval_chart, wilson_interval

log = logging.getLogger(__name__)

REC_GENERATORS = ("own", "knn", "mf", "encoder", "trending")
AUDIT_ROWS = 30


def mlflow_url() -> str:
    """HATCHERY_MLFLOW_URL, else the MLflow UI `make run` starts (http://127.0.0.1:$MLFLOW_PORT, 5000)."""
    return os.environ.get("HATCHERY_MLFLOW_URL") or f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT', '5000')}"


def _arms(rt) -> list[tuple[str, Any]]:
    """(arm, Loaded) of the domain's champion and challenger; one read of each attribute (swaps are atomic)."""
    champion, challenger = rt.champion, rt.challenger
    return [("champion", champion), ("challenger", challenger)]


# --- search ---------------------------------------------------------------------------------------------
def search_side_by_side(service, query: str, k: int = 10) -> dict[str, Any]:
    """Both arms' top-k for `query` with contributions, retrieval sources and each arm's latency (ms)."""
    from services.runtime import search_results

    rt = service.runtimes["search"]

    def column(arm: str, loaded) -> dict[str, Any]:
        if loaded is None:
            return {"arm": arm, "version": None, "results": [], "ms": None, "error": None}
        t0 = time.perf_counter()
        error, results = None, []
        try:
            results = search_results(loaded.model, loaded.cache, query, k, explain=True)  # with sources
            ms = (time.perf_counter() - t0) * 1000.0
            for r in results:
                r.setdefault("sources", [])  # a model that does not say (a stand-in)
        except Exception as exc:  # noqa: BLE001 - one arm failing is something to show, not a 500
            ms, error = (time.perf_counter() - t0) * 1000.0, f"{type(exc).__name__}: {exc}"[:300]
        return {"arm": arm, "version": loaded.ref.version, "results": results, "ms": ms, "error": error}

    columns = both_arms(column, _arms(rt))
    shared = _overlap(columns)
    return {"query": query, "k": k, "columns": columns, "shared": shared, "error": rt.error}


def both_arms(column, arms: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """column(arm, loaded) for the champion and the challenger at once, on two threads (the models release
    the GIL in torch, LightGBM and numpy): the page waits for the slower arm, not for the sum. Each
    column's `ms` is its own model's time."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(arms), thread_name_prefix="console") as pool:
        return list(pool.map(lambda a: column(*a), arms))


def _overlap(columns: list[dict]) -> int | None:
    lists = [{str(r["product_id"]) for r in c["results"]} for c in columns if c["version"]]
    return len(lists[0] & lists[1]) if len(lists) == 2 else None


# --- recommendations ----------------------------------------------------------------------------------
def _history(state, row: int) -> tuple[set[str], list[dict]]:
    """(ids bought, the top purchases by baskets) of a known user row in a RecState."""
    baskets = state.stat("baskets")[row]
    items = baskets.indices
    order = np.argsort(-baskets.data, kind="stable")
    top = [
        {
            "product_id": str(state.items[items[j]]),
            "text": str(state.text[items[j]])[:80] if getattr(state, "text", None) is not None else "",
            "baskets": int(baskets.data[j]),
        }
        for j in order[:8]
    ]
    return {str(state.items[i]) for i in items}, top


def _generator_ranks(state, row: int, ids: list[str]) -> dict[str, tuple[str, int]]:
    """product id -> (the candidate generator ranking it best, its rank there) for a known user row."""
    from components.rec_features import generator_scores

    scores = generator_scores(state, np.array([row]))
    pos = dict(zip(map(str, state.items), range(len(state.items)), strict=True))
    out = {}
    for pid in ids:
        j = pos.get(pid)
        if j is None:
            continue
        best = None
        for name in REC_GENERATORS:
            sc = scores.get(name)
            if sc is None or not np.isfinite(sc[0, j]) or (name == "own" and sc[0, j] <= 0):
                continue
            rank = int((sc[0] > sc[0, j]).sum()) + 1
            if best is None or rank < best[1]:
                best = (name, rank)
        if best:
            out[pid] = best
    return out


def recommend_side_by_side(service, user_id: str, k: int = 10) -> dict[str, Any]:
    """The user's purchase summary and both arms' lists, each item marked repeat/new with its candidate source."""
    from services.runtime import pseudonymous_user

    rt = service.runtimes["recommend"]
    pseudo = pseudonymous_user(user_id, service.salt)
    columns, profile, history, bought = [], None, [], set()
    for arm, loaded in _arms(rt):
        if loaded is None:
            columns.append({"arm": arm, "version": None, "results": [], "ms": None, "error": None})
            continue
        model, error, results = loaded.model, None, []
        t0 = time.perf_counter()
        try:
            results = [dict(r) for r in model.recommend(pseudo, k=k)]
        except Exception as exc:  # noqa: BLE001
            error = f"{type(exc).__name__}: {exc}"[:300]
        ms = (time.perf_counter() - t0) * 1000.0
        state = getattr(model, "state", None)
        row = -1
        if state is not None:
            from components.rec_features import rows_of

            row = int(rows_of(state, [pseudo])[0])
        ranks: dict[str, tuple[str, int]] = {}
        if row >= 0:
            mine, top = _history(state, row)
            if arm == "champion" or not history:
                bought, history = mine, top
            ranks = _generator_ranks(state, row, [str(r["product_id"]) for r in results])
        if profile is None and hasattr(model, "profile"):
            raw = model.profile(pseudo)
            profile = {key: v for key, v in (raw or {}).items() if key != "vector"} or None
        for r in results:
            pid = str(r["product_id"])
            r["repeat"] = pid in bought
            r["generator"] = ranks.get(pid)
            if state is not None and r["generator"] is None and r.get("source") == "popular":
                r["generator"] = ("popular fallback", None)
        columns.append({"arm": arm, "version": loaded.ref.version, "results": results, "ms": ms, "error": error})
    return {
        "user_id": user_id,
        "known": bool(history),
        "profile": profile,
        "history": history,
        "n_bought": len(bought),
        "columns": columns,
        "shared": _overlap(columns),
        "error": rt.error,
    }


# --- rollout ------------------------------------------------------------------------------------------------
def _arm_rows(evaluation: dict | None) -> list[dict]:
    if not evaluation:
        return []
    rows = []
    for arm in ("champion", "challenger"):
        s = evaluation.get(arm) or {}
        if not s:
            continue
        ci = wilson_interval(int(s.get("successes") or 0), int(s.get("impressions") or 0))
        rows.append({"arm": arm, **s, "quality_ci": ci})
    return rows


def quality_rows(evaluations: list[dict]) -> list[Row]:
    """One row per evaluated batch: challenger - champion online quality with its always-valid interval."""
    out = []
    for e in evaluations:
        q = e.get("quality") or {}
        if q.get("diff") is None:
            continue
        label = f"{e.get('phase')}{'' if e.get('step', -1) < 0 else ' ' + str(e['step'])} batch {e.get('batch')}"
        out.append(Row(label, q.get("diff"), q.get("lower"), q.get("upper"), "difference"))
    return out


class MlflowLinks:
    """MLflow UI links of registry versions (model version page, its run), cached per (model, version)."""

    def __init__(self, paths: Paths) -> None:
        self.paths, self._cache = paths, {}

    def __call__(self, domain: str, version: str | None) -> dict[str, str] | None:
        if not version or not str(version).isdigit():  # "local" bundles have no registry entry
            return None
        name = MODEL_NAMES[domain]
        key = (name, str(version))
        if key not in self._cache:
            base = mlflow_url()
            links = {"version": f"{base}/#/models/{name}/versions/{version}"}
            try:
                from artifacts.registry import Registry

                registry = Registry(name, self.paths)
                mv = registry.get(version)
                if mv.run_id:
                    exp = registry.client.get_run(mv.run_id).info.experiment_id
                    links["run"] = f"{base}/#/experiments/{exp}/runs/{mv.run_id}"
            except Exception as exc:  # noqa: BLE001 - a link we cannot make is left out, the page still renders
                log.info("no MLflow link for %s v%s: %s", name, version, exc)
            self._cache[key] = links
        return self._cache[key]


def rollout_overview(service, paths: Paths, links: MlflowLinks) -> list[dict[str, Any]]:
    """Per domain: state, traffic shares, the loaded versions, each arm's numbers, quality plot, audit, links."""
    out = []
    for domain in DOMAINS:
        rt = service.runtimes.get(domain)
        store = RolloutStore(paths, domain)
        state_error = None
        try:
            state = store.read()
        except CorruptState as exc:
            state, state_error = None, str(exc)
        if rt is not None:
            rt.poll_state()
        evaluations = [
            e
            for e in store.evaluations()
            if state is not None and state.rollout_id and e.get("rollout_id") == state.rollout_id
        ]
        applied = [e for e in evaluations if not e.get("discarded")]
        last = applied[-1] if applied else None
        champion = state.champion.version if state and state.champion else None
        challenger = state.challenger.version if state and state.challenger else None
        phase = state.routing_phase if state else None
        share = state.share if state else 0.0
        out.append(
            {
                "domain": domain,
                "model": MODEL_NAMES[domain],
                "state": state.public_dict() if state else None,
                "state_error": state_error or (rt.state_error if rt else None),
                "phase": state.phase if state else "none",
                "routing_phase": phase,
                "traffic": {
                    "champion": 1.0 - share if phase == "canary" else 1.0,
                    "challenger": share if phase == "canary" else 0.0,
                    "shadow": state.shadow_share if phase == "shadow" else 0.0,
                    "interleaved": state.interleave_share if phase == "canary" else 0.0,
                },
                "loaded": {
                    "champion": rt.champion.ref.version if rt and rt.champion else None,
                    "challenger": rt.challenger.ref.version if rt and rt.challenger else None,
                    "error": rt.error if rt else None,
                },
                "arms": _arm_rows(last),
                "last_evaluation": last,
                "quality_chart": interval_chart(
                    quality_rows(applied), "online quality: challenger - champion, by batch", reference=0.0
                ),
                "audit": list(reversed(store.audit()))[:AUDIT_ROWS],
                "links": {"champion": links(domain, champion), "challenger": links(domain, challenger)},
                "actions": _allowed_actions(state),
                "gate_report": _gate_html_root(paths, domain),
            }
        )
    return out


def _gate_html_root(paths: Paths, domain: str) -> str | None:
    """The report root of the domain's latest gate report with an HTML page, None without one."""
    latest = latest_gate(paths, domain)
    return latest[0] if latest and latest[1].with_suffix(".html").exists() else None


def _allowed_actions(state) -> list[str]:
    """The actions the state machine allows from this state (components/rollout/state.py)."""
    if state is None:
        return []
    if state.phase in ("shadow", "canary"):
        return ["pause", "rollback", "promote"]
    if state.phase == "paused":
        return ["resume", "rollback", "promote"]
    if state.phase == "full" and state.previous_champion is not None:
        return ["rollback"]
    return []


# --- reports --------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def report_roots(paths: Paths) -> dict[str, Paths]:
    """Where reports are written: the outputs root ('') and each DVC workspace of a lifecycle run (by folder name).

    `dvc repro` in the repository writes reports/ at the root; an Airflow run works in its own workspace
    (pipelines/dvc_stage.py: workspaces/<name>/), whose reports/ holds its data checks and gate report.
    """
    roots = {"": paths}
    if paths.workspaces.is_dir():
        for w in sorted(paths.workspaces.iterdir()):
            if w.is_dir() and not w.name.startswith("."):
                roots[w.name] = Paths(root=w)
    return roots


def newest(candidates: dict[str, Path]) -> tuple[str, Path] | None:
    """(root name, path) of the most recently written existing path, None when none exists."""
    found = [(p.stat().st_mtime, name, p) for name, p in candidates.items() if p.exists()]
    return max(found)[1:] if found else None


def latest_gate(paths: Paths, domain: str) -> tuple[str, Path] | None:
    return newest({name: r.gate_report(domain) for name, r in report_roots(paths).items()})


def incubation_runs(paths: Paths, limit: int = 8) -> list[dict[str, Any]]:
    """The latest lifecycle runs (newest first): folder name, charter, status, headline."""
    folder = paths.reports / "incubation"
    if not folder.is_dir():
        return []
    runs = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    out = []
    for p in runs[:limit]:
        summary = _read_json(p / "summary.json") or {}
        out.append(
            {
                "name": p.name,
                "charter": summary.get("charter") or p.name.split("__")[0],
                "status": summary.get("status", "running or not reported"),
                "headline": summary.get("headline", ""),
                "report": (p / "index.html").exists(),
            }
        )
    return out


def data_checks(paths: Paths) -> list[dict[str, Any]]:
    """The latest result of each data-contract check (tables, search_split, ...) across the report roots."""
    by_name: dict[str, dict[str, Path]] = {}
    for root, r in report_roots(paths).items():
        folder = r.reports / "data_checks"
        if folder.is_dir():
            for q in folder.iterdir():
                if q.is_dir() and (q / "results.json").exists():
                    by_name.setdefault(q.name, {})[root] = q / "results.json"
    out = []
    for name in sorted(by_name):
        root, results = newest(by_name[name])
        p = results.parent
        result = _read_json(results) or {}
        suites = result.get("suites") or {}
        out.append(
            {
                "name": p.name,
                "success": result.get("success"),
                "suites": {
                    name: {
                        "success": s.get("success"),
                        "rows": s.get("rows"),
                        "expectations": len(s.get("expectations") or []),
                        "failed": sum(not e.get("success") for e in s.get("expectations") or []),
                    }
                    for name, s in suites.items()
                },
                "failures": (result.get("failures") or [])[:10],
                "docs": (p / "index.html").exists(),
                "root": root,
                "when": results.stat().st_mtime,
            }
        )
    return out


def gate_view(paths: Paths, domain: str) -> dict[str, Any] | None:
    """The domain's latest gate report with its plots: the primary metric per version, the slices."""
    latest = latest_gate(paths, domain)
    report = _read_json(latest[1]) if latest else None
    if report is None:
        return None
    checks = report.get("checks") or []
    primary = next((c for c in checks if str(c.get("name", "")).startswith("primary:")), None)
    charts = []
    if primary:
        n = primary.get("numbers") or {}
        metric = primary["name"].split(":", 1)[1]
        charts.append(
            interval_chart(
                [
                    Row(f"champion: {report.get('champion', '')}"[:40], n.get("champion_mean"), kind="champion"),
                    Row(
                        f"challenger: {report.get('challenger', '')}"[:40], n.get("challenger_mean"), kind="challenger"
                    ),
                ],
                f"{metric} on the test units, per version",
            )
        )
        charts.append(
            interval_chart(
                [
                    Row(
                        "challenger - champion",
                        n.get("difference"),
                        n.get("ci95_low"),
                        n.get("ci95_high"),
                        "difference",
                    )
                ],
                f"{metric} difference, 95% paired-bootstrap interval (dashed: required margin)",
                reference=primary.get("threshold"),
            )
        )
    slice_rows = []
    for c in checks:
        if str(c.get("name", "")).startswith("slice:"):
            n = c.get("numbers") or {}
            label = c["name"].split(":", 1)[1]
            slice_rows.append(Row(f"{label} champion", n.get("champion_mean"), kind="champion"))
            slice_rows.append(Row(f"{label} challenger", n.get("challenger_mean"), kind="challenger"))
    if slice_rows:
        charts.append(interval_chart(slice_rows[:40], "slices: champion vs challenger mean"))
    html = latest[1].with_suffix(".html").exists()
    return {"domain": domain, "report": report, "charts": [c for c in charts if c], "root": latest[0], "html": html}


def offline_chart(paths: Paths, domain: str) -> str:
    """The evaluation's models on the primary metric with their intervals (metrics/<domain>.json)."""
    latest = newest({name: r.metrics_file(domain) for name, r in report_roots(paths).items()})
    metrics = _read_json(latest[1]) if latest else None
    if not metrics:
        return ""
    models = metrics.get("models") or {}
    primary = metrics.get("primary")
    metric = next((k for k in (models.get(primary) or {}) if not k.endswith(("_ci", "_n"))), None)
    if metric is None:
        return ""
    rows = []
    for name, m in models.items():
        ci = m.get(f"{metric}_ci") or (None, None)
        rows.append(Row(name, m.get(metric), ci[0], ci[1], "challenger" if name == primary else ""))
    return interval_chart(rows, f"offline {metric} with 95% intervals (latest evaluation; highlighted: primary)")


def reports_overview(paths: Paths) -> dict[str, Any]:
    return {
        "data_checks": data_checks(paths),
        "gates": [g for g in (gate_view(paths, d) for d in DOMAINS) if g],
        "offline": {d: offline_chart(paths, d) for d in DOMAINS},
        "runs": incubation_runs(paths),
    }
