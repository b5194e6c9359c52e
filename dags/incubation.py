"""The incubation lifecycle: charter -> data checks -> training -> validation gates -> packaging -> rollout -> report.

Trigger it from the UI (pick a charter), the CLI or the REST API with run parameters:
    airflow dags trigger incubation --conf '{"charter": "semantic_search", "overrides": {}}'
`overrides` are dotted params.yaml keys ({"data.search.path": "/data/mine"}); a run with overrides
works in its own DVC workspace (pipelines/dvc_stage.py) and never edits params.yaml.

It also starts by itself: the DAG is scheduled on the `hatchery_retrain` asset, which the `feedback` DAG
(dags/feedback.py) updates when its drift monitor or the new-feedback count says so. Such a run takes the
charter and overrides from the asset event's extra (the run's own params are the defaults then) and keeps
the reason in its plan and report. A manual trigger works as before, with its run parameters.

The rollout task drives the live service at HATCHERY_SERVICE_URL (default http://127.0.0.1:3000; `make run`
starts one) through the charter's shadow -> canary -> full plan.

Wiring only: every task body is one call into pipelines.lifecycle. Tasks that run DVC (or read and
write its outputs) share the `hatchery_dvc` pool of one slot, because DVC locks the repository.
The training stages come from the charter at run time (dynamic task mapping), so a new DVC stage
needs no change here.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import Asset, Param, TaskGroup, dag, task
from airflow.sdk.exceptions import AirflowFailException

REPO = Path(__file__).resolve().parent.parent
POOL = "hatchery_dvc"
CHARTERS_DIR = Path(os.environ.get("HATCHERY_CHARTERS_DIR") or REPO / "charters")
CHARTERS = sorted(p.stem for p in CHARTERS_DIR.glob("*.yaml")) or ["semantic_search"]
DEFAULT_CHARTER = "semantic_search" if "semantic_search" in CHARTERS else CHARTERS[0]
# The feedback loop's retrain request; dags/feedback.py declares the same asset (same name and URI) as its outlet.
RETRAIN = Asset(name="hatchery_retrain", uri="hatchery://feedback/retrain", group="hatchery")


def _lifecycle():
    """pipelines.lifecycle, imported at run time (parsing must not import the ML stack)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import pipelines.lifecycle

    return pipelines.lifecycle


def _request(params: dict, events) -> dict:
    """What this run incubates: the latest retrain asset event's charter and overrides when the asset started
    the run (events: the context's triggering_asset_events), else the run's params (a manual trigger).

    Several events collapsed into one run (they arrived before the scheduler looked) are listed in the
    trigger; the feedback DAG sends one charter per run, so they name the same charter in practice."""
    found = sorted((events or {}).get(RETRAIN, []), key=lambda e: e.timestamp)
    if not found:
        return {"charter": params["charter"], "overrides": params["overrides"], "trigger": None}
    latest = found[-1]
    extra = dict(latest.extra or {})
    trigger = {
        "asset": RETRAIN.name,
        "reason": extra.get("reason", ""),
        "report": extra.get("report"),
        "source": f"{latest.source_dag_id}/{latest.source_run_id}",
        "timestamp": latest.timestamp.isoformat(),
        "events": len(found),
        "charters": sorted({str((e.extra or {}).get("charter")) for e in found}),
    }
    return {
        "charter": extra.get("charter") or params["charter"],
        "overrides": extra.get("overrides") or {},
        "trigger": trigger,
    }


def _decided(step, *args, **kwargs):
    """Call a step whose failure is a decision (a bad charter, a run that failed): its error is raised as
    AirflowFailException, which Airflow does not retry. The task's retries stay for failures around the body:
    a worker lost, or the execution API not answering before the body started (on a loaded machine the first
    call after the API server started has taken 7.7 s), which would otherwise end the run at its first task."""
    try:
        return step(*args, **kwargs)
    except Exception as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def _airflow_url(run_id: str) -> str:
    base = os.environ.get("AIRFLOW__API__BASE_URL", "http://localhost:8080").rstrip("/")
    return f"{base}/dags/incubation/runs/{run_id}"


@dag(
    dag_id="incubation",
    description="Incubate a search or recommendation model against its charter, up to a packaged challenger",
    schedule=[RETRAIN],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=2,
    tags=["hatchery", "incubation", "mlops"],
    default_args={"owner": "hatchery", "retries": 2, "retry_delay": timedelta(seconds=20)},
    params={
        "charter": Param(DEFAULT_CHARTER, type="string", enum=CHARTERS, description="charters/<name>.yaml"),
        "overrides": Param(
            {}, type="object", description='dotted params.yaml overrides, e.g. {"data.search.path": "/data/mine"}'
        ),
    },
    doc_md=__doc__,
)
def incubation():
    # A bad charter fails the same way twice: not retried (_decided); the task's retries are for its process.
    @task
    def validate_charter(params=None, run_id=None, triggering_asset_events=None) -> dict:
        return _decided(_lifecycle().requirements, **_request(params, triggering_asset_events), run_id=run_id)

    @task(pool=POOL)
    def ingest(plan: dict, run_id=None) -> dict:
        return _lifecycle().dvc_stage("ingest", plan, run_id, "requirements")

    @task(pool=POOL)
    def validate(plan: dict, run_id=None) -> dict:
        return _lifecycle().dvc_stage("validate", plan, run_id, "requirements")

    @task(pool=POOL)
    def split(plan: dict, run_id=None) -> dict:
        return _lifecycle().dvc_stage("split", plan, run_id, "requirements")

    @task
    def plan_training(plan: dict) -> list:
        return _lifecycle().training_plan(plan)

    # One mapped instance per charter stage, labelled by stage; one at a time (upstream stages first).
    @task(pool=POOL, map_index_template="{{ task.op_kwargs['item']['stage'] }}", max_active_tis_per_dagrun=1)
    def train_stage(item: dict, plan: dict, run_id=None) -> dict:
        return _lifecycle().train(item, plan, run_id)

    # A failed gate is a decision (_decided: not retried); passing sets the `challenger` alias, which a retry
    # after a lost process sets again.
    @task(pool=POOL)
    def gate(plan: dict, run_id=None) -> dict:
        return _decided(_lifecycle().gate, plan, run_id)

    @task(pool=POOL)
    def package(plan: dict, run_id=None) -> dict:
        return _lifecycle().package(plan, run_id)

    # Retrying would replay a rollout that already decided (or wait on a service that is not there): no retries.
    # No pool: two runs rolling out one domain are serialised by the rollout's driver lease (the second waits,
    # then refuses), while search and recommendation roll out side by side.
    @task(retries=0)
    def rollout(plan: dict, run_id=None) -> dict:
        return _lifecycle().rollout(plan, run_id)

    # The run's verdict (LifecycleFailed) is not retried (_decided); a lost process is.
    @task(trigger_rule="all_done")
    def report(params=None, run_id=None, triggering_asset_events=None) -> dict:
        charter = _request(params, triggering_asset_events)["charter"]
        return _decided(_lifecycle().report, charter, run_id, _airflow_url(run_id))

    with TaskGroup("requirements", tooltip="charter validation, then the data checks") as requirements_tg:
        plan = validate_charter()
        ingest(plan) >> validate(plan) >> split(plan)
    with TaskGroup("training", tooltip="the charter's DVC stages") as training_tg:
        train_stage.partial(plan=plan).expand(item=plan_training(plan))
    with TaskGroup("validation", tooltip="challenger vs champion: metric, slices, guardrails") as validation_tg:
        gate(plan)
    with TaskGroup("packaging", tooltip="the challenger as a Bento") as packaging_tg:
        package(plan)
    requirements_tg >> training_tg >> validation_tg >> packaging_tg >> rollout(plan) >> report()


incubation()
