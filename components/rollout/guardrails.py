"""Guardrails: per-arm statistics of one phase and the hold / advance / roll back decision on them.

Health (errors, latency) is judged here; online quality by components/rollout/sequential.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

import components.rollout.sequential as sq


@dataclass(frozen=True)
class ArmStats:
    """What one arm did in one phase: request outcomes, latency (ms) and the online quality signal.

    impressions: responses with feedback (replayed or logged); successes: those with the signal
    (a click in the top 10 for search, a purchased item in the list for recommendations).
    """

    requests: int
    errors: int
    latencies_ms: tuple[float, ...] = ()
    impressions: int = 0
    successes: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 99)) if self.latencies_ms else 0.0

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 50)) if self.latencies_ms else 0.0

    @property
    def quality(self) -> float:
        """Online quality signal: CTR@10 (search) or purchase hit-rate (recommend), in [0, 1]."""
        return self.successes / self.impressions if self.impressions else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "impressions": self.impressions,
            "successes": self.successes,
            "quality": self.quality,
        }


def wilson_lower(successes: int, n: int, z: float = 3.29) -> float:
    """Lower end of the Wilson score interval (z = 3.29: two-sided 99.9 %), 0 when n = 0.

    99.9 % rather than 95 %: the bound is re-tested after every replay batch, and an early rollback
    must stay rare for a challenger that is in fact within its limit.
    """
    if n == 0:
        return 0.0
    p = successes / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z * z / n))


@dataclass(frozen=True)
class Decision:
    """advance: exit criteria met; hold: keep collecting; rollback: a guardrail is breached."""

    action: Literal["advance", "hold", "rollback"]
    reasons: tuple[str, ...]
    numbers: dict[str, Any] = field(default_factory=dict)


def step_counts(champion: ArmStats, challenger: ArmStats) -> tuple[int, int, int, int]:
    """(champion impressions, successes, challenger impressions, successes): one stratum of the quality test."""
    return champion.impressions, champion.successes, challenger.impressions, challenger.successes


def evaluate_guardrails(
    champion: ArmStats,
    challenger: ArmStats,
    criteria: Any,
    hours: float,
    request_scale: float = 1.0,
    hours_scale: float = 1.0,
    min_latency_samples: int = 20,
    test: str = "none",
    design: sq.Design | None = None,
    earlier_steps: Sequence[tuple[int, int, int, int]] = (),
    share: float = 0.5,
) -> Decision:
    """Hold, advance or roll back one phase from its arm statistics.

    criteria: an ExitCriteria of the charter (min_requests, min_hours, max_error_rate,
    max_latency_p99_ms). request_scale / hours_scale shrink the traffic and time a phase needs (the
    replay simulator on one machine sends thousands, not millions, of requests).
    test: the phase's online quality test ("none" | "non_inferiority" | "superiority", see
    components/rollout/sequential.py), with its `design` (the charter's error rates), the counts of
    the `earlier_steps` of this canary (pooled with this one: evidence accumulates across steps)
    and the challenger's A/B `share` now.

    Health breaches are acted on as soon as they are certain: the error rate when its 99.9 % Wilson
    lower bound exceeds the limit; latency when the challenger's median (after `min_latency_samples`
    requests) already exceeds the p99 limit. So is a quality rollback verdict: the interval is valid
    at every look. At the end of the phase the error rate and p99 are checked on the point values,
    and the quality test must say advance (non-inferior, no harm at the planned power, or superior).
    """
    reasons: list[str] = []
    numbers: dict[str, Any] = {"champion": champion.summary(), "challenger": challenger.summary(), "hours": hours}
    lower = wilson_lower(challenger.errors, challenger.requests)
    if challenger.requests and lower > criteria.max_error_rate:
        reasons.append(
            f"challenger error rate {challenger.error_rate:.2%} over {challenger.requests} requests "
            f"(99.9% lower bound {lower:.2%}) > limit {criteria.max_error_rate:.2%}"
        )
    if len(challenger.latencies_ms) >= min_latency_samples and challenger.p50_ms > criteria.max_latency_p99_ms:
        reasons.append(
            f"challenger median latency {challenger.p50_ms:.1f} ms already exceeds the p99 limit "
            f"{criteria.max_latency_p99_ms:.0f} ms"
        )
    quality = None
    if test != "none":
        if design is None:
            raise ValueError(f"the {test} test needs a design (the charter's rollout.quality)")
        quality = sq.look(test, [*earlier_steps, step_counts(champion, challenger)], design, share)
        numbers["quality"] = quality.to_dict()
        if quality.verdict in sq.ROLLBACK:
            reasons.append(f"online quality: {quality.sentence()}")
    if reasons:
        return Decision("rollback", tuple(reasons), numbers)
    need_requests = max(1, math.ceil(criteria.min_requests * request_scale))
    need_hours = criteria.min_hours * hours_scale
    numbers.update(need_requests=need_requests, need_hours=need_hours)
    if challenger.requests < need_requests or hours < need_hours:
        return Decision(
            "hold",
            (f"{challenger.requests}/{need_requests} challenger requests, {hours:.2f}/{need_hours:.2f} h",),
            numbers,
        )
    if challenger.error_rate > criteria.max_error_rate:
        reasons.append(f"challenger error rate {challenger.error_rate:.3%} > {criteria.max_error_rate:.3%}")
    if challenger.p99_ms > criteria.max_latency_p99_ms:
        reasons.append(f"challenger p99 latency {challenger.p99_ms:.1f} ms > {criteria.max_latency_p99_ms:.0f} ms")
    if reasons:
        return Decision("rollback", tuple(reasons), numbers)
    if quality is not None and quality.verdict not in sq.ADVANCE:
        wait = (
            f"{min(quality.step_impressions)}/{sq.MIN_IMPRESSIONS} impressions on the smaller arm of this step"
            if quality.verdict == "too_few"
            else f"about {quality.impressions_to_plan:.0f} more impressions to the planned sample"
        )
        return Decision("hold", (f"online quality: {quality.sentence()}; {wait}",), numbers)
    why = "exit criteria met" + (f"; online quality: {quality.sentence()}" if quality is not None else "")
    return Decision("advance", (why,), numbers)
