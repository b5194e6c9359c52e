"""Typed mirror of a `rollout` params.yaml section (owned by the serving stage).

Wired into components.config.Params as `rollout`; params.yaml has the `rollout:` section.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.config_base import Frozen


class RolloutParams(Frozen):
    """How the replay simulator drives a rollout on one machine.

    request_scale / hours_scale: the charter's min_requests / min_hours per phase are multiplied by
    these for a replayed rollout (thousands of replayed requests stand in for days of traffic; the
    replay has no wall-clock days, so hours_scale 0 drops the time criterion).
    batch_requests: requests replayed between two guardrail evaluations.
    max_batches: a phase that still holds after this many batches is paused (not enough traffic).
    """

    request_scale: float = Field(0.02, gt=0, le=1)
    hours_scale: float = Field(0.0, ge=0, le=1)
    batch_requests: int = Field(100, ge=1)
    max_batches: int = Field(50, ge=1)
    concurrency: int = Field(4, ge=1, le=64)
    click_model: Literal["cascade", "pbm"] = "cascade"
    sessions: int = Field(5000, ge=1)
    timeout_s: float = Field(10.0, gt=0)
