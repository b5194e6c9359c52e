"""Guardrails: per-arm statistics of one phase and the hold / advance / roll back decision on them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np


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


def evaluate_guardrails(
    champion: ArmStats,
    challenger: ArmStats,
    criteria: Any,
    hours: float,
    request_scale: float = 1.0,
    hours_scale: float = 1.0,
    min_latency_samples: int = 20,
) -> Decision:
    """Hold, advance or roll back one phase from its arm statistics.

    criteria: an ExitCriteria of the charter (min_requests, min_hours, max_error_rate,
    max_latency_p99_ms, min_primary_ratio). request_scale / hours_scale shrink the traffic and time
    a phase needs (the replay simulator on one machine sends thousands, not millions, of requests).

    A breach is acted on as soon as it is certain, not only at the end of the phase: the error rate
    when its 99.9 % Wilson lower bound exceeds the limit; latency when the challenger's median (after
    `min_latency_samples` requests) already exceeds the p99 limit. At the end of the phase every
    criterion is checked on the point values, and the quality ratio challenger / champion too.
    """
    reasons: list[str] = []
    numbers = {"champion": champion.summary(), "challenger": challenger.summary(), "hours": hours}
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
    if criteria.min_primary_ratio > 0:
        ratio = challenger.quality / champion.quality if champion.quality and champion.quality > 0 else float("nan")
        numbers["quality_ratio"] = ratio
        if math.isnan(ratio):
            reasons.append("no online quality signal on one of the arms: cannot judge the quality ratio")
        elif ratio < criteria.min_primary_ratio:
            reasons.append(
                f"challenger online quality {challenger.quality:.4f} / champion {champion.quality:.4f} = "
                f"{ratio:.3f} < {criteria.min_primary_ratio:.2f}"
            )
    if reasons:
        return Decision("rollback", tuple(reasons), numbers)
    return Decision("advance", ("exit criteria met",), numbers)
