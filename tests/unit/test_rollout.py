"""components/rollout/: transitions, sticky arms, guardrails, shadow agreement and click models."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components import rollout as ro
from components.charter import ExitCriteria

A, B = ro.ModelRef("1", "models:/m/1"), ro.ModelRef("2", "models:/m/2")
CRITERIA = ExitCriteria(min_requests=100, min_hours=0, max_error_rate=0.01, max_latency_p99_ms=50)
DESIGN = ro.design(0.05, 0.05, 0.8)


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


def test_arms_hash_with_the_secret_salt_and_interleave_a_share_of_canary_units() -> None:
    shadow = ro.start_shadow(_full(), B, 1.0, 0, "t", "", salt="s3cret", interleave_share=0.1)[0]
    canary = ro.enter_canary_step(shadow, 0, 0.25, 0, "t", "")[0]
    units = [f"session{i}" for i in range(20_000)]
    arms = [ro.route(canary, u)[0] for u in units]
    assert abs(arms.count("interleaved") / len(units) - 0.1) < 0.01
    ab = [a for a in arms if a != "interleaved"]
    assert abs(ab.count("challenger") / len(ab) - 0.25) < 0.02
    # the salt, not the public rollout id, decides: knowing the rollout id does not tell a client its arm
    assert [ro.assign_arm(u, 0.25, canary.rollout_id) for u in units[:500]] != [
        ro.assign_arm(u, 0.25, "s3cret") for u in units[:500]
    ]
    assert "salt" not in canary.public_dict() and canary.to_dict()["salt"] == "s3cret"
    # a state written before salts existed routes exactly as it did (by its rollout id)
    legacy = ro.RolloutState.from_dict({k: v for k, v in canary.to_dict().items() if k not in ("salt", "version")})
    assert legacy.routing_salt == legacy.rollout_id and legacy.version == 0
    # shadow never interleaves
    assert {ro.route(shadow, u)[0] for u in units[:200]} == {"champion"}


def test_intents_record_the_registry_move() -> None:
    s = ro.enter_canary_step(ro.start_shadow(_full(), B, 1.0, 0, "t", "")[0], 0, 0.05, 0, "t", "")[0]
    full, entry = ro.complete(s, 1.0, "dag", "done")
    pending = ro.intend(full, "promote", full.champion, s.champion, None, "done", "dag", 1.0).pending
    assert pending["action"] == "promote" and pending["champion"]["version"] == "2"
    assert pending["previous"]["version"] == "1" and pending["rejected"] is None
    assert ro.RolloutState.from_dict(ro.intend(full, "reject", A, None, B, "r", "t", 1.0).to_dict()).pending
    with pytest.raises(ro.RolloutError, match="unknown registry intent"):
        ro.intend(full, "archive", A, None, None, "", "t", 0.0)


def test_route_outside_a_rollout_is_always_the_champion() -> None:
    for s in (_full(), ro.roll_back(ro.start_shadow(_full(), B, 1.0, 0, "t", "")[0], 0, "t", "")[0]):
        assert {ro.route(s, f"u{i}") for i in range(100)} == {("champion", False)}
    shadow = ro.start_shadow(_full(), B, 1.0, 0, "t", "")[0]
    assert {ro.route(shadow, f"u{i}") for i in range(100)} == {("champion", True)}


def test_guardrails_hold_advance_and_roll_back_on_health() -> None:
    ok = ro.ArmStats(200, 0, tuple([10.0] * 200), impressions=200, successes=100)
    assert ro.evaluate_guardrails(ok, ro.ArmStats(10, 0, (10.0,) * 10), CRITERIA, 1).action == "hold"
    assert ro.evaluate_guardrails(ok, ok, CRITERIA, 1).action == "advance"  # test "none": health only
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


def _quality(champion: ro.ArmStats, challenger: ro.ArmStats, test="non_inferiority", earlier=(), share=0.5):
    return ro.evaluate_guardrails(
        champion, challenger, CRITERIA, 1, test=test, design=DESIGN, earlier_steps=earlier, share=share
    )


def test_guardrails_judge_quality_with_the_sequential_test() -> None:
    healthy = tuple([10.0] * 2000)
    champion = ro.ArmStats(2000, 0, healthy, impressions=2000, successes=1200)
    # clearly worse: rolled back, even before the step's min_requests (the interval is valid at every look)
    worse = ro.ArmStats(60, 0, healthy[:60], impressions=60, successes=12)
    d = _quality(champion, worse)
    assert d.action == "rollback" and "online quality" in d.reasons[0] and d.numbers["quality"]["verdict"] == "harm"
    # as good on few impressions: neither harm nor non-inferiority shown yet -> hold, saying how much more it needs
    same = ro.ArmStats(200, 0, healthy[:200], impressions=200, successes=120)
    d = _quality(champion, same)
    assert d.action == "hold" and "more impressions" in d.reasons[0]
    # as good on many: non-inferiority shown -> advance
    many = ro.ArmStats(2000, 0, healthy, impressions=2000, successes=1210)
    d = _quality(champion, many)
    assert d.action == "advance" and d.numbers["quality"]["verdict"] == "non_inferior"
    # evidence from the earlier steps counts: the same small step advances on top of a big earlier one
    assert _quality(champion, same, earlier=[(5000, 3000, 5000, 3010)]).action == "advance"
    # superiority asked: an as-good challenger cannot advance on non-inferiority alone
    assert _quality(champion, many, test="superiority").action == "hold"
    # the champion arm of this step has too few impressions (a 100 % step without holdback): hold, never advance
    empty = ro.ArmStats(0, 0)
    d = _quality(empty, many)
    assert d.action == "hold" and "smaller arm" in d.reasons[0]
    with pytest.raises(ValueError, match="needs a design"):
        ro.evaluate_guardrails(champion, many, CRITERIA, 1, test="non_inferiority")


def test_the_last_step_of_a_shipped_charter_compares_against_its_holdback() -> None:
    """The issue's check: the charter's 100 % step with a healthy challenger. The champion keeps its holdback,
    so the step has two measured arms and advances, instead of 'no online quality signal' -> rollback."""
    from pipelines.requirements import load_charter

    charter = load_charter("semantic_search")
    plan, last = charter.rollout, len(charter.rollout.canary) - 1
    assert plan.canary[last].traffic_share == 1.0 and plan.ab_share(last) == pytest.approx(0.95)
    q = plan.quality
    d = ro.design(q.false_rollback_rate, q.smallest_harm, q.power)
    challenger = ro.ArmStats(1900, 0, tuple([10.0] * 1900), impressions=1900, successes=1235)
    holdback = ro.ArmStats(100, 0, tuple([10.0] * 100), impressions=100, successes=65)
    earlier = [(19000, 12350, 1000, 650), (15000, 9750, 5000, 3250)]
    decision = ro.evaluate_guardrails(
        holdback,
        challenger,
        plan.canary[last].success,
        100,
        request_scale=0.02,
        test=plan.canary[last].success.quality_test(),
        design=d,
        earlier_steps=earlier,
        share=plan.ab_share(last),
    )
    assert decision.action == "advance", decision.reasons


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
