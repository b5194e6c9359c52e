"""Drift checks on hand-built traffic: identical distributions never breach, a constructed shift does,
hand-computable statistics are exact; the retrain decision; the charter's `monitor` section."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from components import drift
from components.charter import CharterError, DriftThresholds, MonitorPlan, parse_charter

CHARTERS = Path(__file__).resolve().parents[2] / "charters"
WORDS = [f"w{i}" for i in range(40)]


def _queries(n: int, seed: int, words=WORDS) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=rng.integers(1, 5))) for _ in range(n)]


def _items(n: int, seed: int, catalog: int = 50, new: int = 0) -> list[str]:
    """Zipf-like draws from p0..p<catalog-1>; `new` extra draws from products n0.. the reference never had."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, catalog + 1)
    drawn = [f"p{i}" for i in rng.choice(catalog, size=n, p=weights / weights.sum())]
    return drawn + [f"n{i}" for i in rng.integers(0, 5, size=new)]


@pytest.fixture
def reference() -> drift.Sample:
    return drift.Sample(queries=_queries(400, 0), users=[f"u{i % 60}" for i in range(400)], items=_items(2000, 0))


# --- hand-computable values ------------------------------------------------------------------------
def test_psi_is_zero_for_identical_and_exact_for_two_bins():
    assert drift.psi(np.array([5, 5]), np.array([50, 50])) == 0.0
    # shares (0.5, 0.5) -> (0.8, 0.2): 0.3 ln 1.6 + (-0.3) ln 0.4
    assert drift.psi(np.array([1, 1]), np.array([4, 1])) == pytest.approx(0.3 * math.log(1.6) - 0.3 * math.log(0.4))


def test_token_statistics_are_exact():
    assert drift.tokenize("Cordless DRILL, 18-V") == ["cordless", "drill", "18", "v"]
    assert drift.length_counts(["a", "a b", "a b c", ""], max_bin=2).tolist() == [1, 1, 2]
    vocab = drift.vocabulary(["wood screws", "drill"])
    assert drift.oov_rate(["wood nails", "drill bits"], vocab) == 0.5
    assert drift.oov_rate([], vocab) == 0.0


def test_unseen_share_and_popularity_buckets_are_exact():
    assert drift.unseen_share(["a", "a", "b", "c"], {"a"}) == 0.5
    assert drift.unseen_share([], {"a"}) == 0.0
    # a holds 4 of 8 interactions (bucket 0), b 2 (bucket 1: starts at 4/8), c and d 1 each (buckets 1 and 1)
    buckets = drift.popularity_buckets(["a"] * 4 + ["b"] * 2 + ["c", "d"], n_buckets=2)
    assert buckets == {"a": 0, "b": 1, "c": 1, "d": 1}
    # traffic all on the head: shares (1, 0) vs (0.5, 0.5) with the floor on the empty bin
    value = drift.popularity_psi(["a"] * 4 + ["b"] * 4, ["a"] * 10 + ["zz"], n_buckets=2)
    assert value == pytest.approx(0.5 * math.log(1 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5))
    assert drift.popularity_psi(["a"], ["zz"]) is None


def test_online_rates_count_each_request_once():
    impressions = pd.DataFrame(
        {
            "request_id": ["r1", "r1", "r2", "r3", "r4"],
            "model_version": ["1", "1", "1", "2", "2"],
            "product_id": ["a", "b", "a", "c", "d"],
        }
    )
    feedback = pd.DataFrame({"request_id": ["r1", "r1", "r3", "r3"], "event": ["click", "click", "click", "purchase"]})
    rates = drift.online_rates(impressions, feedback)
    assert rates == {
        "1": {"requests": 2, "ctr": 0.5, "purchase_rate": 0.0},
        "2": {"requests": 2, "ctr": 0.5, "purchase_rate": 0.5},
    }
    checks = drift.rate_checks(rates, DriftThresholds(min_ctr=0.6), min_requests=2)
    assert [(c.name, c.breached) for c in checks] == [
        ("ctr[v1]", True),
        ("purchase_rate[v1]", False),
        ("ctr[v2]", True),
        ("purchase_rate[v2]", False),
    ]
    # too few requests: reported, never breached
    assert not any(c.breached for c in drift.rate_checks(rates, DriftThresholds(min_ctr=0.6), min_requests=3))


# --- the embedding test -----------------------------------------------------------------------------
def test_embedding_is_deterministic_normalised_and_seeded():
    a = drift.embed_queries(["cordless drill", "wood screws", ""], seed=3)
    assert a.shape == (3, drift.EMBEDDING_DIM)
    assert np.allclose(np.linalg.norm(a[:2], axis=1), 1.0) and not a[2].any()
    assert np.array_equal(a, drift.embed_queries(["cordless drill", "wood screws", ""], seed=3))
    assert not np.array_equal(a, drift.embed_queries(["cordless drill", "wood screws", ""], seed=4))


def test_mmd_p_value_is_uniformish_under_the_null_and_small_under_a_shift():
    rng = np.random.default_rng(0)
    same = [drift.mmd_test(rng.normal(size=(60, 4)), rng.normal(size=(60, 4)), 100, seed=s)[1] for s in range(20)]
    assert np.mean(np.array(same) < 0.05) <= 0.2  # ~5 % expected; 20 draws
    mmd2, p = drift.mmd_test(rng.normal(size=(60, 4)), rng.normal(0.8, 1, size=(60, 4)), 100, seed=0)
    assert mmd2 > 0 and p == pytest.approx(1 / 101)
    # identical samples: the observed statistic is 0 and every permutation reaches it -> p small only by chance
    x = rng.normal(size=(30, 4))
    assert drift.mmd_test(x, x.copy(), 50, seed=0)[0] == pytest.approx(0.0, abs=1e-12)


# --- the checks together ----------------------------------------------------------------------------
def test_traffic_like_the_training_data_breaches_nothing(reference):
    traffic = drift.Sample(queries=_queries(300, 1), users=[f"u{i % 60}" for i in range(7, 307)], items=_items(1500, 1))
    holdout = drift.Sample(queries=_queries(300, 2), users=[f"u{i % 60}" for i in range(300)], items=_items(1000, 2))
    checks = drift.drift_checks(reference, traffic, DriftThresholds(), holdout=holdout, seed=0)
    assert {c.name for c in checks} == {
        "query_length_psi",
        "oov_rate",
        "query_embedding_mmd",
        "unseen_users",
        "unseen_items",
        "popularity_psi",
    }
    assert [c.name for c in checks if c.breached] == [], [c.to_dict() for c in checks]
    by = {c.name: c for c in checks}
    assert by["oov_rate"].value == 0.0 and by["unseen_users"].value == 0.0 and by["unseen_items"].value == 0.0
    assert by["query_length_psi"].baseline is not None


def test_a_shift_in_wording_users_and_items_is_caught(reference):
    new_words = [f"x{i}" for i in range(40)]
    rng = np.random.default_rng(5)
    traffic = drift.Sample(
        queries=[" ".join(rng.choice(new_words, size=6)) for _ in range(300)],
        users=[f"new{i}" for i in range(300)],
        items=_items(500, 1, new=1000),
    )
    checks = {c.name: c for c in drift.drift_checks(reference, traffic, DriftThresholds(), seed=0)}
    assert checks["oov_rate"].value == 1.0 and checks["oov_rate"].breached
    assert checks["query_length_psi"].breached  # every query now 6 tokens
    assert checks["query_embedding_mmd"].breached and checks["query_embedding_mmd"].value < 0.01
    assert checks["unseen_users"].value == 1.0 and checks["unseen_users"].breached
    assert checks["unseen_items"].value == pytest.approx(1000 / 1500) and checks["unseen_items"].breached


def test_popularity_moving_to_the_tail_is_caught(reference):
    tail = [f"p{i}" for i in range(30, 50)] * 50  # the reference's least bought items take every purchase
    checks = {c.name: c for c in drift.drift_checks(reference, drift.Sample(items=tail), DriftThresholds())}
    assert checks["popularity_psi"].breached and checks["unseen_items"].value == 0.0
    assert "query_length_psi" not in checks and "unseen_users" not in checks  # no queries, no users: not applicable


def test_the_baseline_is_subtracted(reference):
    """Held-out traffic that is as novel as the live one: the excess is 0, so nothing breaches."""
    novel = drift.Sample(items=_items(500, 1, new=500))
    alone = {c.name: c for c in drift.drift_checks(reference, novel, DriftThresholds(unseen_items=0.2))}
    assert alone["unseen_items"].breached
    checks = drift.drift_checks(reference, novel, DriftThresholds(unseen_items=0.2), holdout=novel)
    unseen = next(c for c in checks if c.name == "unseen_items")
    assert unseen.baseline == unseen.value == 0.5 and not unseen.breached


# --- the decision -----------------------------------------------------------------------------------
def _check(breached: bool) -> drift.Check:
    return drift.Check("oov_rate", 0.5 if breached else 0.0, 0.1, breached)


@pytest.mark.parametrize(
    ("breached", "requests", "feedback", "since", "trigger", "says"),
    [
        (True, 500, 0, None, True, "drift: oov_rate"),
        (True, 50, 0, None, False, "no verdict"),  # too few requests to act on
        (False, 500, 0, None, False, "no drift"),
        (False, 500, 100, None, True, "new feedback: 100 events"),
        (True, 500, 100, None, True, "drift: oov_rate; new feedback"),
        (True, 500, 100, 2.0, False, "cooling down"),
        (True, 500, 0, 30.0, True, "drift"),
    ],
)
def test_decide_retrain(breached, requests, feedback, since, trigger, says):
    plan = MonitorPlan(min_requests=200, retrain_after_feedback=100, cooldown_hours=24)
    decision = drift.decide_retrain([_check(breached)], requests, feedback, plan, since)
    assert decision.trigger is trigger and says in decision.reason


def test_feedback_count_trigger_can_be_disabled():
    plan = MonitorPlan(retrain_after_feedback=0)
    assert not drift.decide_retrain([], 10_000, 10**9, plan).trigger


# --- the charter's monitor section ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["semantic_search", "personalised_recommendations"])
def test_shipped_charters_carry_a_monitor_section(name):
    raw = yaml.safe_load((CHARTERS / f"{name}.yaml").read_text())
    assert "monitor" in raw
    charter = parse_charter(raw)
    assert charter.monitor.window_hours > 0 and charter.monitor.thresholds.oov_rate > 0


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m.update(window_hours=0), "monitor.window_hours"),
        (lambda m: m["thresholds"].update(embedding_alpha=0.7), "monitor.thresholds.embedding_alpha"),
        (lambda m: m["thresholds"].update(min_ctr=1.5), "monitor.thresholds.min_ctr"),
        (lambda m: m.update(surprise=1), "monitor.surprise: unknown field"),
        (lambda m: m.update(permutations=50), "embedding_alpha 0.01 can never be reached with 50 permutations"),
    ],
)
def test_bad_monitor_section_names_the_field(edit, field):
    raw = copy.deepcopy(yaml.safe_load((CHARTERS / "semantic_search.yaml").read_text()))
    raw["monitor"].setdefault("thresholds", {})
    edit(raw["monitor"])
    with pytest.raises(CharterError, match=field.replace(".", r"\.")):
        parse_charter(raw, "semantic_search.yaml")


def test_a_charter_without_monitor_gets_the_defaults():
    raw = yaml.safe_load((CHARTERS / "semantic_search.yaml").read_text())
    raw.pop("monitor", None)
    assert parse_charter(raw).monitor == MonitorPlan()
