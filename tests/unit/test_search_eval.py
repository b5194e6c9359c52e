"""Search evaluation per EVALUATION.md: boundary identities first, then exact values."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from components import schema as s
from components.search_eval import (
    full_catalog_metrics,
    head_or_tail,
    judged_gains,
    judged_pool,
    query_length_bucket,
    random_rerank_ndcg,
    rerank_ndcg,
    summarize_metrics,
    token_query_counts,
)


@pytest.fixture
def judgments() -> pd.DataFrame:
    return pd.DataFrame(
        {
            s.QUERY_ID: ["q1", "q1", "q1", "q2", "q2"],
            s.QUERY: ["a", "a", "a", "b", "b"],
            s.PRODUCT_ID: ["p1", "p2", "p3", "p4", "p5"],
            s.RELEVANCE: [3.0, 2.0, 1.0, 1.0, 1.0],  # q2: every gain 0 -> NDCG skipped
        }
    )


def test_perfect_order_scores_one_and_no_hits_zero(judgments) -> None:
    gains = judged_gains(judgments)
    m = full_catalog_metrics(["q1"], [["p1", "p2", "p3"]], gains)
    assert m.loc["q1", "ndcg_at_10"] == 1.0 and m.loc["q1", "recall_at_100"] == 1.0
    m = full_catalog_metrics(["q1"], [["x", "y"]], gains)
    assert m.loc["q1", "ndcg_at_10"] == 0.0 and m.loc["q1", "recall_at_100"] == 0.0


def test_queries_without_gain_or_relevant_are_nan(judgments) -> None:
    m = full_catalog_metrics(["q2"], [["p4"]], judged_gains(judgments))
    assert math.isnan(m.loc["q2", "ndcg_at_10"]) and math.isnan(m.loc["q2", "recall_at_100"])


def test_exact_ndcg_with_unjudged_first(judgments) -> None:
    m = full_catalog_metrics(["q1"], [["x", "p2", "p1"]], judged_gains(judgments))
    ideal = 2 + 1 / math.log2(3)
    assert m.loc["q1", "ndcg_at_10"] == pytest.approx((1 / math.log2(3) + 2 / math.log2(4)) / ideal)


def test_recall_counts_only_relevance_at_least_2_5(judgments) -> None:
    m = full_catalog_metrics(["q1"], [["p2"]], judged_gains(judgments))
    assert m.loc["q1", "recall_at_100"] == 0.0  # p2 has relevance 2.0 < 2.5


def test_another_scale_sets_gains_and_relevance() -> None:
    from components.config import RelevanceScale

    scale = RelevanceScale(min=0, max=4, relevant_from=3)
    judged = pd.DataFrame(
        {s.QUERY_ID: ["q"] * 4, s.PRODUCT_ID: ["a", "b", "c", "d"], s.RELEVANCE: [4.0, 3.0, 2.0, 0.0]}
    )
    gains = judged_gains(judged, scale)
    assert gains == {"q": {"a": 4.0, "b": 3.0, "c": 2.0, "d": 0.0}}
    m = full_catalog_metrics(["q"], [["b", "c"]], gains, scale)
    assert m.loc["q", "recall_at_100"] == 0.5  # relevant from 3: a and b; c (2) is not
    assert m.loc["q", "ndcg_at_10"] == pytest.approx((3 + 2 / math.log2(3)) / (4 + 3 / math.log2(3) + 2 / 2))
    exp = RelevanceScale(min=0, max=4, relevant_from=3, gain="exponential")
    assert judged_gains(judged, exp)["q"] == {"a": 15.0, "b": 7.0, "c": 3.0, "d": 0.0}


def test_rerank_orders_judged_by_score_ties_by_id(judgments) -> None:
    gains = judged_gains(judgments)
    assert rerank_ndcg(["q1"], [{"p1": 0.9, "p2": 0.5, "p3": 0.1}], gains)[0] == 1.0
    tied = rerank_ndcg(["q1"], [{"p1": 0.0, "p2": 0.0, "p3": 0.0}], gains)[0]
    assert tied == 1.0  # ties -> product id ascending = p1, p2, p3 = ideal here
    worst = rerank_ndcg(["q1"], [{"p1": 0.0, "p2": 0.5, "p3": 0.9}], gains)[0]
    assert worst == pytest.approx((1 / math.log2(3) + 2 / math.log2(4)) / (2 + 1 / math.log2(3)))


def test_random_rerank_is_between_worst_and_best(judgments) -> None:
    r = random_rerank_ndcg(["q1", "q2"], judged_gains(judgments))
    assert 0.5 < r[0] < 1.0 and math.isnan(r[1])


def test_summary_has_mean_interval_and_count() -> None:
    out = summarize_metrics({"ndcg_at_10": [0.0, 1.0, np.nan, 0.5]}, resamples=200, seed=0)
    assert out["ndcg_at_10"] == 0.5 and out["ndcg_at_10_n"] == 3
    lo, hi = out["ndcg_at_10_ci"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0


def test_slices() -> None:
    assert [query_length_bucket(q) for q in ("drill", "a b", "a b c", "a b c d e", "")] == ["1", "2", "3", "4+", "1"]
    counts = token_query_counts(["drill"] * 3 + [f"drill bit {i}" for i in range(25)])
    assert counts["drill"] == 26 and counts["bit"] == 25  # distinct queries
    assert head_or_tail("drill bit", counts) == "head"
    assert head_or_tail("drill xz900", counts) == "tail"
    assert head_or_tail("!!!", Counter()) == "tail"


def test_never_judged_slice_on_hand_built_judgments() -> None:
    """judged_pool: relevant (>= 2.5) products judged for no train query -> never_judged."""
    train = pd.DataFrame(
        {
            s.QUERY_ID: ["t1", "t1", "t2"],
            s.QUERY: ["drill", "drill", "hose"],
            s.PRODUCT_ID: ["p1", "p2", "p3"],
            s.RELEVANCE: [3.0, 1.0, 1.67],
        }
    )
    test = pd.DataFrame(
        {
            s.QUERY_ID: ["a", "a", "b", "b", "c", "c", "d", "e"],
            s.QUERY: ["x"] * 8,
            # a: its relevant p9 unjudged in train (p1 graded 2.0 < 2.5 does not count) -> never_judged
            # b: relevant p2 was judged in train, even at the lowest grade -> judged
            # c: no relevant product; its positive-gain p3 was judged in train -> judged
            # d: no positive gain at all -> none;  e: positive-gain p8 only, unjudged -> never_judged
            s.PRODUCT_ID: ["p1", "p9", "p2", "p7", "p3", "p6", "p5", "p8"],
            s.RELEVANCE: [2.0, 3.0, 2.67, 3.0, 2.0, 1.0, 1.0, 1.33],
        }
    )
    train_products = set(train[s.PRODUCT_ID])
    gains = judged_gains(test)
    pools = {q: judged_pool(gains[q], train_products) for q in sorted(gains)}
    assert pools == {"a": "never_judged", "b": "judged", "c": "judged", "d": "none", "e": "never_judged"}
    assert judged_pool(gains["b"], set()) == "never_judged"  # no train judgments: every query is never judged
