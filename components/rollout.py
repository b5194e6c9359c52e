"""Staged rollout policy: the state machine, sticky arm assignment, guardrails, shadow agreement, click models.

Pure: no clocks (times are arguments, seconds since the epoch), no files, no randomness without a
seed. pipelines/rollout.py owns the state file, the audit log and the registry; the service only
reads the state to route requests.

Phases: idle -> shadow -> canary (steps 0..n-1 of the charter's plan) -> full, with rolled_back
reachable from shadow/canary (a breached guardrail or a person) and paused freezing shadow/canary
where they are (resume returns to the same phase and step).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

Phase = Literal["idle", "shadow", "canary", "full", "rolled_back", "paused"]
Arm = Literal["champion", "challenger"]
PHASES: tuple[str, ...] = ("idle", "shadow", "canary", "full", "rolled_back", "paused")
ACTIVE = ("shadow", "canary")
CHAMPION: Arm = "champion"
CHALLENGER: Arm = "challenger"
# Resolution of the traffic split: 10,000 buckets, i.e. shares are honoured to 0.01 %.
BUCKETS = 10_000


class RolloutError(ValueError):
    """An illegal transition (e.g. promote from idle); the message names the phase and the action."""


@dataclass(frozen=True)
class ModelRef:
    """One servable model version: registry `version` and where its bundle comes from (`uri`).

    uri: "models:/<name>/<version>" for the registry, or a local bundle folder (tests, laptops).
    """

    version: str
    uri: str


@dataclass(frozen=True)
class RolloutState:
    """Everything the service needs to route a request, and the pipeline needs to resume.

    rollout_id: the salt of the arm assignment, fixed for one challenger's rollout so a user keeps
    their arm across canary steps and service restarts. share: fraction of units (users/sessions)
    the challenger answers in canary (0 in shadow: the champion answers, the challenger is mirrored).
    step: canary step index (-1 outside canary). paused_phase: the phase a pause froze.
    """

    domain: str
    phase: Phase = "idle"
    champion: ModelRef | None = None
    challenger: ModelRef | None = None
    rollout_id: str = ""
    step: int = -1
    share: float = 0.0
    shadow_share: float = 0.0
    paused_phase: str | None = None
    phase_started: float = 0.0
    updated: float = 0.0
    reason: str = ""
    previous_champion: ModelRef | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RolloutState:
        data = dict(raw)
        for key in ("champion", "challenger", "previous_champion"):
            if data.get(key) is not None:
                data[key] = ModelRef(**data[key])
        if data.get("phase") not in PHASES:
            raise RolloutError(f"unknown rollout phase {data.get('phase')!r}; expected one of {PHASES}")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def routing_phase(self) -> str:
        """The phase that decides routing: a paused rollout keeps routing as the phase it froze."""
        return self.paused_phase if self.phase == "paused" and self.paused_phase else self.phase


@dataclass(frozen=True)
class AuditEntry:
    """One state change: who or what, when (epoch s), from which version to which, why."""

    when: float
    actor: str
    action: str
    from_phase: str
    to_phase: str
    from_version: str | None
    to_version: str | None
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _entry(
    old: RolloutState, new: RolloutState, now: float, actor: str, action: str, reason: str, **details
) -> AuditEntry:
    return AuditEntry(
        when=now,
        actor=actor,
        action=action,
        from_phase=old.phase,
        to_phase=new.phase,
        from_version=old.champion.version if old.champion else None,
        to_version=(new.challenger or new.champion).version if (new.challenger or new.champion) else None,
        reason=reason,
        details=details,
    )


# --- transitions -----------------------------------------------------------------------------------
def start_shadow(
    state: RolloutState, challenger: ModelRef, shadow_share: float, now: float, actor: str, reason: str
) -> tuple[RolloutState, AuditEntry]:
    """idle/full/rolled_back -> shadow with a new challenger (a rollout in flight must end first)."""
    if state.phase in ("shadow", "canary", "paused"):
        raise RolloutError(
            f"cannot start a rollout of v{challenger.version}: v{state.challenger.version} is in {state.phase}"
        )
    if state.champion is None:
        raise RolloutError("cannot shadow without a champion: promote the first model with `promote --first`")
    if challenger.version == state.champion.version:
        raise RolloutError(f"v{challenger.version} is already the champion")
    rollout_id = hashlib.sha256(f"{state.domain}:{challenger.version}:{challenger.uri}".encode()).hexdigest()[:16]
    new = replace(
        state,
        phase="shadow",
        challenger=challenger,
        rollout_id=rollout_id,
        step=-1,
        share=0.0,
        shadow_share=shadow_share,
        paused_phase=None,
        phase_started=now,
        updated=now,
        reason=reason,
    )
    return new, _entry(state, new, now, actor, "start_shadow", reason, shadow_share=shadow_share)


def enter_canary_step(
    state: RolloutState, step: int, share: float, now: float, actor: str, reason: str
) -> tuple[RolloutState, AuditEntry]:
    """shadow -> canary step 0, or canary step i -> step i + 1 (share must grow)."""
    if state.phase == "shadow" and step != 0:
        raise RolloutError(f"shadow can only advance to canary step 0, not {step}")
    if state.phase == "canary" and step != state.step + 1:
        raise RolloutError(f"canary step {state.step} can only advance to step {state.step + 1}, not {step}")
    if state.phase not in ACTIVE:
        raise RolloutError(f"cannot enter a canary step from {state.phase}")
    new = replace(state, phase="canary", step=step, share=share, phase_started=now, updated=now, reason=reason)
    return new, _entry(state, new, now, actor, "canary_step", reason, step=step, share=share)


def complete(state: RolloutState, now: float, actor: str, reason: str) -> tuple[RolloutState, AuditEntry]:
    """shadow/canary/paused -> full: the challenger becomes the champion, the old one stays one command away."""
    if state.phase not in (*ACTIVE, "paused") or state.challenger is None:
        raise RolloutError(f"nothing to promote: the rollout is {state.phase}")
    new = replace(
        state,
        phase="full",
        champion=state.challenger,
        challenger=None,
        previous_champion=state.champion,
        step=-1,
        share=0.0,
        shadow_share=0.0,
        paused_phase=None,
        phase_started=now,
        updated=now,
        reason=reason,
    )
    entry = _entry(state, new, now, actor, "promote", reason)
    return new, replace(
        entry, from_version=state.champion.version if state.champion else None, to_version=state.challenger.version
    )


def roll_back(state: RolloutState, now: float, actor: str, reason: str) -> tuple[RolloutState, AuditEntry]:
    """shadow/canary/paused -> rolled_back (traffic to the champion); full -> full on the previous champion."""
    if state.phase in (*ACTIVE, "paused") and state.challenger is not None:
        new = replace(
            state,
            phase="rolled_back",
            step=-1,
            share=0.0,
            shadow_share=0.0,
            paused_phase=None,
            phase_started=now,
            updated=now,
            reason=reason,
        )
        entry = _entry(state, new, now, actor, "rollback", reason)
        return new, replace(entry, from_version=state.challenger.version, to_version=state.champion.version)
    if state.phase == "full" and state.previous_champion is not None:
        new = replace(
            state,
            champion=state.previous_champion,
            previous_champion=state.champion,
            phase_started=now,
            updated=now,
            reason=reason,
        )
        entry = _entry(state, new, now, actor, "rollback", reason)
        return new, replace(entry, from_version=state.champion.version, to_version=state.previous_champion.version)
    raise RolloutError(f"nothing to roll back: the rollout is {state.phase} with no previous champion")


def pause(state: RolloutState, now: float, actor: str, reason: str) -> tuple[RolloutState, AuditEntry]:
    """Freeze shadow/canary where it is: routing stays as it was, nothing advances until resume."""
    if state.phase not in ACTIVE:
        raise RolloutError(f"only a shadow or canary rollout can be paused, this one is {state.phase}")
    new = replace(state, phase="paused", paused_phase=state.phase, updated=now, reason=reason)
    return new, _entry(state, new, now, actor, "pause", reason)


def resume(state: RolloutState, now: float, actor: str, reason: str) -> tuple[RolloutState, AuditEntry]:
    if state.phase != "paused" or not state.paused_phase:
        raise RolloutError(f"only a paused rollout can be resumed, this one is {state.phase}")
    new = replace(state, phase=state.paused_phase, paused_phase=None, updated=now, reason=reason)
    return new, _entry(state, new, now, actor, "resume", reason)


def set_champion(
    state: RolloutState, champion: ModelRef, now: float, actor: str, reason: str
) -> tuple[RolloutState, AuditEntry]:
    """The first champion (no rollout to compare against), or a manual pin outside a rollout."""
    if state.phase in (*ACTIVE, "paused"):
        raise RolloutError(f"a rollout is in {state.phase}: finish, pause-and-rollback or promote it first")
    new = replace(
        state,
        phase="full" if state.phase == "idle" else state.phase,
        champion=champion,
        previous_champion=state.champion,
        challenger=None,
        updated=now,
        phase_started=now,
        reason=reason,
    )
    return new, _entry(state, new, now, actor, "set_champion", reason)


# --- routing ---------------------------------------------------------------------------------------
def bucket_of(unit: str, salt: str) -> int:
    """Stable bucket in [0, BUCKETS) of a user or session id for one rollout (sha256, not Python's hash)."""
    digest = hashlib.sha256(f"{salt}\x1f{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def assign_arm(unit: str, share: float, salt: str) -> Arm:
    """The arm that answers `unit`: challenger for the lowest `share` of buckets.

    Sticky: the same unit gets the same arm for one salt; monotone: a unit on the challenger at 5 %
    stays on it at 25 % and 50 %, so a canary step only adds users, never swaps them.
    """
    if share <= 0:
        return CHAMPION
    if share >= 1:
        return CHALLENGER
    return CHALLENGER if bucket_of(unit, salt) < round(share * BUCKETS) else CHAMPION


def route(state: RolloutState, unit: str) -> tuple[Arm, bool]:
    """(arm that answers, whether the challenger is also scored in shadow) for one request."""
    phase = state.routing_phase
    if state.challenger is None or phase not in ACTIVE:
        return CHAMPION, False
    if phase == "shadow":
        return CHAMPION, bucket_of(unit, state.rollout_id + ":shadow") < round(state.shadow_share * BUCKETS)
    return assign_arm(unit, state.share, state.rollout_id), False


# --- arm statistics and guardrails ----------------------------------------------------------------
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


# --- shadow agreement ------------------------------------------------------------------------------
def overlap_at_k(a: Sequence[str], b: Sequence[str], k: int = 10) -> float:
    """|top-k(a) ∩ top-k(b)| / k, in [0, 1]; 1 for identical top-k lists of length k."""
    return len(set(list(a)[:k]) & set(list(b)[:k])) / k if k > 0 else 0.0


def rank_correlation(a: Sequence[str], b: Sequence[str], k: int = 10) -> float:
    """Spearman correlation of the two top-k rankings over their union (items missing from a list rank k+1).

    1 for identical lists, -1 for exactly reversed ones; nan when the union has fewer than 2 items.
    """
    a, b = list(a)[:k], list(b)[:k]
    union = list(dict.fromkeys(a + b))
    if len(union) < 2:
        return float("nan")
    ra = np.array([a.index(x) + 1 if x in a else k + 1 for x in union], dtype=float)
    rb = np.array([b.index(x) + 1 if x in b else k + 1 for x in union], dtype=float)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def agreement(pairs: Sequence[tuple[Sequence[str], Sequence[str]]], k: int = 10) -> dict[str, float]:
    """Mean overlap@k and rank correlation over (champion list, challenger list) pairs."""
    if not pairs:
        return {"pairs": 0, "overlap_at_10": float("nan"), "rank_correlation": float("nan")}
    ov = [overlap_at_k(a, b, k) for a, b in pairs]
    rc = [r for r in (rank_correlation(a, b, k) for a, b in pairs) if not math.isnan(r)]
    return {
        "pairs": len(pairs),
        "overlap_at_10": float(np.mean(ov)),
        "rank_correlation": float(np.mean(rc)) if rc else float("nan"),
    }


# --- click model -----------------------------------------------------------------------------------
def attractiveness(gain: float, max_gain: float = 2.0) -> float:
    """P(click | examined) of a result with graded gain in [0, max_gain] (ERR's (2^g - 1) / 2^max)."""
    g = min(max(float(gain), 0.0), max_gain)
    return (2.0**g - 1.0) / (2.0**max_gain)


def simulate_clicks(
    gains: Sequence[float],
    rng: np.random.Generator,
    model: Literal["cascade", "pbm"] = "cascade",
    k: int = 10,
    eta: float = 1.0,
    max_gain: float = 2.0,
) -> list[int]:
    """0-based ranks clicked in a top-k list whose results have graded `gains` (0 for unjudged).

    cascade: the shopper scans down and stops at the first click (Craswell et al. 2008).
    pbm: position-based, rank r is examined with probability 1 / (r + 1)^eta, clicks independent.
    """
    clicks: list[int] = []
    for r, g in enumerate(list(gains)[:k]):
        p = attractiveness(g, max_gain)
        if model == "cascade":
            if rng.random() < p:
                clicks.append(r)
                break
        elif model == "pbm":
            if rng.random() < (1.0 / (r + 1) ** eta) * p:
                clicks.append(r)
        else:
            raise ValueError(f"unknown click model {model!r}; expected cascade or pbm")
    return clicks
