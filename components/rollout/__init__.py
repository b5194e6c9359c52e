"""Staged rollout policy, one module per concern (every public name is re-exported here: `ro.RolloutState`).

    state.py       phases, ModelRef, RolloutState, AuditEntry, the transitions and RolloutError
    routing.py     sticky bucketing, arm assignment, route(state, unit)
    guardrails.py  ArmStats, the Wilson bound, Decision, evaluate_guardrails
    shadow.py      shadow agreement of two top-k lists: overlap@k, rank correlation
    clicks.py      click models for the replay: attractiveness, simulate_clicks

Pure: no clocks (times are arguments, seconds since the epoch), no files, no randomness without a
seed. artifacts/rollout_store.py keeps the state file and the audit log, artifacts/registry.py the
registry; pipelines/rollout.py drives the transitions, and the service only reads the state to route.
"""

from components.rollout.clicks import attractiveness, simulate_clicks
from components.rollout.guardrails import ArmStats, Decision, evaluate_guardrails, wilson_lower
from components.rollout.routing import BUCKETS, CHALLENGER, CHAMPION, Arm, assign_arm, bucket_of, route
from components.rollout.shadow import agreement, overlap_at_k, rank_correlation
from components.rollout.state import (
    ACTIVE,
    PHASES,
    AuditEntry,
    ModelRef,
    Phase,
    RolloutError,
    RolloutState,
    complete,
    enter_canary_step,
    pause,
    resume,
    roll_back,
    set_champion,
    start_shadow,
)

__all__ = [
    "ACTIVE",
    "BUCKETS",
    "CHALLENGER",
    "CHAMPION",
    "PHASES",
    "Arm",
    "ArmStats",
    "AuditEntry",
    "Decision",
    "ModelRef",
    "Phase",
    "RolloutError",
    "RolloutState",
    "agreement",
    "assign_arm",
    "attractiveness",
    "bucket_of",
    "complete",
    "enter_canary_step",
    "evaluate_guardrails",
    "overlap_at_k",
    "pause",
    "rank_correlation",
    "resume",
    "roll_back",
    "route",
    "set_champion",
    "simulate_clicks",
    "start_shadow",
    "wilson_lower",
]
