import numpy as np
import pytest

from components.rec_eval import (
    buyer_segments,
    evaluate_rankings,
    evaluation_targets,
    repeat_target_share,
    slice_summary,
)
from tests.unit._rec_fixtures import purchases, shop_events


def test_perfect_and_empty_rankings():
    targets = {"u": {"a", "b"}}
    perfect = evaluate_rankings({"u": ["a", "b", "c"]}, targets, {}, 3)
    assert perfect.recall[0] == 1.0 and perfect.ndcg[0] == pytest.approx(1.0)
    miss = evaluate_rankings({"u": ["c", "d"]}, targets, {}, 4)
    assert miss.recall[0] == 0.0 and miss.ndcg[0] == 0.0


def test_exact_values_coverage_and_repeats():
    targets = {"u": {"a", "b"}, "v": {"c"}}
    ranked = {"u": ["x", "a"], "v": ["c", "a"]}
    rep = evaluate_rankings(ranked, targets, {"u": {"x"}, "v": set()}, n_items_ranked=10, k=2)
    assert rep.recall.tolist() == [0.5, 1.0]
    assert rep.ndcg[0] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
    assert rep.coverage == pytest.approx(3 / 10)
    assert rep.repeat_share == pytest.approx(1 / 4)
    s = rep.summary(resamples=50)
    assert s["recall_at_20"] == pytest.approx(0.75) and s["users"] == 2


def test_a_user_without_ranking_is_an_error():
    with pytest.raises(KeyError):
        evaluate_rankings({}, {"u": {"a"}}, {}, 1)


def test_targets_need_history_and_window():
    history = shop_events()
    window = purchases(
        [("ann", "g", "2011-04-01", "20"), ("ann", "a", "2011-04-02", "21"), ("new", "a", "2011-04-01", "22")]
    )
    t = evaluation_targets(history, window)
    assert t == {"ann": {"g", "a"}}
    assert repeat_target_share(t, {"ann": {"a", "b"}}) == pytest.approx(0.5)


def test_segments_by_baskets():
    seg = buyer_segments(shop_events(), ["ann", "solo", "ghost"], heavy_min_baskets=3)
    assert seg.tolist() == ["heavy", "light", "light"]
    rep = evaluate_rankings({"a": ["x"], "b": ["y"]}, {"a": {"x"}, "b": {"x"}}, {}, 2, k=1)
    sl = slice_summary(rep, np.array(["heavy", "light"]))
    assert sl["heavy"]["recall_at_20"] == 1.0 and sl["light"]["recall_at_20"] == 0.0
