"""components/rollout/: transitions, sticky arms, guardrails, shadow agreement and click models."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components import rollout as ro
from components.charter import ExitCriteria

A, B = ro.ModelRef("1", "models:/m/1"), ro.ModelRef("2", "models:/m/2")
CRITERIA = ExitCriteria(
    min_requests=100, min_hours=0, max_error_rate=0.01, max_latency_p99_ms=50, min_primary_ratio=0.98
)


def _full() -> ro.RolloutState:
    return ro.set_champion(ro.RolloutState(domain="search"), A, 0.0, "t", "first")[0]


def test_full_lifecycle_shadow_canary_full_keeps_previous_champion() -> None:
    s, e = ro.start_shadow(_full(), B, 1.0, 1.0, "dag", "gated")
    assert (s.phase, e.from_phase, e.to_phase, e.from_version, e.to_version) == ("shadow", "full", "shadow", "1", "2")
    s, _ = ro.enter_canary_step(s, 0, 0.05, 2.0, "dag", "ok")
    s, _ = ro.enter_canary_step(s, 1, 0.25, 3.0, "dag", "ok")
    assert (s.phase, s.step, s.share) == ("canary", 1, 0.25)
    s, e = ro.complete(s, 4.0, "dag", "done")
    assert s.phase == "full" and s.champion == B and s.previous_champion == A and s.challenger is None
    assert (e.from_version, e.to_version) == ("1", "2")
    back, e = ro.roll_back(s, 5.0, "alice", "regret")
    assert back.champion == A and back.previous_champion == B and (e.from_version, e.to_version) == ("2", "1")


def test_illegal_transitions_raise_with_the_phase_named() -> None:
    with pytest.raises(ro.RolloutError, match="shadow can only advance to canary step 0"):
        ro.enter_canary_step(ro.start_shadow(_full(), B, 1.0, 0, "t", "")[0], 1, 0.25, 0, "t", "")
    with pytest.raises(ro.RolloutError, match="nothing to promote"):
        ro.complete(_full(), 0, "t", "")
    with pytest.raises(ro.RolloutError, match="already the champion"):
        ro.start_shadow(_full(), A, 1.0, 0, "t", "")
    with pytest.raises(ro.RolloutError, match="only a shadow or canary"):
        ro.pause(_full(), 0, "t", "")
    with pytest.raises(ro.RolloutError, match="without a champion"):
        ro.start_shadow(ro.RolloutState(domain="search"), B, 1.0, 0, "t", "")


def test_pause_freezes_routing_and_resume_returns_to_the_same_step() -> None:
    s = ro.enter_canary_step(ro.start_shadow(_full(), B, 1.0, 0, "t", "")[0], 0, 0.5, 0, "t", "")[0]
    p, _ = ro.pause(s, 1, "bob", "investigating")
    assert p.phase == "paused" and p.routing_phase == "canary"
    assert [ro.route(p, f"u{i}") for i in range(50)] == [ro.route(s, f"u{i}") for i in range(50)]
    r, _ = ro.resume(p, 2, "bob", "fine")
    assert (r.phase, r.step, r.share) == ("canary", 0, 0.5)


def test_state_round_trips_through_json_dict() -> None:
    s = ro.enter_canary_step(ro.start_shadow(_full(), B, 1.0, 0, "t", "")[0], 0, 0.05, 0, "t", "")[0]
    assert ro.RolloutState.from_dict(s.to_dict()) == s
    with pytest.raises(ro.RolloutError, match="unknown rollout phase"):
        ro.RolloutState.from_dict({**s.to_dict(), "phase": "launched"})


def test_arm_assignment_is_sticky_monotone_and_close_to_the_share() -> None:
    units = [f"user{i}" for i in range(20_000)]
    assert all(ro.assign_arm(u, 0.0, "salt") == "champion" for u in units[:100])
    assert all(ro.assign_arm(u, 1.0, "salt") == "challenger" for u in units[:100])
    at5 = {u for u in units if ro.assign_arm(u, 0.05, "salt") == "challenger"}
    at25 = {u for u in units if ro.assign_arm(u, 0.25, "salt") == "challenger"}
    assert at5 <= at25  # growing a step only adds users
    assert abs(len(at5) / len(units) - 0.05) < 0.01 and abs(len(at25) / len(units) - 0.25) < 0.02
    assert [ro.assign_arm(u, 0.25, "salt") for u in units[:200]] == [
        ro.assign_arm(u, 0.25, "salt") for u in units[:200]
    ]
    other = {u for u in units if ro.assign_arm(u, 0.25, "other-rollout") == "challenger"}
    assert other != at25  # a new rollout reshuffles who is exposed


def test_route_outside_a_rollout_is_always_the_champion() -> None:
    for s in (_full(), ro.roll_back(ro.start_shadow(_full(), B, 1.0, 0, "t", "")[0], 0, "t", "")[0]):
        assert {ro.route(s, f"u{i}") for i in range(100)} == {("champion", False)}
    shadow = ro.start_shadow(_full(), B, 1.0, 0, "t", "")[0]
    assert {ro.route(shadow, f"u{i}") for i in range(100)} == {("champion", True)}


def test_guardrails_hold_advance_and_roll_back() -> None:
    ok = ro.ArmStats(200, 0, tuple([10.0] * 200), impressions=200, successes=100)
    assert ro.evaluate_guardrails(ok, ro.ArmStats(10, 0, (10.0,) * 10), CRITERIA, 1).action == "hold"
    assert ro.evaluate_guardrails(ok, ok, CRITERIA, 1).action == "advance"
    worse = ro.ArmStats(200, 0, tuple([10.0] * 200), impressions=200, successes=90)  # ratio 0.9 < 0.98
    d = ro.evaluate_guardrails(ok, worse, CRITERIA, 1)
    assert d.action == "rollback" and "0.900" in d.reasons[0]
    # Certain breaches act before min_requests: every request failing, or a median over the p99 limit.
    assert ro.evaluate_guardrails(ok, ro.ArmStats(10, 10), CRITERIA, 0).action == "rollback"
    slow = ro.ArmStats(20, 0, tuple([80.0] * 20))
    assert "median latency" in ro.evaluate_guardrails(ok, slow, CRITERIA, 0).reasons[0]
    # One error in 10 is not yet certain to exceed 1 %.
    assert ro.evaluate_guardrails(ok, ro.ArmStats(10, 1, (10.0,) * 10), CRITERIA, 0).action == "hold"
    tail = ro.ArmStats(200, 0, tuple([10.0] * 190 + [90.0] * 10), impressions=200, successes=100)
    assert "p99 latency" in ro.evaluate_guardrails(ok, tail, CRITERIA, 1).reasons[0]
    scaled = ro.evaluate_guardrails(ok, ro.ArmStats(10, 0, (10.0,) * 10, 10, 5), CRITERIA, 0, request_scale=0.1)
    assert scaled.action == "advance"


def test_wilson_lower_bound_identities() -> None:
    assert ro.wilson_lower(0, 0) == 0.0 and ro.wilson_lower(0, 100) == 0.0
    assert 0.9 < ro.wilson_lower(1000, 1000) < 1.0
    assert ro.wilson_lower(5, 10) < 0.5


def test_agreement_identities_and_values() -> None:
    a = [str(i) for i in range(10)]
    assert ro.overlap_at_k(a, a) == 1.0 and ro.rank_correlation(a, a) == pytest.approx(1.0)
    assert ro.rank_correlation(a, a[::-1]) == pytest.approx(-1.0)
    assert ro.overlap_at_k(a, [str(i) for i in range(10, 20)]) == 0.0
    assert ro.overlap_at_k(a, a[:5] + ["x"] * 5) == 0.5
    assert math.isnan(ro.rank_correlation(["a"], ["a"]))
    stats = ro.agreement([(a, a), (a, a[::-1])])
    assert stats["pairs"] == 2 and stats["overlap_at_10"] == 1.0 and stats["rank_correlation"] == pytest.approx(0.0)


def test_click_models() -> None:
    rng = np.random.default_rng(0)
    assert ro.attractiveness(0.0) == 0.0 and ro.attractiveness(2.0) == 0.75
    assert all(ro.simulate_clicks([0.0] * 10, rng) == [] for _ in range(50))
    assert all(len(ro.simulate_clicks([2.0] * 10, rng, "cascade")) == 1 for _ in range(50))  # stops at a click
    ctr_top = np.mean([bool(ro.simulate_clicks([2.0] + [0.0] * 9, rng, "pbm")) for _ in range(4000)])
    ctr_low = np.mean([bool(ro.simulate_clicks([0.0] * 9 + [2.0], rng, "pbm")) for _ in range(4000)])
    assert ctr_top == pytest.approx(0.75, abs=0.03) and ctr_low == pytest.approx(0.075, abs=0.02)
    with pytest.raises(ValueError, match="unknown click model"):
        ro.simulate_clicks([1.0], rng, "dbn")
