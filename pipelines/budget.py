"""The training deadline a step should honour, from the environment the lifecycle sets.

pipelines/dvc_stage.py exports, for the charter's training stages:
    HATCHERY_BUDGET_CPU_MINUTES, HATCHERY_BUDGET_GPU_HOURS   the charter's training budget
    HATCHERY_BUDGET_STARTED_AT                               Unix time the training group started
Without them (plain `dvc repro`, tests) the deadline is unlimited.

How a training step honours it:
    deadline = training_deadline(device.type)
    for epoch in range(epochs):
        ...train one epoch, keep the best checkpoint...
        if deadline.expired():
            log.warning("training budget reached after %d epochs: keeping the best checkpoint", epoch + 1)
            break
    metrics["budget"] = deadline.summary()   # the incubation report shows it
"""

from __future__ import annotations

import os
import time

from components.budget import Deadline

ENV_CPU = "HATCHERY_BUDGET_CPU_MINUTES"
ENV_GPU = "HATCHERY_BUDGET_GPU_HOURS"
ENV_STARTED = "HATCHERY_BUDGET_STARTED_AT"


def training_deadline(device: str = "cpu") -> Deadline:
    """The charter's budget for `device` ("cpu", "cuda"), counted from the training group's start."""
    if ENV_CPU not in os.environ or ENV_GPU not in os.environ:
        return Deadline.unlimited(time.time)
    started = float(os.environ.get(ENV_STARTED) or time.time())
    return Deadline.for_device(device, float(os.environ[ENV_CPU]), float(os.environ[ENV_GPU]), started, time.time)


def budget_env(cpu_minutes: float, gpu_hours: float, started_at: float) -> dict[str, str]:
    """The variables training_deadline reads."""
    return {ENV_CPU: str(cpu_minutes), ENV_GPU: str(gpu_hours), ENV_STARTED: str(started_at)}


def lightgbm_budget_callback(deadline: Deadline):
    """A LightGBM callback that ends boosting once the deadline passes (after the current round).

    Raised as EarlyStopException, so `booster.best_iteration` is the last finished round and the
    booster keeps every tree up to it; combined with early stopping, put this one after it.
    """
    import lightgbm as lgb

    def _stop_at_deadline(env) -> None:
        if deadline.expired():
            raise lgb.callback.EarlyStopException(env.iteration, env.evaluation_result_list or [])

    _stop_at_deadline.order = 40  # after lgb.early_stopping (order 30)
    return _stop_at_deadline
