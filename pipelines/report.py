"""report: one HTML page per lifecycle run — every stage's outcome, the metrics against the champion,
the gate's decisions, whether training hit its budget, and the rollout: each phase's decision with
its sample, always-valid interval and power, the interleaving verdict, and the audit trail.

Reads the run's ledger (pipelines/lifecycle.py) and plan, the workspace's metrics/<domain>.json and
the gate report. Writes <HATCHERY_HOME>/reports/incubation/<run>/{index.html, summary.json} and
logs both to MLflow (run `report`). Raises LifecycleFailed, after writing, when any expected stage
failed or never ran — so the Airflow run ends red with the reason.

Usage: python -m pipelines.report <charter name> <airflow run id>
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from artifacts.files import read_json, write_json
from artifacts.paths import Paths, tracking_uri
from artifacts.reports import render as render_page
from pipelines.common import load_params, mlflow_run

log = logging.getLogger(__name__)

STEP = "report"


class LifecycleFailed(RuntimeError):
    """At least one stage of the run failed or did not run; the message names each with its reason."""


def expected_tasks(plan: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(group, task) in lifecycle order; without a plan only the charter check is known."""
    tasks = [("requirements", "validate_charter")]
    if plan:
        tasks += [("requirements", s) for s in plan["data_stages"]]
        tasks += [("training", s) for s in plan["stages"]]
        tasks += [("validation", "gate"), ("packaging", "package"), ("rollout", "rollout")]
    return tasks


def _budgets(metrics_dir: Path) -> list[tuple[str, dict]]:
    """Every `budget` summary (components/budget.Deadline.summary) the training steps wrote."""
    found = []
    for path in sorted(metrics_dir.glob("*.json")) if metrics_dir.is_dir() else []:
        data = read_json(path) or {}
        stack = [(path.stem, data)]
        while stack:
            where, node = stack.pop()
            if isinstance(node, dict):
                if isinstance(node.get("budget"), dict):
                    found.append((where, node["budget"]))
                stack += [(f"{where}.{k}", v) for k, v in node.items() if isinstance(v, dict) and k != "budget"]
    return found


def render(
    summary: dict[str, Any], metrics: dict | None, gate: dict | None, budgets: list, rollout: dict | None = None
) -> str:
    """The run's page (artifacts/templates/incubation.html): stages, metrics by role, the gate, budgets, rollout."""
    return render_page("incubation.html", summary=summary, metrics=metrics, gate=gate, budgets=budgets, rollout=rollout)


def rollout_section(ledger_entry: dict | None) -> dict | None:
    """The rollout task's result (pipelines/rollout.summarize) with audit times as UTC strings, or None."""
    import datetime as dt

    result = (ledger_entry or {}).get("result")
    if not result:
        return None
    audit = [
        {**a, "when": dt.datetime.fromtimestamp(float(a["when"]), dt.UTC).strftime("%Y-%m-%d %H:%M:%S")}
        for a in result.get("audit") or []
    ]
    return {**result, "audit": audit, "phases": result.get("phases") or []}


def run(charter: str, run_id: str | None, paths: Paths | None = None, airflow_url: str | None = None) -> dict[str, Any]:
    from components.charter import UNIT_METRICS

    paths = paths or Paths()
    folder = paths.incubation_run(run_id, charter)
    plan = read_json(folder / "plan.json")
    ledger = {p.stem: read_json(p) for p in sorted((folder / "stages").glob("*.json"))}
    stages = []
    for group, task in expected_tasks(plan):
        entry = ledger.get(task) or {"status": "not_run", "note": "did not run (an upstream task failed)"}
        stages.append({"group": group, "task": task, **{k: v for k, v in entry.items() if k not in ("group", "task")}})
    bad = [r for r in stages if r["status"] != "success"]
    # Packaging fails while the serving stage has no service yet: reported, but the first failure is the headline.
    rollout = rollout_section(ledger.get("rollout"))
    headline = (
        f"{bad[0]['task']} {bad[0]['status']}: {bad[0].get('reason') or bad[0].get('note')}"
        if bad
        else "every stage passed: the challenger is validated, packaged and rolled out"
        + (f" ({rollout['phase']}: {rollout['reason']})" if rollout else "")
    )
    workspace = Path(plan["workspace"]) if plan else None
    domain = plan["domain"] if plan else None
    metrics = read_json(Paths(workspace).metrics_file(domain)) if workspace else None
    gate = read_json(folder / "gate.json")
    summary = {
        "charter": charter,
        "run_id": run_id,
        "status": "failed" if bad else "success",
        "headline": headline,
        "workspace": str(workspace) if workspace else None,
        # Why the run started: the feedback loop's retrain request (dags/feedback.py), or None for a manual run.
        "trigger": plan.get("trigger") if plan else None,
        "stages": stages,
        "unit_metrics": list(UNIT_METRICS.get(domain, ())) + (["rerank_ndcg_at_10"] if domain == "search" else []),
        "gate": {k: gate[k] for k in ("passed", "reason", "champion", "challenger")} if gate else None,
        "rollout": {k: rollout.get(k) for k in ("phase", "champion", "previous_champion", "reason", "mlflow_run_id")}
        if rollout
        else None,
        "links": {
            "Airflow run": airflow_url,
            "MLflow": tracking_uri(paths),
            "gate report": "gate.html" if gate else None,
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.html").write_text(
        render(summary, metrics, gate, _budgets(Paths(workspace).metrics) if workspace else [], rollout)
    )
    write_json(folder / "summary.json", summary)
    with mlflow_run(STEP, load_params(), paths, sections=()) as mrun:
        import mlflow

        mlflow.set_tags({"charter": charter, "airflow_run_id": str(run_id), "status": summary["status"]})
        mlflow.log_artifact(str(folder / "index.html"), "incubation")
        mlflow.log_artifact(str(folder / "summary.json"), "incubation")
        if gate:
            mlflow.log_artifact(str(folder / "gate.html"), "incubation")
        summary["mlflow_run_id"] = mrun.info.run_id
    write_json(folder / "summary.json", summary)
    log.info("incubation report: %s", folder / "index.html")
    if bad:
        raise LifecycleFailed(
            f"incubation {charter} failed — report {folder / 'index.html'}:\n"
            + "\n".join(f"  {r['group']}/{r['task']}: {r['status']}: {r.get('reason') or r.get('note')}" for r in bad)
        )
    return summary


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    run(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
