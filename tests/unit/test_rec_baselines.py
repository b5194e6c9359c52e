import numpy as np
import pandas as pd

from components import schema as s
from components.rec_baselines import (
    baseline_rankings,
    build_interactions,
    ease_weights,
    item_knn_similarity,
    own_frequency_scores,
    popularity,
    popularity_scores,
    prepare_events,
    top_k,
)
from tests.unit._rec_fixtures import purchases, shop_events


def test_duplicate_events_collapse_to_one_purchase():
    ev = shop_events()
    doubled = pd.concat([ev, ev.iloc[:3]], ignore_index=True)
    a = build_interactions(prepare_events(ev))
    b = build_interactions(prepare_events(doubled))
    assert (a.counts != b.counts).nnz == 0


def test_out_of_order_events_give_the_same_history():
    ev = shop_events()
    shuffled = ev.sample(frac=1.0, random_state=3)
    a, b = prepare_events(ev), prepare_events(shuffled)
    pd.testing.assert_frame_equal(a, b)
    assert b[s.TIMESTAMP].is_monotonic_increasing


def test_only_purchases_count():
    ev = shop_events()
    view = ev.iloc[:1].assign(**{s.EVENT_TYPE: "view", s.PRODUCT_ID: "g", s.SESSION_ID: "99"})
    inter = build_interactions(prepare_events(pd.concat([ev, view], ignore_index=True)))
    assert inter.counts[inter.user_index()["ann"], inter.item_index()["g"]] == 0


def test_counts_are_distinct_baskets():
    inter = build_interactions(prepare_events(shop_events()))
    assert inter.counts[inter.user_index()["ann"], inter.item_index()["a"]] == 3
    assert inter.counts[inter.user_index()["cat"], inter.item_index()["e"]] == 2


def test_popularity_is_distinct_buyers_and_same_for_everyone():
    inter = build_interactions(prepare_events(shop_events()))
    pop = popularity(inter)
    assert pop[inter.item_index()["a"]] == 3  # ann, bob, eve
    sc = popularity_scores(inter, np.arange(3))
    assert (sc == sc[0]).all()


def test_own_frequency_ranks_own_items_first_then_popular():
    inter = build_interactions(prepare_events(shop_events()))
    row = inter.user_index()["ann"]
    top = inter.items[top_k(own_frequency_scores(inter, np.array([row])), 4)[0]]
    assert list(top[:3]) == ["a", "b", "c"]  # a bought 3x; b and c once, b more popular
    assert top[3] not in {"a", "b", "c"}


def test_item_knn_cosine_exact_and_no_self():
    ev = purchases([("u1", "x", "2011-01-01", "1"), ("u1", "y", "2011-01-01", "1"), ("u2", "x", "2011-01-02", "2")])
    inter = build_interactions(prepare_events(ev))
    sim = item_knn_similarity(inter, 5).toarray()
    ix = inter.item_index()
    assert sim[ix["x"], ix["x"]] == 0
    assert np.isclose(sim[ix["x"], ix["y"]], 1 / np.sqrt(2))  # x bought by 2 users, y by 1, overlap 1


def test_ease_has_zero_diagonal():
    inter = build_interactions(prepare_events(shop_events()))
    b = ease_weights(inter, 10.0)
    assert b.shape == (len(inter.items),) * 2
    assert np.allclose(np.diag(b), 0.0)


def test_top_k_breaks_ties_by_lower_index():
    scores = np.array([[1.0, 3.0, 3.0, 0.0]])
    assert top_k(scores, 3).tolist() == [[1, 2, 0]]


def test_baseline_rankings_cover_every_user():
    events = prepare_events(shop_events())
    inter = build_interactions(events)
    users = ["ann", "solo"]
    for name in ("popularity", "own_frequency", "item_knn", "ease"):
        out = baseline_rankings(inter, users, name, 3)
        assert set(out) == set(users) and all(len(v) == 3 for v in out.values())
    assert baseline_rankings(inter, users, "own_frequency", 3)["solo"][0] == "c"
