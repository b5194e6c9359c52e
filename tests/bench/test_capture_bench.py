"""bench.capture's interval of the added p99: it must bracket a real shift and not invent one."""

import numpy as np

from bench.capture import added_p99_interval


def _blocks(rng: np.random.Generator, shift_ms: float, blocks: int = 40, size: int = 75) -> list[list[float]]:
    return [(rng.lognormal(1.5, 0.4, size) + shift_ms).tolist() for _ in range(blocks)]


def test_the_interval_brackets_a_known_tail_shift_and_zero_when_there_is_none() -> None:
    rng = np.random.default_rng(7)
    off = _blocks(rng, 0.0)
    lo, hi = added_p99_interval(_blocks(rng, 3.0), off)
    assert lo < 3.0 < hi and lo > 0.5  # every answer 3 ms slower: the tail moved by 3 ms, and the interval says so
    lo, hi = added_p99_interval(_blocks(rng, 0.0), off)
    assert lo < 0.0 < hi  # the same distribution: no added tail
