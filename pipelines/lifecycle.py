"""The incubation lifecycle's steps as one-call functions: what each Airflow task body calls.

Every function records its outcome (status, seconds, result or the failure's reason) in the run's
ledger, <HATCHERY_HOME>/reports/incubation/<run>/stages/<task>.json, which pipelines/report.py
turns into the run's HTML report; so a failure anywhere is named in the task log (the raised
error) and in the report. No Airflow import here: the same calls run from a shell.

Outputs of a run live in its workspace (pipelines/dvc_stage.py); MLflow and the ledger stay in
HATCHERY_HOME.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from artifacts.files import write_json
from artifacts.paths import Paths, tracking_uri

log = logging.getLogger(__name__)


@contextlib.contextmanager
def recorded(run_id: str | None, charter: str, task: str, group: str) -> Iterator[dict[str, Any]]:
    """Write the task's outcome to the ledger whatever happens; re-raise failures unchanged."""
    entry: dict[str, Any] = {"task": task, "group": group, "started": time.time()}
    path = Paths().incubation_run(run_id, charter) / "stages" / f"{task}.json"
    try:
        yield entry
        entry["status"] = "success"
    except BaseException as exc:
        entry["status"] = "failed"
        entry["reason"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        entry["seconds"] = round(time.time() - entry["started"], 1)
        write_json(path, entry)


@contextlib.contextmanager
def _workspace_paths(plan: dict[str, Any]) -> Iterator[Paths]:
    # The workspace holds this run's outputs; MLflow stays the one store of HATCHERY_HOME. On a cluster
    # (HATCHERY_DVC_REMOTE) it is this task's own, pulled from the shared DVC remote (pipelines/dvc_stage.py).
    from pipelines.dvc_stage import materialised

    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri(Paths()))
    with materialised(plan) as root:
        yield Paths(root=Path(root))


def requirements(
    charter: str, overrides: dict[str, Any] | None, run_id: str | None, trigger: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Validate the charter and overrides; the returned plan drives every later task.

    trigger: why the run started when the feedback loop's asset event started it ({"reason", "asset",
    "source", ...}, dags/incubation.py); kept in the plan, so the ledger, MLflow and the report show it.
    """
    from pipelines import requirements as step

    with recorded(run_id, charter, "validate_charter", "requirements") as entry:
        plan = step.run(charter, overrides or {})
        if trigger:
            plan["trigger"] = trigger
        entry["result"] = plan
        write_json(Paths().incubation_run(run_id, charter) / "plan.json", plan)
    return plan


def dvc_stage(stage: str, plan: dict[str, Any], run_id: str | None, group: str, budget_env: dict | None = None) -> dict:
    """`dvc repro <stage>` in the plan's workspace (pipelines/dvc_stage.py)."""
    from pipelines.dvc_stage import run_stage

    with recorded(run_id, plan["charter"], stage, group) as entry:
        entry["result"] = run_stage(stage, plan["overrides"], budget_env)
    return entry["result"]


def training_plan(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """One item per charter stage, all sharing the budget clock that starts now."""
    from pipelines.budget import budget_env

    env = budget_env(plan["budget"]["cpu_minutes"], plan["budget"]["gpu_hours"], time.time())
    return [{"stage": stage, "budget_env": env} for stage in plan["stages"]]


def train(item: dict[str, Any], plan: dict[str, Any], run_id: str | None) -> dict:
    return dvc_stage(item["stage"], plan, run_id, "training", item["budget_env"])


def gate(plan: dict[str, Any], run_id: str | None) -> dict:
    """Challenger vs champion; the gate report is copied beside the run's report."""
    from pipelines import gate as step
    from pipelines.requirements import load_charter

    charter = load_charter(plan["charter"])
    with recorded(run_id, plan["charter"], "gate", "validation") as entry, _workspace_paths(plan) as paths:
        try:
            report = step.run(charter, paths)
            entry["result"] = {
                "passed": True,
                "reason": report["reason"],
                "report": str(Paths().incubation_run(run_id, plan["charter"]) / "gate.html"),
                "mlflow_run_id": report["mlflow_run_id"],
            }
        finally:
            folder = Paths().incubation_run(run_id, plan["charter"])
            folder.mkdir(parents=True, exist_ok=True)
            for ext in ("json", "html"):
                src = paths.gate_report(charter.domain, ext)
                if src.exists():
                    (folder / f"gate.{ext}").write_bytes(src.read_bytes())
            log.info("gate report: file://%s", folder / "gate.html")
    return entry["result"]


def package(plan: dict[str, Any], run_id: str | None) -> dict:
    from pipelines import package as step
    from pipelines.requirements import load_charter

    with recorded(run_id, plan["charter"], "package", "packaging") as entry, _workspace_paths(plan) as paths:
        entry["result"] = step.run(load_charter(plan["charter"]), paths)
    return entry["result"]


def report(charter: str, run_id: str | None, airflow_url: str | None = None) -> dict:
    """Write the run's HTML report (always); raise LifecycleFailed when any stage failed or never ran."""
    from pipelines import report as step

    return step.run(charter, run_id, airflow_url=airflow_url)


class ServiceUnavailable(RuntimeError):
    """No Hatchery service answers at HATCHERY_SERVICE_URL: the rollout has nothing to route."""


def service_url() -> str:
    return os.environ.get("HATCHERY_SERVICE_URL", "http://127.0.0.1:3000").rstrip("/")


def _require_service(url: str, timeout_s: float = 5.0) -> None:
    """Any HTTP answer on /readyz will do: a service started before the first champion is not ready yet."""
    import httpx

    try:
        httpx.get(f"{url}/readyz", timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(
            f"no Hatchery service answers at {url}/readyz ({type(exc).__name__}: {exc}). Start one with the same "
            "HATCHERY_HOME and MLFLOW_TRACKING_URI as Airflow: `make run` starts it, or "
            "`bentoml serve services.service:Hatchery` (set HATCHERY_SERVICE_URL if it listens elsewhere)"
        ) from exc


def rollout(plan: dict[str, Any], run_id: str | None) -> dict:
    """Take the gated challenger through the charter's shadow -> canary -> full plan on the live service.

    Works on the service's own outputs root (Paths(), HATCHERY_HOME), not the run's workspace: the rollout
    state, request and feedback logs are the service's; the replayed traffic comes from the run's workspace
    (its test split). Fails when no service answers, and when the rollout
    ends rolled back or paused (the reason is in the message). A re-run after the challenger already became
    champion changes nothing. Two runs rolling out the same domain at once: the second waits for the
    first's driver lease (HATCHERY_ROLLOUT_WAIT_S, default 3600 s), then refuses (RolloutBusy).
    """
    from artifacts.registry import CHALLENGER, CHAMPION, Registry
    from artifacts.rollout_store import RolloutStore
    from components.rollout import ACTIVE
    from pipelines import rollout as step
    from pipelines.common import load_params
    from pipelines.requirements import load_charter

    charter = load_charter(plan["charter"])
    with recorded(run_id, plan["charter"], "rollout", "rollout") as entry:
        url = service_url()
        _require_service(url)
        paths = Paths()
        os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri(paths))
        registry = Registry(charter.registered_model, paths)
        challenger, champion = registry.version(CHALLENGER), registry.version(CHAMPION)
        state = RolloutStore(paths, charter.domain).load()
        if state.phase not in (*ACTIVE, "paused") and (
            challenger is None or (champion is not None and str(champion.version) == str(challenger.version))
        ):
            if champion is None:
                raise RuntimeError(f"{charter.registered_model} has no `challenger` alias: nothing passed the gate")
            # Already rolled out (a re-run, or a retry after the promotion): nothing to move.
            entry["result"] = {
                "domain": charter.domain,
                "phase": state.phase,
                "champion": str(champion.version),
                "previous_champion": state.previous_champion.version if state.previous_champion else None,
                "reason": f"v{champion.version} is already the champion: nothing to roll out",
                "url": url,
                "phases": [],
                "audit": [],
            }
            return entry["result"]
        params = load_params(overrides=plan.get("overrides") or {})
        rp = params.rollout
        wait_s = float(os.environ.get("HATCHERY_ROLLOUT_WAIT_S", "3600"))
        # The simulated shoppers replay the run's own test split (in its workspace when it has overrides) and
        # click by the run's judgment scale (a shop's own data may grade 0..4); recommendation requests carry
        # the raw user ids of the run's own events.
        scale, users = params.data.search.relevance, params.data.recommend
        with _workspace_paths(plan) as data:
            result = step.run(
                charter,
                paths,
                url,
                rp,
                actor=f"airflow:{run_id}",
                lease_wait_s=wait_s,
                scale=scale,
                data=data,
                users=users,
            )
        entry["result"] = {**result, "url": url}
        if result["phase"] == "rolled_back":
            raise RuntimeError(f"the rollout was rolled back: {result['reason']}")
        if result["phase"] == "paused":
            raise RuntimeError(
                f"the rollout is paused: {result['reason']} (python -m pipelines.rollout resume|promote|rollback "
                f"{plan['charter']}, then clear this task)"
            )
    return entry["result"]
