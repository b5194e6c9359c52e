"""The feedback loop: serving logs -> implicit judgments -> drift monitor -> (maybe) a new incubation.

On a schedule (HATCHERY_FEEDBACK_SCHEDULE, default hourly; `none` for manual runs only):
    collect_logs        the feedback store's retention and size cap, and what it holds (pipelines.monitor.collect)
    implicit_judgments  the DVC stage: impressions + feedback -> position-debiased judgments
    monitor             (beside the judgments) every charter's drift checks against its champion's training data
    retrain             after both, when a charter's decision says so (drift, or enough new feedback), updates the
                        `hatchery_retrain` asset with the charter and the reason in the event's extra; the
                        `incubation` DAG is scheduled on that asset and starts by itself. No trigger: skipped
                        (a skipped task updates no asset), with the reason in its log.

Run parameters: `charters` (default every charter) and `overrides` (dotted params.yaml keys, as the incubation
DAG takes them; they travel in the asset event to the incubation run, so it works in the same workspace).

Wiring only: every task body is one call into pipelines.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import Asset, Param, dag, task

REPO = Path(__file__).resolve().parent.parent
POOL = "hatchery_dvc"
# dags/incubation.py is scheduled on this same asset (same name and URI): one asset, two files.
RETRAIN = Asset(name="hatchery_retrain", uri="hatchery://feedback/retrain", group="hatchery")
_SCHEDULE = os.environ.get("HATCHERY_FEEDBACK_SCHEDULE", "@hourly")
SCHEDULE = None if _SCHEDULE.strip().lower() in ("", "none") else _SCHEDULE


def _pipelines():
    """The pipelines package, imported at run time (parsing must not import the ML stack)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import pipelines.dvc_stage
    import pipelines.monitor

    return pipelines


def _emit(decision: dict, outlet_events) -> dict:
    """Annotate the asset event with the retrain request, or skip (no event) when nothing triggered."""
    from airflow.sdk.exceptions import AirflowSkipException

    if not decision["trigger"]:
        raise AirflowSkipException(f"no retrain: {decision['reports']}")
    extra = {k: decision[k] for k in ("charter", "reason", "overrides", "report", "monitor_until")}
    outlet_events[RETRAIN].extra = extra
    return extra


@dag(
    dag_id="feedback",
    description="Serving feedback -> implicit judgments -> drift monitor -> a new incubation when needed",
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["hatchery", "feedback", "mlops"],
    default_args={"owner": "hatchery", "retries": 2, "retry_delay": timedelta(seconds=30)},
    params={
        "charters": Param([], type="array", description="charters to monitor (empty: every charter)"),
        "overrides": Param({}, type="object", description="dotted params.yaml overrides, passed on to incubation"),
    },
    doc_md=__doc__,
)
def feedback():
    @task
    def collect_logs() -> dict:
        return _pipelines().monitor.collect()

    @task(pool=POOL)
    def implicit_judgments(params=None) -> dict:
        return _pipelines().dvc_stage.run_stage("implicit_judgments", params["overrides"])

    @task
    def monitor(params=None) -> dict:
        return _pipelines().monitor.run_all(charters=params["charters"] or None, overrides=params["overrides"])

    # The decision is the monitor's: a retry (of a lost process) only repeats it, and the event is sent on success.
    @task(outlets=[RETRAIN])
    def retrain(decision: dict, outlet_events=None) -> dict:
        return _emit(decision, outlet_events)

    # The monitor does not wait for the judgments (a broken judgments step must not blind it, and its window
    # is read as early as possible); the retrain request does: the incubation it starts trains on them.
    collected, decision = collect_logs(), monitor()
    judgments = implicit_judgments()
    collected >> [judgments, decision]
    judgments >> retrain(decision)


feedback()
