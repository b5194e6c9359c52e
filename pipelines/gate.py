"""gate: the challenger against the champion on the same test split, held to the charter.

Reads (artifacts/paths.py) the domain's per-unit table (slice columns, `<model>__<metric>`), its metrics
json ("primary": the model the bundle implements) and the bundle, on which the guardrails are measured.
The champion is the registered model's `champion` alias, with the per-unit values its own gate logged
(gate/per_unit.parquet of the run its `gate_run_id` tag names) joined on the unit id; before any
champion exists it is the best baseline of the same table (components/gates.py has every rule).

Writes reports/gates/<domain>.{json,html} and MLflow run `gate` with both and the per-unit values.
Pass: the registered version takes the `challenger` alias. Fail: GateFailed; the registry is unchanged.

Usage: python -m pipelines.gate <charter name>
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from artifacts.bundles import catalog_ids, load_bundle, top_ids
from artifacts.files import write_json
from artifacts.paths import Paths
from artifacts.registry import CHAMPION, GATE_RUN_TAG, Registry
from artifacts.reports import render
from components import gates as g
from components.charter import Charter
from components.gates import GateFailed
from components.schema import unit_column
from pipelines.common import load_params, mlflow_run

log = logging.getLogger(__name__)

STEP = "gate"
PER_UNIT_ARTIFACT = "gate/per_unit.parquet"


def logged_champion(
    registry: Registry, serving, per_unit: pd.DataFrame, unit_id: str, metric: str
) -> tuple[str, np.ndarray] | None:
    """(label, values aligned to per_unit rows) of the serving champion version, or None without one."""
    if serving is None:
        return None
    label = f"{registry.name} v{serving.version} (champion)"
    run_id = registry.tag(serving, GATE_RUN_TAG)
    if not run_id:
        raise GateFailed(f"{label} has no {GATE_RUN_TAG} tag: its per-unit results are unknown, cannot compare paired")
    logged = pd.read_parquet(registry.client.download_artifacts(run_id, PER_UNIT_ARTIFACT))
    return label, g.align_champion(per_unit, logged, unit_id, metric, label)


def measure_bundle(domain: str, folder: Path, requests: list[Any], k: int) -> dict[str, Any]:
    """Time single requests through the loaded bundle; guardrail numbers of their top-k lists.

    One warm-up request is not timed (lazy initialisation is not serving latency).
    """
    import torch

    # Timed on the CPU path the service runs without a GPU (search: the ONNX query tower).
    model = load_bundle(domain, folder, **({"device": "cpu"} if domain == "search" else {}))
    # One intra-op thread, as one serving worker per core runs: on a shared CPU, more threads than
    # free cores turn a 40 ms query into a 1 s one and the number would measure the neighbours.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if requests:
            top_ids(domain, model, requests[0], k)
        latencies, lists = [], []
        for req in requests:
            start = time.perf_counter()
            items = top_ids(domain, model, req, k)
            latencies.append((time.perf_counter() - start) * 1000.0)
            lists.append(items)
    finally:
        torch.set_num_threads(threads)
    size_mb = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**20
    return {**g.guardrail_measures(latencies, lists, catalog_ids(domain, model), k), "size_mb": size_mb, "threads": 1}


def alongside(metrics: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    """The primary model's test number and those of the models its metrics json reports alongside it
    ("reported_alongside"; search: the content-only ranker), each with its interval and feature groups,
    for the report. Shown, not gated: the decision is on the primary."""
    models = metrics.get("models") or {}
    groups = metrics.get("feature_groups") or {}
    names = [metrics.get("primary"), *(metrics.get("reported_alongside") or [])]
    return [
        {
            "model": n,
            "role": "primary" if i == 0 else "alongside",
            "value": models[n].get(metric),
            "ci": models[n].get(f"{metric}_ci"),
            "feature_groups": groups.get(n),
        }
        for i, n in enumerate(names)
        if n in models
    ]


def write_report(paths: Paths, domain: str, report: dict[str, Any]) -> None:
    write_json(paths.gate_report(domain), report)
    paths.gate_report(domain, "html").write_text(render("gate.html", report=report))


def run(charter: Charter, paths: Paths, seed: int = 0) -> dict[str, Any]:
    """Gate the workspace's challenger; return the report dict on pass, raise GateFailed otherwise."""
    domain, metric, name = charter.domain, charter.primary_metric.name, charter.registered_model
    table = g.UNIT_TABLES[domain]
    for path in (paths.per_unit(domain), paths.metrics_file(domain), paths.bundle(domain)):
        if not path.exists():
            raise GateFailed(f"{path} is missing: run the charter's stages ({', '.join(charter.stages)}) first")
    per_unit = pd.read_parquet(paths.per_unit(domain))
    metrics = json.loads(paths.metrics_file(domain).read_text())
    primary = metrics.get("primary")
    if not primary or unit_column(primary, metric) not in per_unit:
        raise GateFailed(
            f"{paths.metrics_file(domain)} names primary {primary!r} but {paths.per_unit(domain)} has no "
            f"{unit_column(str(primary), metric)} column"
        )

    registry = Registry(name, paths)
    version = registry.version_of_bundle(paths.bundle(domain), paths.registered(domain))
    serving = registry.version(CHAMPION)
    champ = logged_champion(registry, serving, per_unit, table.unit_id, metric)
    mine = per_unit[unit_column(primary, metric)].to_numpy(dtype=float)
    challenger_version = version.version if version else None
    if champ is not None and g.is_already_champion(challenger_version, serving.version, mine, champ[1]):
        report = g.already_champion_report(domain, charter.name, name, str(challenger_version))
        write_report(paths, domain, report)
        log.info("%s", report["reason"])
        return report
    if champ is None:
        base = g.best_baseline(per_unit, metric, primary, metrics.get("baselines") or table.baselines)
        champ = (f"{base} (best baseline; no {name} champion yet)", per_unit[unit_column(base, metric)].to_numpy(float))
    champion_label, champion = champ

    # The benchmark requests: the first N test units in table order (deterministic, same for every run).
    gr = charter.guardrails
    requests = per_unit[table.request].head(gr.benchmark_requests).tolist()
    measured = measure_bundle(domain, paths.bundle(domain), requests, gr.k)
    decision = g.decide(charter, per_unit, primary, champion_label, champion, measured, seed)
    report = {
        **decision.to_dict(),
        "charter": charter.name,
        "measured": measured,
        "alongside": alongside(metrics, metric),
        "context": {
            "registered_model": name,
            "challenger_version": challenger_version,
            "champion": champion_label,
            "test_units": len(per_unit),
            "primary_metric": f"{metric} (min improvement {charter.primary_metric.min_improvement}, "
            f"confidence {charter.primary_metric.confidence})",
        },
    }
    write_report(paths, domain, report)

    with mlflow_run(STEP, load_params(), paths, inputs=[paths.per_unit(domain)], sections=()) as mrun:
        import mlflow

        tags = {"charter": charter.name, "domain": domain, "gate_passed": str(decision.passed)}
        mlflow.set_tags({**tags, "champion": champion_label})
        mlflow.log_metrics({k: float(v) for k, v in measured.items() if isinstance(v, int | float) and np.isfinite(v)})
        for c in decision.checks:
            if np.isfinite(c.value):
                mlflow.log_metric(g.metric_name(c.name), c.value)
        mlflow.log_artifact(str(paths.gate_report(domain)), "gate")
        mlflow.log_artifact(str(paths.gate_report(domain, "html")), "gate")
        # What a later gate reads back when this version is the champion (logged_champion).
        keep = per_unit[[table.unit_id, *[c for c in charter.slices.columns if c in per_unit]]].copy()
        keep[unit_column(g.CHALLENGER_MODEL, metric)] = per_unit[unit_column(primary, metric)]
        with tempfile.TemporaryDirectory() as tmp:
            keep.to_parquet(Path(tmp) / "per_unit.parquet", index=False)
            mlflow.log_artifact(str(Path(tmp) / "per_unit.parquet"), "gate")
        report["mlflow_run_id"] = mrun.info.run_id
        write_json(paths.gate_report(domain), report)

    if not decision.passed:
        raise GateFailed(decision.reason())
    if version is None:
        stage = f"register_{domain}"
        raise GateFailed(
            f"the challenger passed, but {name} has no registered version of this bundle (was the MLflow store "
            f"reset?): run `dvc repro -f {stage}` (DVC skips a cached {stage}), then trigger again"
        )
    registry.set_challenger(version.version, report["mlflow_run_id"])
    log.info("%s", decision.reason())
    return report


if __name__ == "__main__":
    from pipelines.common import configure_logging
    from pipelines.requirements import load_charter

    configure_logging()
    run(load_charter(sys.argv[1]), Paths())
