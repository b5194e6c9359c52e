"""Airflow cluster policies of the cluster profile (infra/cluster/ is on the Airflow processes' PYTHONPATH).

GPU routing: a mapped training task whose DVC stage is listed in HATCHERY_GPU_STAGES goes to the Celery
queue HATCHERY_GPU_QUEUE (the profile: `gpu`); every other task stays on the default queue. The stage of
a mapped instance is only known at run time (the charter decides, through plan_training's list), so the
scheduler's task_instance_mutation_hook reads that list when it creates the mapped instances. Without
HATCHERY_GPU_QUEUE nothing is routed.

worker_hostname: the task instance's hostname is the Celery worker's name (HATCHERY_WORKER_NAME), so
the UI and the tests tell two workers on one machine apart ([core] hostname_callable).
"""

from __future__ import annotations

import json
import logging
import os
import socket

log = logging.getLogger(__name__)

TRAIN_TASK = "training.train_stage"
PLAN_TASK = "training.plan_training"


def worker_hostname() -> str:
    return os.environ.get("HATCHERY_WORKER_NAME") or socket.getfqdn()


def gpu_stages() -> set[str]:
    return {s.strip() for s in os.environ.get("HATCHERY_GPU_STAGES", "").split(",") if s.strip()}


def _planned_stage(task_instance) -> str | None:
    """The DVC stage of a mapped train_stage instance: item map_index of plan_training's XCom."""
    from airflow import settings
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    # A connection of its own, never the scheduler's scoped session: the hook runs in the middle of the
    # scheduler's transaction (creating the mapped instances), which must neither be committed nor flushed here.
    with settings.engine.connect() as conn:
        value = conn.execute(
            select(XComModel.value).where(
                XComModel.dag_id == task_instance.dag_id,
                XComModel.run_id == task_instance.run_id,
                XComModel.task_id == PLAN_TASK,
                XComModel.key == "return_value",
                XComModel.map_index == -1,
            )
        ).scalar()
    while isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, list) and 0 <= task_instance.map_index < len(value):
        item = value[task_instance.map_index]
        return item.get("stage") if isinstance(item, dict) else None
    return None


def task_instance_mutation_hook(task_instance, dag_run=None) -> None:
    queue = os.environ.get("HATCHERY_GPU_QUEUE")
    if (
        not queue
        or task_instance.task_id != TRAIN_TASK
        or task_instance.map_index is None
        or task_instance.map_index < 0
    ):
        return
    try:
        stage = _planned_stage(task_instance)
    except Exception:  # noqa: BLE001 - a policy must never break scheduling: the task keeps its queue
        log.exception("could not read the planned stage of %s", task_instance)
        return
    if stage in gpu_stages():
        task_instance.queue = queue
