"""The rollout state machine: phases, model refs, the state the service routes by, audited transitions.

Phases: idle -> shadow -> canary (steps 0..n-1 of the charter's plan) -> full, with rolled_back
reachable from shadow/canary (a breached guardrail or a person) and paused freezing shadow/canary
where they are (resume returns to the same phase and step).

Every transition is a pure function (state, ..., now, actor, reason) -> (new state, AuditEntry):
times are arguments (seconds since the epoch); artifacts/rollout_store.py writes both, bumping
`version` (the compare-and-swap field: a writer that read version v may only write v + 1).

A decision that moves the registry (promote, reject, restore) is written with its `pending` intent
(`intend`) in the same state write; the registry follows, then a second write clears the intent. A
crash anywhere in between leaves the intent in the state file, and the next start re-applies it
(every registry move is idempotent), so the registry and the state always end up agreeing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Phase = Literal["idle", "shadow", "canary", "full", "rolled_back", "paused"]
PHASES: tuple[str, ...] = ("idle", "shadow", "canary", "full", "rolled_back", "paused")
ACTIVE = ("shadow", "canary")


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
    version: int = 0
    salt: str = ""
    interleave_share: float = 0.0
    pending: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def public_dict(self) -> dict[str, Any]:
        """What may leave the server (status endpoints): everything but the routing salt."""
        return {k: v for k, v in self.to_dict().items() if k != "salt"}

    @property
    def routing_salt(self) -> str:
        return self.salt or self.rollout_id

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
    state: RolloutState,
    challenger: ModelRef,
    shadow_share: float,
    now: float,
    actor: str,
    reason: str,
    salt: str = "",
    interleave_share: float = 0.0,
) -> tuple[RolloutState, AuditEntry]:
    """idle/full/rolled_back -> shadow with a new challenger (a rollout in flight must end first).

    salt: a secret the caller drew for this rollout's arm assignment; interleave_share: see RolloutState.
    """
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
        salt=salt,
        interleave_share=interleave_share,
    )
    return new, _entry(
        state, new, now, actor, "start_shadow", reason, shadow_share=shadow_share, interleave_share=interleave_share
    )


def enter_canary_step(
    state: RolloutState, step: int, share: float, now: float, actor: str, reason: str, **details
) -> tuple[RolloutState, AuditEntry]:
    """shadow -> canary step 0, or canary step i -> step i + 1 (share: the challenger's A/B share)."""
    if state.phase == "shadow" and step != 0:
        raise RolloutError(f"shadow can only advance to canary step 0, not {step}")
    if state.phase == "canary" and step != state.step + 1:
        raise RolloutError(f"canary step {state.step} can only advance to step {state.step + 1}, not {step}")
    if state.phase not in ACTIVE:
        raise RolloutError(f"cannot enter a canary step from {state.phase}")
    new = replace(state, phase="canary", step=step, share=share, phase_started=now, updated=now, reason=reason)
    return new, _entry(state, new, now, actor, "canary_step", reason, step=step, share=share, **details)


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


# --- registry intents -----------------------------------------------------------------------------------
INTENTS = ("promote", "reject", "restore")


def intend(
    state: RolloutState,
    action: str,
    champion: ModelRef | None,
    previous: ModelRef | None,
    rejected: ModelRef | None,
    reason: str,
    actor: str,
    now: float,
) -> RolloutState:
    """`state` carrying the registry move it implies, to be applied after this state is written.

    promote: `champion` takes the champion alias, `previous` is marked previous (the first champion:
    previous None); restore: the same move back to an earlier champion; reject: `rejected` is
    tagged rejected and loses the challenger alias, the champion alias stays.
    """
    if action not in INTENTS:
        raise RolloutError(f"unknown registry intent {action!r}; expected one of {INTENTS}")

    def ref(r: ModelRef | None) -> dict[str, str] | None:
        return asdict(r) if r is not None else None

    return replace(
        state,
        pending={
            "action": action,
            "champion": ref(champion),
            "previous": ref(previous),
            "rejected": ref(rejected),
            "reason": reason,
            "actor": actor,
            "when": now,
        },
    )
