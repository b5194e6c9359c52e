"""The simulated shop (components/feedback/shop.py) on hand-built judgments and users."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components import schema as s
from components.config import RelevanceScale
from components.feedback import implicit as im
from components.feedback import records as rec
from components.feedback import shop

SCALE = RelevanceScale()  # 1..3
DAY = 86400.0


def judgments() -> pd.DataFrame:
    """Three queries; for each, product <q>-3 is perfect, <q>-2 fair, <q>-1 irrelevant."""
    rows = [(q, f"{q}-{g}", float(g)) for q in ("cordless drill", "deck screws", "wood glue") for g in (1, 2, 3)]
    return pd.DataFrame(rows, columns=[s.QUERY, s.PRODUCT_ID, s.RELEVANCE])


def worst_first(query: str, k: int) -> list[str]:
    """A ranker that shows the irrelevant product first (and an unjudged one last)."""
    key = " ".join(w for w in query.split() if w != "screw")  # the reworded query still finds its products
    stem = next(q for q in ("cordless drill", "deck screws", "wood glue") if q.split()[0] in key)
    return [f"{stem}-1", f"{stem}-2", f"{stem}-3", "unjudged"][:k]


def traffic(seed: int = 0, n: int = 3000, **kw) -> shop.Traffic:
    return shop.search_traffic(judgments(), worst_first, n, seed, 0.0, DAY, SCALE, **kw)


def test_the_same_seed_gives_the_same_traffic_and_another_seed_other_traffic() -> None:
    a, b, c = traffic(0, 300), traffic(0, 300), traffic(1, 300)
    pd.testing.assert_frame_equal(a.impressions, b.impressions)
    pd.testing.assert_frame_equal(a.feedback, b.feedback)
    assert not a.feedback.equals(c.feedback)


def test_frames_have_the_stores_columns_and_valid_records() -> None:
    t = traffic(n=50)
    assert tuple(t.impressions.columns) == rec.IMPRESSION_COLUMNS
    assert tuple(t.feedback.columns) == rec.FEEDBACK_COLUMNS
    assert t.impressions[rec.TS].between(0.0, DAY).all()
    first = t.impressions[t.impressions[rec.REQUEST_ID] == t.impressions[rec.REQUEST_ID].iloc[0]]
    impression = {
        **first.iloc[0][[rec.REQUEST_ID, rec.TS, rec.DOMAIN, rec.ENDPOINT, rec.MODEL_VERSION, rec.ARM]].to_dict(),
        rec.UNIT: first[rec.UNIT].iloc[0],
        s.QUERY: first[s.QUERY].iloc[0],
        rec.USER: None,
        rec.ITEMS: [
            {s.PRODUCT_ID: p, rec.POSITION: int(k), rec.SCORE: float(sc), rec.FEATURES: {}}
            for p, k, sc in zip(first[s.PRODUCT_ID], first[rec.POSITION], first[rec.SCORE], strict=True)
        ],
    }
    assert rec.impression_problems(impression) == []
    shown = t.impressions.set_index([rec.REQUEST_ID, s.PRODUCT_ID])[rec.POSITION]
    keys = list(zip(t.feedback[rec.REQUEST_ID], t.feedback[s.PRODUCT_ID], strict=True))
    assert (shown.loc[keys].to_numpy() == t.feedback[rec.POSITION].to_numpy()).all()  # events on shown items only


def test_clicks_follow_the_judgments_and_fall_with_the_rank() -> None:
    t = traffic(n=6000)
    clicks = t.feedback[t.feedback[rec.EVENT] == im.CLICK]
    by_grade = clicks[s.PRODUCT_ID].str[-1].value_counts()
    assert "unjudged" not in set(clicks[s.PRODUCT_ID])  # gain 0: never attractive
    assert by_grade.get("1", 0) == 0  # the lowest grade is gain 0 too
    # grade 3 at rank 3 (theta 1/3, attractiveness 3/4) vs grade 2 at rank 2 (1/2, 1/4): 0.25 vs 0.125
    assert by_grade["3"] / by_grade["2"] == pytest.approx(2.0, rel=0.15)
    events = t.feedback[rec.EVENT].value_counts()
    assert events[im.CLICK] > events[im.ADD_TO_CART] > events[im.PURCHASE] > 0


def test_implicit_judgments_of_shop_traffic_order_products_as_the_judgments_do() -> None:
    t = traffic(n=6000, shopper=shop.Shopper(swap_share=0.5))
    judged, theta = im.search_judgments(t.impressions, t.feedback, SCALE)
    assert theta[1] == pytest.approx(0.5, abs=0.1)  # 1 / r
    for q, g in judged.groupby(s.QUERY):
        grades = g.set_index(s.PRODUCT_ID)[s.RELEVANCE]
        stem = q if q in ("cordless drill", "deck screws", "wood glue") else None
        assert stem and grades[f"{stem}-3"] > grades[f"{stem}-2"] > grades[f"{stem}-1"] == SCALE.min


def test_shift_moves_the_query_pool_towards_the_family() -> None:
    queries = ["cordless drill", "deck screws", "wood glue", "drill bits"]
    assert shop.query_pool_weights(queries) == pytest.approx([0.25] * 4)
    shifted = shop.query_pool_weights(queries, ["drill"], shift=0.6)
    assert shifted == pytest.approx([0.4, 0.1, 0.1, 0.4]) and shifted.sum() == pytest.approx(1.0)
    assert shop.query_pool_weights(queries, ["hammer"], shift=1.0) == pytest.approx([0.25] * 4)
    with pytest.raises(ValueError):
        shop.query_pool_weights(queries, ["drill"], shift=1.5)
    t = traffic(n=600, shift_terms=["glue"], shift=1.0)
    assert set(t.impressions[s.QUERY]) == {"wood glue"}


def test_rewording_changes_the_words_shown_with_the_shift() -> None:
    none = traffic(n=300, reword={"screws": "screw"}, shift=0.0)
    full = traffic(n=300, reword={"screws": "screw"}, shift=1.0)
    assert "deck screw" not in set(none.impressions[s.QUERY])
    assert "deck screws" not in set(full.impressions[s.QUERY]) and "deck screw" in set(full.impressions[s.QUERY])


def test_recommendation_visits_buy_what_the_user_goes_on_to_buy_and_the_shifted_family() -> None:
    truths = {"u1": {"a"}, "u2": {"b"}}

    def popular(user: str, k: int) -> list[str]:
        return ["x", "a", "b", "new1", "new2"][:k]

    base = shop.recommend_traffic(truths, popular, 3000, 0, 0.0, DAY, shop.Shopper(k=5, other_attract=0.0))
    bought = base.feedback[base.feedback[rec.EVENT] == im.PURCHASE][s.PRODUCT_ID]
    assert set(bought) == {"a", "b"}
    assert set(base.impressions[rec.USER]) == {"u1", "u2"}
    shifted = shop.recommend_traffic(
        truths, popular, 3000, 0, 0.0, DAY, shop.Shopper(k=5, other_attract=0.0), ["new1"], 0.5, new_user_share=0.2
    )
    clicked = shifted.feedback[shifted.feedback[rec.EVENT] == im.CLICK][s.PRODUCT_ID].value_counts()
    assert clicked["new1"] > 0 and "new2" not in clicked
    users = shifted.impressions.drop_duplicates(rec.REQUEST_ID)[rec.USER]
    assert users.str.startswith("new-").mean() == pytest.approx(0.2, abs=0.03)
    events = im.recommend_events(shifted.impressions, shifted.feedback, {im.PURCHASE: 1.0})
    assert set(events[s.PRODUCT_ID]) <= {"a", "b", "new1"} and len(events) > 0


def test_session_units_group_consecutive_requests() -> None:
    units = shop._session_units(2000, 4.0, "search", np.random.default_rng(0))
    assert len(units) == 2000 and len(set(units)) == pytest.approx(500, rel=0.15)
