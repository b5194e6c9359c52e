"""report: one HTML page per lifecycle run — every stage's outcome, the metrics against the champion,
the gate's decisions and whether training hit its budget.

Reads the run's ledger (pipelines/lifecycle.py) and plan, the workspace's metrics/<domain>.json and
the gate report. Writes <HATCHERY_HOME>/reports/incubation/<run>/{index.html, summary.json} and
logs both to MLflow (run `report`). Raises LifecycleFailed, after writing, when any expected stage
failed or never ran — so the Airflow run ends red with the reason.

Usage: python -m pipelines.report <charter name> <airflow run id>
"""

from __future__ import annotations

import html
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pipelines.common import Paths, load_params, mlflow_run, write_json

log = logging.getLogger(__name__)

STEP = "report"


class LifecycleFailed(RuntimeError):
    """At least one stage of the run failed or did not run; the message names each with its reason."""


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def expected_tasks(plan: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(group, task) in lifecycle order; without a plan only the charter check is known."""
    tasks = [("requirements", "validate_charter")]
    if plan:
        tasks += [("requirements", s) for s in plan["data_stages"]]
        tasks += [("training", s) for s in plan["stages"]]
        tasks += [("validation", "gate"), ("packaging", "package")]
    return tasks


def _budgets(metrics_dir: Path) -> list[tuple[str, dict]]:
    """Every `budget` summary (components/budget.Deadline.summary) the training steps wrote."""
    found = []
    for path in sorted(metrics_dir.glob("*.json")) if metrics_dir.is_dir() else []:
        data = _read(path) or {}
        stack = [(path.stem, data)]
        while stack:
            where, node = stack.pop()
            if isinstance(node, dict):
                if isinstance(node.get("budget"), dict):
                    found.append((where, node["budget"]))
                stack += [(f"{where}.{k}", v) for k, v in node.items() if isinstance(v, dict) and k != "budget"]
    return found


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, float) for x in v):
        return f"[{v[0]:.4f}, {v[1]:.4f}]"
    return html.escape("—" if v is None else str(v))


def render(summary: dict[str, Any], metrics: dict | None, gate: dict | None, budgets: list) -> str:
    esc = html.escape
    ok = summary["status"] == "success"
    stage_rows = "".join(
        f"<tr class='{r['status']}'><td>{esc(r['group'])}</td><td>{esc(r['task'])}</td><td>{esc(r['status'])}</td>"
        f"<td>{r.get('seconds', '')}</td><td><pre>{esc(str(r.get('reason') or r.get('note') or ''))[:3000]}</pre></td></tr>"
        for r in summary["stages"]
    )
    metric_html = "<p>No metrics (training did not finish).</p>"
    if metrics and isinstance(metrics.get("models"), dict):
        names = summary.get("unit_metrics") or []
        primary, champion = metrics.get("primary"), (gate or {}).get("champion", "")
        rows = ""
        for model, m in metrics["models"].items():
            role = "challenger" if model == primary else ("champion" if champion.startswith(f"{model} ") else "")
            cells = "".join(f"<td>{_fmt(m.get(k))} <small>{_fmt(m.get(f'{k}_ci'))}</small></td>" for k in names)
            rows += f"<tr class='{role}'><td>{esc(model)}</td><td>{role}</td>{cells}</tr>"
        head = "".join(f"<th>{esc(k)} <small>(95% CI)</small></th>" for k in names)
        metric_html = f"<table><tr><th>model</th><th>role</th>{head}</tr>{rows}</table>"
    gate_html = "<p>The gate did not run.</p>"
    if gate:
        checks = "".join(
            f"<tr class='{'success' if c['passed'] else ('skip' if not c['judged'] else 'failed')}'><td>{esc(c['name'])}</td>"
            f"<td>{'pass' if c['passed'] else ('not judged' if not c['judged'] else 'FAIL')}</td><td>{esc(c['detail'])}</td></tr>"
            for c in gate["checks"]
        )
        gate_html = (
            f"<p><b>{'PASS' if gate['passed'] else 'FAIL'}</b>: {esc(gate['reason'])} "
            f"(<a href='gate.html'>gate report</a>)</p><table><tr><th>check</th><th>result</th>"
            f"<th>numbers</th></tr>{checks}</table>"
        )
    budget_html = (
        "".join(
            f"<li>{esc(where)}: {'<b>budget reached — training stopped early, best checkpoint kept</b>' if b.get('exhausted') else 'within budget'}"
            f" ({_fmt(b.get('elapsed_s'))} s of {_fmt(b.get('budget_s'))} s on {esc(str(b.get('device')))})</li>"
            for where, b in budgets
        )
        or "<li>No training step reported its budget use.</li>"
    )
    links = "".join(f"<li><a href='{esc(u)}'>{esc(k)}</a></li>" for k, u in summary.get("links", {}).items() if u)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Incubation {esc(summary["charter"])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:80em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}pre{{margin:0;white-space:pre-wrap;max-width:60em}}
.success td:nth-child(3){{color:#070}}.failed td:nth-child(3),.failed td:nth-child(2){{color:#b00;font-weight:bold}}
.not_run{{color:#888}}.challenger{{background:#eef6ff}}.champion{{background:#f6f6f6}}
.verdict{{font-size:1.3em;color:{"#070" if ok else "#b00"}}}</style></head><body>
<h1>Incubation report — {esc(summary["charter"])}</h1>
<p class="verdict">{esc(summary["status"].upper())}: {esc(summary["headline"])}</p>
<p>Airflow run <code>{esc(str(summary["run_id"]))}</code> · workspace <code>{esc(str(summary.get("workspace")))}</code></p>
<ul>{links}</ul>
<h2>Stages</h2><table><tr><th>group</th><th>task</th><th>status</th><th>seconds</th><th>reason / note</th></tr>{stage_rows}</table>
<h2>Metrics on the test split (challenger vs champion and baselines)</h2>{metric_html}
<h2>Validation gate</h2>{gate_html}
<h2>Training budget</h2><ul>{budget_html}</ul>
</body></html>"""


def run(charter: str, run_id: str | None, paths: Paths | None = None, airflow_url: str | None = None) -> dict[str, Any]:
    from components.charter import UNIT_METRICS
    from pipelines.lifecycle import run_dir

    paths = paths or Paths()
    folder = run_dir(run_id, charter, paths)
    plan = _read(folder / "plan.json")
    ledger = {p.stem: _read(p) for p in sorted((folder / "stages").glob("*.json"))}
    stages = []
    for group, task in expected_tasks(plan):
        entry = ledger.get(task) or {"status": "not_run", "note": "did not run (an upstream task failed)"}
        stages.append({"group": group, "task": task, **{k: v for k, v in entry.items() if k not in ("group", "task")}})
    bad = [r for r in stages if r["status"] != "success"]
    # Packaging fails while the serving stage has no service yet: reported, but the first failure is the headline.
    headline = (
        f"{bad[0]['task']} {bad[0]['status']}: {bad[0].get('reason') or bad[0].get('note')}"
        if bad
        else "every stage passed: the challenger is validated and packaged"
    )
    workspace = Path(plan["workspace"]) if plan else None
    domain = plan["domain"] if plan else None
    metrics = _read(workspace / "metrics" / f"{domain}.json") if workspace else None
    gate = _read(folder / "gate.json")
    from pipelines.common import tracking_uri

    summary = {
        "charter": charter,
        "run_id": run_id,
        "status": "failed" if bad else "success",
        "headline": headline,
        "workspace": str(workspace) if workspace else None,
        "stages": stages,
        "unit_metrics": list(UNIT_METRICS.get(domain, ())) + (["rerank_ndcg_at_10"] if domain == "search" else []),
        "gate": {k: gate[k] for k in ("passed", "reason", "champion", "challenger")} if gate else None,
        "links": {
            "Airflow run": airflow_url,
            "MLflow": tracking_uri(paths),
            "gate report": "gate.html" if gate else None,
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.html").write_text(
        render(summary, metrics, gate, _budgets(workspace / "metrics") if workspace else [])
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
