"""Training budget: a deadline the training loops poll, so a run that reaches its budget stops cleanly.

Pure: the clock is an argument. pipelines/budget.py builds one from the environment the
lifecycle sets (HATCHERY_BUDGET_*), and a step without those variables gets an unlimited deadline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Deadline:
    """Seconds allowed since `started` on `clock` (math.inf = unlimited).

    Loops call `expired()` between units of work (an epoch, a boosting round, a batch of
    embeddings); on expiry they stop, keep the best checkpoint so far and report `summary()`.
    """

    seconds: float
    started: float
    clock: Callable[[], float]
    device: str = "cpu"

    @classmethod
    def unlimited(cls, clock: Callable[[], float]) -> Deadline:
        return cls(math.inf, clock(), clock)

    @classmethod
    def for_device(
        cls, device: str, cpu_minutes: float, gpu_hours: float, started: float, clock: Callable[[], float]
    ) -> Deadline:
        """CPU minutes on a CPU, GPU hours on anything else ("cuda", "mps")."""
        seconds = cpu_minutes * 60.0 if device == "cpu" else gpu_hours * 3600.0
        return cls(seconds, started, clock, device)

    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def summary(self) -> dict[str, float | bool | str]:
        """For metrics/*.json and MLflow: whether the budget stopped training, and the numbers."""
        return {
            "device": self.device,
            "budget_s": self.seconds if math.isfinite(self.seconds) else -1.0,
            "elapsed_s": round(self.elapsed(), 3),
            "exhausted": self.expired(),
        }
