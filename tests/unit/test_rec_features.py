import numpy as np
import pandas as pd
import pytest

from components import schema as s
from components.config_recommend import CandidateParams, MFParams, UserEncoderParams
from components.rec_baselines import build_interactions, ease_weights, prepare_events
from components.rec_features import (
    DAY,
    FEATURES,
    candidate_features,
    candidate_labels,
    fit_rec_state,
    repeat_signals,
    rows_of,
    tifu_scores,
    user_baskets,
)
from tests.unit._rec_fixtures import purchases, shop_catalog, shop_events, shop_text

AS_OF = np.datetime64("2011-04-01")


SMALL = CandidateParams(own=5, tifu=3, ease=3, knn=3, mf=3, encoder=0, trending=2, knn_neighbours=3)


def fit(events=None, candidates=SMALL):
    cat = shop_catalog()
    return fit_rec_state(
        shop_events() if events is None else events,
        cat,
        shop_text(len(cat)),
        AS_OF,
        MFParams(dim=4, epochs=2, lr=0.01, batch_size=8),
        UserEncoderParams(dim=4, max_len=4, epochs=1, batch_size=4, max_windows=4),
        candidates,
        seed=0,
    )


def test_state_universe_and_never_purchased_item():
    st = fit()
    assert list(st.items) == list("abcdefgz")
    assert st.rankable.tolist() == [True] * 7 + [False]
    assert np.isfinite(st.encoder_items[-1]).all() and np.abs(st.encoder_items[-1]).sum() > 0  # cold vector


def test_events_at_or_after_as_of_are_refused():
    late = shop_events()
    late.loc[0, s.TIMESTAMP] = pd.Timestamp(AS_OF)
    with pytest.raises(ValueError, match="leak"):
        fit(late)


def test_candidates_features_and_groups():
    st = fit()
    rows = rows_of(st, ["ann", "solo"])
    cand_rows, cand_items, x = candidate_features(st, rows)
    assert x.shape == (len(cand_rows), len(FEATURES))
    assert not st.items[cand_items].tolist().count("z")  # never-bought items are not ranked
    assert list(dict.fromkeys(cand_rows.tolist())) == rows.tolist()  # grouped by user, in request order
    ann = cand_rows == rows[0]
    a = ann & (st.items[cand_items] == "a")
    f = dict(zip(FEATURES, x[a][0], strict=True))
    assert f["own_baskets"] == 3 and f["own_rank"] == 1
    assert f["own_days_since_last"] == pytest.approx(31.0)  # 2011-03-01 -> 2011-04-01
    assert f["own_interval"] == pytest.approx(29.5)  # Jan 1 -> Mar 1 over two gaps
    never = ann & (st.items[cand_items] == "d")
    if never.any():
        assert np.isnan(x[never][0][FEATURES.index("own_days_since_last")])


def test_user_with_one_purchase_gets_candidates_beyond_it():
    st = fit()
    cand_rows, cand_items, _ = candidate_features(st, rows_of(st, ["solo"]))
    items = set(st.items[cand_items])
    assert "c" in items and len(items) > 1


def test_labels_and_unknown_rows():
    st = fit()
    cand_rows, cand_items, _ = candidate_features(st, rows_of(st, ["ann"]))
    y = candidate_labels(st, cand_rows, cand_items, {"ann": {"a"}})
    assert y.sum() == 1 and st.items[cand_items][y == 1].tolist() == ["a"]
    assert rows_of(st, ["nobody"]).tolist() == [-1]


# --- repeat-aware signals (TIFU-kNN, time decay, baskets since, due to buy again) ----------------


def signals(events, **cfg):
    ev = prepare_events(events)
    ev = ev.assign(_days=((AS_OF.astype("datetime64[ns]") - ev[s.TIMESTAMP].to_numpy()) / DAY).astype(np.float32))
    return repeat_signals(ev, CandidateParams(**cfg))


def test_one_basket_user_has_tifu_weight_one_and_no_baskets_since():
    sig = signals(purchases([("solo", "c", "2011-03-15", "12"), ("solo", "d", "2011-03-15", "12")]))
    assert sig["tifu"].tolist() == [1.0, 1.0]
    assert sig["baskets_since"].tolist() == [0.0, 0.0]
    assert sig["decayed"].tolist() == pytest.approx([0.5 ** (17 / 60)] * 2)  # Mar 15 -> Apr 1, default half-life


def test_without_decay_tifu_is_the_share_of_baskets_when_one_group_holds_them_all():
    sig = signals(shop_events(), tifu_group_size=10, tifu_within_decay=1.0, tifu_group_decay=1.0).loc["ann"]
    assert sig["tifu"].to_dict() == pytest.approx({"a": 1.0, "b": 1 / 3, "c": 1 / 3})
    # One item per basket: the basket weights themselves, which sum to 1 without decay, whatever the grouping.
    for m in (1, 2, 3, 5):
        total = signals(
            purchases([("u", str(i), f"2011-01-0{i + 1}", str(i)) for i in range(5)]),
            tifu_group_size=m,
            tifu_within_decay=1.0,
            tifu_group_decay=1.0,
        )["tifu"].sum()
        assert total == pytest.approx(1.0)


def test_tifu_hand_computed_with_groups_and_decay():
    # ann's baskets newest first: Mar 1 {a} (group 0, pos 0), Feb 1 {a, c} (group 0, pos 1), Jan 1 {a, b}
    # (group 1, pos 0; the oldest group holds one basket). Weight = 0.5**pos * 0.5**group / (size * 2 groups).
    sig = signals(shop_events(), tifu_group_size=2, tifu_within_decay=0.5, tifu_group_decay=0.5).loc["ann"]
    assert sig["tifu"].to_dict() == pytest.approx({"a": 0.25 + 0.125 + 0.25, "b": 0.25, "c": 0.125})
    assert sig["baskets_since"].to_dict() == {"a": 0.0, "b": 2.0, "c": 1.0}
    decayed = signals(shop_events(), decay_half_life_days=31.0).loc["ann", "decayed"]
    assert decayed.to_dict() == pytest.approx(
        {"a": 0.5 + 0.5 ** (59 / 31) + 0.5 ** (90 / 31), "b": 0.5 ** (90 / 31), "c": 0.5 ** (59 / 31)}
    )


def test_tifu_scores_alpha_one_is_own_vector_and_neighbours_exclude_self():
    own_only = fit(candidates=SMALL.model_copy(update={"tifu_alpha": 1.0}))
    rows = rows_of(own_only, ["ann", "bob"])
    assert np.allclose(tifu_scores(own_only, rows), own_only.stat("tifu")[rows].toarray())
    nbrs = fit(candidates=SMALL.model_copy(update={"tifu_alpha": 0.0, "tifu_neighbours": 1}))
    solo = rows_of(nbrs, ["solo"])
    sc = tifu_scores(nbrs, solo)[0]
    # solo bought only c; its one nearest neighbour (cosine of TIFU vectors) is another c buyer.
    assert sc[list(nbrs.items).index("c")] > 0
    vec = nbrs.stat("tifu").toarray()
    assert not np.allclose(sc, vec[solo[0]])
    assert any(np.allclose(sc, vec[r]) for r in range(len(nbrs.users)) if r != solo[0])


def test_repeat_features_hand_computed():
    st = fit(candidates=SMALL.model_copy(update={"recent_baskets": 1}))
    der = st.derived()
    item = {p: i for i, p in enumerate(st.items)}
    ann = rows_of(st, ["ann"])[0]
    assert der["item_repeat_rate"][item["a"]] == pytest.approx(1 / 3)  # ann twice+, bob and eve once
    assert der["item_repeat_rate"][item["e"]] == pytest.approx(1 / 2)  # cat twice, dan once
    assert np.isnan(der["item_repeat_rate"][item["z"]])  # never bought
    assert der["item_interval"][item["a"]] == pytest.approx(29.5)  # only ann repeats a: Jan 1 -> Mar 1
    assert der["user_repeat_ratio"][ann] == pytest.approx(1 - 3 / 5)  # 5 (basket, item) pairs, 3 items
    assert der["user_interval"][ann] == pytest.approx(29.5) and der["user_due"][ann] == pytest.approx(31 / 29.5)
    assert np.isnan(der["user_interval"][rows_of(st, ["solo"])[0]])
    cand_rows, cand_items, x = candidate_features(st, np.array([ann]))
    f = {st.items[i]: dict(zip(FEATURES, row, strict=True)) for i, row in zip(cand_items, x, strict=True)}
    assert f["a"]["own_baskets_since"] == 0 and f["c"]["own_baskets_since"] == 1
    assert f["a"]["own_due_item"] == pytest.approx(31 / 29.5)
    # recent_knn: kNN similarity to the items of ann's last basket ({a}) only.
    knn = st.knn_matrix().toarray()
    for p, row in f.items():
        assert row["recent_knn"] == pytest.approx(knn[item["a"], item[p]])
    if "d" in f:
        assert np.isnan(f["d"]["own_baskets_since"]) and np.isnan(f["d"]["own_due_item"])


def test_ease_is_rebuilt_from_the_stored_purchases_and_scores_candidates():
    st = fit()
    expected = ease_weights(build_interactions(prepare_events(shop_events()), st.items), SMALL.ease_lambda)
    assert np.allclose(st.ease_matrix(), expected, atol=1e-6)
    assert np.allclose(np.diag(st.ease_matrix()), 0.0)  # EASE never scores an item by itself
    ann = rows_of(st, ["ann"])
    cand_rows, cand_items, x = candidate_features(st, ann)
    binary = (st.stat("baskets")[ann].toarray() > 0).astype(np.float32)
    np.testing.assert_allclose(
        x[:, FEATURES.index("ease_score")], (binary @ expected)[0, cand_items], rtol=1e-5, atol=1e-6
    )


def test_fit_without_encoder_leaves_zero_vectors_and_the_same_features():
    with_enc, without = (
        fit(),
        fit_rec_state(
            shop_events(),
            shop_catalog(),
            shop_text(len(shop_catalog())),
            AS_OF,
            MFParams(dim=4, epochs=2, lr=0.01, batch_size=8),
            UserEncoderParams(dim=4, max_len=4, epochs=1, batch_size=4, max_windows=4),
            SMALL,
            seed=0,
            fit_encoder=False,
        ),
    )
    assert not without.encoder_users.any() and not without.encoder_items.any() and without.encoder_weights == {}
    rows = rows_of(with_enc, ["ann", "cat"])
    a, b = candidate_features(with_enc, rows), candidate_features(without, rows)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)  # the encoder is no candidate source (SMALL.encoder=0) nor feature


def test_title_similarity_and_still_selling_features_hand_computed():
    st = fit(candidates=SMALL.model_copy(update={"recent_baskets": 1}))
    der = st.derived()
    item = {p: i for i, p in enumerate(st.items)}
    # a: ann last bought it Mar 1 (31 days before Apr 1), eve Mar 2 (30); e: cat Mar 10 and Mar 20 (12).
    assert der["item_days_since_sale"][item["a"]] == pytest.approx(30) and np.isnan(der["item_days_since_sale"][-1])
    assert (der["item_buyers_7d"][item["e"]], der["item_buyers_14d"][item["e"]]) == (0, 1)
    assert der["item_rebuyers_30d"][item["e"]] == 1  # cat, two baskets, the last within 30 days
    assert der["item_rebuyers_30d"][item["a"]] == 0  # eve bought it once; ann's repeat ended 31 days ago
    assert der["item_buyers_14d"][item["a"]] == 0 and der["item_buyers_7d"][item["a"]] == 0

    ann = rows_of(st, ["ann"])
    cand_rows, cand_items, x = candidate_features(st, ann)
    f = {st.items[i]: dict(zip(FEATURES, row, strict=True)) for i, row in zip(cand_items, x, strict=True)}
    unit = shop_text(len(shop_catalog()))  # already unit length, catalog order = item order (a..g, z)
    tifu = st.stat("tifu")[ann].toarray()[0]
    profile = tifu @ unit / np.linalg.norm(tifu @ unit)
    for p, row in f.items():
        assert row["text_sim_tifu"] == pytest.approx(float(unit[item[p]] @ profile), abs=1e-5)
        others = [o for o in "abc" if o != p]  # ann bought a, b, c; an item is not its own neighbour
        assert row["text_sim_all_max"] == pytest.approx(max(float(unit[item[p]] @ unit[item[o]]) for o in others))
        assert row["item_days_since_sale"] == der["item_days_since_sale"][item[p]]
    # Ann's last basket holds a alone: a has no other recent item to resemble; b is compared with a.
    assert np.isnan(f["a"]["text_sim_recent_max"])
    assert f["b"]["text_sim_recent_max"] == pytest.approx(float(unit[item["b"]] @ unit[item["a"]]))


def test_user_baskets_in_time_order_with_their_days():
    events = purchases(
        [
            ("ann", "b", "2011-01-03", "2"),
            ("ann", "c", "2011-01-01", "1"),
            ("ann", "a", "2011-01-01", "1"),
            ("ann", "a", "2011-01-01", "1"),  # the same item twice in a basket counts once
            ("bob", "c", "2011-01-02", "3"),
        ]
    )
    baskets, days = user_baskets(events, np.array(["ann", "bob", "new"]), np.array(list("abc")))
    assert baskets == [[[0, 2], [1]], [[2]], []]
    assert np.diff(days[0]).tolist() == [2.0] and len(days[1]) == 1 and len(days[2]) == 0
