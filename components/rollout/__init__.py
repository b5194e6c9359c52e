"""Staged rollout policy, one module per concern (every public name is re-exported here: `ro.RolloutState`).

    state.py       phases, ModelRef, RolloutState, AuditEntry, the transitions and RolloutError
    routing.py     sticky bucketing with a secret salt, arm assignment, route(state, unit)
    guardrails.py  ArmStats, the Wilson bound, Decision, evaluate_guardrails (health + the quality test)
    sequential.py  the always-valid quality test: confidence sequence, design (sizes), decide, look
    interleaving.py  team-draft interleaving and its click credit
    simulate.py    thousands of simulated rollouts / interleaving experiments at once (the error rates)
    shadow.py      shadow agreement of two top-k lists: overlap@k, rank correlation
    clicks.py      click models for the replay: attractiveness, simulate_clicks

Pure: no clocks (times are arguments, seconds since the epoch), no files, no randomness without a
seed. artifacts/rollout_store.py keeps the state file and the audit log, artifacts/registry.py the
registry; pipelines/rollout.py drives the transitions, and the service only reads the state to route.
"""

from components.rollout.clicks import attractiveness, simulate_clicks
from components.rollout.guardrails import ArmStats, Decision, evaluate_guardrails, step_counts, wilson_lower
from components.rollout.interleaving import credit, team_draft
from components.rollout.routing import BUCKETS, CHALLENGER, CHAMPION, INTERLEAVED, Arm, assign_arm, bucket_of, route
from components.rollout.sequential import Design, QualityLook, design
from components.rollout.shadow import agreement, overlap_at_k, rank_correlation
from components.rollout.state import (
    ACTIVE,
    INTENTS,
    PHASES,
    AuditEntry,
    ModelRef,
    Phase,
    RolloutError,
    RolloutState,
    complete,
    enter_canary_step,
    intend,
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
    "INTENTS",
    "INTERLEAVED",
    "PHASES",
    "Arm",
    "ArmStats",
    "AuditEntry",
    "Decision",
    "Design",
    "ModelRef",
    "Phase",
    "QualityLook",
    "RolloutError",
    "RolloutState",
    "agreement",
    "assign_arm",
    "attractiveness",
    "bucket_of",
    "complete",
    "credit",
    "design",
    "enter_canary_step",
    "evaluate_guardrails",
    "intend",
    "overlap_at_k",
    "pause",
    "rank_correlation",
    "resume",
    "roll_back",
    "route",
    "set_champion",
    "simulate_clicks",
    "start_shadow",
    "step_counts",
    "team_draft",
    "wilson_lower",
]
