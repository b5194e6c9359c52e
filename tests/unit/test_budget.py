"""Training deadline with a fake clock: unlimited never expires, CPU minutes vs GPU hours, summary."""

from __future__ import annotations

import math

from components.budget import Deadline


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_unlimited_never_expires():
    clock = FakeClock()
    d = Deadline.unlimited(clock)
    clock.now += 1e9
    assert not d.expired() and math.isinf(d.remaining())
    assert d.summary()["budget_s"] == -1.0


def test_cpu_minutes_and_gpu_hours():
    clock = FakeClock(0.0)
    cpu = Deadline.for_device("cpu", cpu_minutes=2, gpu_hours=1, started=0.0, clock=clock)
    gpu = Deadline.for_device("cuda", cpu_minutes=2, gpu_hours=1, started=0.0, clock=clock)
    assert cpu.seconds == 120 and gpu.seconds == 3600
    clock.now = 119.0
    assert not cpu.expired() and cpu.remaining() == 1.0
    clock.now = 120.0
    assert cpu.expired() and not gpu.expired()
    assert cpu.summary() == {"device": "cpu", "budget_s": 120, "elapsed_s": 120.0, "exhausted": True}


def test_budget_from_environment(monkeypatch):
    from pipelines.budget import budget_env, training_deadline

    monkeypatch.delenv("HATCHERY_BUDGET_CPU_MINUTES", raising=False)
    assert math.isinf(training_deadline("cpu").seconds)
    for k, v in budget_env(cpu_minutes=0.5, gpu_hours=2, started_at=0.0).items():
        monkeypatch.setenv(k, v)
    d = training_deadline("cpu")
    assert d.seconds == 30 and d.expired()  # started at the epoch: long past
    assert training_deadline("cuda").seconds == 7200


def test_lightgbm_stops_at_the_deadline():
    import itertools

    import lightgbm as lgb
    import numpy as np

    from pipelines.budget import lightgbm_budget_callback

    ticks = itertools.count()  # every clock read advances one second; the budget is 5 s
    deadline = Deadline(5.0, 0.0, lambda: float(next(ticks)))
    x = np.random.default_rng(0).normal(size=(200, 3))
    booster = lgb.train(
        {"objective": "regression", "verbose": -1},
        lgb.Dataset(x, x[:, 0]),
        num_boost_round=100,
        callbacks=[lightgbm_budget_callback(deadline)],
    )
    assert 0 < booster.num_trees() < 100
    assert booster.best_iteration == booster.num_trees()
