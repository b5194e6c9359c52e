import pytest

from components.config_recommend import RecRankerParams
from components.rec_features import FEATURES
from components.recommend_model import RecommendModel, holdout_mask, train_rec_ranker, user_profiles
from tests.unit._rec_fixtures import shop_catalog
from tests.unit.test_rec_features import fit


@pytest.fixture(scope="module")
def model() -> RecommendModel:
    st = fit()
    titles = shop_catalog().set_index("product_id")["title"]
    return RecommendModel(st, None, user_profiles(st, titles))


def test_unknown_user_gets_the_popular_fallback(model):
    recs = model.recommend("never-seen", k=3)
    assert [r["source"] for r in recs] == ["popular"] * 3
    assert [r["product_id"] for r in recs] == list(model.state.items[model.popular[:3]])


def test_known_user_ranked_and_own_items_first_without_ranker(model):
    recs = model.recommend("ann", k=4)
    assert len(recs) == 4 and recs[0]["product_id"] == "a"
    assert len({r["product_id"] for r in recs}) == 4


def test_user_with_one_purchase_gets_k_items(model):
    recs = model.recommend("solo", k=5)
    assert len(recs) == 5 and recs[0]["product_id"] == "c"


def test_exclude_purchased(model):
    recs = model.recommend("ann", k=3, exclude_purchased=True)
    assert not {"a", "b", "c"} & {r["product_id"] for r in recs}
    assert len(recs) == 3


def test_never_purchased_item_is_not_recommended_but_has_neighbours(model):
    for u in ("ann", "bob", "never-seen"):
        assert "z" not in {r["product_id"] for r in model.recommend(u, k=7)}
    sim = model.similar("z", k=3)
    assert len(sim) == 3 and "z" not in {r["product_id"] for r in sim}
    with pytest.raises(KeyError):
        model.similar("no-such-item")


def test_k_larger_than_universe_and_zero(model):
    assert len(model.recommend("ann", k=50)) == int(model.state.rankable.sum())
    assert model.recommend("ann", k=0) == []


def test_rank_users_matches_recommend(model):
    batch = model.rank_users(["ann", "solo", "ghost"], 4)
    assert batch["ann"] == [r["product_id"] for r in model.recommend("ann", 4)]
    assert batch["ghost"] == [r["product_id"] for r in model.recommend("ghost", 4)]


def test_profiles(model):
    p = model.profile("ann")
    assert p["frequency"] == 3 and "red" in p["keywords"] and len(p["vector"]) == 4
    assert p["price_band"] in {"low", "mid", "high"}
    assert model.profile("ghost") is None


def test_ranker_trains_and_is_used():
    st = fit()
    targets = {"ann": {"a"}, "bob": {"b"}, "cat": {"e"}, "dan": {"f"}, "eve": {"a"}, "solo": {"c"}}
    cfg = RecRankerParams(n_estimators=5, min_data_in_leaf=1, early_stopping_rounds=2, holdout_share=0.3)
    booster, info = train_rec_ranker([(st, targets), (st, targets)], cfg, seed=0)
    assert info["ranker_folds"] == 2 and info["ranker_users"] == 12
    assert booster.feature_name() == list(FEATURES) and 0 < info["candidate_recall"] <= 1
    m = RecommendModel(st, booster)
    assert {r["source"] for r in m.recommend("ann", 3)} == {"ranker"}


def test_holdout_mask_is_stable():
    users = [f"u{i}" for i in range(200)]
    a, b = holdout_mask(users, 0.2, 0), holdout_mask(users, 0.2, 0)
    assert (a == b).all() and 0.1 < a.mean() < 0.3
    assert not (a == holdout_mask(users, 0.2, 1)).all()


def test_a_bundle_trained_before_features_were_added_still_ranks_with_its_own_columns():
    import lightgbm as lgb
    import numpy as np

    from components.rec_features import candidate_features, rows_of

    st = fit()
    _, _, x = candidate_features(st, rows_of(st, ["ann", "bob", "cat", "dan", "eve"]))
    older = list(FEATURES[:39])  # the ranker's features before the title and still-selling ones
    y = (x[:, FEATURES.index("own_baskets")] > 0).astype(int)
    params = {"objective": "binary", "verbosity": -1, "min_data_in_leaf": 1, "min_data_in_bin": 1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x[:, :39], y, feature_name=older), num_boost_round=5)
    ann = rows_of(st, ["ann"])
    _, items, x_ann = candidate_features(st, ann)
    score = booster.predict(x_ann[:, :39])
    expected = items[np.lexsort((items, -score))][:3]  # score desc, then item position, as rank_rows does
    ranked, _ = RecommendModel(st, booster).rank_rows(ann, 3)
    assert ranked[0].tolist() == expected.tolist()
    renamed = lgb.train(params, lgb.Dataset(x[:, :2], y, feature_name=["own_baskets", "clicks"]), num_boost_round=1)
    with pytest.raises(ValueError, match="not a subset"):
        RecommendModel(st, renamed)
