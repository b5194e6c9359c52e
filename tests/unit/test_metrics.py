import math

import numpy as np
import pytest

from components import metrics as m


def test_perfect_order_scores_one_and_no_hits_zero():
    gains = {"a": 2.0, "b": 1.0, "c": 0.5}
    assert m.ndcg_at_k(["a", "b", "c"], gains, 10) == pytest.approx(1.0)
    assert m.ndcg_at_k(["x", "y", "z"], gains, 10) == 0.0
    assert m.binary_ndcg_at_k(["a", "b"], {"a", "b"}, 20) == pytest.approx(1.0)
    assert m.capped_recall_at_k(["x"], {"a"}, 20) == 0.0


def test_ndcg_hand_computed_value():
    gains = {"a": 2.0, "b": 1.0}
    # ranking b, a: DCG = 1/log2(2) + 2/log2(3); ideal = 2 + 1/log2(3)
    expected = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert m.ndcg_at_k(["b", "a"], gains, 10) == pytest.approx(expected)


def test_ndcg_skips_queries_with_zero_ideal_and_unjudged_gain_zero():
    assert math.isnan(m.ndcg_at_k(["a"], {"a": 0.0}, 10))
    # an unjudged product at rank 1 pushes the judged one to rank 2
    assert m.ndcg_at_k(["u", "a"], {"a": 1.0}, 10) == pytest.approx(1 / math.log2(3))


def test_ndcg_cut_at_k():
    assert m.ndcg_at_k(["x", "a"], {"a": 1.0}, 1) == 0.0


def test_recall_definitions():
    assert m.recall_at_k(["a", "x", "b"], {"a", "b", "c", "d"}, 3) == 0.5
    assert math.isnan(m.recall_at_k(["a"], set(), 3))
    # recommendation recall divides by min(k, |target|)
    assert m.capped_recall_at_k(["a", "b"], {"a", "b", "c"}, 2) == 1.0
    assert m.capped_recall_at_k(["a", "x", "y"], {"a", "b"}, 3) == 0.5


def test_binary_ndcg_ideal_uses_min_k_target():
    # one hit at rank 2, target of 3 items, k=20 -> ideal = 1 + 1/log2(3) + 1/2
    ideal = 1 + 1 / math.log2(3) + 0.5
    assert m.binary_ndcg_at_k(["x", "a"], {"a", "b", "c"}, 20) == pytest.approx((1 / math.log2(3)) / ideal)


def test_rerank_order_breaks_ties_by_product_id():
    assert m.rerank_order(["b", "a", "c"], [1.0, 1.0, 2.0]) == ["c", "a", "b"]


def test_expected_random_ndcg_matches_enumeration():
    from itertools import permutations

    gains = [2.0, 1.0, 0.0, 0.5]
    ids = ["a", "b", "c", "d"]
    table = dict(zip(ids, gains, strict=True))
    exact = np.mean([m.ndcg_at_k(list(p), table, 3) for p in permutations(ids)])
    assert m.expected_random_ndcg_at_k(gains, 3) == pytest.approx(exact)


def test_bootstrap_interval_brackets_mean_and_is_seeded():
    values = np.random.default_rng(1).normal(0.5, 0.1, size=400)
    lo, hi = m.bootstrap_ci(values, seed=0)
    assert lo < values.mean() < hi
    assert (lo, hi) == m.bootstrap_ci(values, seed=0)
    assert m.bootstrap_ci([0.3] * 10) == pytest.approx((0.3, 0.3))


def test_paired_bootstrap_detects_improvement_and_its_absence():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 300)
    diff, (lo, hi), p = m.paired_bootstrap(base + 0.05, base)
    assert diff == pytest.approx(0.05) and lo > 0 and p == 0.0
    diff, (lo, hi), p = m.paired_bootstrap(base, base)
    assert diff == 0.0 and p == 1.0
    with pytest.raises(ValueError):
        m.paired_bootstrap([1.0], [1.0, 2.0])
