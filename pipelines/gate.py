"""gate: the challenger against the champion on the same test split, held to the charter.

Inputs (the evaluation steps' contract):
  models/<domain>/eval/per_<unit>.parquet  one row per test unit: slice columns, <model>__<metric>
  metrics/<domain>.json                    "primary": the model the registered bundle implements
  models/<domain>/bundle/                  the challenger bundle (guardrails are measured on it)

The champion is the registered model's `champion` alias: its per-unit values are the ones its own
gate logged (artifact gate/per_unit.parquet of the run named by the version's `gate_run_id` tag),
joined on the unit id — so both sides are scored on the same test units. Before any champion
exists (the first incubation) it is the best baseline of the same per-unit table by mean primary
metric: metrics json "baselines" when it lists them, else DOMAINS[domain].baselines — EVALUATION.md's
baselines and the untrained fusion of two of them; trained parts of the challenger (the fine-tuned
encoder alone, MF alone) are reported beside it but are not the champion.

Checks (components/gates.py): primary-metric improvement by paired bootstrap at the charter's
confidence; each slice's drop against the champion; guardrails on the bundle: p99 latency of
single requests, catalog coverage and exposure concentration of their top-k lists, size on disk.

Outputs: reports/gates/<domain>.{json,html}, MLflow run `gate` with both as artifacts.
Pass: the registered version gets the `challenger` alias (left alone when it already has it).
Fail: GateFailed with the reasons; nothing in the registry changes.

Usage: python -m pipelines.gate <charter name>
"""

from __future__ import annotations

import html
import json
import logging
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components import gates as g
from components import schema as s
from components.charter import Charter
from pipelines.common import Paths, content_hash, load_params, mlflow_run, write_json

log = logging.getLogger(__name__)

STEP = "gate"
CHAMPION, CHALLENGER = "champion", "challenger"
GATE_RUN_TAG = "gate_run_id"
PER_UNIT_ARTIFACT = "gate/per_unit.parquet"


class GateFailed(RuntimeError):
    """The challenger did not pass; the message lists each failed check with its numbers."""


@dataclass(frozen=True)
class DomainFiles:
    """Where one domain's evaluation and bundle live (relative to the workspace root), and which
    models of its per-unit table are baselines (EVALUATION.md's, plus untrained combinations of them)."""

    unit_id: str
    per_unit: str
    metrics: str
    bundle: str
    baselines: tuple[str, ...]


DOMAINS = {
    "search": DomainFiles(
        s.QUERY_ID,
        "models/search/eval/per_query.parquet",
        "metrics/search.json",
        "models/search/bundle",
        ("bm25", "zero_shot", "rrf_bm25_zero_shot"),
    ),
    "recommend": DomainFiles(
        s.USER_ID,
        "models/recommend/eval/per_user.parquet",
        "metrics/recommend.json",
        "models/recommend/bundle",
        ("popularity", "own_frequency", "item_knn", "ease"),
    ),
}


# --- champion --------------------------------------------------------------------------------------
def best_baseline(per_unit: pd.DataFrame, metric: str, primary: str, baselines: Sequence[str]) -> str:
    """The baseline with the best mean `metric` (never the primary itself)."""
    models = [c.removesuffix(f"__{metric}") for c in per_unit.columns if c.endswith(f"__{metric}")]
    candidates = [m for m in baselines if m in models and m != primary]
    if not candidates:
        raise GateFailed(f"none of the baselines {list(baselines)} has a {metric} column (models: {models})")
    return max(candidates, key=lambda m: (np.nanmean(per_unit[f"{m}__{metric}"].to_numpy(dtype=float)), m))


def _client(paths: Paths):
    import mlflow
    from mlflow import MlflowClient

    from pipelines.common import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(paths))
    return MlflowClient(tracking_uri(paths), registry_uri=tracking_uri(paths))


def alias_version(client, name: str, alias: str):
    """The version an alias points at, or None (no such model or alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def champion_values(client, name: str, per_unit: pd.DataFrame, unit_id: str, metric: str):
    """(label, values aligned to per_unit rows) of the registered champion, or None when there is none."""
    version = alias_version(client, name, CHAMPION)
    if version is None:
        return None
    label = f"{name} v{version.version} (champion)"
    run_id = (version.tags or {}).get(GATE_RUN_TAG)
    if not run_id:
        raise GateFailed(f"{label} has no {GATE_RUN_TAG} tag: its per-unit results are unknown, cannot compare paired")
    local = client.download_artifacts(run_id, PER_UNIT_ARTIFACT)
    champ = pd.read_parquet(local)
    col = f"{CHAMPION}__{metric}" if f"{CHAMPION}__{metric}" in champ else f"{CHALLENGER}__{metric}"
    if col not in champ:
        raise GateFailed(f"{label}: its gate artifact has no {metric} column")
    joined = per_unit[[unit_id]].merge(champ[[unit_id, col]], on=unit_id, how="left")
    overlap = joined[col].notna().mean() if len(joined) else 0.0
    if overlap < 0.9:
        raise GateFailed(
            f"{label} was evaluated on a different test split ({overlap:.0%} of today's test units match): "
            "re-evaluate the champion on the current split before gating"
        )
    return label, joined[col].to_numpy(dtype=float)


# --- guardrails on the bundle ------------------------------------------------------------------------
def _load_bundle(domain: str, folder: Path):
    """(catalog product ids, fn(request, k) -> product ids) for the domain's bundle loader."""
    if domain == "search":
        from pipelines.search_bundle import load_search_bundle

        model = load_search_bundle(folder, device="cpu")
        return [str(p) for p in model.product_ids], lambda q, k: [r["product_id"] for r in model.search(str(q), k=k)]
    from pipelines.recommend_bundle import load_recommend_bundle

    model = load_recommend_bundle(folder)
    return [str(p) for p in model.state.items], lambda u, k: [
        str(r["product_id"]) for r in model.recommend(str(u), k=k)
    ]


def bundle_size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**20


def measure_bundle(domain: str, folder: Path, requests: list[Any], k: int) -> dict[str, Any]:
    """Time single requests through the loaded bundle and collect their top-k lists.

    One warm-up request is not timed (lazy initialisation is not serving latency). Torch runs on one
    thread while timing.
    """
    import torch

    catalog, serve = _load_bundle(domain, folder)
    # One intra-op thread, as one serving worker per core runs: on a shared CPU, more threads than
    # free cores turn a 40 ms query into a 1 s one and the number would measure the neighbours.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if requests:
            serve(requests[0], k)
        latencies, lists = [], []
        for req in requests:
            start = time.perf_counter()
            items = serve(req, k)
            latencies.append((time.perf_counter() - start) * 1000.0)
            lists.append(items)
    finally:
        torch.set_num_threads(threads)
    counts = g.exposure_counts(lists, catalog)
    return {
        "requests": len(requests),
        "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else float("nan"),
        "latency_p99_ms": g.p99(latencies),
        "coverage": g.coverage(counts, len(requests) * k),
        "gini": g.gini(counts),
        "top1_share": g.top_share(counts, 0.01, slots=len(requests) * k),
        "size_mb": bundle_size_mb(folder),
        "catalog_size": len(catalog),
        "threads": 1,
    }


def guardrail_checks(charter: Charter, measured: dict[str, Any]) -> list[g.Check]:
    gr = charter.guardrails
    return [
        g.upper_limit_check("guardrail:latency_p99", measured["latency_p99_ms"], gr.latency_p99_ms, " ms"),
        g.lower_limit_check(f"guardrail:coverage@{gr.k}", measured["coverage"], gr.min_coverage),
        g.upper_limit_check(
            f"guardrail:exposure_{gr.exposure_measure}", measured[gr.exposure_measure], gr.max_exposure
        ),
        g.upper_limit_check("guardrail:model_size", measured["size_mb"], gr.max_model_size_mb, " MiB"),
    ]


# --- the decision ------------------------------------------------------------------------------------
def decide(
    charter: Charter,
    per_unit: pd.DataFrame,
    primary: str,
    champion_label: str,
    champion: np.ndarray,
    measured: dict[str, Any],
    seed: int = 0,
) -> g.GateReport:
    """All checks of one challenger (column `<primary>__<metric>`) against aligned champion values."""
    pm = charter.primary_metric
    chall = per_unit[f"{primary}__{pm.name}"].to_numpy(dtype=float)
    checks = [
        g.improvement_check(chall, champion, pm.name, pm.min_improvement, pm.confidence, pm.bootstrap_resamples, seed)
    ]
    for col in charter.slices.columns:
        if col not in per_unit:
            checks.append(
                g.Check(
                    f"slice:{col}",
                    False,
                    float("nan"),
                    charter.slices.max_drop,
                    f"slice column {col!r} missing from the per-unit table",
                )
            )
            continue
        checks += g.slice_checks(
            chall,
            champion,
            per_unit[col].astype(str).to_numpy(),
            col,
            charter.slices.max_drop,
            charter.slices.min_units,
        )
    checks += guardrail_checks(charter, measured)
    return g.GateReport(charter.domain, primary, champion_label, tuple(checks))


def metric_name(check: str) -> str:
    """An MLflow-safe metric name for a check ("slice:query_length=4+" -> "slice.query_length.4plus")."""
    return re.sub(
        r"[^A-Za-z0-9_.\-/ ]", "_", check.replace("+", "plus").replace(":", ".").replace("=", ".").replace("@", "_at_")
    )


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page: the decision, then one row per check with its numbers."""
    ok = report["passed"]
    rows = "".join(
        f"<tr class='{'pass' if c['passed'] else ('skip' if not c['judged'] else 'fail')}'>"
        f"<td>{html.escape(c['name'])}</td><td>{'pass' if c['passed'] else ('not judged' if not c['judged'] else 'FAIL')}</td>"
        f"<td>{c['value']:.4g}</td><td>{c['threshold']:.4g}</td><td>{html.escape(c['detail'])}</td></tr>"
        for c in report["checks"]
    )
    meta = "".join(
        f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in report["context"].items()
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Gate: {html.escape(report["charter"])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
.pass td:nth-child(2){{color:#070}}.fail td:nth-child(2){{color:#b00;font-weight:bold}}.skip{{color:#888}}
.verdict{{font-size:1.3em;color:{"#070" if ok else "#b00"}}}</style></head><body>
<h1>Validation gate — {html.escape(report["charter"])} ({html.escape(report["domain"])})</h1>
<p class="verdict">{"PASS" if ok else "FAIL"}: {html.escape(report["reason"])}</p>
<ul>{meta}</ul>
<table><tr><th>check</th><th>result</th><th>value</th><th>threshold</th><th>numbers</th></tr>{rows}</table>
</body></html>"""


def registered_version(client, name: str, root: Path, domain: str):
    """The registered version of the workspace's bundle: models/<domain>/registered.json (the register
    step's output) when its bundle hash is the bundle's, else the version tagged with that hash; None if neither."""
    bundle = root / DOMAINS[domain].bundle
    hashed = content_hash(bundle)
    record = root / "models" / domain / "registered.json"
    if record.exists():
        from mlflow.exceptions import MlflowException

        info = json.loads(record.read_text())
        if info.get("name") == name and info.get("bundle_hash") == hashed:
            try:
                return client.get_model_version(name, str(info["version"]))
            except MlflowException:  # a stale record: the MLflow store was reset after registering
                log.warning("%s names %s v%s, which the registry does not have", record, name, info["version"])
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        return None
    versions = client.search_model_versions(f"name = '{name}' and tag.bundle_hash = '{hashed}'")
    return max(versions, key=lambda v: int(v.version)) if versions else None


def already_champion(charter: Charter, paths: Paths, name: str, version: str) -> dict[str, Any]:
    """The challenger is the serving champion (same bundle, unchanged data and code): nothing to gate.

    Gating a version against itself would fail the primary test (difference 0) and turn a plain re-run
    of the lifecycle red; the registry is left exactly as it is.
    """
    reason = f"{name} v{version} is already the champion (same bundle): nothing to gate"
    report = {
        "domain": charter.domain,
        "charter": charter.name,
        "challenger": f"{name} v{version}",
        "champion": f"{name} v{version} (champion)",
        "passed": True,
        "already_champion": True,
        "reason": reason,
        "checks": [],
        "context": {"registered_model": name, "challenger_version": version},
        "mlflow_run_id": None,
    }
    out = paths.reports / "gates"
    write_json(out / f"{charter.domain}.json", report)
    (out / f"{charter.domain}.html").write_text(render_html(report))
    log.info("%s", reason)
    return report


def run(charter: Charter, paths: Paths, seed: int = 0) -> dict[str, Any]:
    """Gate the workspace's challenger; return the report dict on pass, raise GateFailed otherwise."""
    files = DOMAINS[charter.domain]
    root = paths.root
    for rel in (files.per_unit, files.metrics, files.bundle):
        if not (root / rel).exists():
            raise GateFailed(f"{root / rel} is missing: run the charter's stages ({', '.join(charter.stages)}) first")
    per_unit = pd.read_parquet(root / files.per_unit)
    metrics = json.loads((root / files.metrics).read_text())
    primary = metrics.get("primary")
    metric = charter.primary_metric.name
    if not primary or f"{primary}__{metric}" not in per_unit:
        raise GateFailed(
            f"{files.metrics} names primary {primary!r} but {files.per_unit} has no {primary}__{metric} column"
        )

    client = _client(paths)
    name = charter.registered_model
    version = registered_version(client, name, root, charter.domain)
    serving = alias_version(client, name, CHAMPION)
    champ = champion_values(client, name, per_unit, files.unit_id, metric)
    if (
        champ is not None
        and version is not None
        and serving is not None
        and str(serving.version) == str(version.version)
    ):
        # Same registered bundle AND the same per-unit results as the champion's own gate: a re-run.
        mine = per_unit[f"{primary}__{metric}"].to_numpy(dtype=float)
        if np.allclose(mine, np.asarray(champ[1], dtype=float), equal_nan=True):
            return already_champion(charter, paths, name, str(version.version))
    if champ is None:
        base = best_baseline(per_unit, metric, primary, metrics.get("baselines") or files.baselines)
        champ = (f"{base} (best baseline; no {name} champion yet)", per_unit[f"{base}__{metric}"].to_numpy(dtype=float))
    champion_label, champion = champ

    # The benchmark requests: the first N test units in table order (deterministic, same for every run).
    gr = charter.guardrails
    request_col = s.QUERY if charter.domain == "search" else files.unit_id
    requests = per_unit[request_col].head(gr.benchmark_requests).tolist()
    measured = measure_bundle(charter.domain, root / files.bundle, requests, gr.k)
    decision = decide(charter, per_unit, primary, champion_label, champion, measured, seed)

    report = {
        **decision.to_dict(),
        "charter": charter.name,
        "measured": measured,
        "context": {
            "registered_model": name,
            "challenger_version": version.version if version else None,
            "champion": champion_label,
            "test_units": len(per_unit),
            "primary_metric": f"{metric} (min improvement {charter.primary_metric.min_improvement}, "
            f"confidence {charter.primary_metric.confidence})",
        },
    }
    out = paths.reports / "gates"
    write_json(out / f"{charter.domain}.json", report)
    (out / f"{charter.domain}.html").write_text(render_html(report))

    params = load_params()
    with mlflow_run(STEP, params, paths, inputs=[root / files.per_unit], sections=()) as mrun:
        import mlflow

        mlflow.set_tags(
            {
                "charter": charter.name,
                "domain": charter.domain,
                "gate_passed": str(decision.passed),
                "champion": champion_label,
            }
        )
        mlflow.log_metrics({k: float(v) for k, v in measured.items() if isinstance(v, int | float) and np.isfinite(v)})
        for c in decision.checks:
            if np.isfinite(c.value):
                mlflow.log_metric(metric_name(c.name), c.value)
        mlflow.log_artifact(str(out / f"{charter.domain}.json"), "gate")
        mlflow.log_artifact(str(out / f"{charter.domain}.html"), "gate")
        keep = per_unit[[files.unit_id, *[c for c in charter.slices.columns if c in per_unit]]].copy()
        keep[f"{CHALLENGER}__{metric}"] = per_unit[f"{primary}__{metric}"]
        with tempfile.TemporaryDirectory() as tmp:
            keep.to_parquet(Path(tmp) / "per_unit.parquet", index=False)
            mlflow.log_artifact(str(Path(tmp) / "per_unit.parquet"), "gate")
        report["mlflow_run_id"] = mrun.info.run_id
        write_json(out / f"{charter.domain}.json", report)

    if not decision.passed:
        raise GateFailed(decision.reason())
    if version is None:
        stage = f"register_{charter.domain}"
        raise GateFailed(
            f"the challenger passed, but {name} has no registered version of this bundle (was the MLflow store "
            f"reset?): run `dvc repro -f {stage}` (DVC skips a cached {stage}), then trigger again"
        )
    current = alias_version(client, name, CHALLENGER)
    if current is not None and current.version == version.version:
        log.info("%s v%s already holds the %s alias: nothing to change", name, version.version, CHALLENGER)
    else:
        client.set_model_version_tag(name, version.version, GATE_RUN_TAG, report["mlflow_run_id"])
        client.set_registered_model_alias(name, CHALLENGER, version.version)
        log.info("%s v%s is now the %s", name, version.version, CHALLENGER)
    log.info("%s", decision.reason())
    return report


if __name__ == "__main__":
    from pipelines.common import configure_logging
    from pipelines.requirements import load_charter

    configure_logging()
    run(load_charter(sys.argv[1]), Paths())
