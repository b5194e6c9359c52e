"""Sticky arm assignment: which model answers a request, from the rollout state and the request's unit.

A unit (user or session id) is hashed with the rollout's secret salt into one of BUCKETS buckets,
so the same unit keeps its arm across canary steps and service restarts, and a client, who never
sees the salt, cannot pick its arm by choosing a session id. In canary, search units in the
interleaving share (a separately salted hash) get one list interleaved from both models instead.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from components.rollout.state import ACTIVE, RolloutState

Arm = Literal["champion", "challenger", "interleaved"]
CHAMPION: Arm = "champion"
CHALLENGER: Arm = "challenger"
INTERLEAVED: Arm = "interleaved"
# Resolution of the traffic split: 10,000 buckets, i.e. shares are honoured to 0.01 %.
BUCKETS = 10_000


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
    """(arm that answers, whether the challenger is also scored in shadow) for one request.

    interleaved: both models answer, merged by team draft (canary, a share of search units).
    """
    phase = state.routing_phase
    if state.challenger is None or phase not in ACTIVE:
        return CHAMPION, False
    salt = state.routing_salt
    if phase == "shadow":
        return CHAMPION, bucket_of(unit, salt + ":shadow") < round(state.shadow_share * BUCKETS)
    if state.interleave_share > 0 and bucket_of(unit, salt + ":interleave") < round(state.interleave_share * BUCKETS):
        return INTERLEAVED, False
    return assign_arm(unit, state.share, salt), False
